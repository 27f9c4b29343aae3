"""Phase 3, MaskedInputCollection: y_u = x_u + PRG(b_u) + sum of signed pairwise masks, mod 2^B."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from secagg import encoding
from secagg.config import RoundConfig
from secagg.crypto import keys, prg
from secagg.engine.advertise import KeyAgreement, PartySecrets
from secagg.engine.masking import MaskContext, pairwise_seed, self_mask_stream_seed
from secagg.engine.share_keys import HeldShares
from secagg.errors import EncodingError, LocalProtocolError, RemoteProtocolError
from secagg.messages import SERVER, MaskedInput


def mask_context(config: RoundConfig) -> MaskContext:
    return MaskContext(
        config.session_id,
        config.round_index,
        config.dim,
        encoding.word_dtype(config.modulus_bits),
    )


def check_input(config: RoundConfig, words: npt.ArrayLike) -> npt.NDArray[np.unsignedinteger]:
    """Validate an input vector already encoded in Z_(2^B).

    Raises:
        LocalProtocolError: wrong shape, dtype or values outside [0, 2^B).
    """
    x = np.asarray(words)
    if x.ndim != 1 or x.shape[0] != config.dim:
        raise LocalProtocolError(f"input must be a vector of length {config.dim}")
    if x.dtype.kind not in "ui":
        raise LocalProtocolError("input must be integers in Z_(2^B); encode floats first")
    if x.size and (int(x.min()) < 0 or int(x.max()) >= 1 << config.modulus_bits):
        raise LocalProtocolError(f"input values must lie in [0, 2^{config.modulus_bits})")
    return np.array(x, dtype=encoding.word_dtype(config.modulus_bits), copy=True)


def client_masked_input(
    config: RoundConfig,
    party: int,
    secrets: PartySecrets,
    agreement: KeyAgreement,
    held: HeldShares,
    words: npt.NDArray[np.unsignedinteger],
) -> MaskedInput:
    """Mask the (validated) input with the self mask and one pairwise mask per peer in U2."""
    ctx = mask_context(config)
    y = words  # owned copy from check_input: masked in place
    buffer = prg.KeystreamBuffer()
    prg.add_mask(y, self_mask_stream_seed(ctx, held.self_mask_seed, party), buffer=buffer)
    peers = held.peers
    shared = keys.x25519_shared_secrets(
        secrets.mask_private, [agreement.neighbors[v].mask_public for v in peers]
    )
    for v, secret in zip(peers, shared, strict=True):
        prg.add_mask(y, pairwise_seed(ctx, secret, party, v), subtract=party > v, buffer=buffer)
    encoding.reduce(y, config.modulus_bits)
    payload = encoding.pack(y, config.modulus_bits)
    return MaskedInput(
        config.session_id,
        config.round_index,
        party,
        SERVER,
        modulus_bits=config.modulus_bits,
        count=config.dim,
        payload=payload,
    )


class MaskedSum:
    """Server side: adds masked inputs into one running sum as they arrive (no per-party copy)."""

    def __init__(self, config: RoundConfig, expected: set[int]) -> None:
        self.config = config
        self.expected = expected
        self.received: set[int] = set()
        self.total = np.zeros(config.dim, dtype=encoding.word_dtype(config.modulus_bits))

    def add(self, message: MaskedInput) -> None:
        u = message.sender
        if u not in self.expected:
            raise RemoteProtocolError(f"masked input from party {u}, not in U2")
        if u in self.received:
            raise RemoteProtocolError(f"party {u} sent its masked input twice")
        if message.modulus_bits != self.config.modulus_bits or message.count != self.config.dim:
            raise RemoteProtocolError(f"masked input of party {u} has the wrong shape")
        try:
            encoding.add_packed(self.total, message.payload, self.config.modulus_bits)
        except EncodingError as exc:
            raise RemoteProtocolError(f"masked input of party {u}: {exc}") from None
        self.received.add(u)

"""Phase 3, MaskedInputCollection: y_u = x_u + PRG(b_u) + sum of signed pairwise masks, mod 2^B."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from secagg import encoding
from secagg.config import RoundConfig
from secagg.crypto import keys, prg
from secagg.engine.advertise import KeyAgreement, PartySecrets
from secagg.engine.consistency import partners_payload
from secagg.engine.masking import (
    MaskContext,
    add_block_mask,
    pairwise_seed,
    self_mask_stream_seed,
)
from secagg.engine.share_keys import HeldShares
from secagg.errors import EncodingError, LocalProtocolError, RemoteProtocolError
from secagg.messages import SERVER, MaskedInput


def mask_context(config: RoundConfig) -> MaskContext:
    return MaskContext(
        config.digest,
        config.round_index,
        config.dim,
        encoding.word_dtype(config.modulus_bits),
        config.blocks if config.part_wise else None,
    )


def check_input(
    config: RoundConfig, words: npt.ArrayLike, party: int
) -> npt.NDArray[np.unsignedinteger]:
    """Validate ``party``'s input vector, already encoded in Z_(2^B) (in part-wise mode: its
    blocks' values, concatenated in block order).

    Raises:
        LocalProtocolError: wrong shape, dtype or values outside [0, 2^B).
    """
    x = np.asarray(words)
    length = config.input_length(party)
    if x.ndim != 1 or x.shape[0] != length:
        raise LocalProtocolError(f"input must be a vector of length {length}")
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
    signing_key: bytes | None = None,
) -> MaskedInput:
    """Mask the (validated) input with the self mask and one pairwise mask per peer in U2."""
    ctx = mask_context(config)
    layout = ctx.layout
    y = words  # owned copy from check_input: masked in place
    buffer = prg.KeystreamBuffer()
    mine = layout.holdings[party] if layout is not None else ()
    self_seed = self_mask_stream_seed(ctx, held.self_mask_seed, party)
    add_block_mask(y, self_seed, layout, mine, None, buffer=buffer)
    peers = held.peers
    shared = keys.x25519_shared_secrets(
        secrets.mask_private, [agreement.neighbors[v].mask_public for v in peers]
    )
    for v, secret in zip(peers, shared, strict=True):
        common = layout.common_blocks(party, v) if layout is not None else ()
        if layout is not None and not common:
            continue  # masks live only on blocks both hold
        where = layout.local_positions(party, common) if layout is not None else None
        seed = pairwise_seed(ctx, secret, party, v)
        add_block_mask(y, seed, layout, common, where, subtract=party > v, buffer=buffer)
    encoding.reduce(y, config.modulus_bits)
    payload = encoding.pack(y, config.modulus_bits)
    signature = b""
    if config.active:
        assert signing_key is not None
        signature = keys.sign(signing_key, partners_payload(config, party, peers))
    return MaskedInput(
        config.session_id,
        config.round_index,
        party,
        SERVER,
        modulus_bits=config.modulus_bits,
        count=y.size,
        payload=payload,
        peers=tuple(peers) if config.active else (),
        peers_signature=signature,
    )


class MaskedSum:
    """Server side: adds masked inputs into one running sum as they arrive (no per-party copy)."""

    def __init__(
        self,
        config: RoundConfig,
        expected: set[int],
        peers: dict[int, tuple[int, ...]] | None = None,
    ) -> None:
        """``peers``: for each party in U2, the senders the server delivered to it (active mode
        checks that the party's signed partner set is exactly that)."""
        self.config = config
        self.expected = expected
        self.peers = peers or {}
        self.partner_signatures: dict[int, bytes] = {}
        self.received: set[int] = set()
        self.total = np.zeros(config.dim, dtype=encoding.word_dtype(config.modulus_bits))

    def add(self, message: MaskedInput) -> None:
        u = message.sender
        if u not in self.expected:
            raise RemoteProtocolError(f"masked input from party {u}, not in U2")
        if u in self.received:
            raise RemoteProtocolError(f"party {u} sent its masked input twice")
        length = self.config.input_length(u)
        if message.modulus_bits != self.config.modulus_bits or message.count != length:
            raise RemoteProtocolError(f"masked input of party {u} has the wrong shape")
        if self.config.active:
            assert self.config.verify_keys is not None
            if message.peers != self.peers.get(u, ()):
                raise RemoteProtocolError(f"party {u} signed a partner set it was not given")
            signed = partners_payload(self.config, u, message.peers)
            if not keys.verify(self.config.verify_keys[u], message.peers_signature, signed):
                raise RemoteProtocolError(f"invalid partner-set signature of party {u}")
        try:
            if self.config.part_wise:
                words = encoding.unpack(message.payload, self.config.modulus_bits, length)
                where = self.config.blocks.positions(self.config.blocks.holdings[u])
                self.total[where] += words  # a party's positions are distinct
            else:
                encoding.add_packed(self.total, message.payload, self.config.modulus_bits)
        except EncodingError as exc:
            raise RemoteProtocolError(f"masked input of party {u}: {exc}") from None
        self.received.add(u)
        if self.config.active:
            self.partner_signatures[u] = message.peers_signature

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


class PackedSum:
    """A running sum of B-bit packed vectors (:func:`encoding.pack`), added as bytes.

    Unpacking every party's vector costs ~6 ns per coordinate for B = 30 (eight strided passes
    per group of 8 values); the server adds thousands of them. Instead each payload's bytes are
    added into one 16-bit counter per byte position (one vector operation, ~0.14 ns per byte),
    and so are the low parts of the bytes that a value boundary cuts in two (the end of one
    value; a precomputed byte mask, zero elsewhere). Sums of bytes are linear, so the per-value
    sums mod 2^64 are recovered exactly once, at :meth:`fold`: a byte fully inside value i
    contributes ``sum << (8 b - offset_i)``; a cut byte gives its low sum to value i and
    ``(sum - low sum) >> cut`` to value i + 1. Needs B >= 8 (at most one boundary per byte).
    The 16-bit counters are flushed into 64-bit ones every 257 payloads (257 * 255 < 2^16).
    """

    #: Payloads the 16-bit counters can take before they are flushed.
    NARROW_CAPACITY = (2**16 - 1) // 255

    def __init__(self, count: int, modulus_bits: int) -> None:
        if modulus_bits < 8:
            raise ValueError("PackedSum needs B >= 8")
        self.count = count
        self.bits = modulus_bits
        self.nbytes = encoding.packed_size(count, modulus_bits)
        self.groups = -(-count // 8)
        offsets = [i * modulus_bits for i in range(1, 8)]
        #: (byte within a group, bits of it that end the previous value) of every cut byte.
        self.cuts = [(o // 8, o % 8) for o in offsets if o % 8]
        padded = self.groups * modulus_bits
        group_mask = np.zeros(modulus_bits, dtype=np.uint8)
        for byte, cut in self.cuts:
            group_mask[byte] = (1 << cut) - 1
        self._low_mask = np.tile(group_mask, self.groups)[: self.nbytes]
        self._scratch = np.empty(self.nbytes, dtype=np.uint8)
        self._narrow = np.zeros((2, self.nbytes), dtype=np.uint16)  # byte sums, low-part sums
        self._wide = np.zeros((2, padded), dtype=np.uint64)
        self._in_narrow = 0
        self.pending = 0

    def check(self, payload: bytes) -> None:
        """Raise EncodingError unless ``payload`` is a well-formed packed vector (exact length,
        zero padding bits), before anything is added."""
        if len(payload) != self.nbytes:
            raise EncodingError(f"packed vector has {len(payload)} bytes, expected {self.nbytes}")
        tail_bits = self.nbytes * 8 - self.count * self.bits
        if tail_bits and payload[-1] >> (8 - tail_bits):
            raise EncodingError("non-zero padding bits in packed vector")

    def add(self, payload: bytes) -> None:
        """Add one packed vector (checked with :meth:`check` first)."""
        self.check(payload)
        if self._in_narrow == self.NARROW_CAPACITY:
            self._flush()
        raw = np.frombuffer(payload, dtype=np.uint8)
        sums, low = self._narrow
        np.add(sums, raw, out=sums, casting="unsafe")
        if self.cuts:
            np.bitwise_and(raw, self._low_mask, out=self._scratch)
            np.add(low, self._scratch, out=low, casting="unsafe")
        self._in_narrow += 1
        self.pending += 1

    def _flush(self) -> None:
        wide = self._wide[:, : self.nbytes]
        np.add(wide, self._narrow, out=wide, casting="unsafe")
        self._narrow.fill(0)
        self._in_narrow = 0

    def fold(self) -> npt.NDArray[np.uint64]:
        """The per-value sums (mod 2^64) of everything added since the last fold; resets."""
        self._flush()
        b = self.bits
        sums = self._wide[0].reshape(self.groups, b)
        low = self._wide[1].reshape(self.groups, b)
        out = np.zeros((self.groups, 8), dtype=np.uint64)
        for i in range(8):
            start, end = i * b, (i + 1) * b  # the value's bits within its group
            for byte in range(start // 8, (end - 1) // 8 + 1):
                lo_bit = byte * 8
                if lo_bit < start:  # cut byte, value starts inside it: its high part
                    out[:, i] += (sums[:, byte] - low[:, byte]) >> np.uint64(start - lo_bit)
                elif lo_bit + 8 > end:  # cut byte, value ends inside it: its low part
                    out[:, i] += low[:, byte] << np.uint64(lo_bit - start)
                else:
                    out[:, i] += sums[:, byte] << np.uint64(lo_bit - start)
        self._wide.fill(0)
        self.pending = 0
        return out.reshape(-1)[: self.count]


class MaskedSum:
    """Server side: adds masked inputs into one running sum as they arrive (no per-party copy,
    and without unpacking each vector: see :class:`PackedSum`)."""

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
        self._total = np.zeros(config.dim, dtype=encoding.word_dtype(config.modulus_bits))
        bits = config.modulus_bits
        self._packed = (
            PackedSum(config.dim, bits)
            if not config.part_wise and bits >= 8 and bits != self._total.dtype.itemsize * 8
            else None
        )

    @property
    def total(self) -> npt.NDArray[np.unsignedinteger]:
        """Sum of the masked inputs received so far, in words modulo 2^w (w >= B)."""
        if self._packed is not None and self._packed.pending:
            np.add(self._total, self._packed.fold().astype(self._total.dtype), out=self._total)
        return self._total

    @total.setter
    def total(self, value: npt.NDArray[np.unsignedinteger]) -> None:
        if self._packed is not None and self._packed.pending:
            self._packed.fold()  # discard: the restored total replaces everything
        self._total = value

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
                self._total[where] += words  # a party's positions are distinct
            elif self._packed is not None:
                self._packed.add(message.payload)
            else:
                encoding.add_packed(self._total, message.payload, self.config.modulus_bits)
        except EncodingError as exc:
            raise RemoteProtocolError(f"masked input of party {u}: {exc}") from None
        self.received.add(u)
        if self.config.active:
            self.partner_signatures[u] = message.peers_signature

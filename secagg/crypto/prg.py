"""AES-128-CTR pseudo-random generator that writes masks straight into numpy arrays.

A mask of ``count`` words is the AES-128-CTR keystream of a 128-bit seed, read as little-endian
unsigned words (uint16/32/64). Arithmetic on those words wraps modulo 2^w, and since 2^B divides
2^w for every B <= w, masks and sums taken modulo 2^w reduce correctly to Z_(2^B) at the end
(Bonawitz et al. 2017 mask in Z_R with R = 2^B). ``stream`` selects independent keystreams of the
same seed (the CTR nonce), used for per-block masks in part-wise aggregation.

Speed: the keystream is produced by OpenSSL (AES-NI/VAES) into a reusable buffer with
``update_into`` and added in place: no Python loop over coordinates, no temporary arrays.
"""

from __future__ import annotations

import struct

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secagg.layout import concat_ranges

SEED_BYTES = 16
_PAD = 16  # update_into needs len(data) + block_size - 1 bytes of room

WordArray = npt.NDArray[np.unsignedinteger]


class KeystreamBuffer:
    """Reusable scratch space for keystream expansion (one per thread of work)."""

    def __init__(self) -> None:
        self._zeros = bytes(0)
        self._out = bytearray(_PAD)

    def fill(self, seed: bytes, nbytes: int, stream: int) -> memoryview:
        if len(self._zeros) < nbytes:
            self._zeros = bytes(nbytes)
            self._out = bytearray(nbytes + _PAD)
        encryptor = _cipher(seed, stream).encryptor()
        written = encryptor.update_into(memoryview(self._zeros)[:nbytes], self._out)
        if written != nbytes:  # pragma: no cover - CTR mode is a pure stream
            raise RuntimeError("short keystream")
        return memoryview(self._out)[:nbytes]


def _cipher(seed: bytes, stream: int) -> Cipher[modes.CTR]:
    if len(seed) != SEED_BYTES:
        raise ValueError(f"PRG seed must be {SEED_BYTES} bytes, got {len(seed)}")
    if not 0 <= stream < 2**64:
        raise ValueError("stream index out of range")
    # Nonce = stream index (64 bits) || block counter (64 bits, starting at 0).
    return Cipher(algorithms.AES(seed), modes.CTR(struct.pack(">QQ", stream, 0)))


def expand(seed: bytes, count: int, dtype: npt.DTypeLike, stream: int = 0) -> WordArray:
    """``count`` pseudo-random words of ``dtype`` from ``seed`` (a fresh array)."""
    dt = np.dtype(dtype)
    out = bytearray(count * dt.itemsize + _PAD)
    encryptor = _cipher(seed, stream).encryptor()
    encryptor.update_into(bytes(count * dt.itemsize), out)
    return np.frombuffer(out, dtype=dt, count=count).copy()


def add_mask(
    accumulator: WordArray,
    seed: bytes,
    *,
    subtract: bool = False,
    stream: int = 0,
    buffer: KeystreamBuffer | None = None,
) -> None:
    """``accumulator += PRG(seed)`` (or ``-=``) in place, modulo 2^w of its dtype.

    Args:
        accumulator: a contiguous 1-D unsigned array; its dtype sets the word size.
        seed: the 16-byte PRG seed.
        subtract: subtract the mask instead of adding it (the lower id of a pair subtracts).
        stream: keystream index (block id in part-wise aggregation).
        buffer: scratch space to reuse across calls.
    """
    buf = buffer if buffer is not None else KeystreamBuffer()
    dt = accumulator.dtype
    keystream = np.frombuffer(buf.fill(seed, accumulator.size * dt.itemsize, stream), dtype=dt)
    if subtract:
        np.subtract(accumulator, keystream, out=accumulator)
    else:
        np.add(accumulator, keystream, out=accumulator)


def expand_blocks(
    seed: bytes, block_ids: npt.ArrayLike, block_sizes: npt.ArrayLike, dtype: npt.DTypeLike
) -> WordArray:
    """The masks of several blocks, concatenated: block b's words are the first ``size_b`` words
    of the keystream with ``stream = b`` (the same words :func:`expand` gives for that stream).

    Only the keystream the blocks need is computed, whatever the block ids: the 128-bit counter
    blocks ``stream || i`` are built in numpy and encrypted with AES-ECB in one call (CTR mode is
    exactly ECB over those counters), so a party's cost follows its part, not the model.
    """
    ids = np.asarray(block_ids, dtype=np.uint64)
    sizes = np.asarray(block_sizes, dtype=np.int64)
    dt = np.dtype(dtype)
    if ids.size == 0:
        return np.zeros(0, dtype=dt)
    per_aes = 16 // dt.itemsize
    nblocks = -(-sizes // per_aes)
    total = int(nblocks.sum())
    starts = np.cumsum(nblocks) - nblocks
    counters = np.empty((total, 2), dtype=">u8")
    counters[:, 0] = np.repeat(ids, nblocks)
    counters[:, 1] = np.arange(total, dtype=np.int64) - np.repeat(starts, nblocks)
    if len(seed) != SEED_BYTES:
        raise ValueError(f"PRG seed must be {SEED_BYTES} bytes, got {len(seed)}")
    encryptor = Cipher(algorithms.AES(seed), modes.ECB()).encryptor()
    keystream = encryptor.update(counters.tobytes()) + encryptor.finalize()
    words = np.frombuffer(keystream, dtype=dt.newbyteorder("<")).astype(dt)
    if np.all(sizes % per_aes == 0):
        return words
    # Drop each block's padding words at the end of its last AES block.
    return words[concat_ranges(starts * per_aes, sizes)]

"""Fixed-point encoding of float vectors into Z_(2^B), and B-bit packing for the wire.

A party's float update is clipped to [-clip, clip], scaled so that clip maps to 2^(v-1) - 1
(``value_bits`` = v, sign included), stochastically rounded with the CSPRNG (unbiased: E[q] = x
times the scale), and mapped into Z_(2^B) in two's complement. The sum of n encoded vectors decodes
exactly as long as n (2^(v-1) - 1) < 2^(B-1); :func:`choose_modulus_bits` picks the smallest such B
(plus headroom) and refuses with :class:`EncodingError` when B would exceed 64, instead of letting
the sum wrap around silently.

On the wire every value takes exactly B bits (little-endian bit order), so a masked vector costs
B/32 of its float32 form.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from secagg.crypto import rng
from secagg.errors import EncodingError

MAX_MODULUS_BITS = 64
MAX_VALUE_BITS = 53
Words = npt.NDArray[np.unsignedinteger]


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    """An integer (not a bool, not a float) in [low, high]; EncodingError naming it otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise EncodingError(f"{name} must be an integer, got {value!r}")
    number = int(value)
    if number < low or (high is not None and number > high):
        bounds = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise EncodingError(
            f"{name} must be {'in ' if high is not None else ''}{bounds}, got {value}"
        )


def _real_array(name: str, values: npt.ArrayLike) -> npt.NDArray[Any]:
    """``values`` as an array of real numbers (bool, integer or float), or EncodingError naming
    the argument and what it got (strings, complex numbers and objects are refused here rather
    than failing deep inside numpy, or silently dropping an imaginary part)."""
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as exc:
        raise EncodingError(f"{name} must be an array of real numbers: {exc}") from None
    if array.dtype.kind not in "biuf":
        raise EncodingError(
            f"{name} must hold real numbers, got dtype {array.dtype}"
            + (f" (first value {array.reshape(-1).tolist()[0]!r})" if array.size else "")
        )
    return array


def word_dtype(modulus_bits: int) -> np.dtype[np.unsignedinteger]:
    """The smallest unsigned machine word holding B bits (masks and sums wrap modulo 2^w)."""
    _check_int("modulus_bits", modulus_bits, 1, MAX_MODULUS_BITS)
    for dtype in (np.uint16, np.uint32, np.uint64):
        if modulus_bits <= np.dtype(dtype).itemsize * 8:
            return np.dtype(dtype)
    raise AssertionError("unreachable")  # pragma: no cover


def choose_modulus_bits(value_bits: int, num_summands: int, headroom_bits: int = 0) -> int:
    """The smallest B such that the sum of ``num_summands`` signed ``value_bits`` values fits.

    Raises:
        EncodingError: B would exceed 64 bits.
    """
    _check_int("value_bits", value_bits, 2)
    _check_int("num_summands", num_summands, 1)
    _check_int("headroom_bits", headroom_bits, 0)
    bits = value_bits + math.ceil(math.log2(num_summands)) + headroom_bits
    if bits > MAX_MODULUS_BITS:
        raise EncodingError(
            f"a sum of {num_summands} values of {value_bits} bits (+{headroom_bits} headroom) needs"
            f" {bits} bits, more than {MAX_MODULUS_BITS}: lower value_bits or the cohort size"
        )
    return bits


@dataclass(frozen=True)
class FixedPointEncoder:
    """Clip, scale and stochastically round floats into Z_(2^B).

    Attributes:
        clip: values are clipped to [-clip, clip] before scaling (DSSGD's gamma).
        value_bits: bits of one encoded value, sign included.
        modulus_bits: B; must leave room for the sum (see :func:`choose_modulus_bits`).
        max_summands: the most vectors that may be summed; checked at decoding.
    """

    clip: float
    value_bits: int
    modulus_bits: int
    max_summands: int

    def __post_init__(self) -> None:
        if not (
            isinstance(self.clip, numbers.Real)
            and not isinstance(self.clip, bool)
            and math.isfinite(self.clip)
            and self.clip > 0
        ):
            raise EncodingError(f"clip must be a positive finite number, got {self.clip!r}")
        # A float64 carries 53 bits: more value bits would only encode rounding noise, and
        # 2^(v-1) - 1 would no longer be exact in the scaling.
        _check_int("value_bits", self.value_bits, 2, MAX_VALUE_BITS)
        _check_int("max_summands", self.max_summands, 1)
        _check_int("modulus_bits", self.modulus_bits, 1, MAX_MODULUS_BITS)
        scale = float(2 ** (self.value_bits - 1) - 1) / self.clip
        if not (math.isfinite(scale) and scale * self.clip > 0.5):
            # e.g. clip=1e-305: the scale overflows to inf, every value becomes 0 or NaN and
            # every sum decodes to 0.0 silently. Refuse instead.
            raise EncodingError(
                f"clip={self.clip!r} cannot be scaled to {self.value_bits} value bits in float64"
                f" (scale {scale!r}); use a clip of at least"
                f" {float(2 ** (self.value_bits - 1)) / 1.0e307:.3g}"
            )
        needed = choose_modulus_bits(self.value_bits, self.max_summands)
        if self.modulus_bits < needed:
            raise EncodingError(
                f"modulus_bits={self.modulus_bits} cannot hold a sum of {self.max_summands} values"
                f" of {self.value_bits} bits without wrap-around (needs {needed})"
            )

    @property
    def scale(self) -> float:
        return float(2 ** (self.value_bits - 1) - 1) / self.clip

    @property
    def dtype(self) -> np.dtype[np.unsignedinteger]:
        return word_dtype(self.modulus_bits)

    def quantize(self, values: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Signed integers: clip, scale and round stochastically with the CSPRNG."""
        x = _real_array("values", values).astype(np.float64)
        if not np.all(np.isfinite(x)):
            bad = int(np.flatnonzero(~np.isfinite(x.reshape(-1)))[0])
            raise EncodingError(
                f"cannot encode NaN or infinite values (values[{bad}] = {x.reshape(-1)[bad]})"
            )
        limit = float(2 ** (self.value_bits - 1) - 1)
        # Clamp after scaling too: clip * (limit / clip) can round above limit in float64.
        scaled = np.clip(np.clip(x, -self.clip, self.clip) * self.scale, -limit, limit)
        floor = np.floor(scaled)
        # 53 random bits per coordinate -> uniform in [0, 1).
        uniform = (rng.random_words(x.size, np.uint64) >> np.uint64(11)).astype(np.float64)
        uniform *= 2.0**-53
        rounded = floor + (uniform.reshape(x.shape) < scaled - floor)
        return rounded.astype(np.int64)

    def encode(self, values: npt.ArrayLike) -> Words:
        """Encode floats into words of Z_(2^B) (two's complement)."""
        return to_ring(self.quantize(values), self.modulus_bits)

    def decode_sum(self, total: Words, num_summands: int) -> npt.NDArray[np.float64]:
        """Decode a sum of ``num_summands`` encoded vectors back to floats."""
        _check_int("num_summands", num_summands, 1)
        if num_summands > self.max_summands:
            raise EncodingError(
                f"num_summands={num_summands}: the encoder was built for at most"
                f" max_summands={self.max_summands} (the sum may have wrapped around)"
            )
        words = _real_array("total", total)
        if words.dtype.kind == "f":
            raise EncodingError(f"total must hold ring words (integers), got dtype {words.dtype}")
        return from_ring(words, self.modulus_bits).astype(np.float64) / self.scale


def to_ring(values: npt.NDArray[np.integer], modulus_bits: int) -> Words:
    """Signed integers to Z_(2^B) words (two's complement, reduced mod 2^B).

    Raises:
        EncodingError: ``values`` are not integers (floats would be truncated silently: encode
            them with :class:`FixedPointEncoder`).
    """
    dtype = word_dtype(modulus_bits)
    array = _real_array("values", values)
    if array.dtype.kind == "f":
        # Integer-valued floats (e.g. rounded noise) are fine; a fraction would be truncated.
        fractional = np.flatnonzero(array.reshape(-1) != np.rint(array.reshape(-1)))
        if fractional.size:
            i = int(fractional[0])
            raise EncodingError(
                f"values must be integers, got values[{i}] = {float(array.reshape(-1)[i])!r}:"
                " encode floats with FixedPointEncoder.encode"
            )
    words = array.astype(np.int64).view(np.uint64) & np.uint64((1 << modulus_bits) - 1)
    return words.astype(dtype)


def from_ring(words: Words, modulus_bits: int) -> npt.NDArray[np.int64]:
    """Z_(2^B) words to signed integers in [-2^(B-1), 2^(B-1))."""
    word_dtype(modulus_bits)
    w = _real_array("words", words).astype(np.uint64)
    # Sign-extend bit B-1: shift it to bit 63, reinterpret as int64, shift back arithmetically.
    shift = np.uint64(64 - modulus_bits)
    return (w << shift).view(np.int64) >> np.int64(64 - modulus_bits)


def reduce(words: Words, modulus_bits: int) -> Words:
    """Reduce words modulo 2^B in place and return them."""
    if modulus_bits < words.dtype.itemsize * 8:
        np.bitwise_and(words, words.dtype.type((1 << modulus_bits) - 1), out=words)
    return words


def packed_size(count: int, modulus_bits: int) -> int:
    """Bytes of ``count`` values packed at B bits each."""
    return (count * modulus_bits + 7) // 8


def _group_layout(modulus_bits: int) -> list[tuple[int, int]]:
    """(word, shift) of each of the 8 values of a group; a group is exactly B bytes."""
    return [divmod(i * modulus_bits, 64) for i in range(8)]


def pack(words: Words, modulus_bits: int) -> bytes:
    """Pack the low B bits of every word, little-endian, into ``ceil(count B / 8)`` bytes.

    Eight values make a group of exactly B bytes, assembled in ceil(B/8) uint64 lanes with a
    fixed shift per value: 8 to 16 vector operations for the whole vector, whatever B is.
    """
    dtype = word_dtype(modulus_bits)
    w = np.asarray(words)
    count = w.size
    if modulus_bits % 8 == 0:
        width = dtype.itemsize
        le = np.ascontiguousarray(w, dtype=dtype.newbyteorder("<")).view(np.uint8)
        return le.reshape(-1, width)[:, : modulus_bits // 8].tobytes()
    groups = -(-count // 8)
    flat = np.zeros(groups * 8, dtype=np.uint64)
    flat[:count] = w
    np.bitwise_and(flat, np.uint64((1 << modulus_bits) - 1), out=flat)
    values = flat.reshape(groups, 8)
    lanes = np.zeros((groups, -(-modulus_bits // 8)), dtype=np.uint64)
    tmp = np.empty(groups, dtype=np.uint64)
    for i, (q, r) in enumerate(_group_layout(modulus_bits)):
        np.left_shift(values[:, i], np.uint64(r), out=tmp)
        np.bitwise_or(lanes[:, q], tmp, out=lanes[:, q])
        if r + modulus_bits > 64:
            np.right_shift(values[:, i], np.uint64(64 - r), out=tmp)
            np.bitwise_or(lanes[:, q + 1], tmp, out=lanes[:, q + 1])
    if lanes.dtype.byteorder == ">":  # pragma: no cover - big-endian hosts
        lanes = lanes.byteswap()
    packed = lanes.view(np.uint8)[:, :modulus_bits].reshape(-1)
    return packed[: packed_size(count, modulus_bits)].tobytes()


def _check_size(data: bytes, modulus_bits: int, count: int) -> None:
    if len(data) != packed_size(count, modulus_bits):
        raise EncodingError(
            f"packed vector has {len(data)} bytes, expected {packed_size(count, modulus_bits)}"
        )


def unpack(data: bytes, modulus_bits: int, count: int) -> Words:
    """Inverse of :func:`pack`; strict about length and padding.

    Raises:
        EncodingError: wrong length or non-zero padding bits.
    """
    _check_int("count", count, 0)
    out = np.zeros(count, dtype=word_dtype(modulus_bits))
    add_packed(out, data, modulus_bits)
    return out


def add_packed(accumulator: Words, data: bytes, modulus_bits: int) -> None:
    """``accumulator += unpack(data)`` modulo 2^w, without materializing the unpacked vector.

    Value i of each 8-value group starts at bit i*B of the group: it is read with one unaligned
    64-bit load at byte (i*B)//8 of every group (a strided view), shifted and masked, and added to
    every 8th coordinate. Eight such passes cover the vector (B <= 57 fits one load).

    Raises:
        EncodingError: wrong length or non-zero padding bits.
    """
    count = accumulator.size
    word_dtype(modulus_bits)
    _check_size(data, modulus_bits, count)
    if count == 0:
        return  # nothing to add (and no group to read: the code below assumes one)
    dtype = accumulator.dtype
    if dtype != word_dtype(modulus_bits) and dtype.itemsize * 8 < modulus_bits:
        raise EncodingError("accumulator words are narrower than the modulus")
    if modulus_bits == dtype.itemsize * 8:
        values = np.frombuffer(data, dtype=dtype.newbyteorder("<"))
        np.add(accumulator, values.astype(dtype, copy=False), out=accumulator)
        return
    if modulus_bits > 57:
        # Rare widths: unpack through 64-bit lanes of whole groups (slower, still vectorized).
        values = _unpack_wide(data, modulus_bits, count)
        np.add(accumulator, values.astype(dtype, copy=False), out=accumulator)
        return
    groups = -(-count // 8)
    tail_bits = len(data) * 8 - count * modulus_bits
    if tail_bits and data[-1] >> (8 - tail_bits):
        raise EncodingError("non-zero padding bits in packed vector")
    buf = bytearray(groups * modulus_bits + 8)  # room for the last unaligned 64-bit load
    buf[: len(data)] = data
    mask = np.uint64((1 << modulus_bits) - 1)
    layout = [divmod(i * modulus_bits, 8) for i in range(8)]
    # Check the padding values of the last group before touching the accumulator, so that a
    # rejected payload leaves no partial sum behind.
    last = (groups - 1) * modulus_bits
    for i in range(count - (groups - 1) * 8, 8):
        byte, shift = layout[i]
        word = int.from_bytes(buf[last + byte : last + byte + 8], "little")
        if (word >> shift) & int(mask):
            raise EncodingError("non-zero padding bits in packed vector")
    # Narrowest load that holds every value with its bit offset: 32-bit lanes when they fit
    # (B <= 25 always; B = 26 when the offsets are even), which halves the bytes moved.
    lane = np.dtype("<u4") if max(sh for _, sh in layout) + modulus_bits <= 32 else np.dtype("<u8")
    values = np.empty(groups, dtype=lane.newbyteorder("="))
    lane_mask = values.dtype.type(int(mask))
    for i, (byte, shift) in enumerate(layout):
        n_i = len(range(i, count, 8))
        lanes = np.ndarray((groups,), dtype=lane, buffer=buf, offset=byte, strides=(modulus_bits,))
        np.right_shift(lanes, values.dtype.type(shift), out=values)
        np.bitwise_and(values, lane_mask, out=values)
        target = accumulator[i::8]
        np.add(target, values[:n_i], out=target, casting="unsafe")


def _unpack_wide(data: bytes, modulus_bits: int, count: int) -> Words:
    groups = -(-count // 8)
    nlanes = -(-modulus_bits // 8)
    padded = np.zeros((groups, nlanes * 8), dtype=np.uint8)
    flat = np.zeros(groups * modulus_bits, dtype=np.uint8)
    flat[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    padded[:, :modulus_bits] = flat.reshape(groups, modulus_bits)
    lanes = padded.view("<u8").astype(np.uint64)
    mask = np.uint64((1 << modulus_bits) - 1)
    values = np.empty((groups, 8), dtype=np.uint64)
    for i, (q, r) in enumerate(_group_layout(modulus_bits)):
        v = lanes[:, q] >> np.uint64(r)
        if r + modulus_bits > 64:
            v |= lanes[:, q + 1] << np.uint64(64 - r)
        values[:, i] = v & mask
    flat_values = values.reshape(-1)
    if np.any(flat_values[count:]):
        raise EncodingError("non-zero padding bits in packed vector")
    tail_bits = len(data) * 8 - count * modulus_bits
    if tail_bits and data[-1] >> (8 - tail_bits):
        raise EncodingError("non-zero padding bits in packed vector")
    return flat_values[:count]

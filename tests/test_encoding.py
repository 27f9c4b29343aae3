"""Tests for secagg.encoding: B-bit packing, modulus choice and fixed-point encoding."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.encoding import (
    MAX_MODULUS_BITS,
    FixedPointEncoder,
    add_packed,
    choose_modulus_bits,
    from_ring,
    pack,
    packed_size,
    reduce,
    to_ring,
    unpack,
    word_dtype,
)
from secagg.errors import EncodingError

ALL_BITS = list(range(2, MAX_MODULUS_BITS + 1))


def _reference_pack(values: list[int], bits: int) -> bytes:
    """Independent bit-level packer: value i occupies bits [i B, (i+1) B), little-endian."""
    acc = 0
    for i, v in enumerate(values):
        acc |= (v & ((1 << bits) - 1)) << (i * bits)
    return acc.to_bytes(packed_size(len(values), bits), "little")


def _random_words(rnd: np.random.Generator, count: int, bits: int) -> np.ndarray:
    raw = rnd.integers(0, 2**63, size=count, dtype=np.uint64) * np.uint64(2) + rnd.integers(
        0, 2, size=count, dtype=np.uint64
    )
    if bits < 64:
        raw &= np.uint64((1 << bits) - 1)
    return raw.astype(word_dtype(bits))


# ------------------------------------------------------------------------------ word_dtype


@pytest.mark.parametrize(
    ("bits", "dtype"),
    [
        (1, np.uint16),
        (2, np.uint16),
        (16, np.uint16),
        (17, np.uint32),
        (32, np.uint32),
        (33, np.uint64),
        (64, np.uint64),
    ],
)
def test_word_dtype(bits: int, dtype: type) -> None:
    assert word_dtype(bits) == np.dtype(dtype)


@pytest.mark.parametrize("bits", [0, -1, 65, 128])
def test_word_dtype_out_of_range(bits: int) -> None:
    with pytest.raises(EncodingError):
        word_dtype(bits)


# ------------------------------------------------------------------------------ packing


@settings(max_examples=250, deadline=None)
@given(
    bits=st.integers(2, 64),
    values=st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=200),
    seed=st.integers(0, 2**32 - 1),
)
def test_pack_round_trip_property(bits: int, values: list[int], seed: int) -> None:
    mask = (1 << bits) - 1
    dtype = word_dtype(bits)
    words = np.array([v & mask for v in values], dtype=np.uint64).astype(dtype)
    data = pack(words, bits)
    assert len(data) == packed_size(len(values), bits) == math.ceil(len(values) * bits / 8)
    assert data == _reference_pack([v & mask for v in values], bits)
    assert np.array_equal(unpack(data, bits, len(values)), words)
    # add_packed adds modulo 2^w into an existing accumulator.
    rnd = np.random.default_rng(seed)
    start = _random_words(rnd, len(values), dtype.itemsize * 8)
    acc = start.copy()
    add_packed(acc, data, bits)
    w = dtype.itemsize * 8
    expected = [(int(a) + int(b)) % (1 << w) for a, b in zip(start, words, strict=True)]
    assert [int(v) for v in acc] == expected


@pytest.mark.parametrize("bits", ALL_BITS)
def test_pack_every_width_every_group_phase(bits: int) -> None:
    rnd = np.random.default_rng(bits)
    for count in [*range(1, 18), 63, 64, 65, 200]:
        words = _random_words(rnd, count, bits)
        data = pack(words, bits)
        assert data == _reference_pack([int(v) for v in words], bits)
        assert np.array_equal(unpack(data, bits, count), words)
    # all-ones values exercise every carry between lanes
    ones = np.full(17, (1 << bits) - 1, dtype=np.uint64).astype(word_dtype(bits))
    assert np.array_equal(unpack(pack(ones, bits), bits, 17), ones)


@pytest.mark.parametrize("bits", [2, 12, 16, 24, 31, 32, 57, 58, 61, 64])
def test_pack_ignores_bits_above_b(bits: int) -> None:
    dtype = word_dtype(bits)
    full = np.iinfo(dtype).max
    words = np.array([full, full - 1, 0, 1, full // 3], dtype=dtype)
    masked = words & dtype.type(((1 << bits) - 1) & int(full))
    assert pack(words, bits) == pack(masked, bits)


@pytest.mark.parametrize("bits", [3, 13, 32, 57, 61, 64])
def test_large_vector_round_trip(bits: int) -> None:
    rnd = np.random.default_rng(7)
    count = 100_003
    words = _random_words(rnd, count, bits)
    data = pack(words, bits)
    assert len(data) == packed_size(count, bits)
    assert np.array_equal(unpack(data, bits, count), words)
    acc = words.copy()
    add_packed(acc, data, bits)
    with np.errstate(over="ignore"):
        assert np.array_equal(acc, words + words)


def test_add_packed_into_wider_accumulator() -> None:
    words = np.arange(1, 40, dtype=np.uint16) * np.uint16(97)
    data = pack(words, 12)
    acc = np.full(39, 2**40, dtype=np.uint64)
    add_packed(acc, data, 12)
    assert np.array_equal(acc, (words & np.uint16(0xFFF)).astype(np.uint64) + np.uint64(2**40))


def test_add_packed_rejects_narrower_accumulator() -> None:
    data = pack(np.arange(8, dtype=np.uint32), 20)
    with pytest.raises(EncodingError):
        add_packed(np.zeros(8, dtype=np.uint16), data, 20)


@pytest.mark.parametrize("bits", [2, 7, 8, 13, 16, 31, 32, 57, 60, 64])
@pytest.mark.parametrize("count", [1, 5, 8, 9])
def test_strict_length(bits: int, count: int) -> None:
    data = pack(np.ones(count, dtype=word_dtype(bits)), bits)
    for bad in (data[:-1], data + b"\x00", b"", data + data):
        if len(bad) == len(data):  # pragma: no cover
            continue
        with pytest.raises(EncodingError):
            unpack(bad, bits, count)
        with pytest.raises(EncodingError):
            add_packed(np.zeros(count, dtype=word_dtype(bits)), bad, bits)


@pytest.mark.parametrize("bits", ALL_BITS)
def test_nonzero_padding_rejected(bits: int) -> None:
    dtype = word_dtype(bits)
    tested = 0
    for count in range(1, 9):
        pad = packed_size(count, bits) * 8 - count * bits
        if not pad:
            continue
        words = np.full(count, (1 << bits) - 1, dtype=np.uint64).astype(dtype)
        data = pack(words, bits)
        assert data[-1] >> (8 - pad) == 0  # pack writes zero padding
        for bit in range(8 - pad, 8):
            bad = data[:-1] + bytes([data[-1] | (1 << bit)])
            with pytest.raises(EncodingError):
                unpack(bad, bits, count)
            acc = np.zeros(count, dtype=dtype)
            with pytest.raises(EncodingError):
                add_packed(acc, bad, bits)
            tested += 1
    if bits % 8:
        assert tested > 0


# ------------------------------------------------------------------------------ modulus choice


@settings(max_examples=200, deadline=None)
@given(v=st.integers(2, 64), n=st.integers(1, 2**32), h=st.integers(0, 8))
def test_choose_modulus_bits_formula(v: int, n: int, h: int) -> None:
    bits = v + (n - 1).bit_length() + h  # exact integer ceil(log2 n)
    if bits > 64:
        with pytest.raises(EncodingError):
            choose_modulus_bits(v, n, h)
        return
    got = choose_modulus_bits(v, n, h)
    assert got == bits
    # Sufficiency: the sum of n extreme values fits in signed B bits.
    assert n * (2 ** (v - 1) - 1) < 2 ** (got - 1)


@pytest.mark.parametrize(
    ("v", "n", "h", "expected"),
    [
        (16, 1, 0, 16),
        (16, 2, 0, 17),
        (16, 3, 0, 18),
        (16, 1000, 0, 26),
        (16, 1024, 0, 26),
        (16, 1025, 0, 27),
        (24, 100, 4, 35),
        (64, 1, 0, 64),
        (33, 2**31, 0, 64),
    ],
)
def test_choose_modulus_bits_table(v: int, n: int, h: int, expected: int) -> None:
    assert choose_modulus_bits(v, n, h) == expected


@pytest.mark.parametrize(
    ("v", "n", "h"), [(64, 2, 0), (33, 2**31 + 1, 0), (60, 1, 5), (40, 2**30, 0)]
)
def test_choose_modulus_bits_above_64(v: int, n: int, h: int) -> None:
    with pytest.raises(EncodingError):
        choose_modulus_bits(v, n, h)


@pytest.mark.parametrize(("v", "n", "h"), [(1, 1, 0), (0, 1, 0), (16, 0, 0), (16, 1, -1)])
def test_choose_modulus_bits_bad_args(v: int, n: int, h: int) -> None:
    with pytest.raises(EncodingError):
        choose_modulus_bits(v, n, h)


# ------------------------------------------------------------------------------ ring maps


RING_BITS = list(ALL_BITS)  # includes B=63 (regression: int64 overflow in from_ring)


@pytest.mark.parametrize("bits", RING_BITS)
def test_to_from_ring_round_trip(bits: int) -> None:
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    rnd = np.random.default_rng(bits)
    values = np.concatenate(
        [
            np.array([lo, hi, 0, -1, 1, lo + 1, hi - 1], dtype=np.int64),
            rnd.integers(lo, hi, size=200, dtype=np.int64, endpoint=True),
        ]
    )
    words = to_ring(values, bits)
    assert words.dtype == word_dtype(bits)
    assert all(0 <= int(w) < 2**bits for w in words)
    assert [int(w) for w in words] == [int(x) % 2**bits for x in values]
    back = from_ring(words, bits)
    assert back.dtype == np.int64
    assert np.array_equal(back, values)


def test_ring_sum_wraps_correctly() -> None:
    bits = 20
    a = np.array([-5, 100, -(2**18)], dtype=np.int64)
    b = np.array([3, -200, -(2**18)], dtype=np.int64)
    total = to_ring(a, bits) + to_ring(b, bits)  # uint32 words
    assert np.array_equal(from_ring(total, bits), a + b)
    assert np.array_equal(from_ring(reduce(total.copy(), bits), bits), a + b)


def test_reduce() -> None:
    w = np.array([2**20 + 5, 2**32 - 1], dtype=np.uint32)
    out = reduce(w, 20)
    assert out is w
    assert list(w) == [5, 2**20 - 1]
    full = np.array([2**32 - 1], dtype=np.uint32)
    assert list(reduce(full, 32)) == [2**32 - 1]


# ------------------------------------------------------------------------------ fixed point


def _encoder(clip: float = 1.0, v: int = 16, n: int = 10) -> FixedPointEncoder:
    return FixedPointEncoder(
        clip=clip, value_bits=v, modulus_bits=choose_modulus_bits(v, n), max_summands=n
    )


def test_scale_and_dtype() -> None:
    enc = _encoder(clip=2.0, v=16, n=10)
    assert enc.scale == (2**15 - 1) / 2.0
    assert enc.dtype == word_dtype(enc.modulus_bits)


def test_clip() -> None:
    enc = _encoder(clip=0.5, v=12)
    q = enc.quantize([100.0, -100.0, 0.5, -0.5, 0.0])
    m = 2**11 - 1
    assert list(q) == [m, -m, m, -m, 0]
    dec = enc.decode_sum(enc.encode([100.0, -3.0]), 1)
    assert np.allclose(dec, [0.5, -0.5])


def test_quantize_takes_floor_or_ceil() -> None:
    enc = _encoder(clip=1.0, v=10)
    x = np.linspace(-1, 1, 1001)
    scaled = x * enc.scale
    q = enc.quantize(x)
    assert q.dtype == np.int64
    assert np.all((q == np.floor(scaled)) | (q == np.ceil(scaled)))
    integral = np.array([-3, 0, 7, 511]) / enc.scale
    assert list(enc.quantize(integral)) == [-3, 0, 7, 511]


def test_quantize_keeps_shape() -> None:
    enc = _encoder()
    assert enc.quantize(np.zeros((3, 4))).shape == (3, 4)


@pytest.mark.parametrize("x", [0.3, -0.71, 1e-4])
def test_stochastic_rounding_unbiased(x: float) -> None:
    enc = _encoder(clip=1.0, v=8)
    n = 40_000
    q = enc.quantize(np.full(n, x)).astype(np.float64)
    target = x * enc.scale
    frac = target - math.floor(target)
    se = math.sqrt(frac * (1 - frac) / n)
    assert abs(q.mean() - target) < 5 * se + 1e-12
    assert set(np.unique(q)) <= {math.floor(target), math.floor(target) + 1}
    # Not deterministic rounding: both neighbours occur when frac is not tiny.
    if 0.01 < frac < 0.99:
        assert len(np.unique(q)) == 2


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 40),
    v=st.integers(4, 24),
    clip=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**32 - 1),
)
def test_decode_sum_within_n_over_scale(n: int, v: int, clip: float, seed: int) -> None:
    enc = _encoder(clip=clip, v=v, n=40)
    rnd = np.random.default_rng(seed)
    inputs = rnd.uniform(-1.5 * clip, 1.5 * clip, size=(n, 64))
    total = np.zeros(64, dtype=enc.dtype)
    for row in inputs:
        with np.errstate(over="ignore"):
            total += enc.encode(row)
    reduce(total, enc.modulus_bits)
    decoded = enc.decode_sum(total, n)
    exact = np.clip(inputs, -clip, clip).sum(axis=0)
    assert np.all(np.abs(decoded - exact) <= n / enc.scale * (1 + 1e-9))


def test_decode_sum_of_extremes_does_not_wrap() -> None:
    n = 16
    enc = _encoder(clip=1.0, v=16, n=n)
    total = np.zeros(2, dtype=enc.dtype)
    for _ in range(n):
        with np.errstate(over="ignore"):
            total += enc.encode([5.0, -5.0])
    assert np.allclose(enc.decode_sum(total, n), [n * 1.0, -n * 1.0])


def test_decode_sum_bounds() -> None:
    enc = _encoder(n=10)
    total = enc.encode([0.0])
    for bad in (0, 11, -1):
        with pytest.raises(EncodingError):
            enc.decode_sum(total, bad)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_rejected(bad: float) -> None:
    enc = _encoder()
    with pytest.raises(EncodingError):
        enc.encode([0.0, bad, 1.0])
    with pytest.raises(EncodingError):
        enc.quantize(np.array([[bad]]))


@pytest.mark.parametrize("clip", [0.0, -1.0, math.nan, math.inf])
def test_bad_clip(clip: float) -> None:
    with pytest.raises(EncodingError):
        FixedPointEncoder(clip=clip, value_bits=16, modulus_bits=32, max_summands=10)


@pytest.mark.parametrize(
    ("v", "b", "n"),
    [(16, 16, 2), (16, 19, 10), (24, 24, 2), (32, 40, 1000), (60, 64, 32), (64, 64, 2)],
)
def test_modulus_too_small(v: int, b: int, n: int) -> None:
    with pytest.raises(EncodingError):
        FixedPointEncoder(clip=1.0, value_bits=v, modulus_bits=b, max_summands=n)


def test_decode_sum_with_63_bit_modulus() -> None:
    """Regression: from_ring used to build np.int64(1 << 63) and raise OverflowError."""
    enc = FixedPointEncoder(clip=1.0, value_bits=32, modulus_bits=63, max_summands=2**31)
    assert enc.modulus_bits == choose_modulus_bits(32, 2**31)
    assert np.allclose(enc.decode_sum(enc.encode([0.25, -1.0]), 1), [0.25, -1.0], atol=1e-9)


def test_modulus_above_64_rejected() -> None:
    with pytest.raises(EncodingError):
        FixedPointEncoder(clip=1.0, value_bits=16, modulus_bits=65, max_summands=1)


@pytest.mark.parametrize(
    ("clip", "v"),
    [(1.0, 53), (6.800000000000001, 53), (7.956458338746012, 53), (9.3, 40)],
    ids=["v53", "v53-rounding", "v53-rounding2", "v40"],
)
def test_quantize_stays_in_value_range(clip: float, v: int) -> None:
    """Regression: clip * (limit / clip) can round above limit in float64; quantize clamps."""
    enc = FixedPointEncoder(clip=clip, value_bits=v, modulus_bits=v, max_summands=1)
    limit = 2 ** (v - 1) - 1
    for _ in range(50):
        q = enc.quantize([clip, -clip])
        assert all(abs(int(x)) <= limit for x in q)
        assert enc.decode_sum(enc.encode([clip]), 1)[0] > 0


@pytest.mark.parametrize("v", [54, 60, 64])
def test_value_bits_above_float_precision_rejected(v: int) -> None:
    with pytest.raises(EncodingError):
        FixedPointEncoder(clip=1.0, value_bits=v, modulus_bits=64, max_summands=1)

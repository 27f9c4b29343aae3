"""Tests for secagg.crypto.prg: AES-128-CTR keystream expanded into numpy words."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.crypto import prg

SEED = bytes(range(16))
DTYPES = [np.uint16, np.uint32, np.uint64]
seeds = st.binary(min_size=16, max_size=16)


def _reference_keystream(seed: bytes, nbytes: int, stream: int) -> bytes:
    """AES-128-CTR with counter block = stream (u64 BE) || block index (u64 BE)."""
    enc = Cipher(algorithms.AES(seed), modes.CTR(struct.pack(">QQ", stream, 0))).encryptor()
    return enc.update(bytes(nbytes)) + enc.finalize()


def _reference_words(seed: bytes, count: int, dtype: type, stream: int = 0) -> np.ndarray:
    dt = np.dtype(dtype).newbyteorder("<")
    raw = _reference_keystream(seed, count * dt.itemsize, stream)
    return np.frombuffer(raw, dtype=dt).astype(np.dtype(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("count", [0, 1, 7, 8, 9, 1000, 4097])
@pytest.mark.parametrize("stream", [0, 1, 2**64 - 1])
def test_expand_equals_reference_keystream(dtype: type, count: int, stream: int) -> None:
    got = prg.expand(SEED, count, dtype, stream=stream)
    assert got.dtype == np.dtype(dtype)
    assert got.shape == (count,)
    assert np.array_equal(got, _reference_words(SEED, count, dtype, stream))


def test_expand_reference_known_block() -> None:
    # First block of CTR with counter 0 = AES_k(0^128): checked against an independent cipher.
    block = Cipher(algorithms.AES(SEED), modes.ECB()).encryptor().update(bytes(16))
    words = prg.expand(SEED, 2, np.uint64)
    assert words[0] == int.from_bytes(block[:8], "little")
    assert words[1] == int.from_bytes(block[8:], "little")


def test_stream_selects_counter_high_half() -> None:
    # Stream s starts at counter block s * 2^64 (ECB of that block).
    block = Cipher(algorithms.AES(SEED), modes.ECB()).encryptor().update(struct.pack(">QQ", 5, 0))
    assert prg.expand(SEED, 1, np.uint64, stream=5)[0] == int.from_bytes(block[:8], "little")


def test_expand_returns_writable_fresh_array() -> None:
    a = prg.expand(SEED, 16, np.uint32)
    b = prg.expand(SEED, 16, np.uint32)
    a[:] = 0
    assert a.flags.writeable
    assert np.any(b != 0)


@settings(max_examples=30, deadline=None)
@given(seed=seeds, stream=st.integers(0, 2**64 - 1), count=st.integers(0, 300))
def test_deterministic_per_seed_and_stream(seed: bytes, stream: int, count: int) -> None:
    a = prg.expand(seed, count, np.uint32, stream=stream)
    b = prg.expand(seed, count, np.uint32, stream=stream)
    assert np.array_equal(a, b)


def test_prefix_property() -> None:
    long = prg.expand(SEED, 1000, np.uint32)
    assert np.array_equal(prg.expand(SEED, 10, np.uint32), long[:10])


def test_different_streams_and_seeds_differ() -> None:
    base = prg.expand(SEED, 64, np.uint64)
    outputs = [base.tobytes()]
    for stream in (1, 2, 2**32, 2**64 - 1):
        outputs.append(prg.expand(SEED, 64, np.uint64, stream=stream).tobytes())
    for i in range(4):
        other = bytearray(SEED)
        other[i * 4] ^= 1
        outputs.append(prg.expand(bytes(other), 64, np.uint64).tobytes())
    assert len(set(outputs)) == len(outputs)


def test_streams_do_not_overlap_shifted() -> None:
    # Stream 1 is not stream 0 shifted by a few blocks (counter layout: stream is the high half).
    s0 = prg.expand(SEED, 4096, np.uint64).tobytes()
    s1_head = prg.expand(SEED, 2, np.uint64, stream=1).tobytes()
    assert s1_head not in s0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("count", [1, 5, 1000, 10_001])
def test_add_then_subtract_restores(dtype: type, count: int) -> None:
    rng = np.random.default_rng(count)
    info = np.iinfo(dtype)
    original = rng.integers(0, int(info.max) + 1, size=count, dtype=np.uint64).astype(dtype)
    acc = original.copy()
    prg.add_mask(acc, SEED, stream=3)
    assert not np.array_equal(acc, original)
    prg.add_mask(acc, SEED, subtract=True, stream=3)
    assert np.array_equal(acc, original)


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_mask_equals_expand_mod_word(dtype: type) -> None:
    acc = np.arange(257, dtype=dtype)
    prg.add_mask(acc, SEED, stream=9)
    with np.errstate(over="ignore"):
        expected = np.arange(257, dtype=dtype) + prg.expand(SEED, 257, dtype, stream=9)
    assert np.array_equal(acc, expected)
    exact = (
        np.arange(257, dtype=object) + _reference_words(SEED, 257, dtype, 9).astype(object)
    ) % (1 << (8 * np.dtype(dtype).itemsize))
    assert [int(v) for v in acc] == list(exact)


def test_pairwise_masks_cancel() -> None:
    """One party adds, the other subtracts: the sum of the two masked inputs is the plain sum."""
    x = np.arange(100, dtype=np.uint32)
    y = np.arange(100, 200, dtype=np.uint32)
    mx, my = x.copy(), y.copy()
    prg.add_mask(mx, SEED)
    prg.add_mask(my, SEED, subtract=True)
    with np.errstate(over="ignore"):
        assert np.array_equal(mx + my, x + y)


def test_mask_reduces_mod_2_to_b() -> None:
    """Words mod 2^w reduce correctly to Z_(2^B) for B < w."""
    bits = 20
    mod = np.uint32((1 << bits) - 1)
    x = np.arange(50, dtype=np.uint32)
    acc = x.copy()
    prg.add_mask(acc, SEED)
    mask = prg.expand(SEED, 50, np.uint32)
    assert np.array_equal(acc & mod, ((x & mod) + (mask & mod)) & mod)


def test_keystream_buffer_reuse_across_sizes() -> None:
    buf = prg.KeystreamBuffer()
    for count, dtype, stream in [
        (10, np.uint32, 0),
        (5000, np.uint64, 1),  # grow
        (3, np.uint16, 2),  # shrink: the larger scratch must not leak into the result
        (5000, np.uint16, 0),
        (0, np.uint32, 0),
        (7, np.uint64, 4),
    ]:
        acc = np.zeros(count, dtype=dtype)
        prg.add_mask(acc, SEED, stream=stream, buffer=buf)
        assert np.array_equal(acc, _reference_words(SEED, count, dtype, stream)), (count, dtype)
        prg.add_mask(acc, SEED, stream=stream, subtract=True, buffer=buf)
        assert not np.any(acc)


def test_keystream_buffer_fill_direct() -> None:
    buf = prg.KeystreamBuffer()
    big = bytes(buf.fill(SEED, 100, 0))
    small = bytes(buf.fill(SEED, 10, 1))
    assert big == _reference_keystream(SEED, 100, 0)
    assert small == _reference_keystream(SEED, 10, 1)


@pytest.mark.parametrize("bad", [b"", bytes(15), bytes(17), bytes(24), bytes(32)])
def test_bad_seed_length(bad: bytes) -> None:
    with pytest.raises(ValueError):
        prg.expand(bad, 4, np.uint32)
    with pytest.raises(ValueError):
        prg.add_mask(np.zeros(4, dtype=np.uint32), bad)
    with pytest.raises(ValueError):
        prg.KeystreamBuffer().fill(bad, 4, 0)


@pytest.mark.parametrize("stream", [-1, 2**64])
def test_bad_stream(stream: int) -> None:
    with pytest.raises(ValueError):
        prg.expand(SEED, 4, np.uint32, stream=stream)


def test_statistics_uint32() -> None:
    n = 1 << 18
    words = prg.expand(bytes(16), n, np.uint32).astype(np.float64)
    # Uniform on [0, 2^32): mean 2^31, sd 2^32/sqrt(12); standard error of the mean ~2^32/sqrt(12n).
    se = 2**32 / np.sqrt(12 * n)
    assert abs(words.mean() - 2**31) < 8 * se
    assert abs(words.std() - 2**32 / np.sqrt(12)) < 0.01 * 2**32


def test_bit_balance() -> None:
    n = 1 << 16
    words = prg.expand(b"\xff" * 16, n, np.uint64)
    bits = np.unpackbits(words.view(np.uint8)).reshape(n, 64).astype(np.float64)
    per_bit = bits.mean(axis=0)
    # Each bit is Bernoulli(1/2): sd of the mean 1/(2 sqrt(n)) ~ 0.002; allow 0.02.
    assert np.all(np.abs(per_bit - 0.5) < 0.02)
    assert abs(bits.mean() - 0.5) < 0.005


def test_byte_histogram_uniform() -> None:
    data = prg.expand(SEED, 1 << 15, np.uint64).view(np.uint8)
    counts = np.bincount(data, minlength=256)
    expected = data.size / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    # 255 degrees of freedom: mean 255, sd ~22.6; this bound is ~+8 sd.
    assert chi2 < 255 + 8 * 22.6

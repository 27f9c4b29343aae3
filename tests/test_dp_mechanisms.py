"""Tests for secagg.dp.mechanisms: clipping, randomized Hadamard rotation, conditional rounding,
DDGauss calibration and the client/server pipeline."""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Iterator
from fractions import Fraction

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.dp import accounting
from secagg.dp import mechanisms as mech


def _real_sampler_available() -> bool:
    try:
        module = importlib.import_module("secagg.dp.samplers")
    except ImportError:
        return False
    return hasattr(module, "discrete_gaussian")


def _stub_discrete_gaussian(sigma2: int | Fraction, size: int) -> npt.NDArray[np.int64]:
    """TESTING STUB (not exact, not a CSPRNG): rounded continuous Gaussian, variance ~ sigma2."""
    gen = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))
    return np.rint(gen.normal(0.0, math.sqrt(float(sigma2)), size)).astype(np.int64)


@pytest.fixture
def noise_sampler(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The real exact sampler when secagg.dp.samplers exists, else a stub."""
    if _real_sampler_available():
        yield "exact"
    else:
        monkeypatch.setattr(mech, "_discrete_gaussian", _stub_discrete_gaussian)
        yield "stub"


# ---- clipping and rotation --------------------------------------------------------------------


def test_clip_l2() -> None:
    x = np.array([3.0, 4.0])
    np.testing.assert_allclose(mech.clip_l2(x, 1.0), [0.6, 0.8])
    np.testing.assert_array_equal(mech.clip_l2(x, 10.0), x)
    assert mech.clip_l2(x, 1.0) is not x
    with pytest.raises(ValueError):
        mech.clip_l2([np.nan], 1.0)


@settings(max_examples=50, deadline=None)
@given(dim=st.integers(1, 700), seed=st.binary(min_size=16, max_size=16))
def test_rotation_is_orthonormal(dim: int, seed: bytes) -> None:
    rot = mech.RandomizedHadamard(seed, dim)
    assert rot.padded_dim >= dim
    assert rot.padded_dim & (rot.padded_dim - 1) == 0
    assert rot.padded_dim < 2 * dim or dim == 1
    x = np.random.default_rng(dim).normal(size=dim)
    y = rot.rotate(x)
    assert y.shape == (rot.padded_dim,)
    assert np.linalg.norm(y) == pytest.approx(np.linalg.norm(x), rel=1e-12)
    np.testing.assert_allclose(rot.unrotate(y), x, atol=1e-12)


def test_rotation_is_linear_shared_and_batched() -> None:
    seed = bytes(range(16))
    a, b = mech.RandomizedHadamard(seed, 100), mech.RandomizedHadamard(seed, 100)
    other = mech.RandomizedHadamard(bytes(16), 100)
    gen = np.random.default_rng(1)
    x, z = gen.normal(size=100), gen.normal(size=100)
    np.testing.assert_array_equal(a.rotate(x), b.rotate(x))
    assert not np.allclose(a.rotate(x), other.rotate(x))
    np.testing.assert_allclose(a.rotate(x + 2 * z), a.rotate(x) + 2 * a.rotate(z), atol=1e-12)
    batch = np.stack([x, z])
    np.testing.assert_allclose(a.rotate(batch), np.stack([a.rotate(x), a.rotate(z)]))
    # The rotation matrix itself is orthogonal.
    rot = mech.RandomizedHadamard(seed, 64)
    m = rot.rotate(np.eye(64))
    np.testing.assert_allclose(m @ m.T, np.eye(64), atol=1e-12)


def test_rotation_flattens_a_spike() -> None:
    rot = mech.RandomizedHadamard(os.urandom(16), 1024)
    y = rot.rotate(np.eye(1024)[3] * 5.0)
    np.testing.assert_allclose(np.abs(y), 5.0 / 32.0)


def test_rotation_rejects_bad_seed_and_shape() -> None:
    with pytest.raises(ValueError):
        mech.RandomizedHadamard(b"short", 10)
    rot = mech.RandomizedHadamard(bytes(16), 10)
    with pytest.raises(ValueError):
        rot.rotate(np.zeros(11))
    with pytest.raises(ValueError):
        rot.unrotate(np.zeros(10))


# ---- conditional rounding ---------------------------------------------------------------------


def test_rounding_norm_bound_formula() -> None:
    c, d, beta = 50.0, 400, math.exp(-0.5)
    expected = math.sqrt(c**2 + d / 4 + math.sqrt(2 * math.log(1 / beta)) * (c + math.sqrt(d) / 2))
    assert mech.rounding_norm_bound(c, d, beta) == pytest.approx(expected)
    assert mech.rounding_norm_bound(c, d, 0.0) == c + 20.0
    assert mech.rounding_norm_bound(0.1, 1, 0.5) <= 1.1


@settings(max_examples=30, deadline=None)
@given(dim=st.integers(1, 300), norm=st.floats(0.0, 200.0), beta=st.floats(0.0, 0.9))
def test_conditional_rounding_respects_bound(dim: int, norm: float, beta: float) -> None:
    gen = np.random.default_rng(dim)
    x = gen.normal(size=dim)
    x *= norm / max(float(np.linalg.norm(x)), 1e-300)
    bound = mech.rounding_norm_bound(norm, dim, beta)
    r = mech.conditional_randomized_round(x, bound)
    assert r.dtype == np.int64
    assert np.all(np.abs(r - x) < 1.0)
    assert float(np.dot(r, r)) <= bound**2 * (1 + 1e-12)


def test_conditional_rounding_is_unbiased() -> None:
    x = np.full(20000, 0.3)
    r = mech.conditional_randomized_round(x, 1e9)
    assert set(np.unique(r).tolist()) <= {0, 1}
    assert r.mean() == pytest.approx(0.3, abs=0.02)
    np.testing.assert_array_equal(mech.conditional_randomized_round(np.arange(5.0), 10.0), range(5))


def test_conditional_rounding_gives_up() -> None:
    with pytest.raises(ValueError, match="tries"):
        mech.conditional_randomized_round(np.full(100, 0.5), 5.0, max_tries=5)


# ---- parameters and calibration ---------------------------------------------------------------


def test_params_validation() -> None:
    good = {"clip": 1.0, "gamma": 0.01, "bits": 16, "sigma2_party": 4, "min_parties": 3, "dim": 8}
    mech.DDGaussParams(**good)  # type: ignore[arg-type]
    for key, bad in [
        ("sigma2_party", 1.5),
        ("sigma2_party", Fraction(1, 5)),
        ("bits", 70),
        ("gamma", 0.0),
        ("min_parties", 0),
    ]:
        with pytest.raises(ValueError):
            mech.DDGaussParams(**{**good, key: bad})  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        mech.DDGaussParams(**good, max_parties=2)  # type: ignore[arg-type]


def test_calibrate_meets_target_and_fills_the_range() -> None:
    p = mech.DDGaussParams.calibrate(
        2.0, 1e-5, 10, 1.0, clip=1.0, dim=1000, min_parties=20, bits=16
    )
    assert p.padded_dim == 1024
    assert isinstance(p.sigma2_party, Fraction | int)
    eps = p.epsilon(1e-5, steps=10)
    assert eps <= 2.0
    assert eps == pytest.approx(2.0, rel=1e-3)
    assert p.required_range() <= 2**16
    assert p.required_range() >= 0.99 * 2**16  # the finest grid that fits (paper's choice)
    # More survivors only add noise: the accountant never needs more than min_parties.
    more = accounting.rdp_ddgauss(
        p.l2_sensitivity, p.l1_sensitivity, float(p.sigma2_party), 40, p.padded_dim
    )
    assert np.all(more <= p.rdp() + 1e-12)


def test_calibrate_with_sampling_and_more_parties_for_the_range() -> None:
    orders = [1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0]
    p = mech.DDGaussParams.calibrate(
        4.0,
        1e-5,
        50,
        0.1,
        clip=0.5,
        dim=200,
        min_parties=10,
        bits=20,
        max_parties=30,
        orders=orders,
    )
    assert p.epsilon(1e-5, steps=50, q=0.1, orders=orders) <= 4.0
    assert p.epsilon(1e-5, steps=50, q=0.1) <= 4.0  # more orders can only lower epsilon
    assert p.range_parties == 30
    assert p.required_range() <= 2**20
    finer = mech.DDGaussParams.calibrate(
        4.0, 1e-5, 50, 0.1, clip=0.5, dim=200, min_parties=10, bits=20, orders=orders
    )
    assert finer.gamma < p.gamma  # a range sized for fewer parties allows a finer grid


def test_calibrate_refuses_too_few_bits() -> None:
    with pytest.raises(ValueError, match="bits"):
        mech.DDGaussParams.calibrate(
            1.0, 1e-5, 100, 1.0, clip=1.0, dim=1000, min_parties=100, bits=8
        )
    # the same setting fits with enough bits
    mech.DDGaussParams.calibrate(1.0, 1e-5, 100, 1.0, clip=1.0, dim=1000, min_parties=100, bits=24)


def test_calibrate_unreachable_target() -> None:
    with pytest.raises(ValueError, match="unreachable"):
        mech.DDGaussParams.calibrate(1e-4, 1e-5, 1, 1.0, clip=1.0, dim=10, min_parties=5, bits=32)


# ---- pipeline ---------------------------------------------------------------------------------


def _params(noise_sigma2: int | Fraction = 100, bits: int = 24) -> mech.DDGaussParams:
    return mech.DDGaussParams(
        clip=1.0, gamma=1e-3, bits=bits, sigma2_party=noise_sigma2, min_parties=5, dim=300
    )


def test_noiseless_sum_is_exact_within_rounding() -> None:
    p = _params()
    rot = mech.RandomizedHadamard(os.urandom(16), p.dim)
    gen = np.random.default_rng(7)
    xs = [mech.clip_l2(gen.normal(size=p.dim), 0.9) for _ in range(7)]
    words = [mech.encode_client(x, p, rot, noise=False) for x in xs]
    assert all(w.dtype == p.dtype and w.shape == (p.padded_dim,) for w in words)
    total = mech.sum_words(words, p.bits)
    decoded = mech.decode_sum(total, p, rot)
    err = decoded - np.sum(xs, axis=0)
    # each party's rounding moves its scaled vector by < 1 per coordinate
    assert np.linalg.norm(err) <= p.gamma * len(xs) * math.sqrt(p.padded_dim)
    assert np.max(np.abs(err)) < 0.05


def test_clipping_applies_before_encoding() -> None:
    p = _params()
    rot = mech.RandomizedHadamard(os.urandom(16), p.dim)
    x = np.zeros(p.dim)
    x[0] = 50.0
    decoded = mech.decode_sum(mech.encode_client(x, p, rot, noise=False), p, rot)
    assert decoded[0] == pytest.approx(1.0, abs=0.05)


def test_noisy_sum_recovers_true_sum_within_noise(noise_sampler: str) -> None:
    p = _params(noise_sigma2=400)
    rot = mech.RandomizedHadamard(os.urandom(16), p.dim)
    gen = np.random.default_rng(3)
    xs = [mech.clip_l2(gen.normal(size=p.dim), 1.0) for _ in range(p.min_parties)]
    total = mech.sum_words([mech.encode_client(x, p, rot) for x in xs], p.bits)
    err = mech.decode_sum(total, p, rot) - np.sum(xs, axis=0)
    # noise std per coordinate: gamma * sqrt(5 * 400) ~ 0.045; rounding adds <= 0.0011
    assert np.std(err) == pytest.approx(p.noise_std, rel=0.25)
    assert np.max(np.abs(err)) < 6 * p.noise_std + 0.01


def test_noise_variance_with_exactly_min_parties(noise_sampler: str) -> None:
    """The decoded sum's noise (exactly min_parties parties, zero inputs) has the calibrated
    variance gamma^2 * min_parties * sigma2_party per coordinate."""
    p = mech.DDGaussParams.calibrate(3.0, 1e-5, 5, 1.0, clip=1.0, dim=60, min_parties=4, bits=20)
    rot = mech.RandomizedHadamard(os.urandom(16), p.dim)
    zero = np.zeros(p.dim)
    samples = []
    for _ in range(40):
        msgs = [mech.encode_client(zero, p, rot) for _ in range(p.min_parties)]
        samples.append(mech.decode_sum(mech.sum_words(msgs, p.bits), p, rot))
    noise = np.concatenate(samples)  # 40 * 60 = 2400 coordinates
    target = p.gamma**2 * float(p.total_variance)
    assert np.mean(noise) == pytest.approx(0.0, abs=4 * math.sqrt(target / noise.size))
    # sample variance of 2400 near-Gaussian values: relative std ~ 3%; allow 15%.
    assert np.var(noise) == pytest.approx(target, rel=0.15)
    # and the calibrated target is what the accountant needs for (3, 1e-5) over 5 rounds
    assert p.epsilon(1e-5, steps=5) <= 3.0


def test_modular_wraparound_is_centered() -> None:
    p = _params(bits=12)
    rot = mech.RandomizedHadamard(bytes(16), p.dim)
    x = -mech.clip_l2(np.ones(p.dim), 1.0)
    decoded = mech.decode_sum(mech.encode_client(x, p, rot, noise=False), p, rot)
    np.testing.assert_allclose(decoded, x, atol=0.01)


def test_pipeline_rejects_mismatched_shapes() -> None:
    p = _params()
    with pytest.raises(ValueError):
        mech.encode_client(np.zeros(10), p, mech.RandomizedHadamard(bytes(16), 10))
    rot = mech.RandomizedHadamard(bytes(16), p.dim)
    with pytest.raises(ValueError):
        mech.encode_client(np.zeros(10), p, rot)
    with pytest.raises(ValueError):
        mech.decode_sum(np.zeros(3, dtype=np.uint32), p, rot)

"""Tests for secagg.dp.samplers: exact discrete Gaussian / Laplace, Bernoulli(exp(-x)), Skellam.

Statistical tests run under the seeded testing hook so that they are reproducible; their
thresholds are set at about p = 1e-4 (or 5 standard deviations) so that a correct sampler would
pass for almost every seed, while a wrong constant or an off-by-one in a rejection step fails.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Callable, Iterator
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.crypto import rng
from secagg.dp import samplers
from secagg.dp.samplers import bernoulli_exp, discrete_gaussian, discrete_laplace, skellam

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture
def seeded(request: pytest.FixtureRequest) -> Iterator[None]:
    """Reproducible randomness (the rng testing hook), seeded by the test's name."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with rng.deterministic_for_testing(request.node.name):
            yield


def gaussian_weights(sigma2: Fraction | int, width: int) -> dict[int, float]:
    """Exact pmf of N_Z(0, sigma2) on [-width, width], normalized by the wide truncated sum."""
    s2 = float(sigma2)
    w = {x: math.exp(-(x * x) / (2 * s2)) for x in range(-width, width + 1)}
    total = math.fsum(w.values())
    return {x: v / total for x, v in w.items()}


def laplace_weights(scale: Fraction | int, width: int) -> dict[int, float]:
    """Exact pmf of Lap_Z(scale): P(x) = (1 - r)/(1 + r) r^|x|, r = exp(-1/scale)."""
    r = math.exp(-1 / float(scale))
    return {x: (1 - r) / (1 + r) * r ** abs(x) for x in range(-width, width + 1)}


def chi2_critical(dof: int, z: float = 3.719) -> float:
    """Upper quantile of chi-square (Wilson-Hilferty); z = 3.719 is p = 1e-4."""
    c = 2.0 / (9.0 * dof)
    return float(dof * (1.0 - c + z * math.sqrt(c)) ** 3)


def assert_goodness_of_fit(sample: np.ndarray, pmf: dict[int, float]) -> None:
    """Chi-square test; cells with expected count < 5 are pooled into two tail cells."""
    n = sample.size
    values, counts = np.unique(sample, return_counts=True)
    observed = dict(zip(values.tolist(), counts.tolist(), strict=True))
    assert set(observed) <= set(pmf), "sample outside the truncated support"
    inner = [x for x in sorted(pmf) if pmf[x] * n >= 5]
    lo, hi = inner[0], inner[-1]
    assert inner == list(range(lo, hi + 1))
    cells: list[tuple[float, int]] = [(pmf[x] * n, observed.get(x, 0)) for x in inner]
    for tail in ([x for x in pmf if x < lo], [x for x in pmf if x > hi]):
        expected = sum(pmf[x] for x in tail) * n
        got = sum(observed.get(x, 0) for x in tail)
        if expected >= 5:
            cells.append((expected, got))
        else:
            assert got <= expected + 5 * math.sqrt(expected) + 3
    stat = sum((o - e) ** 2 / e for e, o in cells)
    dof = len(cells) - 1
    assert stat < chi2_critical(dof), f"chi2 = {stat:.1f} with {dof} dof"


def moments(pmf: dict[int, float]) -> tuple[float, float]:
    """Exact variance and fourth moment (the pmfs here are centered)."""
    var = math.fsum(x * x * p for x, p in pmf.items())
    m4 = math.fsum(x**4 * p for x, p in pmf.items())
    return var, m4


# --------------------------------------------------------------------------------------------
# discrete Gaussian
# --------------------------------------------------------------------------------------------

SMALL_SIGMA2 = [Fraction(1, 2), 2, 10, Fraction(7, 3), Fraction(1, 5)]


@pytest.mark.parametrize("sigma2", SMALL_SIGMA2, ids=str)
def test_discrete_gaussian_goodness_of_fit(seeded: None, sigma2: Fraction | int) -> None:
    pmf = gaussian_weights(sigma2, 40 * math.isqrt(int(sigma2) + 1) + 20)
    sample = discrete_gaussian(sigma2, 200_000)
    assert sample.dtype == np.int64 and sample.shape == (200_000,)
    assert_goodness_of_fit(sample, pmf)


@pytest.mark.parametrize("sigma2", [Fraction(1, 2), Fraction(1, 5), 2, 10**4, 10**6], ids=str)
def test_discrete_gaussian_mean_and_exact_variance(seeded: None, sigma2: Fraction | int) -> None:
    n = 400_000
    sigma = math.sqrt(float(sigma2))
    pmf = gaussian_weights(sigma2, int(40 * sigma) + 20)
    var, m4 = moments(pmf)
    if float(sigma2) < 1:
        assert var < float(sigma2)  # the discrete Gaussian's variance is below sigma2 there
    sample = discrete_gaussian(sigma2, n).astype(np.float64)
    assert abs(sample.mean()) < 5 * math.sqrt(var / n)
    assert abs(sample.var() - var) < 5 * math.sqrt((m4 - var * var) / n)


def test_discrete_gaussian_tails(seeded: None) -> None:
    sigma2, n = 100, 1_000_000
    pmf = gaussian_weights(sigma2, 400)
    sample = discrete_gaussian(sigma2, n)
    for k in (3, 4):
        p_tail = math.fsum(p for x, p in pmf.items() if abs(x) > k * 10)
        got = int(np.count_nonzero(np.abs(sample) > k * 10))
        assert abs(got - p_tail * n) < 5 * math.sqrt(p_tail * n) + 2, (k, got, p_tail * n)


def test_discrete_gaussian_symmetry(seeded: None) -> None:
    n = 400_000
    sample = discrete_gaussian(Fraction(9, 4), n)
    pos = int(np.count_nonzero(sample > 0))
    neg = int(np.count_nonzero(sample < 0))
    assert abs(pos - neg) < 5 * math.sqrt(pos + neg)
    for k in (1, 2, 3):
        a, b = int(np.count_nonzero(sample == k)), int(np.count_nonzero(sample == -k))
        assert abs(a - b) < 5 * math.sqrt(a + b)


def test_discrete_gaussian_scalar_path_is_exact(
    seeded: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shrink the int64 budget so that ~5% of candidates take the Python-integer path."""
    monkeypatch.setattr(samplers, "_NUMER_LIMIT", 50)
    sample = discrete_gaussian(10, 30_000)
    assert_goodness_of_fit(sample, gaussian_weights(10, 200))


def test_discrete_gaussian_float_conversion() -> None:
    assert samplers._as_sigma2(1e6, 2**20) == (10**6, 1)
    assert samplers._as_sigma2(0.1, 2**20) == (1, 10)
    assert samplers._as_sigma2(0.5, 2**20) == (1, 2)
    assert samplers._as_sigma2(np.float64(2.25), 2**20) == (9, 4)
    assert samplers._as_sigma2(np.int64(7), 2**20) == (7, 1)
    assert samplers._as_sigma2(math.pi, 1000) == (355, 113)
    assert discrete_gaussian(1234.5, 10).dtype == np.int64


def test_discrete_gaussian_extreme_but_supported_parameters(seeded: None) -> None:
    tiny = discrete_gaussian(Fraction(1, 2**24), 1000)
    assert np.all(tiny == 0)  # P(|X| >= 1) is about exp(-2**23)
    near_one = discrete_gaussian(Fraction(2**51, 2**51 - 1), 100_000).astype(np.float64)
    assert abs(near_one.var() - 1) < 0.03
    big = discrete_gaussian(2**51, 2000).astype(np.float64)
    assert abs(big.std() / math.sqrt(2**51) - 1) < 0.1


# --------------------------------------------------------------------------------------------
# discrete Laplace
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1, Fraction(7, 2), Fraction(1, 3), 10, Fraction(5, 7)], ids=str)
def test_discrete_laplace_goodness_of_fit(seeded: None, scale: Fraction | int) -> None:
    pmf = laplace_weights(scale, int(60 * float(scale)) + 20)
    sample = discrete_laplace(scale, 200_000)
    assert sample.dtype == np.int64
    assert_goodness_of_fit(sample, pmf)


def test_discrete_laplace_large_scale_moments(seeded: None) -> None:
    scale, n = 10**5, 300_000
    r = math.exp(-1 / scale)
    var = 2 * r / (1 - r) ** 2
    sample = discrete_laplace(scale, n).astype(np.float64)
    assert abs(sample.mean()) < 5 * math.sqrt(var / n)
    # Fourth moment of a Laplace is 24 b^4, so the sample variance has sd ~ sqrt(20/n) var.
    assert abs(sample.var() / var - 1) < 5 * math.sqrt(20 / n)


def test_discrete_laplace_python_integer_path(seeded: None) -> None:
    """t close to 2**62: X = U + t V overflows int64 whenever V >= 2 (probability 0.14)."""
    scale = Fraction(2**62 - 1, 2**40 + 1)  # lowest terms, about 2**22
    n = 40_000
    r = math.exp(-1 / float(scale))
    var = 2 * r / (1 - r) ** 2
    sample = discrete_laplace(scale, n).astype(np.float64)
    assert abs(sample.mean()) < 5 * math.sqrt(var / n)
    assert abs(sample.var() / var - 1) < 5 * math.sqrt(20 / n)
    tail = float(np.mean(np.abs(sample) > 2 * float(scale)))  # about exp(-2) = 0.135
    assert abs(tail - math.exp(-2)) < 5 * math.sqrt(0.135 * 0.865 / n)


# --------------------------------------------------------------------------------------------
# Bernoulli(exp(-numer/denom))
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("numer", "denom"),
    [(0, 1), (1, 3), (1, 1), (2, 3), (5, 2), (7, 3), (22, 7), (4, 1), (3, 2**62), (2**40, 2**39)],
)
def test_bernoulli_exp_frequencies(seeded: None, numer: int, denom: int) -> None:
    n = 200_000
    p = math.exp(-numer / denom)
    hits = int(np.count_nonzero(bernoulli_exp(np.full(n, numer, dtype=np.int64), denom)))
    assert abs(hits - p * n) <= 5 * math.sqrt(n * p * (1 - p)) + 1


def test_bernoulli_exp_per_element_denominators(seeded: None) -> None:
    n = 100_000
    numer = np.array([1, 5, 7, 0, 9], dtype=np.int64)
    denom = np.array([3, 2, 3, 5, 2**62], dtype=np.int64)
    out = bernoulli_exp(np.tile(numer, (n, 1)), denom)
    assert out.shape == (n, 5) and out.dtype == np.bool_
    for j in range(5):
        p = math.exp(-int(numer[j]) / int(denom[j]))
        hits = int(np.count_nonzero(out[:, j]))
        assert abs(hits - p * n) <= 5 * math.sqrt(n * p * (1 - p)) + 1


def test_bernoulli_exp_edge_values(seeded: None) -> None:
    assert bernoulli_exp(np.zeros(1000, dtype=np.int64), 7).all()
    assert not bernoulli_exp(np.full(1000, 2**63 - 1, dtype=np.int64), 1).any()
    assert bernoulli_exp(np.array([], dtype=np.int64), 3).shape == (0,)
    assert bernoulli_exp(3, 2).shape == ()


@pytest.mark.parametrize(("numer", "denom"), [(7, 3), (1, 3), (25, 2**70)])
def test_bernoulli_exp_scalar_path(seeded: None, numer: int, denom: int) -> None:
    n = 6_000
    p = math.exp(-numer / denom)
    hits = sum(samplers._bernoulli_exp_scalar(numer, denom) for _ in range(n))
    assert abs(hits - p * n) <= 5 * math.sqrt(n * p * (1 - p)) + 1


@pytest.mark.parametrize("bound", [1, 2, 3, 7, 1000, 2**63 + 5, 2**64 - 1])
def test_uniform_below_is_uniform(seeded: None, bound: int) -> None:
    n = 60_000
    u = samplers._uniform_below(bound, n)
    assert u.dtype == np.uint64 and int(u.max()) < bound
    cells = min(bound, 16)  # bucket by value * cells // bound, each bucket of near-equal size
    buckets = np.array([int(v) * cells // bound for v in u.tolist()])
    counts = np.bincount(buckets, minlength=cells)
    expected = n / cells
    if cells > 1:
        assert float(((counts - expected) ** 2 / expected).sum()) < chi2_critical(cells - 1)


def test_uniform_below_each(seeded: None) -> None:
    bounds = np.tile(np.array([1, 3, 5, 2**63], dtype=np.uint64), 30_000)
    u = samplers._uniform_below_each(bounds)
    assert np.all(u < bounds)
    threes = u[1::4].astype(np.int64)
    counts = np.bincount(threes, minlength=3)
    assert float(((counts - 10_000) ** 2 / 10_000).sum()) < chi2_critical(2)


# --------------------------------------------------------------------------------------------
# Skellam
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mu", [0.3, 50, Fraction(201, 2), 10**4])
def test_skellam_mean_and_variance(seeded: None, mu: float | Fraction | int) -> None:
    n = 300_000
    m = float(mu)
    var = 2 * m
    m4 = 2 * m + 3 * var * var  # fourth cumulant of Skellam(mu, mu) is 2 mu
    sample = skellam(mu, n)
    assert sample.dtype == np.int64 and sample.shape == (n,)
    x = sample.astype(np.float64)
    assert abs(x.mean()) < 5 * math.sqrt(var / n)
    assert abs(x.var() - var) < 5 * math.sqrt((m4 - var * var) / n)


# --------------------------------------------------------------------------------------------
# randomness source: CSPRNG only, reproducible under the testing hook
# --------------------------------------------------------------------------------------------

SAMPLERS: list[Callable[[], np.ndarray]] = [
    lambda: discrete_gaussian(Fraction(7, 3), 1000),
    lambda: discrete_gaussian(10**6, 1000),
    lambda: discrete_laplace(Fraction(7, 2), 1000),
    lambda: bernoulli_exp(np.arange(1000), 100),
    lambda: skellam(25.5, 1000),
]


@pytest.mark.parametrize("draw", SAMPLERS)
def test_deterministic_under_testing_hook(draw: Callable[[], np.ndarray]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with rng.deterministic_for_testing(42):
            a = draw()
        with rng.deterministic_for_testing(42):
            b = draw()
        with rng.deterministic_for_testing(43):
            c = draw()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(draw(), draw())  # the real CSPRNG


@pytest.mark.parametrize("draw", SAMPLERS)
def test_no_other_randomness_source(
    monkeypatch: pytest.MonkeyPatch, draw: Callable[[], np.ndarray]
) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("non-CSPRNG randomness used")

    for name in (
        "default_rng",
        "random",
        "rand",
        "randn",
        "randint",
        "random_sample",
        "poisson",
        "seed",
        "RandomState",
        "PCG64",
        "MT19937",
        "SeedSequence",
    ):
        monkeypatch.setattr(np.random, name, forbidden)
    for name in ("random", "randint", "randrange", "getrandbits", "choices", "gauss"):
        monkeypatch.setattr(random, name, forbidden)
    draw()


# --------------------------------------------------------------------------------------------
# shapes and bad input
# --------------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    shape=st.one_of(
        st.integers(0, 50), st.lists(st.integers(0, 6), min_size=0, max_size=3).map(tuple)
    ),
    sigma2=st.fractions(min_value=Fraction(1, 100), max_value=10**7, max_denominator=1000),
)
def test_shapes(shape: int | tuple[int, ...], sigma2: Fraction) -> None:
    expected = (shape,) if isinstance(shape, int) else shape
    for out in (
        discrete_gaussian(sigma2, shape),
        discrete_laplace(sigma2, shape),
        skellam(sigma2, shape),
    ):
        assert out.shape == expected and out.dtype == np.int64


@pytest.mark.parametrize(
    "sigma2",
    [
        float("nan"),
        float("inf"),
        -float("inf"),
        0,
        -1,
        0.0,
        -2.5,
        Fraction(-1, 3),
        True,
        "4",
        None,
        2**51 + 1,
        Fraction(1, 2**51 + 1),
        Fraction(1, 2**24 + 1),
        Fraction(2**24 - 1, 2**24 + 1),
        Fraction(2**51 + 1, 2**51),
    ],
)
def test_discrete_gaussian_rejects(sigma2: object) -> None:
    with pytest.raises(ValueError):
        discrete_gaussian(sigma2, 3)  # type: ignore[arg-type]


def test_bad_sizes_and_options() -> None:
    with pytest.raises(ValueError):
        discrete_gaussian(2, -1)
    with pytest.raises(ValueError):
        discrete_gaussian(2, (2, -1))
    with pytest.raises(ValueError):
        discrete_gaussian(2, 2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        discrete_gaussian(0.3, 3, max_denominator=0)
    with pytest.raises(ValueError):
        discrete_gaussian(0.3, 3, max_denominator=2**52)
    with pytest.raises(ValueError, match="rounds to 0"):
        discrete_gaussian(1e-7, 3)  # limit_denominator(2**20) gives 0
    assert samplers._as_sigma2(1e-7, 10**7) == (1, 10**7)


@pytest.mark.parametrize(
    "scale", [0, -1, Fraction(-1, 2), 1.5, float("nan"), True, 2**62 + 1, 2**56 + 1]
)
def test_discrete_laplace_rejects(scale: object) -> None:
    with pytest.raises(ValueError):
        discrete_laplace(scale, 3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("numer", "denom"),
    [(-1, 1), (1, 0), (1, -3), (1.5, 2), (1, 2.0), (True, 1), (2**63, 1), (1, 2**62 + 1)],
)
def test_bernoulli_exp_rejects(numer: object, denom: object) -> None:
    with pytest.raises(ValueError):
        bernoulli_exp(numer, denom)  # type: ignore[arg-type]


@pytest.mark.parametrize("mu", [0, -1, float("nan"), float("inf"), 2.0**51, True, "3"])
def test_skellam_rejects(mu: object) -> None:
    with pytest.raises(ValueError):
        skellam(mu, 3)  # type: ignore[arg-type]

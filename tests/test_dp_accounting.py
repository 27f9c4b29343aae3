"""Tests for secagg.dp.accounting: closed forms, cross-checks with Opacus and dp-accounting,
the DDGauss / Skellam bounds, conversion, the stateful accountant and calibration."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.dp import accounting as acc

ORDERS = list(acc.DEFAULT_ORDERS)
MNIST_Q = 256 / 60000
MNIST_STEPS = int(60 / MNIST_Q)  # 60 epochs


def _opacus_rdp() -> object:
    return pytest.importorskip("opacus.accountants.analysis.rdp")


# ---- Gaussian ---------------------------------------------------------------------------------


@pytest.mark.parametrize("z", [0.3, 1.0, 1.1, 4.0])
def test_gaussian_closed_form(z: float) -> None:
    a = np.array(ORDERS)
    np.testing.assert_allclose(acc.rdp_gaussian(z, ORDERS), a / (2 * z**2), rtol=1e-15)
    np.testing.assert_allclose(acc.rdp_sampled_gaussian(1.0, z, ORDERS), a / (2 * z**2))


def test_degenerate_rates_and_noise() -> None:
    assert np.all(acc.rdp_sampled_gaussian(0.0, 1.0, ORDERS) == 0)
    assert np.all(np.isinf(acc.rdp_sampled_gaussian(0.5, 0.0, ORDERS)))
    assert np.all(np.isinf(acc.rdp_gaussian(0.0, ORDERS)))
    with pytest.raises(ValueError):
        acc.rdp_sampled_gaussian(1.5, 1.0, ORDERS)
    with pytest.raises(ValueError):
        acc.rdp_gaussian(1.0, [1.0, 2.0])  # orders must be > 1


@pytest.mark.parametrize(
    ("q", "z", "steps"),
    [(MNIST_Q, 1.1, MNIST_STEPS), (0.01, 0.5, 100), (0.1, 2.0, 7), (0.5, 0.8, 3), (0.03, 0.3, 50)],
)
def test_sampled_gaussian_matches_opacus(q: float, z: float, steps: int) -> None:
    rdp = _opacus_rdp()
    theirs = np.asarray(rdp.compute_rdp(q=q, noise_multiplier=z, steps=steps, orders=ORDERS))  # type: ignore[attr-defined]
    ours = steps * acc.rdp_sampled_gaussian(q, z, ORDERS)
    np.testing.assert_allclose(ours, theirs, rtol=1e-7, atol=1e-12)


def test_tiny_rates_match_opacus_in_absolute_terms() -> None:
    # Both compute log(1 + ~1e-10) through float sums; they agree to ~1e-14 absolute.
    rdp = _opacus_rdp()
    theirs = np.asarray(rdp.compute_rdp(q=1e-4, noise_multiplier=5.0, steps=1, orders=ORDERS))  # type: ignore[attr-defined]
    np.testing.assert_allclose(acc.rdp_sampled_gaussian(1e-4, 5.0, ORDERS), theirs, atol=1e-13)


def test_classic_dpsgd_epsilon() -> None:
    """MNIST DP-SGD: q = 256/60000, z = 1.1, 60 epochs, delta = 1e-5.

    The often quoted ~3.0 used the older RDP -> DP conversion (Mironov 2017); Opacus 1.6 (Balle
    et al. 2020 conversion) and this module both give ~2.60.
    """
    rdp = MNIST_STEPS * acc.rdp_sampled_gaussian(MNIST_Q, 1.1, ORDERS)
    eps, order = acc.eps_from_rdp(rdp, ORDERS, 1e-5)
    assert 2.4 < eps < 3.1
    assert eps == pytest.approx(2.597, abs=5e-3)
    assert 2 < order < 64
    # The older conversion eps = rdp + log(1/delta)/(alpha - 1) gives the classic ~3.
    a = np.array(ORDERS)
    classic = float(np.min(rdp + math.log(1e5) / (a - 1)))
    assert classic == pytest.approx(3.0, abs=0.15)
    pytest.importorskip("opacus")
    from opacus.accountants import RDPAccountant as OpacusRDP  # type: ignore[import-untyped]

    theirs = OpacusRDP()
    theirs.history = [(1.1, MNIST_Q, MNIST_STEPS)]
    assert eps == pytest.approx(theirs.get_epsilon(1e-5), rel=5e-3)


@pytest.mark.parametrize("delta", [1e-3, 1e-5, 1e-8])
def test_eps_from_rdp_matches_opacus_conversion(delta: float) -> None:
    rdp = _opacus_rdp()
    curve = 200 * acc.rdp_sampled_gaussian(0.02, 0.9, ORDERS)
    theirs = rdp.get_privacy_spent(orders=ORDERS, rdp=curve, delta=delta)  # type: ignore[attr-defined]
    ours = acc.eps_from_rdp(curve, ORDERS, delta)
    assert ours[0] == pytest.approx(float(theirs[0]), rel=1e-12)
    assert ours[1] == float(theirs[1])


def test_matches_dp_accounting() -> None:
    dpa = pytest.importorskip("dp_accounting")
    theirs = dpa.rdp.RdpAccountant(orders=ORDERS)
    theirs.compose(dpa.PoissonSampledDpEvent(MNIST_Q, dpa.GaussianDpEvent(1.1)), MNIST_STEPS)
    ours = acc.eps_from_rdp(MNIST_STEPS * acc.rdp_sampled_gaussian(MNIST_Q, 1.1, ORDERS), ORDERS)
    assert ours[0] == pytest.approx(theirs.get_epsilon(1e-5), rel=1e-9)
    # zCDP: rho-zCDP is RDP alpha * rho; dp-accounting converts the same way.
    theirs = dpa.rdp.RdpAccountant(orders=ORDERS)
    theirs.compose(dpa.ZCDpEvent(0.05))
    ours_z = acc.eps_from_rdp(0.05 * np.array(ORDERS), ORDERS, 1e-6)
    assert ours_z[0] == pytest.approx(theirs.get_epsilon(1e-6), rel=1e-9)


def test_eps_from_rdp_edge_cases() -> None:
    assert acc.eps_from_rdp(np.zeros(len(ORDERS)), ORDERS, 1e-5)[0] == 0.0
    with pytest.raises(ValueError):
        acc.eps_from_rdp([1.0, 2.0], ORDERS, 1e-5)
    with pytest.raises(ValueError):
        acc.eps_from_rdp(np.ones(len(ORDERS)), ORDERS, 0.0)
    assert math.isinf(acc.eps_from_rdp(np.full(len(ORDERS), np.inf), ORDERS, 1e-5)[0])


# ---- generic subsampling ------------------------------------------------------------------------


@pytest.mark.parametrize(("q", "z"), [(0.01, 1.0), (0.1, 2.0), (0.3, 0.8)])
def test_zhu_wang_bound_dominates_exact_sampled_gaussian(q: float, z: float) -> None:
    ints = [float(a) for a in range(2, 65)]
    exact = acc.rdp_sampled_gaussian(q, z, ints)
    generic = acc.rdp_poisson_subsampled(q, lambda a: a / (2 * z**2), ints)
    assert np.all(generic >= exact * (1 - 1e-9))
    assert np.all(generic <= acc.rdp_gaussian(z, ints) + 1e-12)
    # ... and is useful: well below the unsampled curve at small orders.
    assert generic[0] < 0.5 * acc.rdp_gaussian(z, ints)[0]


def test_subsampled_fractional_orders_use_ceiling() -> None:
    frac = acc.rdp_poisson_subsampled(0.05, lambda a: a / 2.0, [2.5, 3.0])
    assert frac[0] == pytest.approx(frac[1])


# ---- DDGauss and Skellam -------------------------------------------------------------------------


def test_tau_formula() -> None:
    s2, n = 0.7, 6
    expected = 10 * sum(math.exp(-2 * math.pi**2 * s2 * k / (k + 1)) for k in range(1, n))
    assert acc.ddgauss_tau(s2, n) == pytest.approx(expected, rel=1e-14)
    assert acc.ddgauss_tau(s2, 1) == 0.0


def test_single_party_ddgauss_is_the_gaussian_bound() -> None:
    # n = 1: tau = 0 and the discrete Gaussian has the Gaussian's RDP (CKS 2020).
    r = acc.rdp_ddgauss(3.0, None, 4.0, 1, 50, ORDERS)
    np.testing.assert_allclose(r, acc.rdp_gaussian(2.0 / 3.0, ORDERS))


def test_ddgauss_approaches_gaussian_as_sigma_grows() -> None:
    l2, n, d = 10.0, 50, 10_000
    gaps = []
    for s2 in [0.3, 0.5, 1.0, 2.0, 5.0]:
        ddg = acc.rdp_ddgauss(l2, None, s2, n, d, ORDERS)
        gauss = acc.rdp_gaussian(math.sqrt(n * s2) / l2, ORDERS)
        assert np.all(ddg >= gauss * (1 - 1e-12))
        gaps.append(float(np.max(ddg / gauss)))
    assert np.all(np.diff(gaps) <= 0)
    assert gaps[0] > 2.0  # tau * d dominates at sigma = 0.55 with 10^4 coordinates
    assert gaps[-1] == pytest.approx(1.0, abs=1e-12)


def test_ddgauss_three_terms() -> None:
    l2, l1, s2, n, d = 4.0, 9.0, 0.4, 8, 100
    tau = acc.ddgauss_tau(s2, n)
    sd = math.sqrt(n * s2)
    for alpha in [1.5, 2.0, 10.0, 100.0]:
        t1 = alpha / 2 * (l2 / sd) ** 2 + tau * d
        t2 = alpha / 2 * ((l2 / sd) ** 2 + 2 * (l1 / sd) * tau + tau**2 * d)
        t3 = alpha / 2 * (l2 / sd + math.sqrt(d) * tau) ** 2
        got = acc.rdp_ddgauss(l2, l1, s2, n, d, [alpha])[0]
        assert got == pytest.approx(min(t1, t2, t3), rel=1e-14)


def test_ddgauss_refuses_sigma_below_half() -> None:
    with pytest.raises(ValueError):
        acc.rdp_ddgauss(1.0, None, 0.2, 3, 10, ORDERS)


def test_skellam_approaches_gaussian() -> None:
    l2, d = 5.0, 1000
    prev = math.inf
    for var in [10.0, 100.0, 1e4, 1e6]:
        sk = acc.rdp_skellam(l2, None, var, 1, d, ORDERS)
        gauss = acc.rdp_gaussian(math.sqrt(var) / l2, ORDERS)
        assert np.all(sk >= gauss * (1 - 1e-12))
        ratio = float(np.max(sk / gauss))
        assert ratio <= prev
        prev = ratio
    assert prev == pytest.approx(1.0, abs=1e-3)


# ---- accountant -------------------------------------------------------------------------------


def test_accountant_composes_and_round_trips() -> None:
    a = acc.RDPAccountant()
    per = acc.rdp_sampled_gaussian(0.01, 1.0, ORDERS)
    a.step(per, count=300)
    a.step(acc.rdp_gaussian(20.0, ORDERS))
    expected = acc.eps_from_rdp(300 * per + acc.rdp_gaussian(20.0, ORDERS), ORDERS, 1e-5)[0]
    assert a.get_epsilon(1e-5) == pytest.approx(expected, rel=1e-12)
    assert a.steps == 301
    b = acc.RDPAccountant(orders=[2.0, 3.0])
    b.load_state_dict(a.state_dict())
    assert b.get_epsilon(1e-5) == a.get_epsilon(1e-5)
    assert b.steps == 301
    with pytest.raises(ValueError):
        b.step([1.0, 2.0])
    with pytest.raises(ValueError):
        b.load_state_dict({"orders": [2.0, 3.0], "rdp": [1.0]})


def test_fresh_accountant_spends_nothing() -> None:
    assert acc.RDPAccountant().get_epsilon(1e-5) == 0.0


# ---- calibration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("eps", "q", "steps"), [(3.0, MNIST_Q, MNIST_STEPS), (1.0, 1.0, 1), (8.0, 0.1, 500)]
)
def test_calibrate_noise_multiplier_round_trip(eps: float, q: float, steps: int) -> None:
    z = acc.calibrate_noise_multiplier(eps, 1e-5, steps, q)
    spent = acc.eps_from_rdp(steps * acc.rdp_sampled_gaussian(q, z, ORDERS), ORDERS, 1e-5)[0]
    assert spent <= eps
    assert spent == pytest.approx(eps, rel=1e-4)
    less = acc.eps_from_rdp(steps * acc.rdp_sampled_gaussian(q, z * 0.999, ORDERS), ORDERS)[0]
    assert less > eps


def test_calibrate_mnist_is_about_1_point_0() -> None:
    z = acc.calibrate_noise_multiplier(2.597, 1e-5, MNIST_STEPS, MNIST_Q)
    assert z == pytest.approx(1.1, rel=2e-3)


def test_calibrate_unreachable_and_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unreachable"):
        acc.calibrate_noise_multiplier(1e-4, 1e-5, 1)
    with pytest.raises(ValueError):
        acc.calibrate_noise_multiplier(-1.0, 1e-5, 1)
    with pytest.raises(ValueError, match="unknown mechanism"):
        acc.calibrate_noise_multiplier(1.0, 1e-5, 1, mechanism="laplace")  # type: ignore[arg-type]


@pytest.mark.parametrize("q", [1.0, 0.2])
def test_calibrate_ddgauss_round_trip(q: float) -> None:
    l2, n, d, steps = 500.0, 10, 1024, 20
    total = acc.calibrate_ddgauss(4.0, 1e-5, steps, q, l2, None, n, d)
    eps = acc.eps_from_rdp(steps * acc.rdp_ddgauss(l2, None, total / n, n, d, ORDERS, q), ORDERS)
    assert eps[0] <= 4.0
    assert eps[0] == pytest.approx(4.0, rel=1e-4)
    # Large integer noise: the total variance is that of the continuous Gaussian.
    z = acc.calibrate_noise_multiplier(4.0, 1e-5, steps, 1.0)
    if q == 1.0:
        assert math.sqrt(total) / l2 == pytest.approx(z, rel=1e-4)


def test_calibrate_skellam_round_trip() -> None:
    l2, n, d = 300.0, 5, 512
    total = acc.calibrate_skellam(2.0, 1e-5, 10, 1.0, l2, None, n, d)
    eps = acc.eps_from_rdp(10 * acc.rdp_skellam(l2, None, total / n, n, d, ORDERS), ORDERS)[0]
    assert eps == pytest.approx(2.0, rel=1e-4)
    assert eps <= 2.0


# ---- monotonicity (hypothesis) ----------------------------------------------------------------

SMALL_ORDERS = [1.5, 2.0, 2.5, 4.0, 8.0, 16.0, 32.0, 64.0]


@settings(max_examples=40, deadline=None)
@given(
    q=st.floats(1e-3, 1.0),
    z=st.floats(0.5, 5.0),
    factor=st.floats(1.01, 3.0),
)
def test_sampled_gaussian_monotone(q: float, z: float, factor: float) -> None:
    base = acc.rdp_sampled_gaussian(q, z, SMALL_ORDERS)
    assert np.all(acc.rdp_sampled_gaussian(q, z * factor, SMALL_ORDERS) <= base * (1 + 1e-9))
    assert np.all(acc.rdp_sampled_gaussian(min(1.0, q * factor), z, SMALL_ORDERS) >= base * 0.999)
    assert np.all(np.diff(base) >= -1e-12)  # non-decreasing in the order


@settings(max_examples=40, deadline=None)
@given(
    l2=st.floats(1.0, 1e3),
    s2=st.floats(0.25, 1e4),
    n=st.integers(1, 200),
    d=st.integers(1, 10**5),
    factor=st.floats(1.01, 4.0),
)
def test_ddgauss_monotone(l2: float, s2: float, n: int, d: int, factor: float) -> None:
    base = acc.rdp_ddgauss(l2, None, s2, n, d, SMALL_ORDERS)
    assert np.all(acc.rdp_ddgauss(l2, None, s2 * factor, n, d, SMALL_ORDERS) <= base)
    assert np.all(acc.rdp_ddgauss(l2 * factor, None, s2, n, d, SMALL_ORDERS) >= base)
    assert np.all(np.diff(base) >= 0)


@settings(max_examples=25, deadline=None)
@given(eps=st.floats(0.5, 20.0), steps=st.integers(1, 1000))
def test_epsilon_monotone_in_steps_and_calibration(eps: float, steps: int) -> None:
    per = acc.rdp_sampled_gaussian(0.05, 1.0, ORDERS)
    assert (
        acc.eps_from_rdp(steps * per, ORDERS)[0] <= acc.eps_from_rdp((steps + 1) * per, ORDERS)[0]
    )
    z1 = acc.calibrate_noise_multiplier(eps, 1e-5, steps, 1.0)
    z2 = acc.calibrate_noise_multiplier(eps * 1.5, 1e-5, steps, 1.0)
    assert z2 <= z1

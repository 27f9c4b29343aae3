"""Rényi-DP accounting: pure functions, plus a thin stateful accountant (Opacus' layout).

Everything here is math on floats about *parameters*; no noise is drawn in this module.

Mechanisms (RDP curve ``eps(alpha)`` of one release, add/remove-one adjacency):

* Gaussian, q = 1 (Mironov 2017, Prop. 7 / Cor. 3): ``alpha / (2 z^2)``.
* Poisson-subsampled Gaussian (Mironov, Talwar, Zhang 2019, Sec. 3.3: integer orders by the
  binomial expansion of A_alpha, fractional orders by the two-sided erfc series). Same numbers as
  Opacus' ``accountants.analysis.rdp.compute_rdp``; implemented here without scipy.
* Distributed discrete Gaussian, the sum of ``n`` independent N_Z(0, sigma^2) per coordinate
  (Kairouz, Liu, Steinke 2021, "The Distributed Discrete Gaussian Mechanism for Federated Learning
  with Secure Aggregation", arXiv 2102.06387, Theorem 1 and its RDP refinement Proposition 14 /
  Eq. 17), with ``tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k / (k+1))``::

      eps(alpha) = min( alpha/2 * D2^2 + tau d,
                        alpha/2 * (D2^2 + 2 D1 tau + tau^2 d),
                        alpha/2 * (D2 + tau sqrt(d))^2 )

  where ``D2 = Delta_2 / sqrt(n sigma^2)``, ``D1 = Delta_1 / sqrt(n sigma^2)`` (sensitivities in the
  integer domain, after scaling and rounding), ``d`` the dimension. Requires ``sigma >= 1/2``.
* Distributed Skellam (Agarwal, Kairouz, Liu 2021, "The Skellam Mechanism for Differentially
  Private Federated Learning", Theorem 3.5 / Corollary 4.1), total variance ``V``::

      eps(alpha) = alpha D2^2 / (2 V) + min( ((2 alpha - 1) D2^2 + 6 D1) / (4 V^2), 3 D1 / (2 V) )

* Any mechanism under Poisson subsampling with rate q (Zhu, Wang 2019, "Poisson Subsampled Rényi
  Differential Privacy", the general upper bound, Theorem 6), for integer ``alpha >= 2``::

      (alpha - 1) eps'(alpha) <= log( (1-q)^(alpha-1) (alpha q - q + 1)
          + C(alpha,2) q^2 (1-q)^(alpha-2) e^{eps(2)}
          + 3 sum_{l=3}^alpha C(alpha,l) q^l (1-q)^(alpha-l) e^{(l-1) eps(l)} )

  A fractional order uses the bound at ``ceil(alpha)`` (RDP is non-decreasing in alpha).

Conversion to (eps, delta)-DP (Canonne, Kamath, Steinke 2020, Prop. 12; Balle et al. 2020,
Theorem 21; the same formula as Opacus' ``get_privacy_spent``)::

    eps = rdp(alpha) + log((alpha - 1) / alpha) - (log(delta) + log(alpha)) / (alpha - 1)

minimized over the orders, clamped at 0 (with the KL shortcut of dp-accounting when
``delta^2 >= 1 - exp(-rdp)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
Orders = Sequence[float] | npt.NDArray[np.floating[Any]]
RdpFunction = Callable[[FloatArray], FloatArray]

#: RDP orders: fine fractional steps near 1 (large epsilons), every integer to 64, then sparse
#: large orders up to 1024 (very small epsilons / many compositions).
DEFAULT_ORDERS: tuple[float, ...] = (
    *(1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 6.5, 7.0, 7.5),
    *(float(a) for a in range(8, 65)),
    *(72.0, 80.0, 96.0, 112.0, 128.0, 160.0, 192.0, 256.0, 320.0, 384.0, 512.0, 768.0, 1024.0),
)

_LOG_HALF = math.log(0.5)


def _orders_array(orders: Orders) -> FloatArray:
    arr = np.atleast_1d(np.asarray(orders, dtype=np.float64))
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError("orders must be a non-empty 1-D sequence")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 1.0):
        raise ValueError("RDP orders must be finite and > 1")
    return arr


def _check_q(q: float) -> None:
    if not (math.isfinite(q) and 0.0 <= q <= 1.0):
        raise ValueError(f"sampling rate q must be in [0, 1], got {q}")


# --------------------------------------------------------------------------------------------
# Log-space helpers
# --------------------------------------------------------------------------------------------


def _logsumexp(values: FloatArray, weights: FloatArray | None = None) -> float:
    """log(sum_i w_i exp(v_i)) for positive weights."""
    if values.size == 0:
        return -math.inf
    top = float(np.max(values))
    if top == -math.inf:
        return -math.inf
    if top == math.inf:
        return math.inf
    scaled = np.exp(values - top)
    if weights is not None:
        scaled = scaled * weights
    return top + math.log(float(np.sum(scaled)))


def _log_add(a: float, b: float) -> float:
    lo, hi = min(a, b), max(a, b)
    if lo == -math.inf:
        return hi
    return hi + math.log1p(math.exp(lo - hi))


def _log_sub(a: float, b: float) -> float:
    """log(exp(a) - exp(b)), a >= b."""
    if b == -math.inf:
        return a
    if b >= a:
        # Cancellation (or rounding) to zero or below: A_alpha is a positive quantity, and the
        # negative part is a tiny correction, so this only happens through rounding.
        return -math.inf
    return a + math.log(-math.expm1(b - a))


def _log_erfc(x: float) -> float:
    """log(erfc(x)), accurate far into the right tail (no scipy needed)."""
    if x < 25.0:
        return math.log(math.erfc(x))
    # Asymptotic series: erfc(x) = exp(-x^2)/(x sqrt(pi)) (1 - 1/(2x^2) + 3/(4x^4) - 15/(8x^6) ...)
    inv2 = 1.0 / (x * x)
    series = 1.0 - 0.5 * inv2 + 0.75 * inv2**2 - 1.875 * inv2**3 + 6.5625 * inv2**4
    return -x * x - math.log(x) - 0.5 * math.log(math.pi) + math.log(series)


def _gamma_sign(x: float) -> int:
    """Sign of Gamma(x) for non-integer x (positive for x > 0)."""
    if x > 0:
        return 1
    return -1 if math.floor(-x) % 2 == 0 else 1


def _log_factorials(top: int) -> FloatArray:
    """log(k!) for k = 0..top."""
    logs = np.log(np.arange(1, top + 1, dtype=np.float64))
    return np.concatenate(([0.0], np.cumsum(logs)))


def _log_binom_int(alpha: int, log_fact: FloatArray | None = None) -> FloatArray:
    """log C(alpha, i) for i = 0..alpha."""
    lf = _log_factorials(alpha) if log_fact is None else log_fact
    i = np.arange(alpha + 1)
    return np.asarray(lf[alpha] - lf[i] - lf[alpha - i], dtype=np.float64)


# --------------------------------------------------------------------------------------------
# Gaussian and sampled Gaussian (Mironov 2017; Mironov, Talwar, Zhang 2019)
# --------------------------------------------------------------------------------------------


def rdp_gaussian(noise_multiplier: float, orders: Orders = DEFAULT_ORDERS) -> FloatArray:
    """RDP of the Gaussian mechanism with noise std ``noise_multiplier`` x L2 sensitivity:
    ``alpha / (2 z^2)`` (Mironov 2017, Corollary 3)."""
    a = _orders_array(orders)
    if not noise_multiplier >= 0:
        raise ValueError("noise_multiplier must be >= 0")
    if noise_multiplier == 0:
        return np.full_like(a, math.inf)
    return a / (2.0 * noise_multiplier**2)


def _log_a_int(q: float, sigma: float, alpha: int) -> float:
    """log A_alpha for integer alpha (MTZ 2019, Sec. 3.3): binomial expansion, all terms > 0."""
    i = np.arange(alpha + 1, dtype=np.float64)
    terms = (
        _log_binom_int(alpha)
        + i * math.log(q)
        + (alpha - i) * math.log1p(-q)
        + (i * i - i) / (2.0 * sigma**2)
    )
    return _logsumexp(terms)


def _log_a_frac(q: float, sigma: float, alpha: float, max_terms: int = 1_000_000) -> float:
    """log A_alpha for fractional alpha (MTZ 2019, Sec. 3.3): series split at z0."""
    z0 = sigma**2 * math.log(1.0 / q - 1.0) + 0.5
    log_q, log_1mq = math.log(q), math.log1p(-q)
    lg_alpha = math.lgamma(alpha + 1.0)
    pos0 = neg0 = pos1 = neg1 = -math.inf
    for i in range(max_terms):
        j = alpha - i
        log_coef = lg_alpha - math.lgamma(i + 1.0) - math.lgamma(j + 1.0)
        positive = _gamma_sign(j + 1.0) > 0
        log_t0 = log_coef + i * log_q + j * log_1mq
        log_t1 = log_coef + j * log_q + i * log_1mq
        log_e0 = _LOG_HALF + _log_erfc((i - z0) / (math.sqrt(2.0) * sigma))
        log_e1 = _LOG_HALF + _log_erfc((z0 - j) / (math.sqrt(2.0) * sigma))
        s0 = log_t0 + (i * i - i) / (2.0 * sigma**2) + log_e0
        s1 = log_t1 + (j * j - j) / (2.0 * sigma**2) + log_e1
        if positive:
            pos0, pos1 = _log_add(pos0, s0), _log_add(pos1, s1)
        else:
            neg0, neg1 = _log_add(neg0, s0), _log_add(neg1, s1)
        if max(s0, s1) < -30.0:
            break
    else:  # pragma: no cover - the series always converges for sigma > 0
        raise ArithmeticError("sampled Gaussian series did not converge")
    return _log_add(_log_sub(pos0, neg0), _log_sub(pos1, neg1))


def _rdp_sampled_gaussian_one(q: float, sigma: float, alpha: float) -> float:
    if q == 0:
        return 0.0
    if sigma == 0:
        return math.inf
    if q == 1.0:
        return alpha / (2.0 * sigma**2)
    if float(alpha).is_integer():
        log_a = _log_a_int(q, sigma, int(alpha))
    else:
        log_a = _log_a_frac(q, sigma, alpha)
    return log_a / (alpha - 1.0)


def rdp_sampled_gaussian(
    q: float, noise_multiplier: float, orders: Orders = DEFAULT_ORDERS
) -> FloatArray:
    """RDP of one step of the Poisson-subsampled Gaussian mechanism (rate ``q``), per order.

    Integer and fractional orders, as Opacus' ``compute_rdp(q, noise_multiplier, 1, orders)``.
    """
    _check_q(q)
    if not noise_multiplier >= 0:
        raise ValueError("noise_multiplier must be >= 0")
    a = _orders_array(orders)
    return np.array([_rdp_sampled_gaussian_one(q, noise_multiplier, float(o)) for o in a])


# --------------------------------------------------------------------------------------------
# Generic Poisson subsampling (Zhu, Wang 2019)
# --------------------------------------------------------------------------------------------


def rdp_poisson_subsampled(q: float, rdp_fn: RdpFunction, orders: Orders) -> FloatArray:
    """Upper bound on the RDP of ``mechanism o PoissonSample(q)`` from the mechanism's RDP curve.

    ``rdp_fn`` maps an array of orders to the (non-subsampled) RDP at those orders, for integer
    orders ``2..ceil(max order)``. Zhu & Wang 2019, Theorem 6 (general upper bound); the result is
    also capped by the non-subsampled RDP. Fractional orders use ``ceil(alpha)``.
    """
    _check_q(q)
    a = _orders_array(orders)
    if q == 0:
        return np.zeros_like(a)
    if q == 1.0:
        return np.asarray(rdp_fn(a), dtype=np.float64)
    top = math.ceil(float(np.max(a)))
    ls = np.arange(2, max(top, 2) + 1, dtype=np.float64)
    eps_l = np.asarray(rdp_fn(ls), dtype=np.float64)  # eps_l[l - 2] = eps(l)
    log_q, log_1mq = math.log(q), math.log1p(-q)
    out = np.empty_like(a)
    direct = np.asarray(rdp_fn(a), dtype=np.float64)
    log_fact = _log_factorials(max(top, 2))
    for idx, order in enumerate(a):
        alpha = max(2, math.ceil(float(order)))
        if not np.all(np.isfinite(eps_l[: alpha - 1])):
            out[idx] = direct[idx]
            continue
        log_binom = _log_binom_int(alpha, log_fact)
        l_vals = np.arange(2, alpha + 1)
        terms = (
            log_binom[l_vals]
            + l_vals * log_q
            + (alpha - l_vals) * log_1mq
            + (l_vals - 1) * eps_l[l_vals - 2]
        )
        weights = np.where(l_vals >= 3, 3.0, 1.0)
        head = (alpha - 1) * log_1mq + math.log(alpha * q - q + 1.0)
        log_sum = _logsumexp(np.concatenate(([head], terms)), np.concatenate(([1.0], weights)))
        out[idx] = min(log_sum / (alpha - 1), float(direct[idx]))
    return out


# --------------------------------------------------------------------------------------------
# Distributed discrete Gaussian (Kairouz, Liu, Steinke 2021) and Skellam (Agarwal et al. 2021)
# --------------------------------------------------------------------------------------------


def ddgauss_tau(sigma2_party: float, parties: int) -> float:
    """``tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k/(k+1))`` (KLS 2021, Theorem 1)."""
    if parties < 1:
        raise ValueError("parties must be >= 1")
    k = np.arange(1, parties, dtype=np.float64)
    return float(10.0 * np.sum(np.exp(-2.0 * math.pi**2 * float(sigma2_party) * k / (k + 1.0))))


def default_l1_sensitivity(l2_sensitivity: float, dim: int) -> float:
    """L1 bound of an integer vector of L2 norm <= D2 in Z^d: ``D2 * min(sqrt(d), D2)``
    (L1 <= sqrt(d) L2 always; L1 <= L2^2 for integer coordinates)."""
    return float(l2_sensitivity * min(math.sqrt(dim), l2_sensitivity))


def _ddgauss_curve(
    l2_sensitivity: float, l1_sensitivity: float, sigma2_party: float, parties: int, dim: int
) -> RdpFunction:
    if not (l2_sensitivity >= 0 and l1_sensitivity >= 0):
        raise ValueError("sensitivities must be >= 0")
    if parties < 1 or dim < 1:
        raise ValueError("parties and dim must be >= 1")
    if not float(sigma2_party) >= 0.25:
        raise ValueError("the DDGauss bound needs sigma >= 1/2 (sigma2_party >= 1/4)")
    tau = ddgauss_tau(sigma2_party, parties)
    scale = math.sqrt(parties * float(sigma2_party))
    d2, d1 = l2_sensitivity / scale, l1_sensitivity / scale

    def curve(alpha: FloatArray) -> FloatArray:
        half = np.asarray(alpha, dtype=np.float64) / 2.0
        t1 = half * d2**2 + tau * dim
        t2 = half * (d2**2 + 2.0 * d1 * tau + tau**2 * dim)
        t3 = half * (d2 + math.sqrt(dim) * tau) ** 2
        return np.minimum(np.minimum(t1, t2), t3)

    return curve


def rdp_ddgauss(
    l2_sensitivity: float,
    l1_sensitivity: float | None,
    sigma2_party: float,
    parties: int,
    dim: int,
    orders: Orders = DEFAULT_ORDERS,
    q: float = 1.0,
) -> FloatArray:
    """RDP of one release of ``x + sum_{j=1}^{parties} Z_j``, ``Z_j ~ N_Z(0, sigma2_party)^dim``.

    Sensitivities are in the integer (scaled, rounded) domain; ``l1_sensitivity=None`` uses
    :func:`default_l1_sensitivity`. KLS 2021 Proposition 14 (three-term minimum above), valid for
    every real ``alpha >= 1``; with ``q < 1``, Zhu-Wang Poisson subsampling on top.
    """
    l1 = default_l1_sensitivity(l2_sensitivity, dim) if l1_sensitivity is None else l1_sensitivity
    curve = _ddgauss_curve(l2_sensitivity, l1, float(sigma2_party), parties, dim)
    return rdp_poisson_subsampled(q, curve, orders)


def _skellam_curve(
    l2_sensitivity: float, l1_sensitivity: float, total_variance: float
) -> RdpFunction:
    if not (l2_sensitivity >= 0 and l1_sensitivity >= 0):
        raise ValueError("sensitivities must be >= 0")
    if not total_variance > 0:
        raise ValueError("variance must be > 0")
    v, d2, d1 = float(total_variance), float(l2_sensitivity), float(l1_sensitivity)

    def curve(alpha: FloatArray) -> FloatArray:
        a = np.asarray(alpha, dtype=np.float64)
        first = ((2.0 * a - 1.0) * d2**2 + 6.0 * d1) / (4.0 * v**2)
        extra = np.minimum(first, 3.0 * d1 / (2.0 * v))
        return np.asarray(a * d2**2 / (2.0 * v) + extra, dtype=np.float64)

    return curve


def rdp_skellam(
    l2_sensitivity: float,
    l1_sensitivity: float | None,
    variance_party: float,
    parties: int,
    dim: int,
    orders: Orders = DEFAULT_ORDERS,
    q: float = 1.0,
) -> FloatArray:
    """RDP of the distributed Skellam mechanism: each party adds symmetric Skellam noise of
    *variance* ``variance_party`` per coordinate (Poisson(v/2) - Poisson(v/2)); the sum is Skellam
    of variance ``parties * variance_party`` (Agarwal, Kairouz, Liu 2021, Theorem 3.5). With
    ``secagg.dp.samplers.skellam(mu)`` (Poisson(mu) - Poisson(mu)) the variance is ``2 mu``.
    Integer-domain sensitivities; ``dim`` is used only for the default L1 bound."""
    if parties < 1 or dim < 1:
        raise ValueError("parties and dim must be >= 1")
    l1 = default_l1_sensitivity(l2_sensitivity, dim) if l1_sensitivity is None else l1_sensitivity
    curve = _skellam_curve(l2_sensitivity, l1, parties * float(variance_party))
    return rdp_poisson_subsampled(q, curve, orders)


# --------------------------------------------------------------------------------------------
# RDP -> (eps, delta)
# --------------------------------------------------------------------------------------------


def eps_from_rdp(
    rdp: npt.ArrayLike, orders: Orders = DEFAULT_ORDERS, delta: float = 1e-5
) -> tuple[float, float]:
    """Smallest epsilon over the orders for which ``(eps, delta)``-DP follows from the RDP curve.

    Returns ``(eps, best_order)``. Canonne-Kamath-Steinke 2020 / Balle et al. 2020 conversion.
    """
    a = _orders_array(orders)
    r = np.atleast_1d(np.asarray(rdp, dtype=np.float64))
    if r.shape != a.shape:
        raise ValueError(f"rdp has {r.size} values for {a.size} orders")
    if not 0.0 < delta < 1.0:
        raise ValueError("delta must be in (0, 1)")
    if np.any(r < 0) or np.any(np.isnan(r)):
        raise ValueError("RDP values must be >= 0")
    with np.errstate(over="ignore", invalid="ignore"):
        eps = r + np.log1p(-1.0 / a) - (math.log(delta) + np.log(a)) / (a - 1.0)
        # KL shortcut: D_1 <= D_alpha, and TV <= sqrt(1 - exp(-KL)) <= delta gives (0, delta).
        eps = np.where(delta**2 + np.expm1(-r) > 0, 0.0, eps)
    eps = np.where(np.isnan(eps), math.inf, eps)
    idx = int(np.argmin(eps))
    return max(0.0, float(eps[idx])), float(a[idx])


# --------------------------------------------------------------------------------------------
# Stateful accountant
# --------------------------------------------------------------------------------------------


class RDPAccountant:
    """Sums RDP curves over releases (composition) and converts to (eps, delta) on demand."""

    def __init__(self, orders: Orders = DEFAULT_ORDERS) -> None:
        self.orders: FloatArray = _orders_array(orders)
        self._rdp: FloatArray = np.zeros_like(self.orders)
        self.steps = 0

    @property
    def rdp(self) -> FloatArray:
        """The composed RDP curve so far (a copy)."""
        return self._rdp.copy()

    def step(self, rdp_per_step: npt.ArrayLike, count: int = 1) -> None:
        """Record ``count`` releases, each with RDP ``rdp_per_step`` at ``self.orders``."""
        r = np.atleast_1d(np.asarray(rdp_per_step, dtype=np.float64))
        if r.shape != self.orders.shape:
            raise ValueError(f"rdp_per_step has {r.size} values for {self.orders.size} orders")
        if count < 0 or np.any(r < 0) or np.any(np.isnan(r)):
            raise ValueError("count and RDP values must be >= 0")
        self._rdp = self._rdp + count * r
        self.steps += count

    def get_privacy_spent(self, delta: float) -> tuple[float, float]:
        """``(eps, best_order)`` at ``delta`` for everything recorded so far."""
        return eps_from_rdp(self._rdp, self.orders, delta)

    def get_epsilon(self, delta: float) -> float:
        return self.get_privacy_spent(delta)[0]

    def state_dict(self) -> dict[str, Any]:
        return {
            "orders": [float(o) for o in self.orders],
            "rdp": [float(v) for v in self._rdp],
            "steps": self.steps,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        orders = _orders_array(state["orders"])
        rdp = np.asarray(state["rdp"], dtype=np.float64)
        if rdp.shape != orders.shape or np.any(rdp < 0) or np.any(np.isnan(rdp)):
            raise ValueError("state_dict: rdp must be >= 0, one value per order")
        steps = int(state.get("steps", 0))
        if steps < 0:
            raise ValueError("state_dict: steps must be >= 0")
        self.orders, self._rdp, self.steps = orders, rdp, steps


# --------------------------------------------------------------------------------------------
# Calibration (bisection on a monotone epsilon)
# --------------------------------------------------------------------------------------------


def _bisect_decreasing(
    eps_of: Callable[[float], float],
    target_eps: float,
    lo: float,
    hi: float,
    what: str,
    rel_tol: float = 1e-6,
) -> float:
    """Smallest x in [lo, hi] (within rel_tol, rounded up) with eps_of(x) <= target_eps, for
    eps_of non-increasing in x. Bisection in log space; returns the feasible end."""
    if eps_of(hi) > target_eps:
        raise ValueError(
            f"target epsilon {target_eps} is unreachable: even {what}={hi:.6g} gives "
            f"epsilon {eps_of(hi):.6g} (too small a target for these orders/delta/steps)"
        )
    if eps_of(lo) <= target_eps:
        return lo
    while hi / lo > 1.0 + rel_tol:
        mid = math.sqrt(lo * hi)
        if eps_of(mid) <= target_eps:
            hi = mid
        else:
            lo = mid
    return hi


def _check_target(target_eps: float, delta: float, steps: int) -> None:
    if not (math.isfinite(target_eps) and target_eps > 0):
        raise ValueError("target_eps must be a positive finite number")
    if not 0.0 < delta < 1.0:
        raise ValueError("delta must be in (0, 1)")
    if steps < 1:
        raise ValueError("steps must be >= 1")


def calibrate_noise_multiplier(
    target_eps: float,
    delta: float,
    steps: int,
    q: float = 1.0,
    mechanism: Literal["gaussian"] = "gaussian",
    orders: Orders = DEFAULT_ORDERS,
) -> float:
    """Smallest noise multiplier z (to ~1e-6 relative, rounded up) whose ``steps``-fold
    composition of the (sampled) Gaussian mechanism is ``(target_eps, delta)``-DP.

    For the discrete mechanisms use :func:`calibrate_ddgauss` / :func:`calibrate_skellam`, which
    need the sensitivities and party count.

    Raises:
        ValueError: unknown mechanism, bad arguments, or a target no noise level reaches.
    """
    if mechanism != "gaussian":
        raise ValueError(
            f"unknown mechanism {mechanism!r}: only 'gaussian' here; use calibrate_ddgauss or "
            "calibrate_skellam for the distributed discrete mechanisms"
        )
    _check_target(target_eps, delta, steps)
    _check_q(q)
    a = _orders_array(orders)

    def eps_of(z: float) -> float:
        return eps_from_rdp(steps * rdp_sampled_gaussian(q, z, a), a, delta)[0]

    return _bisect_decreasing(eps_of, target_eps, 1e-3, 1e4, "noise_multiplier")


def calibrate_ddgauss(
    target_eps: float,
    delta: float,
    steps: int,
    q: float,
    l2_sensitivity: float,
    l1_sensitivity: float | None,
    parties: int,
    dim: int,
    orders: Orders = DEFAULT_ORDERS,
) -> float:
    """Smallest *total* variance ``parties * sigma2_party`` of the summed discrete Gaussian noise
    (integer domain) giving ``(target_eps, delta)`` after ``steps`` releases with sampling rate q.

    The per-party variance is ``total / parties`` (rounding it *up* is the caller's job).
    """
    _check_target(target_eps, delta, steps)
    _check_q(q)
    if parties < 1:
        raise ValueError("parties must be >= 1")
    a = _orders_array(orders)

    def eps_of(total: float) -> float:
        rdp = rdp_ddgauss(l2_sensitivity, l1_sensitivity, total / parties, parties, dim, a, q)
        return eps_from_rdp(steps * rdp, a, delta)[0]

    lo = 0.25 * parties  # sigma >= 1/2 per party (KLS 2021 Theorem 1)
    hi = max(lo, 1.0) * 1e12 + 1e6 * l2_sensitivity**2
    return _bisect_decreasing(eps_of, target_eps, lo, hi, "total variance")


def calibrate_skellam(
    target_eps: float,
    delta: float,
    steps: int,
    q: float,
    l2_sensitivity: float,
    l1_sensitivity: float | None,
    parties: int,
    dim: int,
    orders: Orders = DEFAULT_ORDERS,
) -> float:
    """As :func:`calibrate_ddgauss`, for distributed Skellam noise: the smallest total variance."""
    _check_target(target_eps, delta, steps)
    _check_q(q)
    if parties < 1:
        raise ValueError("parties must be >= 1")
    a = _orders_array(orders)

    def eps_of(total: float) -> float:
        rdp = rdp_skellam(l2_sensitivity, l1_sensitivity, total / parties, parties, dim, a, q)
        return eps_from_rdp(steps * rdp, a, delta)[0]

    hi = 1e12 + 1e6 * l2_sensitivity**2
    return _bisect_decreasing(eps_of, target_eps, 1e-6, hi, "total variance")

"""Integer noise samplers for distributed DP, with every random bit from :mod:`secagg.crypto.rng`.

Discrete Gaussian (DDGauss, Kairouz, Liu, Steinke 2021) and Skellam (Agarwal, Kairouz, Liu 2021)
noise is added by each party to its integer vector before secure summation.

**Exact sampling.** :func:`discrete_gaussian`, :func:`discrete_laplace` and :func:`bernoulli_exp`
implement Canonne, Kamath, Steinke, "The Discrete Gaussian for Differential Privacy" (NeurIPS
2020), Algorithms 1-3. Every decision is an integer comparison of a uniform integer drawn by
rejection sampling from uniform 64-bit words: the output distribution is exactly the target one
(up to the CSPRNG being indistinguishable from random). No floating-point number is ever computed
on the sampling path: the floating-point noise attack (Mironov, "On Significance of the Least
Significant Bits for Differential Privacy", CCS 2012), where gaps and biases in float samplers
leak the noiseless value, does not apply.

**Vectorized.** Whole arrays of candidates go through each step; Python loops only run over
rounds of rejection, each on the (geometrically shrinking) set of still-active candidates.

**Skellam** (:func:`skellam`) uses numpy's Poisson sampler (PTRS, Hörmann 1993) driven by an
AES-128-CTR bit generator (``randomgen.AESCounter``) keyed from the CSPRNG. The randomness is
cryptographic but the transform is float-based, so its distribution is float-approximate (and
the Mironov attack surface is that of PTRS); use :func:`discrete_gaussian` where exactness
matters.

**Supported ranges** (``ValueError`` outside them):

- :func:`discrete_gaussian`: ``sigma2 = p/q`` in lowest terms with ``1 <= p <= 2**51`` and
  ``1 <= q <= 2**51``, and ``q <= 2**24`` when ``sigma2 < 1`` (so ``2**-24 <= sigma2 <= 2**51``,
  sigma up to ~4.7e7). Floats are converted
  by ``Fraction(x).limit_denominator(max_denominator)`` (default ``2**20``): the sampler is exact
  for that rational, whose distance to ``x`` is below ``1 / max_denominator`` (zero for floats
  that are integers or dyadic with small denominators); a float that rounds to 0 is refused.
- :func:`discrete_laplace`: scale ``t/s`` in lowest terms with ``1 <= s, t <= 2**62`` and
  ``t/s <= 2**56`` (a sample beyond int64 then has probability below ``exp(-128)``).
- :func:`bernoulli_exp`: integer arrays with ``0 <= numer <= 2**63 - 1``, ``1 <= denom <= 2**62``.

The vectorized path keeps every intermediate in 64 bits; the candidates that would overflow
(events of probability below ``exp(-60)`` for the discrete Gaussian in its supported range) take
an exact scalar path on Python integers instead of being dropped or clipped, so exactness does not
rest on any tail bound. An output that does not fit in int64 (probability below ``exp(-128)`` per
sample) raises ``OverflowError``.
"""

from __future__ import annotations

import importlib
import math
from fractions import Fraction
from numbers import Integral, Rational, Real
from typing import Any

import numpy as np
import numpy.typing as npt

from secagg.crypto import rng

__all__ = ["bernoulli_exp", "discrete_gaussian", "discrete_laplace", "skellam"]

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
Size = int | tuple[int, ...]

_INT64_MAX = 2**63 - 1
_WORD_MAX = np.uint64(2**64 - 1)
MAX_GAUSSIAN_TERMS = 2**51
"""Bound on the numerator and the denominator of ``sigma2`` (see the module docstring)."""
MAX_SMALL_GAUSSIAN_DENOM = 2**24
"""Bound on the denominator of ``sigma2`` when ``sigma2 < 1``."""
MAX_LAPLACE_TERMS = 2**62
MAX_LAPLACE_SCALE = 2**56
MAX_BERNOULLI_DENOM = 2**62
DEFAULT_MAX_DENOMINATOR = 2**20
MAX_SKELLAM_MU = 2.0**50
# Largest numerator of gamma that the vectorized acceptance step of Algorithm 3 forms in int64;
# a module constant so that tests can shrink it and exercise the scalar path.
_NUMER_LIMIT = _INT64_MAX


# --------------------------------------------------------------------------------------------
# Uniform integers by rejection sampling on uint64 words (no modulo bias, no floats)
# --------------------------------------------------------------------------------------------


def _words(count: int) -> npt.NDArray[np.uint64]:
    return rng.random_words(count, np.uint64).astype(np.uint64, copy=False)


def _uniform_below(bound: int, count: int) -> npt.NDArray[np.uint64]:
    """``count`` uniform integers in ``[0, bound)``, ``1 <= bound <= 2**64``, as uint64.

    A word ``w`` is kept iff ``w < 2**64 - (2**64 mod bound)``, a multiple of ``bound``, so
    ``w mod bound`` is exactly uniform; rejected positions are redrawn (probability < 1/2 each).
    """
    if bound & (bound - 1) == 0:  # power of two: masking is exact
        return _words(count) & np.uint64(bound - 1)
    limit = np.uint64(2**64 - (2**64 % bound))
    out = _words(count)
    bad = np.flatnonzero(out >= limit)
    while bad.size:
        fresh = _words(bad.size)
        out[bad] = fresh
        bad = bad[fresh >= limit]
    return out % np.uint64(bound)


def _uniform_below_each(bounds: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """One uniform integer in ``[0, b)`` for each ``b`` of ``bounds`` (each in ``[1, 2**63]``)."""
    # 2**64 mod b == (2**64 - b) mod b, computed with uint64 wrap-around; keep w <= 2**64-1-rem.
    rem = (np.uint64(0) - bounds) % bounds
    limit = _WORD_MAX - rem
    out = _words(bounds.size)
    bad = np.flatnonzero(out > limit)
    while bad.size:
        fresh = _words(bad.size)
        out[bad] = fresh
        bad = bad[fresh > limit[bad]]
    return out % bounds


def _sign_bits(count: int) -> BoolArray:
    """``count`` independent fair bits."""
    raw = _words((count + 63) // 64).view(np.uint8)
    return np.unpackbits(raw, count=count).astype(bool)


# --------------------------------------------------------------------------------------------
# Algorithm 1 (CKS 2020): Bernoulli(exp(-gamma)) for rational gamma = numer/denom
# --------------------------------------------------------------------------------------------


def _bernoulli_exp_fraction(
    rem: npt.NDArray[np.uint64], denom: int | npt.NDArray[np.uint64]
) -> BoolArray:
    """Bernoulli(exp(-rem/denom)) for ``0 <= rem < denom`` (Algorithm 1, case gamma in [0, 1]).

    K <- 1; loop { A <- Bernoulli(gamma/K); if A = 0 break; K <- K+1 }; return [K odd].
    P(K >= k) = gamma^(k-1)/(k-1)!, so the alternating sum gives exactly exp(-gamma). Vectorized
    over rounds of K: the active set shrinks at least as fast as 1/(k-1)!.
    Bernoulli(rem/(denom*K)) is [U < rem] with U uniform in [0, denom*K); when denom*K would not
    fit in 63 bits it is drawn as Bernoulli(rem/denom) AND Bernoulli(1/K), the same law.
    """
    n = rem.size
    result = np.zeros(n, dtype=bool)
    active = np.arange(n)
    scalar = isinstance(denom, int)
    dmax = denom if isinstance(denom, int) else (int(denom.max()) if n else 1)
    k = 1
    while active.size:
        r = rem[active]
        if dmax * k <= 2**63:
            if scalar:
                u = _uniform_below(int(denom) * k, active.size)
            else:
                assert not isinstance(denom, int)
                u = _uniform_below_each(denom[active] * np.uint64(k))
            a = u < r
        else:
            if scalar:
                u = _uniform_below(int(denom), active.size)
            else:
                assert not isinstance(denom, int)
                u = _uniform_below_each(denom[active])
            a = (u < r) & (_uniform_below(k, active.size) == 0)
        result[active[~a]] = k % 2 == 1
        active = active[a]
        k += 1
    return result


def _bernoulli_exp_one(count: int) -> BoolArray:
    """``count`` draws of Bernoulli(exp(-1)): Algorithm 1 with gamma = 1 (A = 1 at K = 1)."""
    result = np.zeros(count, dtype=bool)
    active = np.arange(count)
    k = 2
    while active.size:
        a = _uniform_below(k, active.size) == 0  # Bernoulli(1/K)
        result[active[~a]] = k % 2 == 1
        active = active[a]
        k += 1
    return result


def _bernoulli_exp_integer(m: IntArray) -> BoolArray:
    """Bernoulli(exp(-m)) for integers ``m >= 0``: Algorithm 1, gamma > 1 branch, integer part:
    m independent Bernoulli(exp(-1)) draws must all be 1. Vectorized over rounds; each round
    removes the failures (probability 1 - 1/e) and the finished ones."""
    result: BoolArray = np.equal(m, 0)
    active = np.flatnonzero(m > 0)
    left = m[active]
    while active.size:
        ok = _bernoulli_exp_one(active.size)
        left = left - 1
        done = ok & (left == 0)
        result[active[done]] = True
        keep = ok & (left > 0)
        active, left = active[keep], left[keep]
    return result


def _bernoulli_exp_int64(numer: IntArray, denom: int) -> BoolArray:
    """Bernoulli(exp(-numer/denom)) for int64 ``numer >= 0`` and one ``denom`` (Algorithm 1):
    split gamma = floor + frac; Bernoulli(exp(-frac)) AND Bernoulli(exp(-1))^floor."""
    whole = numer // denom
    frac = (numer - whole * denom).astype(np.uint64)
    result = _bernoulli_exp_fraction(frac, denom)
    todo = np.flatnonzero(result & (whole > 0))
    if todo.size:
        result[todo] = _bernoulli_exp_integer(whole[todo])
    return result


def _bernoulli_exp_scalar(numer: int, denom: int) -> bool:
    """Algorithm 1 on Python integers (any size): the exact slow path for rare candidates."""
    whole, frac = divmod(numer, denom)
    k = 1  # fractional part first; the two factors are independent, so the order is free
    while rng.random_below(denom * k) < frac:
        k += 1
    if k % 2 == 0:
        return False
    # all() stops at the first failure: about 1.6 draws on average, whatever the size of whole.
    return all(bool(_bernoulli_exp_one(1)[0]) for _ in range(whole))


def bernoulli_exp(numer: npt.ArrayLike, denom: npt.ArrayLike) -> BoolArray:
    """Exact Bernoulli(exp(-numer/denom)), element-wise over broadcast integer arrays.

    CKS 2020 Algorithm 1 (integer part by repeated Bernoulli(exp(-1)), fractional part by the
    alternating-series loop). Requires ``0 <= numer <= 2**63 - 1`` and
    ``1 <= denom <= 2**62`` (``ValueError`` otherwise, and for non-integer input).
    """
    n_arr = np.asarray(numer)
    d_arr = np.asarray(denom)
    for name, arr in (("numer", n_arr), ("denom", d_arr)):
        if arr.dtype.kind not in "iu" and not (arr.dtype == object and _all_ints(arr)):
            raise ValueError(f"{name} must be an integer array")
    if n_arr.size and (_min(n_arr) < 0 or _max(n_arr) > _INT64_MAX):
        raise ValueError("numer must be in [0, 2**63 - 1]")
    if d_arr.size and (_min(d_arr) < 1 or _max(d_arr) > MAX_BERNOULLI_DENOM):
        raise ValueError("denom must be in [1, 2**62]")
    n_b, d_b = np.broadcast_arrays(n_arr.astype(np.int64), d_arr.astype(np.int64))
    shape = n_b.shape
    n_flat = n_b.reshape(-1)
    d_flat = d_b.reshape(-1)
    if d_flat.size and int(d_flat.min()) == int(d_flat.max()):
        return _bernoulli_exp_int64(n_flat, int(d_flat[0])).reshape(shape)
    whole = n_flat // d_flat
    frac = (n_flat - whole * d_flat).astype(np.uint64)
    result = _bernoulli_exp_fraction(frac, d_flat.astype(np.uint64))
    todo = np.flatnonzero(result & (whole > 0))
    if todo.size:
        result[todo] = _bernoulli_exp_integer(whole[todo])
    return result.reshape(shape)


def _all_ints(arr: npt.NDArray[Any]) -> bool:
    return all(isinstance(v, Integral) and not isinstance(v, bool) for v in arr.reshape(-1))


def _min(arr: npt.NDArray[Any]) -> int:
    return int(min(int(v) for v in arr.reshape(-1))) if arr.dtype == object else int(arr.min())


def _max(arr: npt.NDArray[Any]) -> int:
    return int(max(int(v) for v in arr.reshape(-1))) if arr.dtype == object else int(arr.max())


# --------------------------------------------------------------------------------------------
# Algorithm 2 (CKS 2020): discrete Laplace Lap_Z(t/s), P(x) proportional to exp(-|x| s/t)
# --------------------------------------------------------------------------------------------


def _geometric_exp_one(count: int) -> IntArray:
    """V with P(V = v) = (1 - 1/e) e^(-v): count of Bernoulli(exp(-1)) successes before the first
    failure (Algorithm 2, steps 5-8), vectorized over rounds of survivors."""
    v = np.zeros(count, dtype=np.int64)
    active = np.arange(count)
    while active.size:
        active = active[_bernoulli_exp_one(active.size)]
        v[active] += 1
    return v


def _laplace_candidates(s: int, t: int, count: int) -> tuple[IntArray, dict[int, int]]:
    """One pass of Algorithm 2 over ``count`` attempts; returns the accepted samples in order.

    When X = U + t V would not fit in int64 (V > (2**63 - t) / t: probability exp(-2**63 / t),
    below exp(-4096) for the discrete Gaussian's t <= 2**51) Y is computed on Python integers.
    Values Y that do not fit in int64 (probability about exp(-2**63 s / t) <= exp(-128) in the
    supported range) are returned in a dict {position in the output: value}, with 0 at their
    position in the array.
    """
    # Steps 1-4: U uniform in [0, t), accepted with probability exp(-U/t).
    u = _uniform_below(t, count)
    u = u[_bernoulli_exp_fraction(u, t)].astype(np.int64)
    # Steps 5-8: V geometric; X = U + t V is geometric with P(X = x) proportional to exp(-x/t).
    v = _geometric_exp_one(u.size)
    vmax = (_INT64_MAX - (t - 1)) // t
    huge_pos = np.flatnonzero(v > vmax)
    v_safe = np.minimum(v, vmax)
    # Step 9: Y = floor(X / s), so P(Y = y) is proportional to exp(-y s/t).
    y = (u + t * v_safe) // s
    # Steps 10-12: random sign; reject (B = 1, Y = 0) so that 0 is not counted twice.
    b = _sign_bits(u.size)
    huge: dict[int, int] = {}
    for i in huge_pos.tolist():
        value = (int(u[i]) + t * int(v[i])) // s
        if value <= _INT64_MAX:
            y[i] = value
        else:
            huge[i] = -value if b[i] else value
            y[i] = 1  # nonzero placeholder (the value is not 0), reset to 0 below
    keep = ~(b & (y == 0))
    out = np.where(b, -y, y)
    if huge:
        out[list(huge)] = 0
        positions = np.cumsum(keep) - 1
        huge = {int(positions[i]): value for i, value in huge.items()}
    return out[keep], huge


def _as_laplace_scale(scale: object) -> tuple[int, int]:
    if isinstance(scale, bool) or not isinstance(scale, Rational | np.integer):
        raise ValueError("scale must be an int or a fractions.Fraction")
    frac = Fraction(int(scale)) if isinstance(scale, np.integer) else Fraction(scale)
    if frac <= 0:
        raise ValueError("scale must be positive")
    t, s = frac.numerator, frac.denominator
    if t > MAX_LAPLACE_TERMS or s > MAX_LAPLACE_TERMS:
        raise ValueError("scale numerator and denominator must be <= 2**62")
    if frac > MAX_LAPLACE_SCALE:
        raise ValueError("scale must be <= 2**56")
    return s, t


def _check_size(size: Size) -> tuple[tuple[int, ...], int]:
    if isinstance(size, int | np.integer):
        shape: tuple[Any, ...] = (size,)
    elif isinstance(size, tuple | list):
        shape = tuple(size)
    else:
        raise ValueError("size must be a non-negative int or a tuple of them")
    if any(not isinstance(d, int | np.integer) or isinstance(d, bool) or d < 0 for d in shape):
        raise ValueError("size must be a non-negative int or a tuple of them")
    dims = tuple(int(d) for d in shape)
    return dims, math.prod(dims)


def discrete_laplace(scale: Fraction | int, size: Size) -> IntArray:
    """Exact discrete Laplace samples: P(x) proportional to exp(-|x| / scale) on the integers.

    CKS 2020 Algorithm 2 with ``scale = t/s`` in lowest terms, ``1 <= s, t <= 2**62``,
    ``t/s <= 2**56``.
    Returns an int64 array of shape ``size``.
    """
    s, t = _as_laplace_scale(scale)
    shape, n = _check_size(size)
    out = np.empty(n, dtype=np.int64)
    filled = 0
    while filled < n:
        need = n - filled
        # Acceptance of one attempt is about (1 - 1/e) * (1 - P(Y = 0)/2) >= 0.3.
        batch, huge = _laplace_candidates(s, t, int(need * 1.7) + 16)
        if huge:
            raise OverflowError("a discrete Laplace sample does not fit in int64")
        take = batch[:need]
        out[filled : filled + take.size] = take
        filled += take.size
    return out.reshape(shape)


# --------------------------------------------------------------------------------------------
# Algorithm 3 (CKS 2020): discrete Gaussian N_Z(0, sigma2) by rejection from a discrete Laplace
# --------------------------------------------------------------------------------------------


def _as_sigma2(sigma2: object, max_denominator: int) -> tuple[int, int]:
    if isinstance(sigma2, bool):
        raise ValueError("sigma2 must be a number, not a bool")
    if isinstance(sigma2, Rational | np.integer):
        frac = Fraction(int(sigma2)) if isinstance(sigma2, np.integer) else Fraction(sigma2)
    elif isinstance(sigma2, Real | np.floating):
        value = float(sigma2)
        if not math.isfinite(value):
            raise ValueError("sigma2 must be finite")
        if value <= 0:
            raise ValueError("sigma2 must be positive")
        frac = Fraction(value).limit_denominator(max_denominator)
        if frac == 0:
            raise ValueError("sigma2 rounds to 0 with this max_denominator")
    else:
        raise ValueError("sigma2 must be an int, a Fraction or a float")
    if frac <= 0:
        raise ValueError("sigma2 must be positive")
    p, q = frac.numerator, frac.denominator
    if p > MAX_GAUSSIAN_TERMS or q > MAX_GAUSSIAN_TERMS:
        raise ValueError("sigma2 = p/q needs 1 <= p, q <= 2**51 (lowest terms)")
    if p < q and q > MAX_SMALL_GAUSSIAN_DENOM:
        raise ValueError("sigma2 = p/q < 1 needs q <= 2**24 (so sigma2 >= 2**-24)")
    return p, q


def discrete_gaussian(
    sigma2: Fraction | int | float,
    size: Size,
    *,
    max_denominator: int = DEFAULT_MAX_DENOMINATOR,
) -> IntArray:
    """Exact discrete Gaussian samples N_Z(0, sigma2): P(x) proportional to exp(-x^2 / (2 sigma2)).

    CKS 2020 Algorithm 3. ``sigma2`` is an int or a Fraction ``p/q`` with ``1 <= p, q <= 2**51``
    in lowest terms; a float is first turned into ``Fraction(sigma2).limit_denominator(
    max_denominator)`` (the sampler is exact for that rational). NaN, infinities and
    non-positive values raise ``ValueError``. For ``sigma2 < 1`` the denominator must also be
    ``<= 2**24``. The variance is below ``sigma2`` for small ``sigma2`` (0.2150 at 0.25, 0.4990
    at 0.5, 1 - 2e-7 at 1), with a relative deficit of about
    ``8 pi^2 sigma2 exp(-2 pi^2 sigma2)`` (Poisson summation) beyond. Returns an int64 array of
    shape ``size``.
    """
    if isinstance(max_denominator, bool) or not isinstance(max_denominator, int):
        raise ValueError("max_denominator must be a positive int")
    if not 1 <= max_denominator <= MAX_GAUSSIAN_TERMS:
        raise ValueError("max_denominator must be in [1, 2**51]")
    p, q = _as_sigma2(sigma2, max_denominator)
    shape, n = _check_size(size)
    # Algorithm 3: Y <- Lap_Z(t); accept with probability exp(-(|Y| - sigma2/t)^2 / (2 sigma2)).
    # The paper takes t = floor(sigma) + 1, but the step is exact for any scale t > 0, since
    # exp(-|y|/t) * exp(-(|y| - sigma2/t)^2 / (2 sigma2)) is proportional to exp(-y^2/(2 sigma2)).
    # With c = sigma2/t = cn/cd, gamma = (|y| cd - cn)^2 q / (2 p cd^2).
    # - sigma2 >= 1: t = sigma2 / L with the integer L = floor(sigma), so c = L, cd = 1 and the
    #   numerator (|y| - L)^2 q is of the order of p (the paper's t gives p^2): int64 suffices
    #   for |y| - L up to 64 sigma when p <= 2**51. Acceptance 0.68-0.76 (the paper's: 0.68-0.76).
    # - sigma2 < 1: the paper's t = 1, c = p/q; numerator (|y| q - p)^2 fits for |y| <= 181
    #   when q <= 2**24. Acceptance 0.64 at sigma2 = 1/2, 0.46 as sigma2 -> 0.
    if p >= q:
        L = math.isqrt(p // q)  # floor(sigma) = isqrt(floor(sigma2))
        g = math.gcd(q * L, p)
        lap_s, lap_t = q * L // g, p // g  # Laplace scale lap_t / lap_s = sigma2 / L
        cn, cd = L, 1
    else:
        lap_s, lap_t = 1, 1
        cn, cd = p, q
    g2 = math.gcd(q, 2 * p * cd * cd)
    gamma_q, gamma_den = q // g2, 2 * p * cd * cd // g2  # gamma = (|y| cd - cn)^2 gamma_q / den
    a_max = math.isqrt(_NUMER_LIMIT // gamma_q)
    # |y| <= y_lim guarantees |a| = ||y| cd - cn| <= a_max, so a^2 gamma_q fits in int64.
    y_lim = (a_max + cn) // cd if cn <= a_max else -1
    out = np.empty(n, dtype=np.int64)
    filled = 0
    while filled < n:
        need = n - filled
        # One attempt succeeds with probability about (1 - 1/e) * 0.76 = 0.48 at large sigma2.
        y, huge = _laplace_candidates(lap_s, lap_t, int(need * 2.2) + 16)
        y_abs = np.abs(y)
        fast = y_abs <= y_lim
        accept = np.zeros(y.size, dtype=bool)
        idx = np.flatnonzero(fast)
        if idx.size:
            a = y_abs[idx] * cd - cn
            accept[idx] = _bernoulli_exp_int64(a * a * gamma_q, gamma_den)
        for i in np.flatnonzero(~fast).tolist():  # exact scalar path, Python integers
            a_i = int(y_abs[i]) * cd - cn
            accept[i] = _bernoulli_exp_scalar(a_i * a_i * gamma_q, gamma_den)
        for i, value in huge.items():
            a_i = abs(value) * cd - cn
            if _bernoulli_exp_scalar(a_i * a_i * gamma_q, gamma_den):
                raise OverflowError("a discrete Gaussian sample does not fit in int64")
            accept[i] = False
        take = y[accept][:need]
        out[filled : filled + take.size] = take
        filled += take.size
    return out.reshape(shape)


# --------------------------------------------------------------------------------------------
# Skellam(mu, mu) = Poisson(mu) - Poisson(mu) (Agarwal, Kairouz, Liu 2021)
# --------------------------------------------------------------------------------------------


def _crypto_generator() -> np.random.Generator:
    """A numpy Generator over AES-128-CTR (randomgen.AESCounter) keyed by 128 CSPRNG bits."""
    try:
        randomgen: Any = importlib.import_module("randomgen")
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("skellam needs the 'randomgen' package (pip install randomgen)") from exc
    key = int.from_bytes(rng.token_bytes(16), "little")
    bit_generator = randomgen.AESCounter(key=key)
    return np.random.Generator(bit_generator)


def skellam(mu: float | Fraction | int, size: Size) -> IntArray:
    """Symmetric Skellam samples Poisson(mu) - Poisson(mu): mean 0, variance ``2 mu``.

    Exactness: the Poisson draws are numpy's (PTRS transformed rejection for mu >= 10,
    multiplication method below), computed in float64 from an AES-128-CTR bit stream
    (``randomgen.AESCounter``) keyed with 128 bits from :mod:`secagg.crypto.rng`. The randomness
    is cryptographic; the distribution is float-approximate (errors at the level of double
    rounding, far below the statistical resolution of any test, but not zero).
    ``0 < mu <= 2**50`` (``ValueError`` otherwise). Returns an int64 array of shape ``size``.
    """
    if isinstance(mu, bool) or not isinstance(mu, Real | np.integer | np.floating):
        raise ValueError("mu must be a real number")
    value = float(mu)
    if not math.isfinite(value) or value <= 0:
        raise ValueError("mu must be finite and positive")
    if value > MAX_SKELLAM_MU:
        raise ValueError("mu must be <= 2**50")
    shape, _ = _check_size(size)
    gen = _crypto_generator()
    first = gen.poisson(value, shape).astype(np.int64)
    second = gen.poisson(value, shape).astype(np.int64)
    result: IntArray = first - second
    return result

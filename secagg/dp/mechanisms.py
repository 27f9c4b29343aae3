"""The distributed discrete Gaussian (DDGauss) pipeline of Kairouz, Liu, Steinke 2021.

Client (one party, Algorithm 1 of arXiv 2102.06387)::

    x -> clip to L2 norm c -> randomized Hadamard rotation (shared seed) -> scale by 1/gamma
      -> conditional randomized rounding to Z^d (retry until ||x~||_2 <= rounding bound)
      -> + N_Z(0, sigma2_party)^d  (exact discrete Gaussian, CSPRNG)  -> reduce mod 2^B

Server: secure sum mod 2^B -> center to [-2^(B-1), 2^(B-1)) -> times gamma -> inverse rotation.

Privacy comes only from the *summed* integer noise of the parties whose vectors are in the sum.
``sigma2_party`` is set so that the sum over exactly ``min_parties`` parties (the fewest survivors
the protocol accepts: its threshold, per block) carries the target noise. More survivors add more
independent noise, which is post-processing of the ``min_parties`` release: dropouts can never
weaken the guarantee below the calibrated one. If up to ``t`` parties may collude with the server
(they know and can subtract their own noise), calibrate with ``min_parties = threshold - t``.

The sensitivity used for accounting is the rounding bound of the *integer* vector (enforced by the
retry loop, whatever the rounding randomness), under add/remove-one-party adjacency.

Floating point: clipping, rotation and scaling are float64 computations on the *data*, not on the
noise. The noise is integer, drawn by the exact sampler from the CSPRNG, and added in integers, so
the floating-point attack on textbook Laplace/Gaussian noise (Mironov 2012, "On significance of the
least significant bits for differential privacy") does not apply. Rounding decisions compare a
53-bit CSPRNG uniform with the fractional part: the rounding is unbiased to within 2^-53 per
coordinate, and privacy does not depend on it (only on the enforced norm bound).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from secagg.config import RoundConfig
from secagg.crypto import prg, rng
from secagg.dp import accounting
from secagg.encoding import MAX_MODULUS_BITS, from_ring, reduce, to_ring, word_dtype
from secagg.errors import ConfigError, EncodingError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Words = npt.NDArray[np.unsignedinteger]

#: Default beta of conditional randomized rounding (KLS 2021 use e^-0.5 in their experiments):
#: each try succeeds with probability >= 1 - beta.
DEFAULT_BETA = math.exp(-0.5)


# --------------------------------------------------------------------------------------------
# Clipping and rotation
# --------------------------------------------------------------------------------------------


def clip_l2(x: npt.ArrayLike, c: float) -> FloatArray:
    """``x * min(1, c / ||x||_2)`` as a new float64 array."""
    v = np.array(x, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise EncodingError("cannot clip NaN or infinite values")
    if not (math.isfinite(c) and c > 0):
        raise ValueError("clip norm must be positive and finite")
    norm = float(np.linalg.norm(v))
    if norm > c:
        v *= c / norm
    return v


def _fwht(v: FloatArray) -> FloatArray:
    """Unnormalized fast Walsh-Hadamard transform along the last axis (length a power of two):
    log2(n) vectorized butterfly passes."""
    n = v.shape[-1]
    lead = v.shape[:-1]
    out = np.array(v, dtype=np.float64)
    h = 1
    while h < n:
        blocks = out.reshape(*lead, n // (2 * h), 2, h)
        a = blocks[..., 0, :]
        b = blocks[..., 1, :]
        out = np.stack((a + b, a - b), axis=-2).reshape(*lead, n)
        h *= 2
    return out


class RandomizedHadamard:
    """The orthonormal rotation ``R = H D / sqrt(n)`` on ``n = 2^ceil(log2 dim)`` coordinates.

    ``D`` is diagonal with random signs: the bits of the AES-128-CTR keystream of the shared
    16-byte ``seed`` (every party and the server build the same rotation). ``H`` is the Walsh-
    Hadamard matrix (``H H = n I``). Inputs are zero-padded to ``n``; :meth:`unrotate` drops the
    padding. Use a fresh seed per round.
    """

    def __init__(self, seed: bytes, dim: int) -> None:
        if len(seed) != prg.SEED_BYTES:
            raise ValueError(f"rotation seed must be {prg.SEED_BYTES} bytes, got {len(seed)}")
        if dim < 1:
            raise ValueError("dim must be >= 1")
        self.dim = dim
        self.padded_dim = 1 << (dim - 1).bit_length()
        keystream = prg.expand(seed, (self.padded_dim + 7) // 8, np.uint8)
        bits = np.unpackbits(keystream.astype(np.uint8), bitorder="little")[: self.padded_dim]
        self._signs: FloatArray = 1.0 - 2.0 * bits.astype(np.float64)
        self._norm = 1.0 / math.sqrt(self.padded_dim)

    def rotate(self, x: npt.ArrayLike) -> FloatArray:
        """``R [x, 0]``: shape ``(..., dim) -> (..., padded_dim)``, float64."""
        v = np.asarray(x, dtype=np.float64)
        if v.shape[-1:] != (self.dim,):
            raise ValueError(f"expected last axis of length {self.dim}, got shape {v.shape}")
        padded = np.zeros((*v.shape[:-1], self.padded_dim), dtype=np.float64)
        padded[..., : self.dim] = v
        padded *= self._signs
        return _fwht(padded) * self._norm

    def unrotate(self, y: npt.ArrayLike) -> FloatArray:
        """``R^T y`` truncated to the first ``dim`` coordinates."""
        v = np.asarray(y, dtype=np.float64)
        if v.shape[-1:] != (self.padded_dim,):
            raise ValueError(f"expected last axis of length {self.padded_dim}, got {v.shape}")
        out = _fwht(v) * self._norm
        out *= self._signs
        return np.ascontiguousarray(out[..., : self.dim])


# --------------------------------------------------------------------------------------------
# Conditional randomized rounding (KLS 2021, Section 4.1, Theorem 2 / Proposition 22)
# --------------------------------------------------------------------------------------------


def rounding_norm_bound(c_scaled: float, dim: int, beta: float) -> float:
    """L2 bound enforced by conditional randomized rounding of a vector of norm <= ``c_scaled``::

        min( c + sqrt(d),  sqrt( c^2 + d/4 + sqrt(2 log(1/beta)) (c + sqrt(d)/2) ) )

    The first term holds always (each coordinate moves by < 1); the second holds for an
    unconditioned randomized rounding with probability >= 1 - beta, so each try of
    :func:`conditional_randomized_round` succeeds with probability >= 1 - beta.
    ``beta = 0`` gives the unconditional bound ``c + sqrt(d)``.
    """
    if not (c_scaled >= 0 and dim >= 1 and 0.0 <= beta < 1.0):
        raise ValueError("need c_scaled >= 0, dim >= 1, 0 <= beta < 1")
    always = c_scaled + math.sqrt(dim)
    if beta == 0.0:
        return always
    conditional = math.sqrt(
        c_scaled**2
        + dim / 4.0
        + math.sqrt(2.0 * math.log(1.0 / beta)) * (c_scaled + math.sqrt(dim) / 2.0)
    )
    return min(always, conditional)


def _exact_sq_norm(r: IntArray) -> int:
    if r.size == 0:
        return 0
    biggest = int(np.max(np.abs(r)))
    if biggest < 2**31 and r.size * biggest * biggest < 2**63:
        return int(np.dot(r, r))
    return sum(int(v) * int(v) for v in r.tolist())


def conditional_randomized_round(
    x: npt.ArrayLike, norm_bound: float, max_tries: int = 1000
) -> IntArray:
    """Round each coordinate of ``x`` up with probability ``frac(x_i)`` (else down), drawing from
    the CSPRNG; repeat until the rounded vector's L2 norm is ``<= norm_bound`` (checked exactly in
    integers and rationals).

    Raises:
        EncodingError: no try met the bound in ``max_tries`` (the input's norm is too large for
            ``norm_bound``: see :func:`rounding_norm_bound`).
    """
    v = np.asarray(x, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(v)):
        raise EncodingError("cannot round NaN or infinite values")
    if np.any(np.abs(v) >= 2.0**62):
        raise EncodingError("values too large to round into int64")
    if max_tries < 1:
        raise ValueError("max_tries must be >= 1")
    if not (norm_bound >= 0 and math.isfinite(norm_bound)):
        raise ValueError("norm_bound must be finite and >= 0")
    floor = np.floor(v)
    frac = v - floor
    base = floor.astype(np.int64)
    limit = Fraction(norm_bound) ** 2
    for _ in range(max_tries):
        uniform = (rng.random_words(v.size, np.uint64) >> np.uint64(11)).astype(np.float64)
        uniform *= 2.0**-53
        rounded = base + (uniform < frac).astype(np.int64)
        if _exact_sq_norm(rounded) <= limit:
            return rounded
    raise EncodingError(
        f"conditional rounding: no rounding of a vector of norm {float(np.linalg.norm(v)):.6g} "
        f"met the bound {norm_bound:.6g} in {max_tries} tries"
    )


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


def _to_rational(value: int | Fraction) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, (int, Fraction)):
        raise ConfigError("sigma2_party must be an int or a Fraction (the exact sampler's input)")
    return Fraction(value)


def _ceil_fraction(value: float, denominator: int = 1 << 10) -> Fraction:
    """The smallest multiple of 1/denominator that is >= value (noise only ever rounds up)."""
    return Fraction(math.ceil(Fraction(value) * denominator), denominator)


@dataclass(frozen=True)
class DDGaussParams:
    """Parameters of one DDGauss aggregation (all parties and the server use the same).

    Attributes:
        clip: L2 clipping norm c of a party's float vector.
        gamma: the grid step: a float is scaled by 1/gamma before rounding; decoding multiplies by
            gamma.
        bits: B, the modulus 2^B of the secure sum.
        sigma2_party: each party's discrete Gaussian parameter sigma^2 (integer domain), an int or
            a Fraction, >= 1/4.
        min_parties: the fewest parties whose vectors can be in a released sum (the threshold, per
            block). The privacy guarantee is computed for a sum over exactly this many parties.
        dim: the length of a party's float vector (the rotation pads it to ``padded_dim``).
        beta: conditional rounding parameter in [0, 1).
        max_parties: the most parties that can be in the sum (sizes the modular range; defaults to
            ``min_parties``).
    """

    clip: float
    gamma: float
    bits: int
    sigma2_party: int | Fraction
    min_parties: int
    dim: int
    beta: float = DEFAULT_BETA
    max_parties: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ConfigError("clip must be positive and finite")
        if not (math.isfinite(self.gamma) and self.gamma > 0):
            raise ConfigError("gamma must be positive and finite")
        if not 2 <= self.bits <= MAX_MODULUS_BITS:
            raise ConfigError(f"bits must be in [2, {MAX_MODULUS_BITS}]")
        if _to_rational(self.sigma2_party) < Fraction(1, 4):
            raise ConfigError("sigma2_party must be >= 1/4 (sigma >= 1/2, KLS 2021 Theorem 1)")
        if self.min_parties < 1 or self.dim < 1:
            raise ConfigError("min_parties and dim must be >= 1")
        if self.max_parties is not None and self.max_parties < self.min_parties:
            raise ConfigError("max_parties must be >= min_parties")
        if not 0.0 <= self.beta < 1.0:
            raise ConfigError("beta must be in [0, 1)")

    # ---- derived quantities ----------------------------------------------------------------

    @property
    def padded_dim(self) -> int:
        return 1 << (self.dim - 1).bit_length()

    @property
    def range_parties(self) -> int:
        return self.min_parties if self.max_parties is None else self.max_parties

    @property
    def modulus(self) -> int:
        return 1 << self.bits

    @property
    def dtype(self) -> np.dtype[np.unsignedinteger]:
        return word_dtype(self.bits)

    @property
    def l2_sensitivity(self) -> float:
        """Integer-domain L2 sensitivity: the conditional rounding bound of ``clip / gamma``."""
        return rounding_norm_bound(self.clip / self.gamma, self.padded_dim, self.beta)

    @property
    def l1_sensitivity(self) -> float:
        return accounting.default_l1_sensitivity(self.l2_sensitivity, self.padded_dim)

    @property
    def total_variance(self) -> Fraction:
        """sigma^2 of the summed noise over exactly ``min_parties`` parties (integer domain)."""
        return self.min_parties * _to_rational(self.sigma2_party)

    @property
    def noise_std(self) -> float:
        """Std of the decoded sum's noise per coordinate (float domain), ``min_parties`` parties."""
        return self.gamma * math.sqrt(self.total_variance)

    def required_range(self, k_stddevs: float = 4.0, rho: float = 1.0) -> float:
        """``2 k sqrt(rho c^2 n^2 / (d gamma^2) + n/4 + n sigma^2)`` with n = ``range_parties``:
        the width of Z_(2^B) that holds k standard deviations of a coordinate of the noisy,
        rounded sum (KLS 2021 Section 4.4, with ``||sum x|| <= n c``)."""
        n, d = self.range_parties, self.padded_dim
        var = rho * (self.clip * n / self.gamma) ** 2 / d + n / 4.0 + n * float(self.sigma2_party)
        return 2.0 * k_stddevs * math.sqrt(var)

    def rdp(
        self, q: float = 1.0, orders: accounting.Orders = accounting.DEFAULT_ORDERS
    ) -> FloatArray:
        """Per-round RDP curve for a sum over exactly ``min_parties`` parties."""
        return accounting.rdp_ddgauss(
            self.l2_sensitivity,
            self.l1_sensitivity,
            float(self.sigma2_party),
            self.min_parties,
            self.padded_dim,
            orders,
            q,
        )

    def epsilon(
        self,
        delta: float,
        steps: int = 1,
        q: float = 1.0,
        orders: accounting.Orders = accounting.DEFAULT_ORDERS,
    ) -> float:
        return accounting.eps_from_rdp(steps * self.rdp(q, orders), orders, delta)[0]

    # ---- calibration -----------------------------------------------------------------------

    @classmethod
    def calibrate(
        cls,
        target_eps: float,
        delta: float,
        steps: int,
        q: float,
        clip: float,
        dim: int,
        min_parties: int,
        bits: int,
        beta: float = DEFAULT_BETA,
        *,
        max_parties: int | None = None,
        k_stddevs: float = 4.0,
        rho: float = 1.0,
        orders: accounting.Orders = accounting.DEFAULT_ORDERS,
    ) -> DDGaussParams:
        """Choose gamma and sigma2_party for ``(target_eps, delta)`` after ``steps`` rounds.

        sigma2_party: the smallest (rounded up to a multiple of 1/1024) such that the sum over
        exactly ``min_parties`` parties meets the target (:func:`accounting.calibrate_ddgauss`).
        gamma: the smallest (finest grid) such that :meth:`required_range` <= 2^B (the paper's
        choice: 2^B = 2k sqrt(rho c^2 n^2/(d gamma^2) + n/4 + n sigma^2), k = 4 there). A finer
        grid raises the integer sensitivity, hence the integer noise, hence the range.

        Raises:
            ConfigError (a ValueError): ``bits`` cannot hold the noisy sum even with a coarse
                grid, or the privacy target is unreachable.
        """
        padded = 1 << (dim - 1).bit_length() if dim >= 1 else 0
        if dim < 1 or min_parties < 1:
            raise ConfigError("dim and min_parties must be >= 1")
        if not 2 <= bits <= MAX_MODULUS_BITS:
            raise ConfigError(f"bits must be in [2, {MAX_MODULUS_BITS}]")
        if not (math.isfinite(clip) and clip > 0):
            raise ConfigError("clip must be positive and finite")
        order_arr = np.asarray(orders, dtype=np.float64)

        def sigma2_for(gamma: float) -> Fraction:
            l2 = rounding_norm_bound(clip / gamma, padded, beta)
            l1 = accounting.default_l1_sensitivity(l2, padded)
            try:
                total = accounting.calibrate_ddgauss(
                    target_eps, delta, steps, q, l2, l1, min_parties, padded, order_arr
                )
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc
            return max(_ceil_fraction(total / min_parties), Fraction(1, 4))

        def build(gamma: float) -> DDGaussParams:
            return cls(
                clip=clip,
                gamma=gamma,
                bits=bits,
                sigma2_party=sigma2_for(gamma),
                min_parties=min_parties,
                dim=dim,
                beta=beta,
                max_parties=max_parties,
            )

        def fits(p: DDGaussParams) -> bool:
            return p.required_range(k_stddevs, rho) <= float(1 << bits)

        # Coarsest useful grid: clip maps to ~1e-3 of a unit; rounding noise then dominates.
        coarse = build(clip * 1e3)
        if not fits(coarse):
            need = math.ceil(math.log2(coarse.required_range(k_stddevs, rho)))
            raise ConfigError(
                f"{bits} bits cannot hold the noisy sum of {coarse.range_parties} parties with "
                f"{k_stddevs} std of headroom even on the coarsest grid (needs about {need} "
                "bits): raise bits, or lower the number of parties, k_stddevs or the privacy"
            )
        lo, hi = clip / float(1 << bits), clip * 1e3  # clip/gamma = 2^B never fits
        best = coarse
        while hi / lo > 1.0 + 1e-3:
            mid = math.sqrt(lo * hi)
            candidate = build(mid)
            if fits(candidate):
                hi, best = mid, candidate
            else:
                lo = mid
        return best


# --------------------------------------------------------------------------------------------
# Client encoding and server decoding
# --------------------------------------------------------------------------------------------


def _discrete_gaussian(sigma2: int | Fraction, size: int) -> IntArray:
    """Exact N_Z(0, sigma2) samples from the CSPRNG (``secagg.dp.samplers``, imported lazily)."""
    samplers = importlib.import_module("secagg.dp.samplers")
    sample = cast(Callable[[int | Fraction, int], Any], samplers.discrete_gaussian)
    return np.asarray(sample(sigma2, size), dtype=np.int64).reshape(size)


def encode_client(
    x: npt.ArrayLike,
    params: DDGaussParams,
    rotation: RandomizedHadamard,
    *,
    noise: bool = True,
    max_tries: int = 1000,
) -> Words:
    """One party's DDGauss message: words of Z_(2^B), ``padded_dim`` of them (see module doc).

    ``noise=False`` is for TESTING ONLY: it releases the party's rounded vector unprotected.
    """
    _check_rotation(params, rotation)
    clipped = clip_l2(np.asarray(x, dtype=np.float64).reshape(-1), params.clip)
    if clipped.size != params.dim:
        raise EncodingError(f"expected a vector of {params.dim} values, got {clipped.size}")
    scaled = rotation.rotate(clipped) / params.gamma
    rounded = conditional_randomized_round(scaled, params.l2_sensitivity, max_tries)
    if noise:
        rounded = rounded + _discrete_gaussian(params.sigma2_party, params.padded_dim)
    return to_ring(rounded, params.bits)


def decode_sum(words: Words, params: DDGaussParams, rotation: RandomizedHadamard) -> FloatArray:
    """The float sum from the secure sum of the parties' messages (mod 2^B)."""
    _check_rotation(params, rotation)
    w = np.asarray(words)
    if w.shape != (params.padded_dim,):
        raise EncodingError(f"expected {params.padded_dim} words, got shape {w.shape}")
    signed = from_ring(w, params.bits).astype(np.float64) * params.gamma
    return rotation.unrotate(signed)


def sum_words(messages: Sequence[Words], bits: int) -> Words:
    """Plain modular sum of messages (what the secure sum reveals); for tests and simulations."""
    dtype = word_dtype(bits)
    total = np.zeros(np.asarray(messages[0]).shape, dtype=dtype)
    for m in messages:
        total += np.asarray(m, dtype=dtype)
    return reduce(total, bits)


def _check_rotation(params: DDGaussParams, rotation: RandomizedHadamard) -> None:
    if rotation.dim != params.dim:
        raise ConfigError(f"rotation is for dim {rotation.dim}, params for dim {params.dim}")


def min_contributions(config: RoundConfig) -> int:
    """The fewest inputs any sum revealed by this round can contain.

    Whole-vector rounds: t + 1, because every survivor needs t surviving neighbours to hold the
    shares of its self-mask seed (a party holds no share of its own secrets), so the server
    aborts below t + 1 survivors. Part-wise rounds reveal one sum per block, of at least
    ``min_holders`` surviving holders.
    """
    return config.blocks.min_holders if config.part_wise else config.threshold + 1


def check_noise_floor(config: RoundConfig, noise_parties: int) -> None:
    """Refuse a round whose released sums could carry less noise than calibrated.

    Each party adds 1/``noise_parties`` of the target variance, so every sum the server can
    learn must contain at least ``noise_parties`` contributions (:func:`min_contributions`).

    Raises:
        ConfigError: the round could reveal a sum of fewer contributions.
    """
    floor = min_contributions(config)
    if floor < noise_parties:
        raise ConfigError(
            f"noise is calibrated for sums of at least {noise_parties} parties, but this round"
            f" may reveal a sum of {floor} (threshold {config.threshold}"
            + (f", min_holders {config.blocks.min_holders}" if config.part_wise else "")
            + "): raise the threshold / min_holders or recalibrate the noise"
        )


# --------------------------------------------------------------------------------------------
# Part-wise rounds: noise per block, calibrated to the block's guaranteed holders
# --------------------------------------------------------------------------------------------


def block_noise_floors(
    holders: npt.ArrayLike, parties: int, threshold: int, min_holders: int
) -> IntArray:
    """How many of each block's holders are guaranteed to be in any sum the engine releases.

    The engine completes a round only with at least t + 1 survivors (each survivor needs t
    surviving neighbours holding shares of its self-mask seed; an honest party refuses with fewer)
    and reveals a block only with at least ``min_holders`` surviving holders (the server and every
    honest party check it before unmasking). So at most ``parties - t - 1`` parties drop, and
    block b keeps at least ``max(min_holders, holders_b - (parties - t - 1))`` of its holders.
    Blocks nobody holds get 0 (nothing is released for them).
    """
    h = np.asarray(holders, dtype=np.int64)
    most_dropped = max(0, parties - threshold - 1)
    floors = np.maximum(min_holders, h - most_dropped)
    floors = np.minimum(floors, h)
    out: IntArray = np.where(h > 0, floors, 0).astype(np.int64)
    return out


def block_sigma2(sigma2_total: int | Fraction, floors: npt.ArrayLike) -> list[Fraction]:
    """Per-holder discrete Gaussian parameter of every block: ``ceil(T / floor_b)`` (multiples of
    1/1024, rounded up), so the sum over any ``floor_b`` holders carries at least ``T``; a thinner
    block gets more noise per holder, never less in total. Unheld blocks (floor 0) get 0.
    """
    total = _to_rational(sigma2_total)
    if total <= 0:
        raise ConfigError(f"sigma2_total must be positive, got {total}")
    out = []
    for f in np.asarray(floors, dtype=np.int64).tolist():
        if f < 0:
            raise ConfigError(f"a block's noise floor must be >= 0, got {f}")
        out.append(Fraction(0) if f == 0 else max(_ceil_fraction(total / f), Fraction(1, 4)))
    return out


def encode_blocks(
    values: npt.ArrayLike,
    block_sizes: Sequence[int],
    sigma2: Sequence[int | Fraction],
    *,
    clip: float,
    scale: float,
    norm_bound: float,
    bits: int,
    max_tries: int = 1000,
) -> Words:
    """One party's DDGauss message on its blocks (part-wise rounds, no rotation).

    ``values`` are the party's blocks concatenated (``block_sizes[i]`` values for its i-th
    block): clipped to L2 norm ``clip`` over the whole part, scaled by ``scale / clip``, rounded
    conditionally so the integer vector's L2 norm is at most ``norm_bound`` (the sensitivity the
    accountant uses, KLS 2021 section 4.1), then N_Z(0, ``sigma2[i]``) is added to every
    coordinate of block i (exact sampler, CSPRNG, integers) and the result reduced mod 2^bits.
    Without rotation one party's rounded coordinate is at most ``norm_bound`` in magnitude, so
    the caller sizes the modulus deterministically for the signal (privacy never depends on it).
    """
    sizes = [int(s) for s in block_sizes]
    if len(sigma2) != len(sizes):
        raise EncodingError(f"{len(sizes)} blocks but {len(sigma2)} noise parameters")
    if not (math.isfinite(scale) and scale > 0):
        raise ConfigError(f"scale must be positive and finite, got {scale}")
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size != sum(sizes):
        raise EncodingError(f"expected {sum(sizes)} values for the blocks, got {v.size}")
    clipped = clip_l2(v, clip)
    out = conditional_randomized_round(clipped * (scale / clip), norm_bound, max_tries)
    starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
    lengths = np.asarray(sizes, dtype=np.int64)
    for s2 in sorted(set(sigma2)):
        chosen = np.flatnonzero([x == s2 for x in sigma2])
        if _to_rational(s2) < Fraction(1, 4):
            raise ConfigError(f"a held block needs sigma2 >= 1/4, got {s2}")
        cols = np.concatenate(
            [np.arange(starts[i], starts[i] + lengths[i], dtype=np.int64) for i in chosen]
        )
        try:
            out[cols] += _discrete_gaussian(s2, cols.size)
        except ValueError as exc:  # the exact sampler's range (numerator <= 2^51)
            raise ConfigError(f"sigma2={s2} is outside the exact sampler's range: {exc}") from None
    return to_ring(out, bits)

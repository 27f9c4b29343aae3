"""Flower's SecAgg+ quantisation, reproduced exactly except for the randomness source.

Flower 1.42 (``flwr.client.mod.secaggplus_mod._collect_masked_vectors`` and
``flwr.common.secure_aggregation.quantization``) uploads ``[w, q(w * x)]`` where
``w = round(num_examples / max_weight * Q) `` (Q = ``quantization_range``) and
``q(v) = stochastic_round((clip(v, -c, c) + c) * Q / (2c))`` lies in [0, Q]. The server sums
modulo M, reads the total weight from coordinate 0, maps the rest back with ``* 2c/Q - n c``
(n survivors) and divides by the total weight: the weighted mean, within Flower's own
quantisation error (one step 2c/Q per summand).

The one deliberate difference: Flower rounds with ``numpy.random.rand`` (Mersenne Twister); we
draw the rounding bits from the CSPRNG (:mod:`secagg.crypto.rng`), as every noise sample in this
library. The sum must also fit: n Q < 2^B, so :func:`modulus_bits` widens Flower's
``modulus_range`` when the cohort needs it instead of letting the sum wrap around silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from secagg.crypto import rng
from secagg.dp.mechanisms import DDGaussParams, RandomizedHadamard
from secagg.encoding import MAX_MODULUS_BITS, word_dtype
from secagg.errors import ConfigError, EncodingError


@dataclass(frozen=True)
class FlowerQuantizer:
    """Flower's quantisation parameters (the workflow's keyword arguments of the same names)."""

    clipping_range: float = 8.0
    quantization_range: int = 4194304
    max_weight: float = 1000.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clipping_range) and self.clipping_range > 0):
            raise ConfigError(
                f"clipping_range must be positive and finite, got {self.clipping_range}"
            )
        if isinstance(self.quantization_range, bool) or not isinstance(
            self.quantization_range, int
        ):
            raise ConfigError(
                f"quantization_range must be an integer, got {self.quantization_range!r}"
            )
        if not 0 < self.quantization_range < 2**52:
            raise ConfigError(
                f"quantization_range must be in (0, 2^52), got {self.quantization_range}"
            )
        if not (math.isfinite(self.max_weight) and self.max_weight > 0):
            raise ConfigError(f"max_weight must be positive and finite, got {self.max_weight}")

    def weight_factor(self, num_examples: int) -> int:
        """Flower's quantised weight ``round(num_examples / max_weight * Q)``.

        Raises:
            EncodingError: ``num_examples`` exceeds ``max_weight`` (Flower only warns, and the sum
                may then wrap; we refuse, naming both numbers).
        """
        ratio = num_examples / self.max_weight
        if not 0 <= ratio <= 1:
            raise EncodingError(
                f"num_examples={num_examples} is outside [0, max_weight={self.max_weight}]:"
                " raise max_weight on the workflow"
            )
        return round(ratio * self.quantization_range)

    def quantize(
        self, arrays: list[npt.NDArray[np.floating]], num_examples: int, modulus_bits: int
    ) -> npt.NDArray[np.unsignedinteger]:
        """The flat word vector ``[w, q(w/Q * x)]`` a node masks (Flower's layout)."""
        q_ratio = self.weight_factor(num_examples)
        dq_ratio = q_ratio / self.quantization_range
        flat = np.concatenate(
            [np.asarray(a, dtype=np.float64).ravel() for a in arrays]
            or [np.zeros(0, dtype=np.float64)]
        )
        if not np.all(np.isfinite(flat)):
            raise EncodingError("cannot quantise NaN or infinite parameters")
        c, Q = self.clipping_range, self.quantization_range
        scaled = (np.clip(flat * dq_ratio, -c, c) + c) * (Q / (2 * c))
        floor = np.floor(scaled)
        # Unbiased stochastic rounding from 53 CSPRNG bits per coordinate.
        uniform = (rng.random_words(flat.size, np.uint64) >> np.uint64(11)).astype(np.float64)
        uniform *= 2.0**-53
        values = np.clip(floor + (uniform < scaled - floor), 0, Q).astype(np.uint64)
        out = np.empty(flat.size + 1, dtype=word_dtype(modulus_bits))
        out[0] = q_ratio
        out[1:] = values
        return out

    def dequantize(
        self,
        total: npt.NDArray[np.unsignedinteger],
        survivors: int,
        shapes: list[tuple[int, ...]],
    ) -> list[npt.NDArray[np.float64]]:
        """Flower's server-side mapping of the modular sum back to the weighted mean.

        Raises:
            EncodingError: the total weight is zero (no survivor reported any example).
        """
        words = np.asarray(total, dtype=np.uint64)
        q_total = int(words[0])
        if q_total == 0:
            raise EncodingError("the survivors' total weight is zero: no weighted mean exists")
        c, Q = self.clipping_range, self.quantization_range
        flat = words[1:].astype(np.float64) * (2 * c / Q) - survivors * c
        flat *= Q / q_total
        out: list[npt.NDArray[np.float64]] = []
        pos = 0
        for shape in shapes:
            size = math.prod(shape)
            out.append(flat[pos : pos + size].reshape(shape))
            pos += size
        return out

    def modulus_bits(self, modulus_range: int, cohort: int) -> int:
        """B = log2(modulus_range), widened so that a sum of ``cohort`` values in [0, Q] fits.

        Raises:
            ConfigError: ``modulus_range`` is not a power of two, or the sum needs more than 62
                bits (the float conversion of the sum must stay exact).
        """
        if isinstance(modulus_range, bool) or not isinstance(modulus_range, int):
            raise ConfigError(f"modulus_range must be an integer, got {modulus_range!r}")
        if modulus_range <= self.quantization_range or modulus_range & (modulus_range - 1):
            raise ConfigError(
                f"modulus_range must be a power of 2 above quantization_range, got {modulus_range}"
            )
        needed = max(2, (cohort * self.quantization_range).bit_length())
        bits = max(modulus_range.bit_length() - 1, needed)
        if bits > min(62, MAX_MODULUS_BITS):
            raise ConfigError(
                f"a sum of {cohort} values in [0, {self.quantization_range}] needs {bits} bits:"
                " lower quantization_range"
            )
        return bits


def split_shapes(
    flat: npt.NDArray[np.float64], shapes: list[tuple[int, ...]]
) -> list[npt.NDArray[np.float64]]:
    """A flat vector cut into arrays of ``shapes``."""
    out: list[npt.NDArray[np.float64]] = []
    pos = 0
    for shape in shapes:
        size = math.prod(shape)
        out.append(np.asarray(flat[pos : pos + size]).reshape(shape))
        pos += size
    return out


def dp_fields(params: DDGaussParams, rotation_seed: bytes) -> dict[str, object]:
    """DDGauss parameters and the rotation seed as plain fields (sent to the nodes at setup)."""
    return {
        "clip": params.clip,
        "gamma": params.gamma,
        "bits": params.bits,
        "sigma2_party": str(Fraction(params.sigma2_party)),
        "min_parties": params.min_parties,
        "dim": params.dim,
        "beta": params.beta,
        "max_parties": params.max_parties,
        "rotation_seed": rotation_seed,
    }


def dp_from_fields(fields: dict[str, object]) -> tuple[DDGaussParams, RandomizedHadamard]:
    """Inverse of :func:`dp_fields` (validated by ``DDGaussParams``).

    Raises:
        ConfigError: malformed fields.
    """
    try:
        params = DDGaussParams(
            clip=float(fields["clip"]),  # type: ignore[arg-type]
            gamma=float(fields["gamma"]),  # type: ignore[arg-type]
            bits=int(fields["bits"]),  # type: ignore[call-overload]
            sigma2_party=Fraction(str(fields["sigma2_party"])),
            min_parties=int(fields["min_parties"]),  # type: ignore[call-overload]
            dim=int(fields["dim"]),  # type: ignore[call-overload]
            beta=float(fields["beta"]),  # type: ignore[arg-type]
            max_parties=None
            if fields["max_parties"] is None
            else int(fields["max_parties"]),  # type: ignore[call-overload]
        )
        seed = fields["rotation_seed"]
        if not isinstance(seed, bytes):
            raise TypeError("rotation seed must be bytes")
        return params, RandomizedHadamard(seed, params.dim)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"bad distributed-DP parameters: {exc}") from None


def flat_size(shapes: list[tuple[int, ...]]) -> int:
    """Coordinates of the flat vector: 1 (the weight) + every parameter."""
    return 1 + sum(math.prod(s) for s in shapes)

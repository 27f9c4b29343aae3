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
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from secagg.config import RoundConfig
from secagg.crypto import rng
from secagg.dp.mechanisms import DDGaussParams, RandomizedHadamard
from secagg.encoding import MAX_MODULUS_BITS, word_dtype
from secagg.errors import ConfigError, EncodingError, LocalProtocolError, RemoteProtocolError
from secagg.layout import concat_ranges

FloatArray = npt.NDArray[np.float64]


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

    def weight_factor(self, num_examples: float) -> int:
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
        q_ratio, values = self.scale_and_round(_flatten(arrays), num_examples)
        out = np.empty(values.size + 1, dtype=word_dtype(modulus_bits))
        out[0] = q_ratio
        out[1:] = values
        return out

    def scale_and_round(
        self, flat: npt.NDArray[np.float64], num_examples: float
    ) -> tuple[int, npt.NDArray[np.uint64]]:
        """Flower's weight factor ``w`` and ``q(w/Q * x)`` of every coordinate, in [0, Q].

        Raises:
            EncodingError: NaN or infinite values, or ``num_examples`` above ``max_weight``.
        """
        q_ratio = self.weight_factor(num_examples)
        dq_ratio = q_ratio / self.quantization_range
        if not np.all(np.isfinite(flat)):
            raise EncodingError("cannot quantise NaN or infinite parameters")
        c, Q = self.clipping_range, self.quantization_range
        scaled = (np.clip(flat * dq_ratio, -c, c) + c) * (Q / (2 * c))
        floor = np.floor(scaled)
        # Unbiased stochastic rounding from 53 CSPRNG bits per coordinate.
        uniform = (rng.random_words(flat.size, np.uint64) >> np.uint64(11)).astype(np.float64)
        uniform *= 2.0**-53
        values = np.clip(floor + (uniform < scaled - floor), 0, Q).astype(np.uint64)
        return q_ratio, values

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
        return split_shapes(self.dequantize_flat(total, survivors), shapes)

    def dequantize_flat(
        self, total: npt.NDArray[np.unsignedinteger], survivors: int
    ) -> npt.NDArray[np.float64]:
        """:meth:`dequantize` as one flat vector (every coordinate after the weight).

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
        return flat

    def error_bound(self, summands: int, q_total: int) -> float:
        """Largest error of one dequantised coordinate: one step ``2c/Q`` per summand from the
        stochastic rounding, over the total weight (``q_total``, the sum of the survivors'
        ``w``; divide by ``metric_scale`` for a securely aggregated metric)."""
        return summands * 2.0 * self.clipping_range / q_total

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


def _flatten(arrays: list[npt.NDArray[np.floating]]) -> npt.NDArray[np.float64]:
    return np.concatenate(
        [np.asarray(a, dtype=np.float64).ravel() for a in arrays] or [np.zeros(0, dtype=np.float64)]
    )


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
            max_parties=None if fields["max_parties"] is None else int(fields["max_parties"]),  # type: ignore[call-overload]
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


@dataclass(frozen=True)
class UpdateLayout:
    """Where a node's FitRes goes in the vector it masks: parameters, securely aggregated
    metrics and, for part-wise rounds, per-block weights. Built by the workflow, sent to every
    node at setup (:meth:`to_fields`) and checked by the node against the round configuration.

    Whole-vector rounds (``block_size is None``) keep Flower's layout and append the metrics:
    ``[w, q(w/Q x_1), ..., q(w/Q x_P), q(w/Q s m_1), ...]``, with ``s = c / metric_range`` (each
    metric clipped to [-metric_range, metric_range], then carried on Flower's grid like a
    parameter). Part-wise rounds cut the P parameters into consecutive blocks of ``block_size``
    (the last one shorter); engine block b is
    ``[w, q(w/Q x_b)]``, so the server learns each block's total weight over exactly the
    surviving holders it learns the block's sum over, and the metrics, when any, form one last
    block ``[w, q(w/Q s m)]`` held by every node.

    Attributes:
        num_params: P, the model's coordinates.
        metric_names: the fit metrics aggregated inside the masked vector, in order.
        metric_range: R, the largest absolute metric value carried unclipped.
        block_size: coordinates per part-wise block, or None (the whole vector).
        weighted: weight by ``num_examples`` (Flower's mean); False gives every node the weight
            ``max_weight`` (the plain mean), so no sum of example counts is ever revealed.
    """

    num_params: int
    metric_names: tuple[str, ...] = ()
    metric_range: float = 100.0
    block_size: int | None = None
    weighted: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.num_params, bool) or not isinstance(self.num_params, int):
            raise ConfigError(f"num_params must be an integer, got {self.num_params!r}")
        if self.num_params < 1:
            raise ConfigError(f"num_params must be positive, got {self.num_params}")
        if len(set(self.metric_names)) != len(self.metric_names) or not all(
            isinstance(m, str) and m for m in self.metric_names
        ):
            raise ConfigError(
                f"secure_metrics must be distinct non-empty names, got {self.metric_names!r}"
            )
        if not (math.isfinite(self.metric_range) and self.metric_range > 0):
            raise ConfigError(
                f"metric_range must be positive and finite, got {self.metric_range!r}"
            )
        if self.block_size is not None and (
            isinstance(self.block_size, bool)
            or not isinstance(self.block_size, int)
            or self.block_size < 1
        ):
            raise ConfigError(f"block_size must be a positive integer, got {self.block_size!r}")
        if not isinstance(self.weighted, bool):
            raise ConfigError(f"weighted must be a bool, got {self.weighted!r}")

    @property
    def partwise(self) -> bool:
        return self.block_size is not None

    @property
    def model_blocks(self) -> tuple[int, ...]:
        """Coordinates of each part-wise model block (the whole model when not part-wise)."""
        if self.block_size is None:
            return (self.num_params,)
        full, rest = divmod(self.num_params, self.block_size)
        return (self.block_size,) * full + ((rest,) if rest else ())

    @property
    def engine_block_sizes(self) -> tuple[int, ...]:
        """The engine's :class:`~secagg.layout.BlockLayout` block sizes (part-wise rounds):
        every model block plus its weight word, then the metric block (if any metric)."""
        sizes = tuple(s + 1 for s in self.model_blocks)
        if self.metric_names:
            sizes += (1 + len(self.metric_names),)
        return sizes

    @property
    def dim(self) -> int:
        """Length of the vector the engine sums."""
        if self.block_size is None:
            return 1 + self.num_params + len(self.metric_names)
        return sum(self.engine_block_sizes)

    def metric_scale(self, clipping_range: float) -> float:
        """s = c / R: a metric of R lands on Flower's clipping bound c."""
        return clipping_range / self.metric_range

    def to_fields(self) -> dict[str, object]:
        return {
            "num_params": self.num_params,
            "metric_names": list(self.metric_names),
            "metric_range": float(self.metric_range),
            "block_size": self.block_size,
            "weighted": self.weighted,
        }

    @classmethod
    def from_fields(cls, fields: object) -> UpdateLayout:
        """Inverse of :meth:`to_fields`.

        Raises:
            RemoteProtocolError: malformed fields (they come from the server).
        """
        try:
            if not isinstance(fields, dict):
                raise TypeError("not a dict")
            names = fields["metric_names"]
            if not isinstance(names, list):
                raise TypeError("metric_names is not a list")
            return cls(
                num_params=fields["num_params"],
                metric_names=tuple(names),
                metric_range=float(fields["metric_range"]),
                block_size=fields["block_size"],
                weighted=fields["weighted"],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RemoteProtocolError(f"setup: malformed update layout: {exc}") from None

    def check(self, config: RoundConfig) -> None:
        """The node's check that the round configuration matches this layout.

        Raises:
            RemoteProtocolError: the configuration's vector or blocks disagree with the layout,
                or the metric block is not held by every node.
        """
        layout = config.layout
        if config.dim != self.dim:
            raise RemoteProtocolError(
                f"setup: the update layout needs {self.dim} coordinates, the round has {config.dim}"
            )
        if self.block_size is None:
            if layout is not None and not layout.is_whole():
                raise RemoteProtocolError("setup: a part-wise configuration for a whole update")
            return
        if layout is None or layout.block_sizes != self.engine_block_sizes:
            raise RemoteProtocolError("setup: the round's blocks do not match the update layout")
        metric_block = len(self.model_blocks)
        if self.metric_names and any(metric_block not in h for h in layout.holding_sets):
            # The metrics' mean must cover every survivor, never a subgroup.
            raise RemoteProtocolError("setup: the metric block is not held by every node")

    def metric_vector(self, metrics: Mapping[str, object], clipping_range: float) -> FloatArray:
        """The node's metrics, clipped to [-R, R] and scaled by ``c / R``.

        Raises:
            LocalProtocolError: a metric is missing or not a number.
            EncodingError: a metric is NaN or infinite.
        """
        out = np.empty(len(self.metric_names), dtype=np.float64)
        for i, name in enumerate(self.metric_names):
            value = metrics.get(name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                # The value itself stays out of the message: the error reply reaches the server.
                raise LocalProtocolError(
                    f"the ClientApp's fit returned no numeric metric {name!r}, which the round"
                    " aggregates securely"
                )
            out[i] = float(value)
        if not np.all(np.isfinite(out)):
            raise EncodingError("a securely aggregated metric is NaN or infinite")
        np.clip(out, -self.metric_range, self.metric_range, out=out)
        return out * self.metric_scale(clipping_range)

    def encode(
        self,
        quantizer: FlowerQuantizer,
        arrays: list[npt.NDArray[np.floating]],
        num_examples: int,
        metrics: Mapping[str, object],
        blocks: tuple[int, ...] | None,
        modulus_bits: int,
    ) -> npt.NDArray[np.unsignedinteger]:
        """The words a node masks: its whole vector, or only its ``blocks`` (part-wise).

        Raises:
            LocalProtocolError: wrong number of parameters, or a missing metric.
            EncodingError: see :meth:`FlowerQuantizer.scale_and_round`.
        """
        flat = _flatten(arrays)
        if flat.size != self.num_params:
            raise LocalProtocolError(
                f"the ClientApp returned {flat.size} parameters, the round expects"
                f" {self.num_params}"
            )
        extra = self.metric_vector(metrics, quantizer.clipping_range)
        examples = num_examples if self.weighted else quantizer.max_weight
        q_ratio, values = quantizer.scale_and_round(np.concatenate([flat, extra]), examples)
        dtype = word_dtype(modulus_bits)
        if self.block_size is None:
            return np.concatenate([np.asarray([q_ratio], dtype=np.uint64), values]).astype(dtype)
        # Block b covers values[offsets[b]:offsets[b + 1]]; the block after the model blocks
        # is the metric block, values[P:].
        ends = np.cumsum((*self.model_blocks, len(self.metric_names)))
        offsets = np.concatenate([[0], ends])
        pieces: list[npt.NDArray[np.uint64]] = []
        weight = np.asarray([q_ratio], dtype=np.uint64)
        for b in blocks if blocks is not None else range(len(self.engine_block_sizes)):
            pieces += [weight, values[offsets[b] : offsets[b + 1]]]
        return np.concatenate(pieces).astype(dtype)

    def decode(
        self,
        quantizer: FlowerQuantizer,
        total: npt.NDArray[np.unsignedinteger],
        survivors: int,
        block_survivors: tuple[int, ...],
        current: npt.NDArray[np.float64],
    ) -> tuple[npt.NDArray[np.float64], dict[str, float], npt.NDArray[np.int64]]:
        """The server's side: per coordinate, the weighted mean over the survivors holding it.

        Args:
            total: the engine's sum.
            survivors: nodes in the sum (whole-vector rounds).
            block_survivors: per engine block, its surviving holders (part-wise rounds).
            current: the global parameters, kept where a block has no surviving holder.

        Returns:
            (parameters, metrics' weighted means, surviving holders per parameter).

        Raises:
            EncodingError: the survivors' total weight is zero.
        """
        c, Q = quantizer.clipping_range, quantizer.quantization_range
        words = np.asarray(total, dtype=np.uint64)
        P, m = self.num_params, len(self.metric_names)
        unscale = 1.0 / self.metric_scale(c)
        if self.block_size is None:
            whole = quantizer.dequantize_flat(words, survivors)
            means = {
                n: float(v) * unscale for n, v in zip(self.metric_names, whole[P:], strict=True)
            }
            return whole[:P], means, np.full(P, survivors, dtype=np.int64)
        sizes = np.asarray(self.engine_block_sizes, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)])[:-1]
        weights = words[starts].astype(np.float64)
        holders = np.asarray(block_survivors, dtype=np.int64)
        nb = len(self.model_blocks)
        model = np.asarray(self.model_blocks, dtype=np.int64)
        value_pos = concat_ranges(starts[:nb] + 1, model)
        per_weight = np.repeat(weights[:nb], model)
        per_holders = np.repeat(holders[:nb], model)
        known = (per_holders > 0) & (per_weight > 0)
        flat = words[value_pos].astype(np.float64) * (2 * c / Q) - per_holders * c
        flat = np.where(known, flat * Q / np.where(known, per_weight, 1.0), current)
        metrics: dict[str, float] = {}
        if m:
            w_m = float(weights[nb])
            if w_m == 0:
                raise EncodingError("the survivors' total weight is zero: no weighted mean exists")
            seg = words[starts[nb] + 1 : starts[nb] + 1 + m].astype(np.float64)
            mean = (seg * (2 * c / Q) - holders[nb] * c) * (Q / w_m) * unscale
            metrics = {n: float(v) for n, v in zip(self.metric_names, mean, strict=True)}
        return flat, metrics, np.where(known, per_holders, 0)

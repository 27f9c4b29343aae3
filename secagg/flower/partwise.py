"""Part-wise secure aggregation over Flower's Grid (the random parameter-part protocol).

Each node holds its own random part of the model this round (a set of blocks) and gets its own
message with that part: Flower's message API sends per-node content. The node trains, and its
ClientApp replies with its change on the part in the ArrayRecord ``"secagg.update"``
(``values``, and ``uploaded`` flags with a count channel); :func:`secaggplus_mod
<secagg.flower.secaggplus_mod>` encodes and masks it. The server learns, per block, only the sum
over that block's surviving holders (ARCHITECTURE.md, "Part-wise secure aggregation"), and the
engine refuses to reveal any block with fewer than ``min_holders`` surviving holders.

The graph is complete among the round's nodes (the cross-silo case; the simple safe choice for
part-wise masking, where a sparse graph could leave a block's holder without a masked neighbour
that also holds the block).

Distributed DP (optional, ``dp=``): every node clips its change on its part to an L2 norm, scales
and rounds it to integers, and adds discrete Gaussian noise to each of its blocks from the
CSPRNG, in the integer domain, before masking (Kairouz, Liu, Steinke 2021; the node side is
``_encode_update`` in :mod:`secagg.flower.mod`). So every block sum the server can unmask is
already noised. Each block's noise is calibrated to the holders guaranteed to be in any sum the
engine releases (:func:`~secagg.dp.mechanisms.block_noise_floors`, as issue 11's trainer does):
the sum over them carries at least the target variance T. :class:`PartwiseDPAccountant` keeps the
Renyi-DP spent across rounds and refuses a round past the budget before anything is sent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt

from secagg import encoding
from secagg import graph as graphs
from secagg.config import RoundConfig
from secagg.crypto import rng
from secagg.dp import accounting
from secagg.dp.mechanisms import (
    DEFAULT_BETA,
    block_noise_floors,
    block_sigma2,
    check_noise_floor,
    rounding_norm_bound,
)
from secagg.errors import (
    ConfigError,
    PrivacyBudgetError,  # one budget error for both Flower paths
)
from secagg.flower.driver import EngineRound, RoundReport
from secagg.flower.mod import FIXED_POINT, UPDATE_RECORD
from secagg.layout import BlockLayout

try:
    from flwr.app import RecordDict
    from flwr.serverapp.grid import Grid
except ImportError as exc:  # pragma: no cover
    raise ImportError("secagg.flower needs the 'flower' extra") from exc

__all__ = [
    "UPDATE_RECORD",
    "DPRound",
    "PartwiseDP",
    "PartwiseDPAccountant",
    "PartwiseResult",
    "PrivacyBudgetError",
    "RoundNoise",
    "partwise_aggregate",
]


#: The largest total variance T (integer domain) a round is calibrated to (see ``_calibrate``).
_MAX_SIGMA2 = float(2**40)


@dataclass(frozen=True)
class PartwiseDP:
    """Distributed-DP settings of a part-wise run (the ServerApp's ``dp-*`` run-config keys).

    Privacy unit: one node's update in one round (its change on its part, computed from its local
    data), add/remove adjacency: the node's contribution against none. Who holds which blocks and
    who survived are public. The noise is calibrated so that ``rounds`` rounds with the same
    cohort shape spend at most (``epsilon``, ``delta``); the accountant composes the rounds
    actually run.

    Attributes:
        epsilon, delta: the budget of the whole run.
        clip: L2 norm each node's change on its part is clipped to (all its blocks together).
        rounds: the rounds the budget is calibrated for.
        bits: modulus 2^bits of the noisy sums.
        beta: conditional-rounding parameter (KLS 2021 section 4.1).
        headroom: standard deviations of the summed noise kept inside the modulus, above the
            deterministic bound of the rounded signal (a wrap would hurt accuracy, not privacy).
    """

    epsilon: float
    delta: float = 1e-5
    clip: float = 1.0
    rounds: int = 1
    bits: int = 32
    beta: float = DEFAULT_BETA
    headroom: float = 8.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ConfigError(f"dp epsilon must be positive and finite, got {self.epsilon}")
        if not 0 < self.delta < 1:
            raise ConfigError(f"dp delta must be in (0, 1), got {self.delta}")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ConfigError(f"dp clip must be positive and finite, got {self.clip}")
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise ConfigError(f"dp rounds must be an int >= 1, got {self.rounds!r}")
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise ConfigError(f"dp bits must be an int, got {self.bits!r}")
        if not 16 <= self.bits <= encoding.MAX_MODULUS_BITS:
            raise ConfigError(
                f"dp bits must be in [16, {encoding.MAX_MODULUS_BITS}], got {self.bits}"
            )
        if not 0 <= self.beta < 1:
            raise ConfigError(f"dp beta must be in [0, 1), got {self.beta}")
        if not (math.isfinite(self.headroom) and self.headroom > 0):
            raise ConfigError(f"dp headroom must be positive and finite, got {self.headroom}")


@dataclass(frozen=True)
class RoundNoise:
    """The noise of one part-wise DP round (integer domain unless said otherwise).

    Attributes:
        scale: a change of L2 norm ``clip`` becomes an integer vector of norm about ``scale``.
        norm_bound: Delta_2, the L2 bound of a node's rounded vector (the sensitivity).
        sigma2_total: T, the variance every released block sum carries at least.
        floors: per block, the holders guaranteed to be in any released sum (0: unheld).
        sigma2: per block, the discrete Gaussian parameter each holder adds.
        worst_floor: the largest floor (the accounting's worst case).
        rdp: the round's RDP curve at :data:`secagg.dp.accounting.DEFAULT_ORDERS`.
    """

    scale: float
    norm_bound: float
    sigma2_total: Fraction
    floors: tuple[int, ...]
    sigma2: tuple[Fraction, ...]
    worst_floor: int
    rdp: tuple[float, ...]

    def meta(self, clip: float, beta: float) -> dict[str, object]:
        """What every node receives at setup; each node derives the floors and its per-block
        noise itself from the configuration (so a thin block cannot be given less noise)."""
        return {
            "clip": float(clip),
            "scale": float(self.scale),
            "beta": float(beta),
            "sigma2_total": str(self.sigma2_total),
        }


@dataclass
class PartwiseDPAccountant:
    """The server's privacy ledger across the rounds of one run.

    :meth:`plan` calibrates a round's noise to its cohort and refuses it
    (:class:`PrivacyBudgetError`) if composing it would exceed the budget; :meth:`charge`
    records it. ``spent`` is the (epsilon, delta) of every round charged so far (RDP
    composition, Canonne-Kamath-Steinke conversion).
    """

    settings: PartwiseDP
    accountant: accounting.RDPAccountant = field(default_factory=accounting.RDPAccountant)
    history: list[tuple[float, float]] = field(default_factory=list)
    _cache: dict[tuple[Any, ...], RoundNoise] = field(default_factory=dict, repr=False)

    @property
    def rounds_charged(self) -> int:
        return self.accountant.steps

    @property
    def spent(self) -> tuple[float, float]:
        """(epsilon, delta) spent so far; (0, delta) before any round."""
        if self.accountant.steps == 0:
            return 0.0, self.settings.delta
        return self.accountant.get_epsilon(self.settings.delta), self.settings.delta

    def epsilon_after(self, noise: RoundNoise) -> float:
        """The epsilon spent if ``noise``'s round were charged now."""
        rdp = self.accountant.rdp + np.asarray(noise.rdp)
        return accounting.eps_from_rdp(rdp, self.accountant.orders, self.settings.delta)[0]

    def plan(
        self,
        holder_counts: Sequence[int],
        parties: int,
        threshold: int,
        min_holders: int,
        dim: int,
    ) -> RoundNoise:
        """Calibrate one round (``holder_counts`` per block of a ``dim``-coordinate model).

        Raises:
            PrivacyBudgetError: the round would take the spent epsilon past the budget.
            ConfigError: ``bits`` cannot hold the noisy sums.
        """
        counts = tuple(int(c) for c in holder_counts)
        key = (counts, parties, threshold, min_holders, dim)
        noise = self._cache.get(key)
        if noise is None:
            noise = self._calibrate(counts, parties, threshold, min_holders, dim)
            self._cache[key] = noise
        after = self.epsilon_after(noise)
        # The bisection stops within 1e-6 relative of the target: allow that, nothing more.
        if after > self.settings.epsilon * (1 + 1e-6):
            raise PrivacyBudgetError(
                f"dp epsilon={self.settings.epsilon} (delta {self.settings.delta}): round"
                f" {self.rounds_charged + 1} would spend epsilon {after:.4f} in total after"
                f" {self.spent[0]:.4f} so far; the run is calibrated for dp rounds="
                f"{self.settings.rounds}"
            )
        return noise

    def charge(self, noise: RoundNoise) -> tuple[float, float]:
        """Record a round that ran (even one that aborted: conservative); returns ``spent``."""
        self.accountant.step(np.asarray(noise.rdp))
        self.history.append(self.spent)
        return self.spent

    def _calibrate(
        self,
        counts: tuple[int, ...],
        parties: int,
        threshold: int,
        min_holders: int,
        dim: int,
    ) -> RoundNoise:
        cfg = self.settings
        floors = block_noise_floors(np.asarray(counts), parties, threshold, min_holders)
        held = np.asarray(counts) > 0
        if not held.any():
            raise ConfigError("dp: no block is held this round")
        worst = int(floors[held].max())
        most = max(counts)
        half = float(2 ** (cfg.bits - 1)) - 1.0
        orders = self.accountant.orders
        # The finest grid the modulus holds: per coordinate, the holders' rounded values (each at
        # most Delta_2 in magnitude) plus ``headroom`` std of their summed noise must stay below
        # 2^(bits-1). T grows with Delta_2^2, so a few rescalings converge.
        scale = half / most
        for _ in range(60):
            l2 = rounding_norm_bound(scale, dim, cfg.beta)
            try:
                total = accounting.calibrate_ddgauss(
                    cfg.epsilon, cfg.delta, cfg.rounds, 1.0, l2, None, worst, dim, orders
                )
            except ValueError as exc:
                raise ConfigError(f"dp epsilon={cfg.epsilon}: {exc}") from None
            sigma2_total = Fraction(math.ceil(Fraction(total) * 1024), 1024)
            sigma2 = block_sigma2(sigma2_total, floors)
            widest = max(c * float(s) for c, s in zip(counts, sigma2, strict=True))
            need = most * l2 + cfg.headroom * math.sqrt(widest)
            # The exact sampler takes sigma2 = p/q with p <= 2^51 (q = 1024 here): T <= 2^40
            # keeps every block's sigma2 in range; a grid that fine has negligible rounding.
            ratio = max(need / half, math.sqrt(float(sigma2_total) / _MAX_SIGMA2))
            if ratio <= 1.0:
                break
            scale *= min(0.95, 0.99 / ratio)
            if scale < 1.0:
                raise ConfigError(
                    f"dp bits={cfg.bits} cannot hold a noisy sum of {most} holders: raise dp bits"
                )
        else:  # pragma: no cover - the ratio step converges in a few iterations
            raise ConfigError(f"dp bits={cfg.bits}: no grid fits the noisy sums")
        rdp = accounting.rdp_ddgauss(l2, None, float(sigma2_total / worst), worst, dim, orders)
        return RoundNoise(
            scale=scale,
            norm_bound=l2,
            sigma2_total=sigma2_total,
            floors=tuple(int(f) for f in floors),
            sigma2=tuple(sigma2),
            worst_floor=worst,
            rdp=tuple(float(r) for r in rdp),
        )


@dataclass
class PartwiseResult:
    """What the server learns from one part-wise round, per model coordinate.

    Attributes:
        sums: sum of the surviving holders' (clipped) changes.
        holders: surviving holders of the coordinate's block.
        uploaders: with a count channel, how many of them uploaded the coordinate.
        report: survivors, drops, refusals and stage times, by node id.
        dp: with distributed DP, the round's noise and the budget spent after it.
    """

    sums: npt.NDArray[np.float64]
    holders: npt.NDArray[np.int64]
    uploaders: npt.NDArray[np.int64] | None
    report: RoundReport
    dp: DPRound | None = None


@dataclass(frozen=True)
class DPRound:
    """What a distributed-DP round reports.

    Attributes:
        noise: the calibration (integer domain).
        noise_std: per coordinate, the std of the noise in the released (float) sum: the
            surviving holders' summed variance, times ``clip / scale``.
        min_noise_std: the least std any released block sum can carry (T over its floor).
        epsilon, delta: spent after this round (all rounds charged so far).
    """

    noise: RoundNoise
    noise_std: npt.NDArray[np.float64]
    min_noise_std: float
    epsilon: float
    delta: float


def partwise_aggregate(
    grid: Grid,
    block_sizes: Sequence[int],
    holdings: Mapping[int, Sequence[int]],
    contents: Mapping[int, RecordDict],
    *,
    round_index: int,
    clip: float,
    value_bits: int = 20,
    min_holders: int = 3,
    count_channel: bool = False,
    threshold: int | None = None,
    dropout_rate: float = 0.1,
    corruption_rate: float = 0.05,
    timeout: float | None = None,
    hide_metrics: bool = False,
    dp: PartwiseDPAccountant | None = None,
) -> PartwiseResult:
    """One round of part-wise secure aggregation among the nodes of ``holdings``.

    Args:
        grid: Flower's Grid.
        block_sizes: coordinates per block of the flat model vector.
        holdings: node id -> the sorted blocks it holds this round.
        contents: node id -> the content of its training message (its part, its settings).
        round_index: the training round (bound into every key and mask).
        clip: values are clipped to [-clip, clip] and encoded with ``value_bits`` bits.
        min_holders: no block sum over fewer surviving holders is ever revealed.
        count_channel: also sum 0/1 "uploaded" flags securely (``mean_over_uploaders``).
        threshold: Shamir threshold; default from (dropout_rate, corruption_rate).
        timeout: seconds per stage (None: the default stage timeout).
        hide_metrics: nodes drop their MetricRecords from the masked-vector reply (forced on
            with ``dp``: a node's metrics, such as its row count, are not noised).
        dp: distributed DP (see the module docstring): nodes noise their blocks before masking;
            ``clip`` and ``value_bits`` are then unused (the noise calibration sets the grid).
            The round is charged to the accountant once nodes are contacted, even if it aborts.

    Raises:
        ConfigError: invalid layout or no secure threshold for this cohort; with ``dp``, a count
            channel (its flags would reach the server un-noised).
        PrivacyBudgetError: with ``dp``, the round would exceed the budget (nothing is sent).
        AbortedError: too few survivors (nothing is revealed).
    """
    node_ids = sorted(holdings)
    n = len(node_ids)
    if n < 3:
        raise ConfigError(f"part-wise aggregation needs at least 3 nodes, got {n}")
    nb = len(block_sizes)
    sizes = tuple(int(s) for s in block_sizes)
    held = tuple(tuple(int(b) for b in holdings[nid]) for nid in node_ids)
    if count_channel:
        # Each value block b has a twin block nb + b with the same holders carrying the flags.
        sizes = sizes + sizes
        held = tuple(h + tuple(nb + b for b in h) for h in held)
    if dp is not None and count_channel:
        raise ConfigError(
            "count_channel=True with dp: the 0/1 upload flags would reach the server un-noised"
            " (use the 'mean' or 'add' rule)"
        )
    layout = BlockLayout(sizes, held, min_holders=min_holders)
    if threshold is None:
        try:
            threshold = graphs.complete_parameters(n, dropout_rate, corruption_rate).t
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    noise = None
    if dp is not None:
        counts = [len(h) for h in layout.holders]
        noise = dp.plan(counts, n, threshold, min_holders, layout.dim)
        bits = dp.settings.bits
    else:
        bits = encoding.choose_modulus_bits(value_bits, n)
    config = RoundConfig(
        session_id=rng.token_bytes(16),
        round_index=round_index,
        graph=graphs.complete_graph(n),
        threshold=threshold,
        dim=layout.dim,
        modulus_bits=bits,
        layout=layout,
    )
    meta: dict[str, Any] = {
        "encoding": FIXED_POINT,
        "count_channel": bool(count_channel),
        "hide_metrics": bool(hide_metrics),
    }
    if dp is None:
        meta |= {"clip": float(clip), "value_bits": int(value_bits)}
    else:
        assert noise is not None
        check_noise_floor(config, min_holders)  # every released sum has >= min_holders inputs
        # No "clip"/"value_bits": a node without DP support fails its fixed-point setup and
        # drops out instead of sending an un-noised update.
        meta |= {"dp": noise.meta(dp.settings.clip, dp.settings.beta), "hide_metrics": True}
        dp.charge(noise)  # from here on nodes send noised inputs: charged even if it aborts
    report = RoundReport(round=round_index)
    result = EngineRound(
        grid,
        config,
        node_ids,
        meta,
        timeout=timeout,
        group_id=str(round_index),
        collect_content=lambda nid: contents[nid],
        report=report,
    ).run()
    dim = int(sum(block_sizes))
    total = encoding.from_ring(result.total, bits)
    alive = np.asarray(result.block_survivors[:nb], dtype=np.int64)
    holders = np.repeat(alive, np.asarray(block_sizes))
    if dp is None:
        encoder = encoding.FixedPointEncoder(clip, value_bits, bits, n)
        sums = total[:dim].astype(np.float64) / encoder.scale
        uploaders = total[dim:].astype(np.int64) if count_channel else None
        return PartwiseResult(sums, holders, uploaders, report)
    assert noise is not None
    unit = dp.settings.clip / noise.scale  # one integer step in the float domain
    sums = total[:dim].astype(np.float64) * unit
    variance = alive * np.asarray([float(s) for s in noise.sigma2])
    floors = np.asarray(noise.floors)
    least = min(f * float(s) for f, s in zip(floors, noise.sigma2, strict=True) if f > 0)
    epsilon, delta = dp.spent
    info = DPRound(
        noise=noise,
        noise_std=np.repeat(np.sqrt(variance), np.asarray(block_sizes)) * unit,
        min_noise_std=math.sqrt(least) * unit,
        epsilon=epsilon,
        delta=delta,
    )
    return PartwiseResult(sums, holders, None, report, info)

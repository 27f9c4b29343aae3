"""The ServerApp side: ``SecAggPlusWorkflow`` / ``SecAggWorkflow``, drop-ins for Flower's.

Used exactly like Flower's (``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))`` with a
``LegacyContext``): it asks the strategy for the round's FitIns (``configure_fit``), runs one
secure aggregation round of this library's :class:`~secagg.engine.ServerEngine` over Flower's
Grid, dequantises the survivors' weighted mean exactly as Flower does, and hands it to
``strategy.aggregate_fit``. Stages (one Grid round trip each): setup -> share_keys ->
collect_masked_vectors (carries the FitIns; the nodes train) -> [consistency, active mode] ->
unmask.

Mapping of Flower's parameters (docs/flower.md has the full table):

* ``num_shares`` counts the node itself (Flower's ring: the node plus num_shares - 1
  neighbours) and ``reconstruction_threshold`` t counts the node's own share of its own
  secrets. This engine never gives a party a share of its own secrets, so its threshold is over
  neighbour shares only. We keep t (colluders still need t shares of someone else's secret,
  as in Flower: a smaller t would hand them an extra share) and give each node k = num_shares + 1
  neighbours (even, as a Harary graph needs), so every drop pattern that leaves Flower's round
  recoverable (any num_shares - t dropped neighbours) leaves ours recoverable too.
* The graph is a Harary graph on a CSPRNG permutation (not ``random.shuffle``), sent to every
  node in the configuration.
* ``timeout=None`` means :data:`DEFAULT_STAGE_TIMEOUT` per stage, never "wait forever".

Keyword-only extras beyond Flower's (docs/flower.md has the table): ``secure_metrics`` (named
fit metrics ride inside the masked vector; only the survivors' weighted mean is learnt),
``partwise`` (:class:`PartwiseOptions`: each node masks only its random blocks; per-block means
over the surviving holders, ARCHITECTURE.md "Part-wise secure aggregation") and distributed DP
with an RDP accountant across rounds that refuses the round past the budget
(:class:`PrivacyBudgetError`). The vector layout both ends share is
:class:`~secagg.flower.quantization.UpdateLayout`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from secagg import graph as graphs
from secagg.config import RoundConfig
from secagg.crypto import rng
from secagg.dp.accounting import RDPAccountant, eps_from_rdp
from secagg.dp.mechanisms import (
    DDGaussParams,
    RandomizedHadamard,
    check_noise_floor,
    decode_sum,
)
from secagg.engine import AggregationResult
from secagg.errors import AbortedError, ConfigError, PrivacyBudgetError, SecAggError
from secagg.flower.driver import EngineRound, RoundReport
from secagg.flower.quantization import (
    FlowerQuantizer,
    UpdateLayout,
    dp_fields,
    flat_size,
    split_shapes,
)
from secagg.layout import BlockLayout

try:
    import flwr.compat.common.recorddict_compat as compat
    from flwr.app import Context
    from flwr.common import FitRes, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.client_proxy import ClientProxy
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
    from flwr.server.workflow.constant import Key as WorkflowKey
    from flwr.serverapp.grid import Grid
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "secagg.flower needs Flower: pip install 'secagg[flower]' (flwr[simulation]==1.42.0)"
    ) from exc

log = logging.getLogger("secagg.flower")


@dataclass(frozen=True)
class PartwiseOptions:
    """Part-wise secure aggregation on the drop-in (``SecAggPlusWorkflow(partwise=...)``).

    Each round the server cuts the flat model into blocks of ``block_size`` coordinates and
    draws with the CSPRNG which blocks each sampled node uploads (about ``upload_fraction`` of
    them, :func:`draw_holdings`): every drawn block gets at least ``min_holders + margin``
    holders, so up to ``margin`` of a block's holders may drop
    before the engine refuses to reveal it. A node masks only its blocks; the server learns, per
    block, the sum and the total weight over the block's surviving holders.

    Attributes:
        block_size: coordinates per block.
        upload_fraction: the fraction of the blocks each node uploads, in (0, 1].
        min_holders: no block sum over fewer surviving holders is ever revealed (>= 2, and
            >= tolerated_colluders + 2: a sum of c colluders and one honest node is that node's
            value).
        margin: extra holders drawn per block for dropouts.
        weighted: each block's mean is weighted by the holders' ``num_examples`` (Flower's
            mean), which reveals, per block, the total example count of its surviving holders.
            The server knows who holds which block, so with more blocks than nodes these sums
            determine each node's count: ``hide_num_examples=True`` needs ``weighted=False``
            (the plain mean over each block's surviving holders).
    """

    block_size: int = 1024
    upload_fraction: float = 0.5
    min_holders: int = 3
    margin: int = 2
    weighted: bool = True

    def __post_init__(self) -> None:
        for name in ("block_size", "min_holders", "margin"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"partwise {name} must be an integer, got {value!r}")
        if self.block_size < 1:
            raise ConfigError(f"partwise block_size must be positive, got {self.block_size}")
        if self.min_holders < 2:
            raise ConfigError(
                f"partwise min_holders must be at least 2 (a sum of one holder is that holder's"
                f" value), got {self.min_holders}"
            )
        if self.margin < 0:
            raise ConfigError(f"partwise margin must be >= 0, got {self.margin}")
        if not isinstance(self.weighted, bool):
            raise ConfigError(f"partwise weighted must be a bool, got {self.weighted!r}")
        f = self.upload_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
            raise ConfigError(f"partwise upload_fraction must be in (0, 1], got {f!r}")


@dataclass
class DropinReport(RoundReport):
    """:class:`RoundReport` plus what the drop-in's extras produced.

    Attributes:
        metrics: the survivors' weighted means of the securely aggregated metrics.
        layout: part-wise rounds: the engine's blocks and who held which (party i is
            ``sampled[i]``); the model blocks come first, the metric block (if any) last.
        holders: part-wise rounds: surviving holders behind each parameter of the result
            (0 where the parameter kept its global value).
        dp_spent: distributed DP: (epsilon, delta) spent over the run so far, after this round.
        exception: the typed error that halted or refused the round.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    layout: BlockLayout | None = field(default=None, repr=False)
    holders: npt.NDArray[np.int64] | None = field(default=None, repr=False)
    dp_spent: tuple[float, float] | None = None
    exception: SecAggError | None = field(default=None, repr=False)


class SecAggPlusWorkflow:
    """Drop-in for ``flwr.server.workflow.SecAggPlusWorkflow`` (same positional and keyword
    arguments, same defaults, same result), backed by this library's engine.

    Args:
        num_shares: Flower's meaning (the node and its neighbours; a float is a fraction of
            the sampled nodes), or ``"auto"``: (k, t) from ``dropout_rate`` and
            ``corruption_rate`` by the parameter finder (security 2^-40, correctness 2^-20).
        reconstruction_threshold: Flower's meaning (int, or a fraction of num_shares, >= 2).
            Ignored with ``num_shares="auto"``.
        max_weight, clipping_range, quantization_range, modulus_range: Flower's quantisation.
        timeout: seconds per stage; None means :data:`DEFAULT_STAGE_TIMEOUT`.
        graph: ``"harary"`` (SecAgg+) or ``"complete"`` (SecAgg).
        dropout_rate, corruption_rate: for ``num_shares="auto"``.
        active: the active-adversary mode (Ed25519-signed keys, consistency check); needs
            ``verify_keys`` and a threshold with 2t > neighbours + ``tolerated_colluders``.
        verify_keys: node id -> the node's Ed25519 public key (32 bytes).
        tolerated_colluders: colluding nodes the active mode must tolerate.
        dp_epsilon, dp_delta, dp_clip, dp_rounds, dp_bits: distributed DP (DDGauss, Kairouz, Liu
            and Steinke 2021) instead of Flower's quantisation: each node clips its parameters to
            L2 norm ``dp_clip``, rotates, rounds and adds discrete Gaussian noise, calibrated so
            that any sum the server can learn (t + 1 nodes or more) meets (dp_epsilon, dp_delta)
            over ``dp_rounds`` rounds; the result is the unweighted mean of the survivors.
            ``dp_bits`` (24) is the modulus of the noisy sum; larger moduli make the calibrated
            integer variance exceed what the exact sampler takes (2^51). An RDP accountant
            (:attr:`accountant`) composes the released rounds; ``last_report.dp_spent`` is the
            (epsilon, delta) spent so far, and a round that would exceed (dp_epsilon, dp_delta)
            is refused before anything is sent (:class:`PrivacyBudgetError`).
        hide_num_examples, hide_metrics: nodes replace their clear FitRes example count by 1
            and drop their metrics (the weight still enters the mean, inside the masked vector).
        secure_metrics: names of numeric fit metrics every node appends to its masked vector,
            weighted by its example count (Flower's usual metric weighting) and carried on
            Flower's grid after clipping to [-metric_range, metric_range]; the strategy and
            ``last_report.metrics`` get only the survivors' weighted mean, never a node's value.
            Error: at most ``survivors * 2 * metric_range / q_total`` (q_total the survivors'
            quantised total weight, ``sum round(num_examples / max_weight * Q)``).
        partwise: :class:`PartwiseOptions`: each node uploads only its random blocks of the
            model; each parameter of the result is the weighted mean over the surviving holders
            of its block (a block with no surviving holder keeps its global value). Uses the
            complete graph (the safe choice for part-wise masking).
        executor, workers: a process pool for the server's mask regeneration.
    """

    graph_kind = graphs.KIND_HARARY

    def __init__(
        self,
        num_shares: int | float | str,
        reconstruction_threshold: int | float,
        *,
        max_weight: float = 1000.0,
        clipping_range: float = 8.0,
        quantization_range: int = 4194304,
        modulus_range: int = 4294967296,
        timeout: float | None = None,
        graph: str | None = None,
        dropout_rate: float = 0.05,
        corruption_rate: float = 0.05,
        active: bool = False,
        verify_keys: Mapping[int, bytes] | None = None,
        tolerated_colluders: int = 0,
        hide_num_examples: bool = False,
        hide_metrics: bool = False,
        dp_epsilon: float | None = None,
        dp_delta: float = 1e-5,
        dp_clip: float = 1.0,
        dp_rounds: int = 1,
        dp_bits: int = 24,
        secure_metrics: Sequence[str] | None = None,
        metric_range: float = 100.0,
        partwise: PartwiseOptions | None = None,
        executor: Executor | None = None,
        workers: int = 1,
    ) -> None:
        self.num_shares = num_shares
        self.reconstruction_threshold = reconstruction_threshold
        self.max_weight = max_weight
        self.clipping_range = clipping_range
        self.quantization_range = quantization_range
        self.modulus_range = modulus_range
        self.timeout = timeout
        self.graph = graph if graph is not None else self.graph_kind
        self.dropout_rate = dropout_rate
        self.corruption_rate = corruption_rate
        self.active = active
        self.verify_keys = dict(verify_keys) if verify_keys is not None else None
        self.tolerated_colluders = tolerated_colluders
        self.hide_num_examples = hide_num_examples
        self.hide_metrics = hide_metrics
        self.dp_epsilon, self.dp_delta, self.dp_clip = dp_epsilon, dp_delta, dp_clip
        self.dp_rounds, self.dp_bits = dp_rounds, dp_bits
        if isinstance(secure_metrics, str):
            raise ConfigError(
                f"secure_metrics must be a sequence of metric names, got the string"
                f" {secure_metrics!r} (write ({secure_metrics!r},))"
            )
        self.secure_metrics = tuple(secure_metrics or ())
        self.metric_range = metric_range
        self.partwise = partwise
        self.executor = executor
        self.workers = workers
        self.last_report: DropinReport | None = None
        #: RDP composed over the distributed-DP rounds released so far (Opacus' layout:
        #: ``state_dict`` / ``load_state_dict`` to carry it across ServerApp restarts).
        self.accountant = RDPAccountant()
        self._check_init_params()

    # -- Flower's parameter rules ---------------------------------------------------------

    def _check_init_params(self) -> None:
        """Flower's checks (same conditions), raising :class:`ConfigError` (a ValueError)."""
        self.quantizer = FlowerQuantizer(
            self.clipping_range, self.quantization_range, self.max_weight
        )
        self.quantizer.modulus_bits(self.modulus_range, 1)
        if self.graph not in (graphs.KIND_HARARY, graphs.KIND_COMPLETE):
            raise ConfigError(f"graph must be 'harary' or 'complete', got {self.graph!r}")
        if not isinstance(self.timeout, (int, float, type(None))) or (
            self.timeout is not None and not self.timeout > 0
        ):
            raise ConfigError(f"timeout must be a positive number or None, got {self.timeout!r}")
        if self.active and self.verify_keys is None:
            raise ConfigError("active=True needs verify_keys (node id -> Ed25519 public key)")
        UpdateLayout(1, self.secure_metrics, self.metric_range)  # validates names and range
        if self.partwise is not None and not isinstance(self.partwise, PartwiseOptions):
            raise ConfigError(f"partwise must be a PartwiseOptions, got {self.partwise!r}")
        if self.partwise is not None and self.partwise.weighted and self.hide_num_examples:
            # Per-block weight sums over holder sets the server chose form a linear system in
            # the nodes' example counts: with more blocks than nodes it has one solution.
            raise ConfigError(
                "hide_num_examples=True cannot hold with partwise weighted means: the per-block"
                " total weights determine each node's num_examples; use"
                " PartwiseOptions(weighted=False)"
            )
        if self.partwise is not None and self.partwise.min_holders < self.tolerated_colluders + 2:
            raise ConfigError(
                f"partwise min_holders={self.partwise.min_holders} must be at least"
                f" tolerated_colluders + 2 = {self.tolerated_colluders + 2}"
            )
        if self.dp_epsilon is not None:
            if self.secure_metrics or self.partwise is not None:
                # Both would change the clipped vector whose sensitivity the noise covers.
                raise ConfigError(
                    "dp_epsilon cannot be combined with secure_metrics or partwise on the drop-in"
                )
            if not (isinstance(self.dp_epsilon, (int, float)) and self.dp_epsilon > 0):
                raise ConfigError(f"dp_epsilon must be positive, got {self.dp_epsilon!r}")
            if not 0 < self.dp_delta < 1:
                raise ConfigError(f"dp_delta must be in (0, 1), got {self.dp_delta!r}")
        if self.num_shares == "auto":
            return
        if isinstance(self.num_shares, bool) or not isinstance(self.num_shares, (int, float)):
            raise ConfigError(
                f"num_shares must be an int, a float or 'auto', got {self.num_shares!r}"
            )
        if isinstance(self.num_shares, int):
            if self.num_shares == 1:
                self.num_shares = 1.0
            elif self.num_shares <= 2:
                raise ConfigError(
                    f"num_shares as an integer must be greater than 2, got {self.num_shares}"
                )
        elif self.num_shares <= 0:
            raise ConfigError(
                f"num_shares as a float must be greater than 0, got {self.num_shares}"
            )
        t = self.reconstruction_threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)):
            raise ConfigError(f"reconstruction_threshold must be an int or a float, got {t!r}")
        if isinstance(t, int):
            if t == 1:
                self.reconstruction_threshold = 1.0
            elif isinstance(self.num_shares, int) and t >= self.num_shares:
                raise ConfigError(
                    f"reconstruction_threshold ({t}) must be less than num_shares"
                    f" ({self.num_shares})"
                )
        elif not 0 < t <= 1:
            raise ConfigError(f"reconstruction_threshold as a float must be in (0, 1], got {t}")

    def resolve(self, n: int) -> tuple[graphs.NeighborGraph, int]:
        """The neighbour graph and engine threshold for ``n`` sampled nodes.

        Raises:
            ConfigError: no valid (k, t) for this cohort.
        """
        if n < 3:
            raise ConfigError(f"secure aggregation needs at least 3 sampled nodes, got {n}")
        # Part-wise rounds use the complete graph: with a sparse one a block's holder may have
        # no masked neighbour that also holds the block (ARCHITECTURE.md, part-wise pitfall).
        complete = self.graph == graphs.KIND_COMPLETE or self.partwise is not None
        if self.num_shares == "auto":
            try:
                if complete:
                    params = graphs.complete_parameters(
                        n, self.dropout_rate, self.corruption_rate, active=self.active
                    )
                else:
                    params = graphs.find_harary_parameters(
                        n, self.dropout_rate, self.corruption_rate, semi_honest=not self.active
                    )
            except ValueError as exc:
                raise ConfigError(f"num_shares='auto': {exc}") from None
            k, t = params.k, params.t
        else:
            shares, t_flower = self._flower_shares(n)
            # Flower's node holds one share of its own secrets; ours holds none, so a node
            # gets one more neighbour (k = num_shares + 1, even) and keeps Flower's t.
            k = n - 1 if complete or shares >= n else shares + (shares % 2 == 1)
            t = max(2, min(t_flower, n - 1))
        if k >= n - 1:
            g = graphs.complete_graph(n)
        else:
            g = graphs.harary_graph(n, k, rng.token_bytes(graphs.SEED_BYTES))
        if t > g.degree:
            raise ConfigError(f"threshold {t} exceeds the {g.degree} neighbours of each node")
        if self.active and 2 * t <= g.degree + self.tolerated_colluders:
            raise ConfigError(
                f"active mode needs 2 t > neighbours ({g.degree}) + tolerated colluders"
                f" ({self.tolerated_colluders}); got t={t}: raise reconstruction_threshold to"
                f" {(g.degree + self.tolerated_colluders) // 2 + 1} or use num_shares='auto'"
            )
        return g, t

    def _flower_shares(self, n: int) -> tuple[int, int]:
        """Flower's own (num_shares, threshold) resolution (secaggplus_workflow.setup_stage)."""
        if isinstance(self.num_shares, float):
            shares = round(self.num_shares * n)
            if shares < n and shares & 1 == 0:
                shares += 1
            if shares <= 2:
                shares = n
        else:
            shares = int(self.num_shares)
        if isinstance(self.reconstruction_threshold, float):
            t = max(round(self.reconstruction_threshold * shares), 2)
        else:
            t = int(self.reconstruction_threshold)
        if n != shares and shares & 1 == 0:
            shares += 1
        return shares, t

    # -- the round -------------------------------------------------------------------------

    def __call__(self, grid: Grid, context: Context) -> None:
        """Run one round of secure aggregation and update the global model (Flower's contract)."""
        if not isinstance(context, LegacyContext):
            raise TypeError(f"Expect a LegacyContext, but get {type(context).__name__}.")
        report = DropinReport()
        self.last_report = report
        log.info("Secure aggregation (secagg) commencing.")
        try:
            _Round(self, grid, context, report).run()
        except SecAggError as exc:
            report.error = f"{type(exc).__name__}: {exc}"
            report.exception = exc
            log.error("Secure aggregation halted: %s", report.error)
            return
        log.info(
            "Secure aggregation completed: %d survivors, %d dropped.",
            len(report.survivors),
            len(report.dropped),
        )


class SecAggWorkflow(SecAggPlusWorkflow):
    """Drop-in for ``flwr.server.workflow.SecAggWorkflow``: the complete graph (SecAgg)."""

    graph_kind = graphs.KIND_COMPLETE

    def __init__(
        self,
        reconstruction_threshold: int | float,
        *,
        max_weight: float = 1000.0,
        clipping_range: float = 8.0,
        quantization_range: int = 4194304,
        modulus_range: int = 4294967296,
        timeout: float | None = None,
        **extras: Any,
    ) -> None:
        extras.setdefault("graph", graphs.KIND_COMPLETE)
        super().__init__(
            1.0,
            reconstruction_threshold,
            max_weight=max_weight,
            clipping_range=clipping_range,
            quantization_range=quantization_range,
            modulus_range=modulus_range,
            timeout=timeout,
            **extras,
        )


def draw_holdings(
    num_blocks: int, parties: int, fraction: float, min_holders: int
) -> tuple[tuple[int, ...], ...]:
    """Every party's random blocks, from the CSPRNG, each block held by 0 or >= ``min_holders``.

    Each party gets ``max(1, round(fraction * num_blocks))`` distinct blocks, uniformly at random
    and independently of the others (a predictable or steerable choice would let colluders plan
    who shares a block); then every block with 1..min_holders-1 holders gets uniformly random
    extra holders, so no block sum is ever over too few parties and no drawn block is dropped
    from training (the rule of ``protocols.parameter_parts.selection``, which the engine layer
    does not import).

    Raises:
        ConfigError: ``min_holders`` exceeds ``parties`` or the arguments are out of range.
    """
    if not 1 <= min_holders <= parties:
        raise ConfigError(f"min_holders={min_holders} must be in [1, parties={parties}]")
    if num_blocks < 1 or not 0 < fraction <= 1:
        raise ConfigError(f"need blocks >= 1 and fraction in (0, 1], got {num_blocks}, {fraction}")
    per_party = min(num_blocks, max(1, round(fraction * num_blocks)))
    held = np.zeros((parties, num_blocks), dtype=bool)
    for p in range(parties):
        # The per_party smallest of independent uniform 64-bit keys: a uniform random subset
        # (up to key collisions, probability below num_blocks^2 / 2^65).
        keys = rng.random_words(num_blocks, np.uint64)
        held[p, np.argpartition(keys, per_party - 1)[:per_party]] = True
    counts = held.sum(axis=0)
    for b in np.flatnonzero((counts > 0) & (counts < min_holders)):
        keys = rng.random_words(parties, np.uint64) >> np.uint64(1)
        keys[held[:, b]] = np.iinfo(np.uint64).max  # current holders sort last
        held[np.argsort(keys, kind="stable")[: min_holders - int(counts[b])], b] = True
    return tuple(tuple(int(b) for b in np.flatnonzero(row)) for row in held)


class _Round:
    """One round: configure_fit, the engine round over the Grid, aggregate_fit."""

    def __init__(
        self, wf: SecAggPlusWorkflow, grid: Grid, context: LegacyContext, report: DropinReport
    ) -> None:
        self.wf, self.grid, self.context, self.report = wf, grid, context, report
        cfg = context.state.config_records[MAIN_CONFIGS_RECORD]
        self.current_round = cast(int, cfg[WorkflowKey.CURRENT_ROUND])
        report.round = self.current_round

    def run(self) -> None:
        wf, context = self.wf, self.context
        parameters = compat.arrayrecord_to_parameters(
            context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True
        )
        proxy_fitins = context.strategy.configure_fit(
            self.current_round, parameters, context.client_manager
        )
        if not proxy_fitins:
            raise AbortedError("configure_fit: no clients selected")
        fitins = {
            proxy.node_id: compat.fitins_to_recorddict(ins, True) for proxy, ins in proxy_fitins
        }
        self.proxies: dict[int, ClientProxy] = {p.node_id: p for p, _ in proxy_fitins}
        node_ids = sorted(fitins)
        n = len(node_ids)
        arrays = parameters_to_ndarrays(proxy_fitins[0][1].parameters)
        self.shapes = [tuple(a.shape) for a in arrays]
        # Where a part-wise block has no surviving holder, the global value stays.
        self.current = np.concatenate(
            [np.asarray(a, dtype=np.float64).ravel() for a in arrays] or [np.zeros(0)]
        )
        g, t = wf.resolve(n)
        bits = wf.quantizer.modulus_bits(wf.modulus_range, n)
        dim = flat_size(self.shapes)
        block_size = wf.partwise.block_size if wf.partwise is not None else None
        weighted = wf.partwise.weighted if wf.partwise is not None else True
        self.update = UpdateLayout(
            dim - 1, wf.secure_metrics, wf.metric_range, block_size, weighted
        )
        layout = self._draw_layout(n) if wf.partwise is not None else None
        self.report.layout = layout
        self.dp: tuple[DDGaussParams, RandomizedHadamard] | None = None
        rotation_seed = rng.token_bytes(16)
        if wf.dp_epsilon is not None:
            # The noise floor: every released sum holds at least t + 1 inputs (each survivor
            # needs t surviving neighbours), and each node adds 1/(t + 1) of the variance.
            params = DDGaussParams.calibrate(
                wf.dp_epsilon,
                wf.dp_delta,
                wf.dp_rounds,
                1.0,
                wf.dp_clip,
                dim - 1,
                t + 1,
                wf.dp_bits,
                max_parties=n,
            )
            self._check_budget(params)
            self.dp = (params, RandomizedHadamard(rotation_seed, dim - 1))
            dim, bits = params.padded_dim, params.bits
        else:
            dim = self.update.dim
        verify = None
        if wf.active:
            assert wf.verify_keys is not None
            missing = [nid for nid in node_ids if nid not in wf.verify_keys]
            if missing:
                raise ConfigError(f"no verify key for sampled nodes {missing[:5]}")
            verify = tuple(wf.verify_keys[nid] for nid in node_ids)
        config = RoundConfig(
            session_id=rng.token_bytes(16),
            round_index=self.current_round,
            graph=g,
            threshold=t,
            dim=dim,
            modulus_bits=bits,
            active=wf.active,
            verify_keys=verify,
            layout=layout,
            tolerated_colluders=wf.tolerated_colluders,
        )
        meta = {
            "encoding": "flower",
            "shapes": [list(s) for s in self.shapes],
            "clipping_range": float(wf.clipping_range),
            "quantization_range": int(wf.quantization_range),
            "max_weight": float(wf.max_weight),
            "hide_num_examples": wf.hide_num_examples,
            "hide_metrics": wf.hide_metrics,
            "update": self.update.to_fields(),
        }
        if self.dp is not None:
            check_noise_floor(config, self.dp[0].min_parties)
            meta["encoding"] = "ddgauss"
            meta["dp"] = dp_fields(self.dp[0], rotation_seed)
        self.round = EngineRound(
            self.grid,
            config,
            node_ids,
            meta,
            timeout=wf.timeout,
            group_id=str(self.current_round),
            collect_content=fitins.__getitem__,
            report=self.report,
            executor=wf.executor,
            workers=wf.workers,
        )
        result = self.round.run()
        if self.dp is not None:
            # The sum is now the server's: this round's release counts, whatever follows.
            wf.accountant.step(self.dp[0].rdp(orders=wf.accountant.orders))
            self.report.dp_spent = (wf.accountant.get_epsilon(wf.dp_delta), wf.dp_delta)
        self._finish(result)

    def _draw_layout(self, n: int) -> BlockLayout:
        """The round's part-wise blocks: each node's random blocks (CSPRNG), every drawn block
        with at least min_holders + margin holders, and the metric block held by every node.

        Raises:
            ConfigError: too few nodes for min_holders, or a layout the engine refuses.
        """
        opts = self.wf.partwise
        assert opts is not None
        if n < opts.min_holders:
            raise ConfigError(
                f"partwise min_holders={opts.min_holders} exceeds the {n} sampled nodes"
            )
        nb = len(self.update.model_blocks)
        holdings = draw_holdings(
            nb, n, opts.upload_fraction, min(n, opts.min_holders + opts.margin)
        )
        if self.update.metric_names:
            holdings = tuple((*h, nb) for h in holdings)
        return BlockLayout(self.update.engine_block_sizes, holdings, min_holders=opts.min_holders)

    def _check_budget(self, params: DDGaussParams) -> None:
        """Refuse a round whose release would exceed (dp_epsilon, dp_delta) over the run.

        Raises:
            PrivacyBudgetError: before any message of the round is sent.
        """
        wf = self.wf
        assert wf.dp_epsilon is not None
        accountant = wf.accountant
        spent = accountant.get_epsilon(wf.dp_delta) if accountant.steps else 0.0
        self.report.dp_spent = (spent, wf.dp_delta)
        after, _ = eps_from_rdp(
            accountant.rdp + params.rdp(orders=accountant.orders), accountant.orders, wf.dp_delta
        )
        # A relative slack of 1e-9 absorbs float noise in the bisection of the calibration.
        if not after <= wf.dp_epsilon * (1 + 1e-9):
            raise PrivacyBudgetError(
                f"round {self.current_round} would bring the spent epsilon to {after:.4g} at"
                f" delta {wf.dp_delta:g}, above dp_epsilon={wf.dp_epsilon:g} (spent so far"
                f" {spent:.4g} over {accountant.steps} rounds); the round was not run"
            )

    def _finish(self, result: AggregationResult) -> None:
        wf, context = self.wf, self.context
        survivors = list(self.report.survivors)
        means: dict[str, float] = {}
        if self.dp is not None:
            params, rotation = self.dp
            flat = decode_sum(result.total, params, rotation) / len(survivors)
            aggregated = split_shapes(flat, self.shapes)
            assert self.report.dp_spent is not None
            log.info(
                "distributed DP: epsilon %.3f at delta %g spent after %d rounds",
                self.report.dp_spent[0],
                wf.dp_delta,
                wf.accountant.steps,
            )
        else:
            flat, means, holders = self.update.decode(
                wf.quantizer, result.total, len(survivors), result.block_survivors, self.current
            )
            aggregated = split_shapes(flat, self.shapes)
            self.report.metrics = means
            if self.update.partwise:
                self.report.holders = holders
        parameters = ndarrays_to_parameters(aggregated)
        results: list[tuple[ClientProxy, FitRes]] = []
        for nid in survivors:
            reply = self.round.fit_replies.get(nid)
            if reply is None:  # pragma: no cover - a survivor always sent its masked input
                continue
            fitres = compat.recorddict_to_fitres(reply.content, keep_input=True)
            fitres.parameters = parameters
            # Every survivor carries the secure means: any weighting of the survivors'
            # metrics (a fit_metrics_aggregation_fn) returns exactly those means.
            fitres.metrics.update(means)
            results.append((self.proxies[nid], fitres))
        log.info(
            "aggregate_fit: received %s results and %s failures",
            len(results),
            len(self.round.failures),
        )
        parameters_aggregated, metrics_aggregated = context.strategy.aggregate_fit(
            self.current_round, results, cast(Any, self.round.failures)
        )
        if parameters_aggregated:
            context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
                parameters_aggregated, True
            )
            context.history.add_metrics_distributed_fit(
                server_round=self.current_round, metrics={**means, **metrics_aggregated}
            )

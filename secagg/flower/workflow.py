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
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent.futures import Executor
from typing import Any, cast

from secagg import graph as graphs
from secagg.config import RoundConfig
from secagg.crypto import rng
from secagg.dp.mechanisms import (
    DDGaussParams,
    RandomizedHadamard,
    check_noise_floor,
    decode_sum,
)
from secagg.engine import AggregationResult
from secagg.errors import AbortedError, ConfigError, SecAggError
from secagg.flower.driver import EngineRound, RoundReport
from secagg.flower.quantization import FlowerQuantizer, dp_fields, flat_size, split_shapes

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
            integer variance exceed what the exact sampler takes (2^51).
        hide_num_examples, hide_metrics: nodes replace their clear FitRes example count by 1
            and drop their metrics (the weight still enters the mean, inside the masked vector).
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
        self.executor = executor
        self.workers = workers
        self.last_report: RoundReport | None = None
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
        complete = self.graph == graphs.KIND_COMPLETE
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
        report = RoundReport()
        self.last_report = report
        log.info("Secure aggregation (secagg) commencing.")
        try:
            _Round(self, grid, context, report).run()
        except SecAggError as exc:
            report.error = f"{type(exc).__name__}: {exc}"
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


class _Round:
    """One round: configure_fit, the engine round over the Grid, aggregate_fit."""

    def __init__(
        self, wf: SecAggPlusWorkflow, grid: Grid, context: LegacyContext, report: RoundReport
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
        self.shapes = [
            tuple(a.shape) for a in parameters_to_ndarrays(proxy_fitins[0][1].parameters)
        ]
        g, t = wf.resolve(n)
        bits = wf.quantizer.modulus_bits(wf.modulus_range, n)
        dim = flat_size(self.shapes)
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
            self.dp = (params, RandomizedHadamard(rotation_seed, dim - 1))
            dim, bits = params.padded_dim, params.bits
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
        self._finish(self.round.run())

    def _finish(self, result: AggregationResult) -> None:
        wf, context = self.wf, self.context
        survivors = list(self.report.survivors)
        if self.dp is not None:
            params, rotation = self.dp
            flat = decode_sum(result.total, params, rotation) / len(survivors)
            aggregated = split_shapes(flat, self.shapes)
            log.info(
                "distributed DP: epsilon %.3f at delta %g over %d rounds",
                params.epsilon(wf.dp_delta, steps=wf.dp_rounds),
                wf.dp_delta,
                wf.dp_rounds,
            )
        else:
            aggregated = wf.quantizer.dequantize(result.total, len(survivors), self.shapes)
        parameters = ndarrays_to_parameters(aggregated)
        results: list[tuple[ClientProxy, FitRes]] = []
        for nid in survivors:
            reply = self.round.fit_replies.get(nid)
            if reply is None:  # pragma: no cover - a survivor always sent its masked input
                continue
            fitres = compat.recorddict_to_fitres(reply.content, keep_input=True)
            fitres.parameters = parameters
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
                server_round=self.current_round, metrics=metrics_aggregated
            )

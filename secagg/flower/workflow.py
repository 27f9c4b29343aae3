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
import time
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, cast

from secagg import encoding
from secagg import graph as graphs
from secagg import messages as wire
from secagg.config import RoundConfig
from secagg.crypto import rng
from secagg.engine import ServerEngine
from secagg.errors import AbortedError, ConfigError, RemoteProtocolError, SecAggError
from secagg.flower import _codec, _compat, records
from secagg.flower.quantization import FlowerQuantizer, flat_size

try:
    import flwr.compat.common.recorddict_compat as compat
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.app.message_type import MessageType
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

#: Seconds the workflow waits for the nodes' replies in each stage when ``timeout`` is None.
DEFAULT_STAGE_TIMEOUT = 600.0

#: The stage name of the Grid round trip that delivers each engine message type.
_STAGE_OF = {
    wire.MessageType.KEY_DIRECTORY: records.SHARE_KEYS,
    wire.MessageType.SHARE_DELIVERY: records.COLLECT_MASKED_VECTORS,
    wire.MessageType.SURVIVOR_LIST: records.CONSISTENCY,
    wire.MessageType.UNMASK_REQUEST: records.UNMASK,
}
#: What a node must answer in each stage.
_REPLY_OF = {
    records.SETUP: wire.MessageType.ADVERTISE_KEYS,
    records.SHARE_KEYS: wire.MessageType.ENCRYPTED_SHARES,
    records.COLLECT_MASKED_VECTORS: wire.MessageType.MASKED_INPUT,
    records.CONSISTENCY: wire.MessageType.SURVIVOR_SIGNATURE,
    records.UNMASK: wire.MessageType.UNMASK_RESPONSE,
}


@dataclass
class RoundReport:
    """What happened in the last round (``workflow.last_report``), by Flower node id.

    Attributes:
        round: Flower's round number.
        sampled: the nodes the strategy sampled (party i is ``sampled[i]``).
        survivors: nodes whose input is in the sum.
        dropped: sampled nodes whose input is not in the sum.
        refused: nodes whose reply was refused (error reply, malformed or oversized record,
            spoofed sender, a message the engine rejected), with the reason.
        error: why the round halted, or None if it completed.
        neighbors / threshold / modulus_bits: the engine parameters used.
        stage_seconds: wall time of each stage (Grid round trip included).
    """

    round: int = 0
    sampled: tuple[int, ...] = ()
    survivors: tuple[int, ...] = ()
    dropped: tuple[int, ...] = ()
    refused: dict[int, str] = field(default_factory=dict)
    error: str | None = None
    neighbors: int = 0
    threshold: int = 0
    modulus_bits: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)


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
    """One round: the ServerEngine driven over Flower's Grid."""

    def __init__(
        self, wf: SecAggPlusWorkflow, grid: Grid, context: LegacyContext, report: RoundReport
    ) -> None:
        self.wf, self.grid, self.context, self.report = wf, grid, context, report
        self.timeout = wf.timeout if wf.timeout is not None else DEFAULT_STAGE_TIMEOUT
        cfg = context.state.config_records[MAIN_CONFIGS_RECORD]
        self.current_round = cast(int, cfg[WorkflowKey.CURRENT_ROUND])
        report.round = self.current_round
        self.fit_replies: dict[int, Message] = {}
        self.failures: list[BaseException] = []

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
        self.fitins = {
            proxy.node_id: compat.fitins_to_recorddict(fitins, True)
            for proxy, fitins in proxy_fitins
        }
        self.proxies: dict[int, ClientProxy] = {p.node_id: p for p, _ in proxy_fitins}
        node_ids = sorted(self.fitins)
        self.node_ids = node_ids
        self.party_of = {nid: i for i, nid in enumerate(node_ids)}
        self.report.sampled = tuple(node_ids)
        n = len(node_ids)
        self.shapes = [
            tuple(a.shape) for a in parameters_to_ndarrays(proxy_fitins[0][1].parameters)
        ]
        g, t = wf.resolve(n)
        bits = wf.quantizer.modulus_bits(wf.modulus_range, n)
        verify = None
        if wf.active:
            assert wf.verify_keys is not None
            missing = [nid for nid in node_ids if nid not in wf.verify_keys]
            if missing:
                raise ConfigError(f"no verify key for sampled nodes {missing[:5]}")
            verify = tuple(wf.verify_keys[nid] for nid in node_ids)
        self.config = RoundConfig(
            session_id=rng.token_bytes(16),
            round_index=self.current_round,
            graph=g,
            threshold=t,
            dim=flat_size(self.shapes),
            modulus_bits=bits,
            active=wf.active,
            verify_keys=verify,
            tolerated_colluders=wf.tolerated_colluders,
        )
        # No honest reply is larger than a packed masked vector plus per-party records.
        self.payload_limit = min(
            records.MAX_PAYLOAD_BYTES,
            2 * encoding.packed_size(self.config.dim, bits) + 4096 * (n + 16),
        )
        self.report.neighbors, self.report.threshold = g.degree, t
        self.report.modulus_bits = bits
        self.engine = ServerEngine(self.config, executor=wf.executor, workers=wf.workers)
        round_meta = _codec.encode(
            {
                "node_ids": node_ids,
                "shapes": [list(s) for s in self.shapes],
                "clipping_range": float(wf.clipping_range),
                "quantization_range": int(wf.quantization_range),
                "max_weight": float(wf.max_weight),
                "hide_num_examples": wf.hide_num_examples,
                "hide_metrics": wf.hide_metrics,
            }
        )
        setup = {
            "stage": records.SETUP,
            "config": _compat.config_to_bytes(self.config),
            "round": round_meta,
        }
        outgoing = self._stage(records.SETUP, {nid: dict(setup) for nid in node_ids})
        while self.engine.result is None:
            if not outgoing:
                raise AbortedError("the engine produced no messages for the next stage")
            stage = _STAGE_OF[outgoing[0].TYPE]
            outgoing = self._stage(
                stage,
                {
                    node_ids[m.recipient]: {"stage": stage, "payload": wire.encode(m)}
                    for m in outgoing
                },
            )
        self._finish()

    def _stage(self, stage: str, fields: dict[int, dict[str, Any]]) -> list[wire.Message]:
        """One Grid round trip: send each node its record, feed the valid replies to the engine,
        close the phase with whoever answered."""
        start = time.perf_counter()
        messages = []
        for nid, record in fields.items():
            # The masked-vector stage carries the strategy's FitIns: the nodes train on it.
            collect = stage == records.COLLECT_MASKED_VECTORS
            content = self.fitins[nid] if collect else RecordDict()
            content.config_records[records.RECORD_KEY] = ConfigRecord(cast(Any, record))
            # A decoy for Flower's own mod: its check_stage refuses it with our sentence.
            content.config_records[records.FLOWER_RECORD_KEY] = ConfigRecord(
                {"stage": records.DECOY_STAGE}
            )
            messages.append(
                Message(
                    content=content,
                    dst_node_id=nid,
                    message_type=MessageType.TRAIN,
                    group_id=str(self.current_round),
                )
            )
        replies = self.grid.send_and_receive(messages, timeout=self.timeout)
        asked = set(fields)
        answered: set[int] = set()
        outgoing: list[wire.Message] = []
        for reply in replies:
            nid = reply.metadata.src_node_id
            if nid not in asked or nid in answered:
                continue  # not asked, or a duplicate: never reaches the engine
            answered.add(nid)
            msg = self._accept(stage, nid, reply)
            if msg is None:
                continue
            outgoing += self._feed(nid, msg)
            if stage == records.COLLECT_MASKED_VECTORS and nid not in self.report.refused:
                self.fit_replies[nid] = reply
        if self.engine.result is None and not outgoing and self.engine.expected:
            outgoing = self.engine.close_phase()
        self.report.stage_seconds[stage] = time.perf_counter() - start
        return outgoing

    def _accept(self, stage: str, nid: int, reply: Message) -> wire.Message | None:
        """A node's reply as an engine message, or None (the node counts as dropped)."""
        if reply.has_error():
            return self._refused(nid, f"error reply: {reply.error.reason}")
        try:
            record = reply.content.config_records.get(records.RECORD_KEY)
            payload = None if record is None else record.get("payload")
            if not isinstance(payload, bytes):
                return self._refused(nid, "reply without a secagg.flower payload")
            if len(payload) > self.payload_limit:
                return self._refused(
                    nid, f"oversized payload ({len(payload)} bytes, limit {self.payload_limit})"
                )
            msg = wire.decode(payload, max_bytes=self.payload_limit)
        except (RemoteProtocolError, ValueError, TypeError) as exc:
            return self._refused(nid, f"malformed record: {exc}")
        if msg.TYPE is not _REPLY_OF[stage]:
            return self._refused(nid, f"sent {msg.TYPE.name} in stage {stage}")
        if msg.sender != self.party_of[nid]:
            return self._refused(
                nid,
                f"spoofed sender: node {nid} is party {self.party_of[nid]}, message claims"
                f" party {msg.sender}",
            )
        return msg

    def _feed(self, nid: int, msg: wire.Message) -> list[wire.Message]:
        """Give the engine one message; a message it rejects is that node dropping out (the
        engine is restored to its state before the message, so nothing of it remains)."""
        snapshot = self.engine.state_dict()
        try:
            return self.engine.receive(msg)
        except AbortedError:
            raise
        except RemoteProtocolError as exc:
            self._refuse(nid, f"rejected by the engine: {exc}")
            engine = ServerEngine(self.config, executor=self.wf.executor, workers=self.wf.workers)
            engine.load_state_dict(snapshot)
            self.engine = engine
            return []

    def _refuse(self, nid: int, reason: str) -> None:
        """Record that ``nid``'s reply was refused: the node counts as dropped."""
        self.report.refused[nid] = reason
        self.failures.append(RemoteProtocolError(f"node {nid}: {reason}"))
        log.warning("secagg: node %d dropped: %s", nid, reason)

    def _refused(self, nid: int, reason: str) -> wire.Message | None:
        self._refuse(nid, reason)
        return None

    def _finish(self) -> None:
        result = self.engine.result
        assert result is not None
        wf, context = self.wf, self.context
        survivors = [self.node_ids[p] for p in result.survivors]
        self.report.survivors = tuple(survivors)
        self.report.dropped = tuple(nid for nid in self.node_ids if nid not in set(survivors))
        aggregated = wf.quantizer.dequantize(result.total, len(survivors), self.shapes)
        parameters = ndarrays_to_parameters(aggregated)
        results: list[tuple[ClientProxy, FitRes]] = []
        for nid in survivors:
            reply = self.fit_replies.get(nid)
            if reply is None:  # pragma: no cover - a survivor always sent its masked input
                continue
            fitres = compat.recorddict_to_fitres(reply.content, keep_input=True)
            fitres.parameters = parameters
            results.append((self.proxies[nid], fitres))
        log.info(
            "aggregate_fit: received %s results and %s failures", len(results), len(self.failures)
        )
        parameters_aggregated, metrics_aggregated = context.strategy.aggregate_fit(
            self.current_round, results, cast(Any, self.failures)
        )
        if parameters_aggregated:
            context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
                parameters_aggregated, True
            )
            context.history.add_metrics_distributed_fit(
                server_round=self.current_round, metrics=metrics_aggregated
            )

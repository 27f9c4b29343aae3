"""Drive one round of the sans-I/O :class:`~secagg.engine.ServerEngine` over Flower's Grid.

Shared by the drop-in workflows and the parameter-part ServerApp. One Grid round trip per
engine phase: each node gets its record (stage + the engine's wire message for it), the valid
replies go to the engine, and the phase is closed with whoever answered when the Grid returns
(its timeout is the stage timeout). A reply that is an error, malformed, oversized, from a
spoofed sender or rejected by the engine is that node dropping out: the engine is restored to
its state before that message (``state_dict`` / ``load_state_dict``), so one bad node cannot
fail the round for everyone, and nothing of its message remains.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from secagg import encoding
from secagg import messages as wire
from secagg.config import RoundConfig
from secagg.engine import AggregationResult, ServerEngine
from secagg.errors import AbortedError, RemoteProtocolError
from secagg.flower import _codec, _compat, records

try:
    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.app.message_type import MessageType
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
        total: the engine's output, the survivors' sum in Z_(2^B) (what the server learns).
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
    total: npt.NDArray[np.unsignedinteger] | None = field(default=None, repr=False)


class EngineRound:
    """One secure aggregation round of ``config`` among ``node_ids`` (party i = node_ids[i]).

    Args:
        grid: Flower's Grid.
        config: the round configuration (every node receives it at setup).
        node_ids: the round's nodes, in party order.
        meta: plain fields every node receives with the configuration (encoding parameters).
        timeout: seconds per stage.
        group_id: Flower's message group (the round number).
        collect_content: the content of each node's masked-vector message (the node trains on
            it), or None for an empty one.
        report: filled in as the round goes.
    """

    def __init__(
        self,
        grid: Grid,
        config: RoundConfig,
        node_ids: list[int],
        meta: dict[str, Any],
        *,
        timeout: float | None,
        group_id: str,
        collect_content: Callable[[int], RecordDict] | None = None,
        report: RoundReport | None = None,
        executor: Executor | None = None,
        workers: int = 1,
    ) -> None:
        self.grid, self.config, self.node_ids = grid, config, list(node_ids)
        self.meta = dict(meta, node_ids=self.node_ids)
        self.timeout = timeout if timeout is not None else DEFAULT_STAGE_TIMEOUT
        self.group_id = group_id
        self.collect_content = collect_content
        self.report = report if report is not None else RoundReport()
        self.executor, self.workers = executor, workers
        self.party_of = {nid: i for i, nid in enumerate(self.node_ids)}
        self.fit_replies: dict[int, Message] = {}
        self.failures: list[BaseException] = []
        n = len(self.node_ids)
        # No honest reply is larger than a packed masked vector plus per-party records.
        self.payload_limit = min(
            records.MAX_PAYLOAD_BYTES,
            2 * encoding.packed_size(config.dim, config.modulus_bits) + 4096 * (n + 16),
        )
        self.report.sampled = tuple(self.node_ids)
        self.report.neighbors = config.graph.degree
        self.report.threshold = config.threshold
        self.report.modulus_bits = config.modulus_bits
        self.engine = ServerEngine(config, executor=executor, workers=workers)

    def run(self) -> AggregationResult:
        """Run every stage; returns the engine's result.

        Raises:
            AbortedError: too few nodes to go on safely (the round halts, nothing is revealed).
        """
        setup = {
            "stage": records.SETUP,
            "config": _compat.config_to_bytes(self.config),
            "round": _codec.encode(self.meta),
        }
        outgoing = self._stage(records.SETUP, {nid: dict(setup) for nid in self.node_ids})
        while not self.engine.done:
            if not outgoing:
                raise AbortedError("the engine produced no messages for the next stage")
            stage = _STAGE_OF[outgoing[0].TYPE]
            outgoing = self._stage(
                stage,
                {
                    self.node_ids[m.recipient]: {"stage": stage, "payload": wire.encode(m)}
                    for m in outgoing
                },
            )
        result = self.engine.result
        assert result is not None  # done means the engine holds its result
        self.report.total = result.total
        self.report.survivors = tuple(self.node_ids[p] for p in result.survivors)
        alive = set(self.report.survivors)
        self.report.dropped = tuple(nid for nid in self.node_ids if nid not in alive)
        return result

    def _stage(self, stage: str, fields: dict[int, dict[str, Any]]) -> list[wire.Message]:
        """One Grid round trip: send each node its record, feed the valid replies to the engine,
        close the phase with whoever answered."""
        start = time.perf_counter()
        log.info("secagg stage %s (round %s): %d nodes", stage, self.group_id, len(fields))
        messages = []
        for nid, record in fields.items():
            # The masked-vector stage carries the strategy's FitIns: the nodes train on it.
            make = self.collect_content
            collect = stage == records.COLLECT_MASKED_VECTORS and make is not None
            content = make(nid) if make is not None and collect else RecordDict()
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
                    group_id=self.group_id,
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
            engine = ServerEngine(self.config, executor=self.executor, workers=self.workers)
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

"""An in-process Flower Grid for tests and benchmarks: every message crosses protobuf.

``InProcessGrid`` implements Flower's ``Grid`` for one process: each instruction message is
serialised with Flower's own ``message_to_proto`` to bytes and parsed back before the node's
ClientApp sees it, and so is the reply; each node's ``Context`` is also kept as protobuf bytes
between messages and saved only when its ClientApp returns normally (a ClientApp exception
becomes an error reply and leaves the context unchanged, as a SuperNode does). Scripted
dropouts (a node stops answering from a stage on) and tamper hooks (rewrite any message in
either direction) make lying servers and misbehaving nodes testable with Flower's real types.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from types import SimpleNamespace
from typing import Any

from secagg.flower import records

try:
    from flwr.app import Context, Error, Message, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.common import serde
    from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
    from flwr.proto.message_pb2 import Context as ProtoContext
    from flwr.proto.message_pb2 import Message as ProtoMessage
    from flwr.serverapp.grid import Grid
    from flwr.supercore.task_identity import TaskIdentity
except ImportError as exc:  # pragma: no cover
    raise ImportError("secagg.flower.inprocess needs the 'flower' extra") from exc

Tamper = Callable[[Message], Message | None]


def stage_of(message: Message) -> str | None:
    """The secure aggregation stage a message belongs to (ours or Flower's record), if any."""
    if not message.has_content():
        return None
    cr = message.content.config_records
    for key in (records.RECORD_KEY, records.FLOWER_RECORD_KEY):
        if key in cr and isinstance(cr[key].get("stage"), str):
            stage = cr[key]["stage"]
            assert isinstance(stage, str)
            if stage != records.DECOY_STAGE:
                return stage
    return None


def wire_copy(message: Message) -> tuple[Message, int]:
    """``message`` after a protobuf round trip, and its size in bytes."""
    data = serde.message_to_proto(message).SerializeToString()
    proto = ProtoMessage()
    proto.ParseFromString(data)
    return serde.message_from_proto(proto), len(data)


class InProcessGrid(Grid):
    """Flower Grid routing to in-process ClientApps through protobuf.

    Args:
        app: the ClientApp every node runs (or a mapping node id -> ClientApp).
        node_ids: the nodes.
        drops: node id -> the stage from which it stops answering (its messages are lost).
        to_node: tamper hook on every instruction after serialisation (None: message lost).
        to_server: tamper hook on every reply (None: reply lost).
        node_config: each node's ``node_config``.
    """

    def __init__(
        self,
        app: ClientApp | Mapping[int, ClientApp],
        node_ids: Iterable[int],
        *,
        drops: Mapping[int, str] | None = None,
        to_node: Tamper | None = None,
        to_server: Tamper | None = None,
        node_config: Mapping[int, dict[str, Any]] | None = None,
    ) -> None:
        # The process-wide identity Flower's Message() reads (set by Flower for a real ServerApp).
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = 1
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        self.node_ids = list(node_ids)
        self.apps = app if isinstance(app, Mapping) else {nid: app for nid in self.node_ids}
        self.drops = dict(drops or {})
        self.to_node, self.to_server = to_node, to_server
        self.contexts: dict[int, bytes] = {}
        for nid in self.node_ids:
            ctx = Context(
                run_id=1,
                node_id=nid,
                node_config=dict((node_config or {}).get(nid, {})),
                state=RecordDict(),
                run_config={},
            )
            self.contexts[nid] = serde.context_to_proto(ctx).SerializeToString()
        self.bytes_to_nodes = 0
        self.bytes_to_server = 0
        self.node_seconds: dict[int, float] = {nid: 0.0 for nid in self.node_ids}
        self._run: Any = SimpleNamespace(run_id=1)

    # -- Grid's abstract API -----------------------------------------------------------------

    def set_run(self, run_id: int) -> None:  # type: ignore[override]
        self._run = SimpleNamespace(run_id=run_id)

    @property
    def run(self) -> Any:
        return self._run

    def create_message(  # type: ignore[no-untyped-def]
        self, content, message_type, dst_node_id, group_id, ttl=None
    ) -> Message:
        return Message(content, dst_node_id, message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("InProcessGrid only supports send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("InProcessGrid only supports send_and_receive")

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = []
        for message in messages:
            nid = message.metadata.dst_node_id
            stage = stage_of(message)
            if nid not in self.contexts or self._dropped(nid, stage):
                continue
            delivered, size = wire_copy(message)
            self.bytes_to_nodes += size
            if self.to_node is not None:
                tampered = self.to_node(delivered)
                if tampered is None:
                    continue
                delivered = tampered
            reply = self._run_node(nid, delivered)
            back, size = wire_copy(reply)
            self.bytes_to_server += size
            if self.to_server is not None:
                tampered = self.to_server(back)
                if tampered is None:
                    continue
                back = tampered
            replies.append(back)
        return replies

    # -- nodes -----------------------------------------------------------------------------------

    def _dropped(self, nid: int, stage: str | None) -> bool:
        at = self.drops.get(nid)
        if at is None or stage is None:
            return False
        order = records.STAGES
        if stage not in order or at not in order:
            return stage == at
        return order.index(stage) >= order.index(at)

    def _run_node(self, nid: int, message: Message) -> Message:
        proto = ProtoContext()
        proto.ParseFromString(self.contexts[nid])
        context = serde.context_from_proto(proto)
        start = time.perf_counter()
        try:
            reply = self.apps[nid](message, context)
        except Exception as ex:  # as Flower's ClientApp runtime: the exception becomes the reply
            reason = str(type(ex)) + ":<'" + str(ex) + "'>"
            return Message(
                Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason),
                reply_to=message,
            )
        finally:
            self.node_seconds[nid] += time.perf_counter() - start
        self.contexts[nid] = serde.context_to_proto(context).SerializeToString()
        return reply


def run_default_workflow(
    grid: Grid,
    fit_workflow: Callable[[Grid, Any], None],
    *,
    initial: list[Any],
    num_rounds: int = 1,
    strategy: Any | None = None,
) -> Any:
    """Run Flower's own ``DefaultWorkflow(fit_workflow=...)`` over ``grid``, as a ServerApp does
    (the nodes registered from ``grid.get_node_ids()``, a FedAvg over all of them by default).

    Returns:
        The ``LegacyContext`` after the run (``context.state.array_records["parameters"]`` holds
        the final global model; ``context.history`` the metrics).
    """
    from flwr.common import ndarrays_to_parameters
    from flwr.server import ServerConfig
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow

    n = len(list(grid.get_node_ids()))
    if strategy is None:
        strategy = FedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=n,
            min_available_clients=n,
            initial_parameters=ndarrays_to_parameters(initial),
        )
    base = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    context = LegacyContext(base, config=ServerConfig(num_rounds=num_rounds), strategy=strategy)
    DefaultWorkflow(fit_workflow=fit_workflow)(grid, context)
    return context

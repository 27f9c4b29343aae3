"""Test helpers: round configs and an in-memory router for one server and n client engines.

Everything crosses the simulated network as wire bytes (``messages.encode`` / ``decode``), and
every byte string is logged, so tests can inspect exactly what the server saw. Parties can be
scripted to stop answering from a phase on (``drops``: party -> phase), and a ``tamper`` hook can
rewrite, replace or suppress any server -> party message (a lying server).
"""

from __future__ import annotations

import secrets as _secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from secagg import encoding, graph
from secagg import messages as wire
from secagg.config import RoundConfig
from secagg.crypto import keys
from secagg.engine import AggregationResult, ClientEngine, ServerEngine
from secagg.engine._state import ClientState, ServerState
from secagg.errors import ProtocolError

#: Phases at which a party can stop answering (it answers nothing from that phase on).
PHASES = ("advertise", "share_keys", "masked_input", "consistency", "unmask")

#: The phase of the messages the server emits when it enters each state.
PHASE_OF_STATE = {
    ServerState.COLLECT_SHARES: "share_keys",
    ServerState.COLLECT_MASKED_INPUTS: "masked_input",
    ServerState.COLLECT_SIGNATURES: "consistency",
    ServerState.COLLECT_UNMASK: "unmask",
}


def alive(drops: Mapping[int, str], party: int, phase: str) -> bool:
    """True if ``party`` still answers in ``phase`` under the dropout schedule."""
    at = drops.get(party)
    return at is None or PHASES.index(phase) < PHASES.index(at)


def make_config(
    n: int,
    *,
    t: int,
    dim: int = 8,
    bits: int = 32,
    kind: str = "complete",
    k: int | None = None,
    active: bool = False,
    session_id: bytes | None = None,
    round_index: int = 0,
    graph_seed: bytes | None = None,
) -> tuple[RoundConfig, list[bytes] | None]:
    """A RoundConfig (complete graph, or Harary H_{k,n}) and, in active mode, signing keys.

    Returns:
        (config, signing keys indexed by party, or None in semi-honest mode).
    """
    if kind == "complete":
        g = graph.complete_graph(n)
    elif kind == "harary":
        assert k is not None
        g = graph.harary_graph(n, k, graph_seed or _secrets.token_bytes(32))
    else:  # pragma: no cover
        raise ValueError(kind)
    signing: list[bytes] | None = None
    verify: tuple[bytes, ...] | None = None
    if active:
        pairs = [keys.generate_ed25519() for _ in range(n)]
        signing = [p[0] for p in pairs]
        verify = tuple(p[1] for p in pairs)
    config = RoundConfig(
        session_id=session_id if session_id is not None else _secrets.token_bytes(16),
        round_index=round_index,
        graph=g,
        threshold=t,
        dim=dim,
        modulus_bits=bits,
        active=active,
        verify_keys=verify,
    )
    return config, signing


def random_inputs(
    n: int, dim: int, bits: int, seed: int | None = None
) -> dict[int, npt.NDArray[np.uint64]]:
    """Uniform inputs in [0, 2^B) as uint64 vectors (B up to 64)."""
    gen = np.random.default_rng(seed)
    high = 1 << bits
    return {u: gen.integers(0, high, size=dim, dtype=np.uint64, endpoint=False) for u in range(n)}


def plain_sum(
    inputs: Mapping[int, npt.NDArray[np.unsignedinteger]], parties: Iterable[int], bits: int
) -> npt.NDArray[np.uint64]:
    """sum_{u in parties} inputs[u] mod 2^B (uint64 wraps mod 2^64, then reduce)."""
    members = list(parties)
    dim = len(next(iter(inputs.values())))
    total = np.zeros(dim, dtype=np.uint64)
    for u in members:
        total += np.asarray(inputs[u], dtype=np.uint64)
    if bits < 64:
        total &= np.uint64((1 << bits) - 1)
    return total


Tamper = Callable[[wire.Message], "wire.Message | bytes | None"]


@dataclass
class Outcome:
    """What a routed round ended with."""

    result: AggregationResult | None
    error: ProtocolError | None
    client_errors: dict[int, ProtocolError]
    masked_senders: set[int]
    server_inbox: list[bytes]
    server_outbox: list[bytes]


@dataclass
class Router:
    """Wires one ServerEngine and n ClientEngines through wire bytes.

    Args:
        config, signing: from :func:`make_config`.
        inputs: party -> input vector (parties without one never set an input).
        drops: party -> phase from which it stops answering.
        input_early: set inputs before the round starts (else on reaching AWAIT_INPUT).
        tamper: rewrites each server -> party message (return a Message, raw bytes or None).
    """

    config: RoundConfig
    signing: list[bytes] | None = None
    inputs: Mapping[int, npt.ArrayLike] = field(default_factory=dict)
    drops: Mapping[int, str] = field(default_factory=dict)
    input_early: bool = True
    tamper: Tamper | None = None
    server: ServerEngine = field(init=False)
    clients: dict[int, ClientEngine] = field(init=False)
    pending: list[wire.Message] = field(init=False, default_factory=list)
    client_errors: dict[int, ProtocolError] = field(init=False, default_factory=dict)
    masked_senders: set[int] = field(init=False, default_factory=set)
    server_inbox: list[bytes] = field(init=False, default_factory=list)
    server_outbox: list[bytes] = field(init=False, default_factory=list)
    error: ProtocolError | None = field(init=False, default=None)
    started: bool = field(init=False, default=False)
    #: The phase of the messages in ``pending`` (kept when the server fails).
    phase: str = field(init=False, default="advertise")

    def __post_init__(self) -> None:
        n = self.config.num_parties
        self.server = ServerEngine(self.config)
        self.clients = {
            u: ClientEngine(
                self.config, u, signing_key=None if self.signing is None else self.signing[u]
            )
            for u in range(n)
        }

    # -- plumbing ----------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.error is not None or self.server.state in (ServerState.DONE, ServerState.FAILED)

    def _server_call(self, action: Callable[[], list[wire.Message]]) -> list[wire.Message]:
        try:
            out = action()
        except ProtocolError as exc:
            self.error = exc
            for notice in getattr(exc, "notices", None) or []:
                self.deliver_one(notice, notice=True)
            return []
        self.server_outbox.extend(wire.encode(m) for m in out)
        self.phase = PHASE_OF_STATE.get(self.server.state, self.phase)
        return out

    def to_server(self, party: int, outgoing: list[wire.Message]) -> None:
        """Send a party's messages to the server (as bytes)."""
        for m in outgoing:
            if self.finished:
                return
            data = wire.encode(m)
            self.server_inbox.append(data)
            accepted_masked = m.TYPE is wire.MessageType.MASKED_INPUT
            replies = self._server_call(lambda data=data: self.server.receive(data))
            if accepted_masked and self.error is None:
                self.masked_senders.add(party)
            self.pending.extend(replies)

    def deliver_one(self, m: wire.Message, *, notice: bool = False) -> list[wire.Message]:
        """Hand one server message to its recipient (unless dropped/failed); returns replies.

        ``notice``: an Abort from the failing server (never tampered with).
        """
        u = m.recipient
        client = self.clients[u]
        if not alive(self.drops, u, self.phase) or u in self.client_errors:
            return []
        if notice and client.state is ClientState.DONE:
            return []  # the round is over for this party: nothing left to abort
        payload: wire.Message | bytes | None = m
        if self.tamper is not None and not notice:
            payload = self.tamper(m)
            if payload is None:
                return []
        data = payload if isinstance(payload, bytes) else wire.encode(payload)
        try:
            out = client.receive(data)
            if (
                not out
                and client.state is ClientState.AWAIT_INPUT
                and u in self.inputs
                and not self.input_early
            ):
                out = client.set_input(self.inputs[u])
        except ProtocolError as exc:
            self.client_errors.setdefault(u, exc)
            return []
        return out

    # -- driving -----------------------------------------------------------------------------

    def start(self) -> None:
        self.started = True
        for u, client in self.clients.items():
            if not alive(self.drops, u, "advertise"):
                continue
            out = client.start()
            if self.input_early and u in self.inputs:
                client.set_input(self.inputs[u])
            self.to_server(u, out)
            if self.finished:
                return

    def step(self) -> bool:
        """Deliver the pending batch (or close the stalled phase). False once finished."""
        if not self.started:
            self.start()
            return not self.finished
        if self.finished:
            return False
        if not self.pending:
            self.pending = self._server_call(self.server.close_phase)
            return not self.finished
        batch, self.pending = self.pending, []
        for m in batch:
            if self.finished:
                break
            self.to_server(m.recipient, self.deliver_one(m))
        return not self.finished

    def run_until(self, state: ServerState) -> None:
        """Step until the server is in ``state`` with that phase's messages still pending."""
        if not self.started:
            self.start()
        while not self.finished and self.server.state is not state:
            self.step()
        if self.server.state is not state:
            raise AssertionError(f"round ended before {state.name}: {self.error!r}")
        # The server may have entered `state` with undelivered messages of the phase: good.

    def run(self) -> Outcome:
        while self.step():
            pass
        return self.outcome()

    def outcome(self) -> Outcome:
        return Outcome(
            result=self.server.result,
            error=self.error,
            client_errors=dict(self.client_errors),
            masked_senders=set(self.masked_senders),
            server_inbox=list(self.server_inbox),
            server_outbox=list(self.server_outbox),
        )

    def pending_for(self, party: int) -> wire.Message:
        """The one pending server message addressed to ``party``."""
        found = [m for m in self.pending if m.recipient == party]
        assert len(found) == 1, found
        return found[0]


def run_round(
    config: RoundConfig,
    signing: list[bytes] | None,
    inputs: Mapping[int, npt.ArrayLike],
    drops: Mapping[int, str] | None = None,
    *,
    input_early: bool = True,
    tamper: Tamper | None = None,
) -> Outcome:
    """Run one whole round; the outcome carries the result or the server's typed error."""
    return Router(
        config, signing, inputs, drops or {}, input_early=input_early, tamper=tamper
    ).run()


def decoded(data: list[bytes], kind: type[wire.Message]) -> list[wire.Message]:
    """The messages of one type among logged wire bytes."""
    out = []
    for b in data:
        m = wire.decode(b)
        if isinstance(m, kind):
            out.append(m)
    return out


def masked_vector(
    config: RoundConfig, message: wire.MaskedInput
) -> npt.NDArray[np.unsignedinteger]:
    """The masked vector y_u carried by a MaskedInput message."""
    return encoding.unpack(message.payload, config.modulus_bits, config.dim)


__all__ = [
    "PHASES",
    "Outcome",
    "Router",
    "alive",
    "decoded",
    "make_config",
    "masked_vector",
    "plain_sum",
    "random_inputs",
    "run_round",
]

"""In-process simulator: n client engines and one server engine, wired through the wire format,
with scripted dropouts at every phase.

Everything crosses the simulated network as bytes (``messages.encode``/``decode``), so the codec
is exercised and byte counts are real. The simulation's own choices (inputs, who drops) come from
``numpy.random.default_rng(seed)``; every key, seed and mask inside the engines comes from the
CSPRNG, as in production.
"""

from __future__ import annotations

import gc
import math
import os
import pickle
import resource
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from secagg import encoding, graph
from secagg import messages as wire
from secagg.config import RoundConfig
from secagg.crypto import keys, rng
from secagg.engine._state import ServerState
from secagg.engine.client import ClientEngine
from secagg.engine.server import AggregationResult, ServerEngine
from secagg.errors import ConfigError, ProtocolError

Progress = Callable[[str, int, int], None]

#: The phase a party is in when it receives what the server sends from each state.
_PHASE_OF = {
    ServerState.COLLECT_SHARES: "share_keys",
    ServerState.COLLECT_MASKED_INPUTS: "masked_input",
    ServerState.COLLECT_SIGNATURES: "consistency",
    ServerState.COLLECT_UNMASK: "unmask",
}

#: Phases at which a party can be scripted to drop. Each names the first message the party
#: does NOT send; it is silent from then on.
DROP_PHASES = ("advertise", "share_keys", "masked_input", "consistency", "unmask")

#: What a party scripted to drop at each phase still does, for error messages and docs.
DROP_MEANING = {
    "advertise": "never sends its keys (absent from the start)",
    "share_keys": "sends its keys, never its encrypted shares",
    "masked_input": "sends its shares, never its masked input (the usual mid-round dropout)",
    "consistency": "sends its masked input, never its signature (active mode)",
    "unmask": "sends its masked input, never its unmasking shares (a late dropout)",
}


@dataclass
class DropoutScript:
    """Who drops, and which message is the first one they do not send.

    ``drops`` maps a party to a phase of :data:`DROP_PHASES`, read as "from this message on,
    silent": ``DropoutScript({3: "masked_input"})`` is party 3 sending its keys and shares but
    never its masked input (it stops answering when its share delivery arrives), so the round
    must recover its pairwise masks; ``{3: "unmask"}`` is party 3 dropping after sending its
    masked input (it counts as a survivor: its input is in the sum). See :data:`DROP_MEANING`.
    :meth:`before` builds a script for several parties at once.

    Raises:
        ConfigError: a party id that is not a non-negative integer, or an unknown phase.
    """

    drops: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for party, phase in self.drops.items():
            if isinstance(party, bool) or not isinstance(party, int | np.integer) or party < 0:
                raise ConfigError(f"DropoutScript: party ids are integers >= 0, got {party!r}")
            if phase not in DROP_PHASES:
                raise ConfigError(
                    f"DropoutScript: party {party} drops at {phase!r}, not a phase; use one of"
                    f" {', '.join(DROP_PHASES)} (the first message the party does not send)"
                )

    @classmethod
    def before(cls, phase: str, parties: Iterable[int]) -> DropoutScript:
        """Every party in ``parties`` goes silent before sending its ``phase`` message
        (``DropoutScript.before("masked_input", [3, 5])``)."""
        return cls(dict.fromkeys((int(u) for u in parties), phase))

    def alive(self, party: int, phase: str) -> bool:
        at = self.drops.get(party)
        return at is None or DROP_PHASES.index(phase) < DROP_PHASES.index(at)


@dataclass
class SimulationSetup:
    """The round parameters a simulation runs with (resolved from the CLI-style options)."""

    clients: int
    dim: int
    graph_kind: str
    neighbors: int
    threshold: int
    modulus_bits: int
    value_bits: int
    active: bool


def resolve_parameters(
    clients: int,
    dim: int,
    *,
    graph_kind: str = "harary",
    neighbors: int | None = None,
    threshold: int | None = None,
    bits: int | None = None,
    value_bits: int = 16,
    dropout_rate: float = 0.05,
    corruption_rate: float = 0.05,
    active: bool = False,
) -> SimulationSetup:
    """Pick (k, t, B) the way a deployment would: k and t from the graph parameter finder for the
    expected dropout and corruption rates, B from the value range and the party count."""
    if clients < 3:
        raise ConfigError(f"clients must be at least 3, got clients={clients}")
    if graph_kind not in ("harary", "complete"):
        raise ConfigError(f"graph_kind must be 'harary' or 'complete', got {graph_kind!r}")
    if graph_kind == "complete":
        params = (
            graph.complete_parameters(clients, dropout_rate, corruption_rate, active=active)
            if threshold is None
            else graph.GraphParameters(clients - 1, threshold, graph.KIND_COMPLETE)
        )
        k = clients - 1
    else:
        params = graph.find_harary_parameters(
            clients, dropout_rate, corruption_rate, semi_honest=not active
        )
        k = params.k if neighbors is None else neighbors
        if k >= clients - 1:
            k = clients - 1
    t = threshold if threshold is not None else min(params.t, k)
    if bits is None:
        bits = encoding.choose_modulus_bits(value_bits, clients)
    elif bits < encoding.choose_modulus_bits(value_bits, clients):
        raise ConfigError(
            f"--bits {bits} cannot hold a sum of {clients} values of {value_bits} bits"
            f" (needs {encoding.choose_modulus_bits(value_bits, clients)})"
        )
    return SimulationSetup(clients, dim, graph_kind, k, t, bits, value_bits, active)


def build_config(setup: SimulationSetup) -> tuple[RoundConfig, list[bytes] | None]:
    """A fresh round config (random session id and graph seed) and, in active mode, the
    parties' long-term signing keys."""
    if setup.graph_kind == "complete" or setup.neighbors >= setup.clients - 1:
        g = graph.complete_graph(setup.clients)
    else:
        if setup.neighbors % 2:
            raise ConfigError(
                f"a Harary graph needs an even number of neighbours, got {setup.neighbors}"
            )
        g = graph.harary_graph(setup.clients, setup.neighbors, rng.token_bytes(32))
    signing: list[bytes] | None = None
    verify: tuple[bytes, ...] | None = None
    if setup.active:
        pairs = [keys.generate_ed25519() for _ in range(setup.clients)]
        signing = [p[0] for p in pairs]
        verify = tuple(p[1] for p in pairs)
    config = RoundConfig(
        session_id=rng.token_bytes(16),
        round_index=0,
        graph=g,
        threshold=setup.threshold,
        dim=setup.dim,
        modulus_bits=setup.modulus_bits,
        active=setup.active,
        verify_keys=verify,
    )
    return config, signing


def simulation_input(seed: int, party: int, dim: int, value_bits: int) -> npt.NDArray[np.int64]:
    """Party ``party``'s encoded input (signed fixed-point values), reproducible from the seed."""
    bound = 2 ** (value_bits - 1) - 1
    gen = np.random.default_rng([seed, party])
    return gen.integers(-bound, bound, size=dim, endpoint=True, dtype=np.int64)


@dataclass
class _Meter:
    seconds: float = 0.0
    upload: int = 0
    download: int = 0
    phases: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _WorkerContext:
    """What every client worker needs besides its own state: shipped once per worker."""

    config: RoundConfig
    signing: list[bytes] | None
    seed: int
    value_bits: int


_CONTEXT: _WorkerContext | None = None


def _init_worker(context: _WorkerContext) -> None:
    global _CONTEXT
    _CONTEXT = context


@dataclass(frozen=True)
class _StepResult:
    party: int
    outgoing: list[bytes]
    state: bytes
    seconds: float
    failure: str | None


def _client_step(job: tuple[int, bytes | None, bytes | None]) -> _StepResult:
    """One party handles one message, as a stateless host would: load its persisted engine
    state, act, persist again. Runs in a worker process (or in process with one worker).

    The state travels and is stored as one pickled blob: the driver never holds a party's
    engine (or its state as Python objects) between steps, so memory per party is a few KB
    of bytes, and the main process does not re-pickle states it only stores."""
    party, blob, data = job
    state = None if blob is None else pickle.loads(blob)
    ctx = _CONTEXT
    assert ctx is not None
    engine = ClientEngine(
        ctx.config, party, signing_key=None if ctx.signing is None else ctx.signing[party]
    )
    if state is not None:
        engine.load_state_dict(state)
    words = None
    if data is not None and wire.peek_type(data) is wire.MessageType.SHARE_DELIVERY:
        # The party's training finished during key exchange: its encoded update is ready now.
        x = simulation_input(ctx.seed, party, ctx.config.dim, ctx.value_bits)
        words = encoding.to_ring(x, ctx.config.modulus_bits)
    start = time.perf_counter()
    failure = None
    try:
        if data is None:
            out = engine.start()
        else:
            if words is not None:
                engine.set_input(words)
            out = engine.receive(data)
        encoded = [wire.encode(m) for m in out]
    except ProtocolError as exc:
        failure = f"{type(exc).__name__}: {exc}"
        encoded = []
    seconds = time.perf_counter() - start
    return _StepResult(
        party, encoded, pickle.dumps(engine.state_dict(), protocol=5), seconds, failure
    )


#: Offset of the recipient field in the wire header (magic, version, type, session, round,
#: sender come first: see :mod:`secagg.messages`).
_RECIPIENT_AT = struct.calcsize(">4sBB16sQI")


class _BroadcastEncoder:
    """``wire.encode`` for the simulated network, reusing the body of a broadcast.

    Where the server sends every survivor the whole survivor list (and dropped list) in
    SurvivorList and UnmaskRequest (active, part-wise and colluder rounds; semi-honest
    whole-vector rounds send each party only its partners), only the recipient in the header
    differs. At n = 10^5 each such body is ~400 KB, and packing it 10^5 times would be most of
    the simulation. The bytes produced are exactly ``wire.encode(message)`` (checked against a
    full encoding for the second message of every broadcast). Messages with short lists are
    encoded directly. Keys are object ids: every message of a batch stays alive while the
    batch is encoded, so no id is reused within one encoder.
    """

    def __init__(self) -> None:
        self._bodies: dict[tuple[Any, ...], tuple[bytes, bool]] = {}

    def encode(self, m: wire.Message) -> bytes:
        key: tuple[Any, ...] | None = None
        if isinstance(m, (wire.UnmaskRequest, wire.SurvivorList)) and len(m.survivors) < 256:
            return wire.encode(m)
        if isinstance(m, wire.UnmaskRequest):
            key = (m.TYPE, id(m.survivors), id(m.dropped), id(m.signatures), id(m.partner_sets))
        elif isinstance(m, wire.SurvivorList):
            key = (m.TYPE, id(m.survivors), id(m.dropped))
        if key is None:
            return wire.encode(m)
        known = self._bodies.get(key)
        if known is None:
            data = wire.encode(m)
            self._bodies[key] = (data, False)
            return data
        first, checked = known
        data = first[:_RECIPIENT_AT] + struct.pack(">I", m.recipient) + first[_RECIPIENT_AT + 4 :]
        if not checked:
            if data != wire.encode(m):  # pragma: no cover - header layout changed
                raise AssertionError("broadcast re-encoding differs from wire.encode")
            self._bodies[key] = (first, True)
        return data


def _plaintext_sum(
    job: tuple[Sequence[int], int, int, int],
) -> tuple[npt.NDArray[np.int64], float]:
    """Sum of the given parties' inputs in the clear, and the seconds the additions took."""
    parties, seed, dim, value_bits = job
    total = np.zeros(dim, dtype=np.int64)
    seconds = 0.0
    for u in parties:
        x = simulation_input(seed, u, dim, value_bits)
        start = time.perf_counter()
        total += x
        seconds += time.perf_counter() - start
    return total, seconds


#: Young-generation threshold of the garbage collector during a simulated round (default 700).
ROUND_GC_THRESHOLD = 70_000


def run_round(
    setup: SimulationSetup,
    script: DropoutScript,
    *,
    seed: int = 0,
    workers: int = 1,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run one round and report correctness, timings and bytes (the ``simulate`` JSON).

    Clients are stateless between messages: each step loads the party's engine from its
    ``state_dict``, handles one message and persists it again, in ``workers`` processes. The
    server runs in this process; with several workers it regenerates masks on the same pool.

    Timing: clients and the server take turns (a chunk of clients computes, then the server
    handles their replies), so ``server_seconds`` is the wall time of all the server's work with
    no simulated client competing for the cores; client seconds are per party, summed over its
    steps (several clients run at once on the worker processes).
    """
    config, signing = build_config(setup)
    # A host serving 10^4..10^5 parties keeps millions of small objects (ciphertexts, lists)
    # alive during a round; CPython's default collector would rescan them every few thousand
    # allocations. Like such a host, the driver collects young objects 100x less often for the
    # round (restored afterwards; reported as ``gc_threshold``).
    gc_before = gc.get_threshold()
    gc.set_threshold(ROUND_GC_THRESHOLD, gc_before[1], gc_before[2])
    n, dim = setup.clients, setup.dim
    context = _WorkerContext(config, signing, seed, setup.value_bits)
    executor: ProcessPoolExecutor | None = None
    if workers > 1:
        executor = ProcessPoolExecutor(
            max_workers=workers, initializer=_init_worker, initargs=(context,)
        )
        list(executor.map(abs, range(workers)))  # start the workers before timing
    else:
        _init_worker(context)
    server = ServerEngine(config, executor=executor, workers=workers)
    states: dict[int, bytes | None] = dict.fromkeys(range(n))
    meters = {u: _Meter() for u in range(n)}
    server_seconds = 0.0
    server_phases: dict[str, float] = {}
    # CPU time of the driver process inside the server engine, per phase: unlike wall time it
    # does not grow when other jobs load the machine, and it leaves out the mask regeneration
    # that runs on the worker processes (so it is the server's own bookkeeping and Shamir).
    server_cpu: dict[str, float] = {}
    failures: dict[int, str] = {}

    def close() -> list[wire.Message]:
        nonlocal server_seconds
        phase = server.state.value
        cpu = time.process_time()
        start = time.perf_counter()
        out = server.close_phase()
        elapsed = time.perf_counter() - start
        server_cpu[phase] = server_cpu.get(phase, 0.0) + time.process_time() - cpu
        server_seconds += elapsed
        server_phases[phase] = server_phases.get(phase, 0.0) + elapsed
        return out

    # Clients and server take turns, a chunk of clients at a time, so that the server's timings
    # are not slowed by simulated clients competing for the same cores (a real server does not
    # host its clients). A chunk holds at most ~256 MB of replies.
    reply_bytes = max(1, setup.dim * setup.modulus_bits // 8)
    chunk = max(workers, min(256, (256 << 20) // reply_bytes))

    client_wall = 0.0  # the driver waiting for client steps (workers computing, IPC)
    transport_seconds = 0.0  # encoding the server's messages for the simulated network

    def run_clients(
        jobs: list[tuple[int, bytes | None, bytes | None]],
    ) -> list[_StepResult]:
        nonlocal client_wall
        start = time.perf_counter()
        if executor is None:
            out = [_client_step(job) for job in jobs]
        else:
            size = max(1, len(jobs) // (4 * workers))
            out = list(executor.map(_client_step, jobs, chunksize=size))
        client_wall += time.perf_counter() - start
        return out

    def step(batch: list[tuple[int, wire.Message | None]], phase: str) -> list[wire.Message]:
        """Hand messages to the parties alive in ``phase``; route their replies to the server.

        Messages are encoded a chunk at a time, so the driver never holds a whole phase of
        wire bytes (at n = 10^5 the unmask requests alone would be ~40 GB)."""
        nonlocal server_seconds, transport_seconds
        todo = [(u, m) for u, m in batch if script.alive(u, phase) and u not in failures]
        encoder = _BroadcastEncoder()
        replies: list[wire.Message] = []
        done = 0
        for first in range(0, len(todo), chunk):
            start = time.perf_counter()
            jobs = []
            for u, m in todo[first : first + chunk]:
                data = None if m is None else encoder.encode(m)
                if data is not None:
                    meters[u].download += len(data)
                jobs.append((u, states[u], data))
            transport_seconds += time.perf_counter() - start
            for result in run_clients(jobs):
                done += 1
                if progress:
                    progress(phase, done, len(jobs))
                u = result.party
                states[u] = result.state
                meters[u].seconds += result.seconds
                meters[u].phases[phase] = meters[u].phases.get(phase, 0.0) + result.seconds
                if result.failure:
                    failures[u] = result.failure
                for data in result.outgoing:
                    meters[u].upload += len(data)
                    collecting = server.state.value
                    cpu = time.process_time()
                    start = time.perf_counter()
                    replies.extend(server.receive(data))
                    elapsed = time.perf_counter() - start
                    cpu = time.process_time() - cpu
                    server_cpu[collecting] = server_cpu.get(collecting, 0.0) + cpu
                    server_seconds += elapsed
                    server_phases[collecting] = server_phases.get(collecting, 0.0) + elapsed
        return replies

    expected = np.zeros(dim, dtype=np.int64)
    plaintext_seconds = 0.0
    try:
        round_start = time.perf_counter()
        pending = step([(u, None) for u in range(n)], "advertise")
        while server.state not in (ServerState.DONE, ServerState.FAILED):
            if not pending:
                pending = close()  # the host's timeout: go on with whoever answered
                continue
            phase = _PHASE_OF[server.state]
            pending = step([(m.recipient, m) for m in pending], phase)
        round_wall = time.perf_counter() - round_start
        result = server.result
        assert result is not None
        # Independent check: the plaintext sum of the survivors' encoded inputs (regenerated
        # from the simulation seed; on the workers in slices when there are several).
        parts = [result.survivors[i::workers] for i in range(workers)]
        jobs_ = [(p, seed, dim, setup.value_bits) for p in parts if p]
        partials = (
            list(executor.map(_plaintext_sum, jobs_))
            if executor is not None
            else [_plaintext_sum(j) for j in jobs_]
        )
        for part, seconds in partials:
            start = time.perf_counter()
            expected += part
            plaintext_seconds += seconds + time.perf_counter() - start
        correct = bool(np.array_equal(result.signed(), expected))
        # Keystream expansions the unmasking step must do: one self mask per survivor, one
        # pairwise mask per (dropped party, surviving neighbour that masked with it).
        alive = set(result.survivors)
        server_expansions = len(alive) + sum(
            sum(1 for w in config.neighbors(v) if w in alive) for v in result.dropped
        )
    finally:
        gc.set_threshold(*gc_before)
        if executor is not None:
            executor.shutdown()
    client_secs = [meters[u].seconds for u in range(n) if script.alive(u, "advertise")]
    phase_means = (
        {
            phase: float(np.mean([meters[u].phases.get(phase, 0.0) for u in full_round]))
            for phase in DROP_PHASES
        }
        if (full_round := [u for u in result.survivors if script.alive(u, "unmask")])
        else {}
    )
    uploads = [meters[u].upload for u in range(n)]
    downloads = [meters[u].download for u in range(n)]
    upload_full = float(np.mean([meters[u].upload for u in full_round])) if full_round else 0.0
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "clients": n,
        "dim": dim,
        "survivors": len(result.survivors),
        "dropped": len(result.dropped),
        "graph": setup.graph_kind,
        "neighbors": setup.neighbors,
        "threshold": setup.threshold,
        "modulus_bits": setup.modulus_bits,
        "active": setup.active,
        "correct": correct,
        "server_seconds": server_seconds,
        "client_seconds": {"mean": float(np.mean(client_secs)), "max": float(np.max(client_secs))},
        "plaintext_seconds": plaintext_seconds,
        "bytes": {
            "client_upload_mean": float(np.mean(uploads)),
            "client_download_mean": float(np.mean(downloads)),
            "client_upload_full_round_mean": upload_full,
        },
        "expansion": upload_full / (4 * dim) if dim else math.nan,
        "peak_memory_mb": max(usage, children) / 1024,
        "client_failures": len(failures),
        "client_phase_seconds": phase_means,
        "server_phase_seconds": server_phases,
        "server_phase_cpu_seconds": server_cpu,
        # Where the round's wall time went in the driver: the server engine, waiting for the
        # client steps (workers computing and the process pool's IPC), encoding the server's
        # messages, and the rest (the driver's own bookkeeping and routing).
        "simulator": {
            "round_wall_seconds": round_wall,
            "client_steps_wall_seconds": client_wall,
            "transport_seconds": transport_seconds,
            "driver_seconds": max(
                0.0, round_wall - server_seconds - client_wall - transport_seconds
            ),
            "stored_state_mb": sum(len(b) for b in states.values() if b is not None) / 2**20,
            "peak_memory_mb_main": usage / 1024,
            "peak_memory_mb_workers": children / 1024,
        },
        "mask_expansions": {
            "server": server_expansions,
            "client_mean": float(
                np.mean(
                    [
                        1 + sum(1 for w in config.neighbors(u) if script.alive(w, "share_keys"))
                        for u in full_round
                    ]
                )
            )
            if full_round
            else 0.0,
        },
        "workers": workers,
        "gc_threshold": ROUND_GC_THRESHOLD,
    }


def scripted_dropouts(
    clients: int, dropout: float, late_dropout: float, seed: int
) -> DropoutScript:
    """``floor(dropout * clients)`` parties stop after ShareKeys (before sending their masked
    input), ``floor(late_dropout * clients)`` others stop during unmasking (see
    :func:`secagg.graph.count_at_rate`). Who drops is drawn from the simulation seed."""
    if not (0 <= dropout < 1 and 0 <= late_dropout < 1 and dropout + late_dropout < 1):
        raise ConfigError(
            f"dropout fractions must be in [0, 1) and sum below 1, got dropout={dropout},"
            f" late_dropout={late_dropout}"
        )
    gen = np.random.default_rng([seed, 2**31])
    order = gen.permutation(clients)
    # The same count the (k, t) finder plans for (graph.count_at_rate), so that a rate the
    # parameters were chosen for never drops one party more than they tolerate.
    early = graph.count_at_rate(dropout, clients)
    late = graph.count_at_rate(late_dropout, clients)
    drops = {int(u): "masked_input" for u in order[:early]}
    drops.update({int(u): "unmask" for u in order[early : early + late]})
    return DropoutScript(drops)


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


@dataclass
class InMemoryOutcome:
    """What :func:`aggregate_in_memory` returns: the server's result and each party's traffic."""

    result: AggregationResult
    upload_bytes: dict[int, int]
    download_bytes: dict[int, int]
    refusals: dict[int, str]
    #: Per party, the bytes of its MaskedInput alone (the part that scales with its vector).
    masked_input_bytes: dict[int, int] = field(default_factory=dict)


def aggregate_in_memory(
    config: RoundConfig,
    inputs: Mapping[int, npt.NDArray[np.unsignedinteger]],
    script: DropoutScript | None = None,
    *,
    signing: Sequence[bytes] | None = None,
    transcript: list[bytes] | None = None,
) -> InMemoryOutcome:
    """Run one secure aggregation round among the parties in ``inputs`` (the others are absent
    from the start), every message crossing as bytes, with optional scripted dropouts.

    This is the driver the FL protocols use in process. It raises what the server raises
    (:class:`~secagg.errors.AbortedError` when too few parties remain).

    Args:
        transcript: if given, every message the server receives is appended to it, as wire
            bytes: the server's whole view of the round (the privacy audits attack it).
    """
    script = script or DropoutScript()
    server = ServerEngine(config)
    clients = {
        u: ClientEngine(config, u, signing_key=None if signing is None else signing[u])
        for u in sorted(inputs)
    }
    up = dict.fromkeys(clients, 0)
    down = dict.fromkeys(clients, 0)
    masked = dict.fromkeys(clients, 0)
    refusals: dict[int, str] = {}

    def to_server(u: int, outgoing: list[wire.Message]) -> list[wire.Message]:
        replies: list[wire.Message] = []
        for m in outgoing:
            data = wire.encode(m)
            up[u] += len(data)
            if transcript is not None:
                transcript.append(data)
            if isinstance(m, wire.MaskedInput):
                masked[u] += len(data)
            replies.extend(server.receive(data))
        return replies

    pending: list[wire.Message] = []
    for u, engine in clients.items():
        if script.alive(u, "advertise"):
            engine.set_input(inputs[u])
            pending += to_server(u, engine.start())
    while server.state not in (ServerState.DONE, ServerState.FAILED):
        if not pending:
            pending = server.close_phase()
            continue
        phase = _PHASE_OF[server.state]
        batch, pending = pending, []
        for m in batch:
            u = m.recipient
            if u not in clients or not script.alive(u, phase) or u in refusals:
                continue
            data = wire.encode(m)
            down[u] += len(data)
            try:
                out = clients[u].receive(data)
            except ProtocolError as exc:
                refusals[u] = f"{type(exc).__name__}: {exc}"
                continue
            pending += to_server(u, out)
    assert server.result is not None
    return InMemoryOutcome(server.result, up, down, refusals, masked)

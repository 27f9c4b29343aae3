"""In-process simulator: n client engines and one server engine, wired through the wire format,
with scripted dropouts at every phase.

Everything crosses the simulated network as bytes (``messages.encode``/``decode``), so the codec
is exercised and byte counts are real. The simulation's own choices (inputs, who drops) come from
``numpy.random.default_rng(seed)``; every key, seed and mask inside the engines comes from the
CSPRNG, as in production.
"""

from __future__ import annotations

import math
import os
import resource
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from secagg import encoding, graph
from secagg import messages as wire
from secagg.config import RoundConfig
from secagg.crypto import keys, rng
from secagg.engine import ClientEngine, ServerEngine
from secagg.engine._state import ServerState
from secagg.errors import ConfigError, ProtocolError

Progress = Callable[[str, int, int], None]

#: The phase a party is in when it receives what the server sends from each state.
_PHASE_OF = {
    ServerState.COLLECT_SHARES: "share_keys",
    ServerState.COLLECT_MASKED_INPUTS: "masked_input",
    ServerState.COLLECT_SIGNATURES: "consistency",
    ServerState.COLLECT_UNMASK: "unmask",
}

#: Phases at which a party can be scripted to drop (it stops answering from that point on).
DROP_PHASES = ("advertise", "share_keys", "masked_input", "consistency", "unmask")


@dataclass
class DropoutScript:
    """Who stops answering, and from which phase on (party -> phase name in DROP_PHASES)."""

    drops: dict[int, str] = field(default_factory=dict)

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
        raise ConfigError("need at least 3 clients")
    if graph_kind not in ("harary", "complete"):
        raise ConfigError("graph must be 'harary' or 'complete'")
    if graph_kind == "complete":
        params = (
            graph.complete_parameters(clients, dropout_rate, corruption_rate, active=active)
            if threshold is None
            else graph.GraphParameters(clients - 1, threshold)
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
            raise ConfigError("a Harary graph needs an even number of neighbours")
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


def run_round(
    setup: SimulationSetup,
    script: DropoutScript,
    *,
    seed: int = 0,
    workers: int = 1,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run one round and report correctness, timings and bytes (the ``simulate`` JSON)."""
    config, signing = build_config(setup)
    n, dim, bits = setup.clients, setup.dim, setup.modulus_bits
    executor: Executor | None = None
    if workers > 1:
        executor = ProcessPoolExecutor(max_workers=workers)
        list(executor.map(abs, range(workers)))  # start the workers before timing
    server = ServerEngine(config, executor=executor, workers=workers)
    clients = {
        u: ClientEngine(config, u, signing_key=None if signing is None else signing[u])
        for u in range(n)
    }
    meters = {u: _Meter() for u in range(n)}
    server_seconds = 0.0
    failures: dict[int, str] = {}

    def to_server(u: int, outgoing: list[wire.Message]) -> list[wire.Message]:
        nonlocal server_seconds
        replies: list[wire.Message] = []
        for m in outgoing:
            data = wire.encode(m)
            meters[u].upload += len(data)
            start = time.perf_counter()
            replies.extend(server.receive(data))
            server_seconds += time.perf_counter() - start
        return replies

    def close() -> list[wire.Message]:
        nonlocal server_seconds
        start = time.perf_counter()
        out = server.close_phase()
        server_seconds += time.perf_counter() - start
        return out

    def deliver(batch: list[wire.Message], phase: str) -> list[wire.Message]:
        """Hand the server's messages to the parties alive in ``phase``; route their replies."""
        replies: list[wire.Message] = []
        for i, m in enumerate(batch):
            u = m.recipient
            if progress:
                progress(phase, i + 1, len(batch))
            if not script.alive(u, phase) or u in failures:
                continue
            data = wire.encode(m)
            meters[u].download += len(data)
            start = time.perf_counter()
            try:
                out = clients[u].receive(data)
            except ProtocolError as exc:
                failures[u] = f"{type(exc).__name__}: {exc}"
                out = []
            meters[u].seconds += time.perf_counter() - start
            replies.extend(to_server(u, out))
        return replies

    expected = np.zeros(dim, dtype=np.int64)
    plaintext_seconds = 0.0
    try:
        # Phase 1: AdvertiseKeys (inputs are set up front, as a training client would).
        pending: list[wire.Message] = []
        for u in range(n):
            if progress:
                progress("advertise", u + 1, n)
            if not script.alive(u, "advertise"):
                continue
            x = encoding.to_ring(simulation_input(seed, u, dim, setup.value_bits), bits)
            start = time.perf_counter()
            out = clients[u].start()
            clients[u].set_input(x)
            meters[u].seconds += time.perf_counter() - start
            pending += to_server(u, out)
        while server.state not in (ServerState.DONE, ServerState.FAILED):
            if not pending:
                pending = close()  # the host's timeout: go on with whoever answered
                continue
            pending = deliver(pending, _PHASE_OF[server.state])
        result = server.result
        assert result is not None
        # Independent check: the plaintext sum of the survivors' encoded inputs.
        for u in result.survivors:
            x = simulation_input(seed, u, dim, setup.value_bits)
            start = time.perf_counter()
            expected += x
            plaintext_seconds += time.perf_counter() - start
        correct = bool(np.array_equal(result.signed(), expected))
        survivors = len(result.survivors)
    finally:
        if executor is not None:
            executor.shutdown()
    client_secs = [meters[u].seconds for u in range(n) if script.alive(u, "advertise")]
    uploads = [meters[u].upload for u in range(n)]
    downloads = [meters[u].download for u in range(n)]
    full_round = [u for u in result.survivors if script.alive(u, "unmask")]
    upload_full = float(np.mean([meters[u].upload for u in full_round])) if full_round else 0.0
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "clients": n,
        "dim": dim,
        "survivors": survivors,
        "dropped": len(result.dropped),
        "graph": setup.graph_kind,
        "neighbors": setup.neighbors,
        "threshold": setup.threshold,
        "modulus_bits": bits,
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
        "workers": workers,
    }


def scripted_dropouts(
    clients: int, dropout: float, late_dropout: float, seed: int
) -> DropoutScript:
    """``dropout`` of the parties stop after ShareKeys (before sending their masked input),
    ``late_dropout`` of the others stop during unmasking. Drawn from the simulation seed."""
    if not (0 <= dropout < 1 and 0 <= late_dropout < 1 and dropout + late_dropout < 1):
        raise ConfigError("dropout fractions must be in [0, 1) and sum below 1")
    gen = np.random.default_rng([seed, 2**31])
    order = gen.permutation(clients)
    early = round(dropout * clients)
    late = round(late_dropout * clients)
    drops = {int(u): "masked_input" for u in order[:early]}
    drops.update({int(u): "unmask" for u in order[early : early + late]})
    return DropoutScript(drops)


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))

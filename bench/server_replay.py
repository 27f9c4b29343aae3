"""The server alone, on a recorded round: time (and profile) the server engine without clients.

A simulated round (``secagg.sim.run_round``, the scaling benchmark's parameters) is run once with
a recording server that writes every wire message it receives, and every phase close, to a file.
The replay feeds the same bytes to a fresh ``ServerEngine`` for the same configuration: the
server is deterministic given its inputs, so it produces the same messages and the same sum,
and its time per phase is measured with nothing else running (no client steps competing for the
cores, no simulator bookkeeping). That isolates the server's per-party cost (issue 12).

    python -m bench.server_replay record --n 10000 --d 10000 --out /tmp/r10k.bin
    python -m bench.server_replay replay /tmp/r10k.bin [--workers 2] [--profile out.prof]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import pickle
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from secagg.config import RoundConfig
from secagg.engine._state import ServerState
from secagg.engine.server import ServerEngine

_RECV, _CLOSE = 0, 1


def record(n: int, d: int, out: Path, *, seed: int = 1, workers: int = 2) -> dict[str, Any]:
    """Run one simulated round, writing what the server receives to ``out``."""
    from secagg import sim

    sink: BinaryIO = out.open("wb")

    class RecordingServer(ServerEngine):
        def __init__(self, config: RoundConfig, **kwargs: Any) -> None:
            super().__init__(config, **kwargs)
            pickle.dump(config.to_fields(), sink)

        def receive(self, message: Any) -> Any:
            data = message if isinstance(message, bytes) else bytes(message)
            pickle.dump((_RECV, data), sink, protocol=5)
            self._inside = True  # a phase receive() completes is closed by receive() itself
            try:
                return super().receive(message)
            finally:
                self._inside = False

        def close_phase(self) -> Any:
            if not getattr(self, "_inside", False):
                pickle.dump((_CLOSE, b""), sink)
            return super().close_phase()

    original = sim.ServerEngine
    sim.ServerEngine = RecordingServer  # type: ignore[misc]
    try:
        setup = sim.resolve_parameters(n, d, dropout_rate=0.15, corruption_rate=0.05)
        script = sim.scripted_dropouts(n, 0.1, 0.05, seed)
        report = sim.run_round(setup, script, seed=seed, workers=workers)
    finally:
        sim.ServerEngine = original  # type: ignore[misc]
        sink.close()
    return report


def replay(
    path: Path,
    *,
    workers: int = 2,
    profile: Path | None = None,
    repeat: int = 1,
    profile_phase: str | None = None,
) -> dict[str, Any]:
    """Feed a recording to fresh server engines; the best of ``repeat`` runs per phase."""
    executor = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
    if executor is not None:
        list(executor.map(abs, range(workers)))
    best: dict[str, Any] | None = None
    gc_before = gc.get_threshold()
    gc.set_threshold(100 * gc_before[0], gc_before[1], gc_before[2])
    try:
        for _ in range(repeat):
            run = _replay_once(path, executor, workers, profile, profile_phase)
            if best is None or run["server_seconds"] < best["server_seconds"]:
                best = run
    finally:
        gc.set_threshold(*gc_before)
        if executor is not None:
            executor.shutdown()
    assert best is not None
    return best


def _replay_once(
    path: Path,
    executor: ProcessPoolExecutor | None,
    workers: int,
    profile: Path | None,
    profile_phase: str | None = None,
) -> dict[str, Any]:
    with path.open("rb") as source:
        config = RoundConfig.from_fields(pickle.load(source))
        events: list[tuple[int, bytes]] = []
        while True:
            try:
                events.append(pickle.load(source))
            except EOFError:
                break
    server = ServerEngine(config, executor=executor, workers=workers)
    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}
    counts: dict[str, int] = {}
    longest: dict[str, float] = {}  # the one event that closed the phase dominates this
    profiler = cProfile.Profile() if profile is not None else None
    for kind, data in events:
        phase = server.state.value
        w, c = time.perf_counter(), time.process_time()
        profiling = profiler is not None and profile_phase in (None, phase)
        if profiling:
            profiler.enable()
        if kind == _RECV:
            server.receive(data)
            counts[phase] = counts.get(phase, 0) + 1
        else:
            server.close_phase()
        if profiling:
            profiler.disable()
        took = time.perf_counter() - w
        wall[phase] = wall.get(phase, 0.0) + took
        longest[phase] = max(longest.get(phase, 0.0), took)
        cpu[phase] = cpu.get(phase, 0.0) + time.process_time() - c
    if profiler is not None and profile is not None:
        profiler.dump_stats(str(profile))
    if server.state is not ServerState.DONE or server.result is None:
        raise RuntimeError(f"the replayed round ended in {server.state.name}: {server.error}")
    n = config.num_parties
    return {
        "n": n,
        "d": config.dim,
        "survivors": len(server.result.survivors),
        "server_seconds": sum(wall.values()),
        "phase_seconds": wall,
        "phase_cpu_seconds": cpu,
        "cpu_us_per_party": {p: 1e6 * s / n for p, s in cpu.items()},
        "close_seconds": longest,
        "messages": counts,
        "total_digest": int(np.bitwise_xor.reduce(server.result.total.astype(np.uint64))),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="run a simulated round and record the server's input")
    rec.add_argument("--n", type=int, required=True)
    rec.add_argument("--d", type=int, required=True)
    rec.add_argument("--out", type=Path, required=True)
    rec.add_argument("--seed", type=int, default=1)
    rec.add_argument("--workers", type=int, default=2)
    rep = sub.add_parser("replay", help="time the server alone on a recording")
    rep.add_argument("path", type=Path)
    rep.add_argument("--workers", type=int, default=2)
    rep.add_argument("--repeat", type=int, default=1)
    rep.add_argument("--profile", type=Path, help="write cProfile stats of the server here")
    rep.add_argument("--profile-phase", help="profile only this phase (e.g. collect_shares)")
    args = parser.parse_args(argv)
    if args.command == "record":
        report = record(args.n, args.d, args.out, seed=args.seed, workers=args.workers)
        print(json.dumps({k: report[k] for k in ("clients", "dim", "correct", "server_seconds")}))
    else:
        out = replay(
            args.path,
            workers=args.workers,
            profile=args.profile,
            repeat=args.repeat,
            profile_phase=args.profile_phase,
        )
        print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

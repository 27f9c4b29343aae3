"""The ``secagg`` command.

With ``--json`` every subcommand prints exactly one JSON object on stdout and nothing else there;
human-readable output and progress bars go to stderr. Exit status 0 on success, non-zero with a
one-line error otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from secagg.errors import SecAggError


class ProgressBar:
    """A minimal stderr progress bar (redrawn at most ~10 times a second, only on a TTY or when
    forced), so long runs show life without polluting stdout."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._last = 0.0
        self._label = ""

    def __call__(self, label: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if label == self._label and done < total and now - self._last < 0.1:
            return
        self._last, self._label = now, label
        width = 30
        filled = width * done // max(total, 1)
        bar = "#" * filled + "-" * (width - filled)
        sys.stderr.write(f"\r{label:>13} [{bar}] {done}/{total}")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError("must be in [0, 1)")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="secagg",
        description="Privacy-hardened secure aggregation (SecAgg / SecAgg+) for federated "
        "learning.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sim = sub.add_parser(
        "simulate",
        help="run one secure aggregation round in process",
        description="Run one secure aggregation round with N in-process parties and scripted "
        "dropouts; check the unmasked sum against the plaintext sum of the survivors' inputs.",
    )
    sim.add_argument("--clients", type=_positive, default=100, help="number of parties (100)")
    sim.add_argument("--dim", type=_positive, default=100_000, help="vector length (100000)")
    sim.add_argument(
        "--dropout",
        type=_probability,
        default=0.0,
        help="fraction of parties that drop after ShareKeys, before sending their masked input",
    )
    sim.add_argument(
        "--late-dropout",
        type=_probability,
        default=0.0,
        help="fraction of parties that drop during unmasking (0.0)",
    )
    sim.add_argument("--graph", choices=["complete", "harary"], default="harary")
    sim.add_argument(
        "--neighbors",
        type=_positive,
        default=None,
        help="neighbours per party, not counting itself (auto: Bell et al. bounds)",
    )
    sim.add_argument("--threshold", type=_positive, default=None, help="Shamir threshold t (auto)")
    sim.add_argument("--bits", type=_positive, default=None, help="modulus bits B (auto)")
    sim.add_argument(
        "--value-bits", type=_positive, default=16, help="bits of one encoded input value (16)"
    )
    sim.add_argument(
        "--corruption",
        type=_probability,
        default=0.05,
        help="fraction of parties assumed to collude with the server, for the auto k and t (0.05)",
    )
    sim.add_argument("--active", action="store_true", help="signatures + consistency check")
    sim.add_argument(
        "--seed",
        type=int,
        default=0,
        help="drives only the simulation's choices (inputs, who drops); keys stay random",
    )
    sim.add_argument(
        "--workers",
        type=_positive,
        default=None,
        help="processes for the server's mask regeneration (default: CPU count)",
    )
    sim.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    sim.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    sim.set_defaults(handler=_simulate)
    return parser


def _simulate(args: argparse.Namespace) -> dict[str, Any]:
    from secagg import sim

    expected_dropout = max(0.05, args.dropout + args.late_dropout)
    setup = sim.resolve_parameters(
        args.clients,
        args.dim,
        graph_kind=args.graph,
        neighbors=args.neighbors,
        threshold=args.threshold,
        bits=args.bits,
        value_bits=args.value_bits,
        dropout_rate=expected_dropout,
        corruption_rate=args.corruption,
        active=args.active,
    )
    script = sim.scripted_dropouts(args.clients, args.dropout, args.late_dropout, args.seed)
    workers = args.workers if args.workers is not None else sim.default_workers()
    progress = ProgressBar(enabled=not args.no_progress and sys.stderr.isatty())
    started = time.perf_counter()
    report = sim.run_round(setup, script, seed=args.seed, workers=workers, progress=progress)
    report["wall_seconds"] = time.perf_counter() - started
    return report


def _print_human(command: str, report: dict[str, Any]) -> None:
    if command == "simulate":
        r = report
        lines = [
            f"secure aggregation: {r['clients']} parties, d={r['dim']}, graph={r['graph']}"
            f" (k={r['neighbors']}, t={r['threshold']}), B={r['modulus_bits']}"
            + (", active" if r["active"] else ""),
            f"  survivors      {r['survivors']} (dropped before masking: {r['dropped']})",
            f"  correct        {r['correct']}",
            f"  server         {r['server_seconds']:.3f} s",
            f"  client         mean {r['client_seconds']['mean'] * 1e3:.1f} ms,"
            f" max {r['client_seconds']['max'] * 1e3:.1f} ms",
            f"  plaintext sum  {r['plaintext_seconds'] * 1e3:.1f} ms",
            f"  upload/party   {r['bytes']['client_upload_mean'] / 1e3:.1f} kB"
            f" (expansion {r['expansion']:.3f} of float32)",
            f"  download/party {r['bytes']['client_download_mean'] / 1e3:.1f} kB",
            f"  peak memory    {r['peak_memory_mb']:.0f} MB, wall {r['wall_seconds']:.1f} s",
        ]
        print("\n".join(lines), file=sys.stderr)
    else:
        print(json.dumps(report, indent=2), file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        report = args.handler(args)
    except (SecAggError, ValueError) as exc:
        print(f"secagg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"secagg {args.command}: interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(report))
    else:
        _print_human(args.command, report)
    return 0 if report.get("correct", report.get("passed", True)) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

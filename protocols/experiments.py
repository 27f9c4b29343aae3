"""The accuracy / communication table of docs/parameter_parts.md, re-made by one command:

    python -m protocols.experiments --out docs/parameter_parts_table.md

Every cell is one ``secagg train`` run (same defaults as the CLI, secure aggregation on) on UCI
Adult with 10 parties: download fractions {0.1, 0.3, 0.5, 1.0} x upload policies {all, topk 0.1,
topk 0.5}, IID and non-IID (Dirichlet label skew, alpha = 0.5), plus the FedAvg and centralized
references.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from typing import Any

import numpy as np

from protocols import runner
from protocols.parameter_parts.protocol import ProtocolSettings

FRACTIONS = (0.1, 0.3, 0.5, 1.0)
POLICIES = (("all", 1.0), ("topk", 0.1), ("topk", 0.5))


def cell(result: dict[str, Any]) -> dict[str, float]:
    r = result["rounds"]
    return {
        "accuracy": result["final"]["accuracy"],
        "auc": result["final"]["auc"],
        "part": float(np.mean([x.get("part_fraction_mean", 1.0) for x in r])),
        "up": float(np.mean([x.get("upload_bytes_mean", 0.0) for x in r])),
        "payload": float(np.mean([x.get("payload_bytes_mean", 0.0) for x in r])),
        "down": float(np.mean([x.get("download_bytes_mean", 0.0) for x in r])),
    }


def run_all(rounds: int, model: str, seed: int) -> dict[str, Any]:
    data = runner.load_data("adult", None, seed)
    base = ProtocolSettings(model=model, seed=seed)
    out: dict[str, Any] = {"rounds": rounds, "model": model, "cells": []}
    for split in ("iid", "dirichlet"):
        for fraction in FRACTIONS:
            for policy, upload in POLICIES:
                settings = replace(
                    base, download_fraction=fraction, upload_policy=policy, upload_fraction=upload
                )
                options = runner.TrainOptions(rounds=rounds, split=split, settings=settings)
                start = time.perf_counter()
                result = runner.run(options, data=data)
                c = cell(result)
                c.update(split=split, fraction=fraction, policy=f"{policy} {upload:g}")
                out["cells"].append(c)
                print(
                    f"{split:9} f={fraction:<4} {policy} {upload:<4} acc {c['accuracy']:.4f}"
                    f" up {c['up']:.0f} B ({time.perf_counter() - start:.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )
        for name in ("fedavg", "centralized"):
            options = runner.TrainOptions(protocol=name, rounds=rounds, split=split, settings=base)
            c = cell(runner.run(options, data=data))
            c.update(split=split, fraction=1.0, policy=name)
            out["cells"].append(c)
    return out


def markdown(results: dict[str, Any], command: str) -> str:
    lines = [
        f"Made by `{command}` ({results['rounds']} rounds, model {results['model']}, 10 parties,"
        " secure aggregation on, other settings at the `secagg train` defaults).",
        "",
        "*part*: mean fraction of the model a party holds (after the min-holder repair).",
        "*masked vector*: bytes of the party's masked update (B bits per coordinate of its part;",
        "it scales with the part). *upload*: everything the party sends in the round, including",
        "the per-neighbour key exchange and shares (a fixed cost, about 100 bytes per neighbour).",
        "*download*: the model part plus the protocol messages.",
        "",
        "| split | download fraction | upload policy | accuracy | AUC | part | masked vector B"
        " | upload B | download B |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in results["cells"]:
        lines.append(
            f"| {c['split']} | {c['fraction']:g} | {c['policy']} | {c['accuracy']:.4f}"
            f" | {c['auc']:.4f} | {c['part']:.2f} | {c['payload']:.0f} | {c['up']:.0f}"
            f" | {c['down']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--model", default="logreg", choices=["logreg", "mlp"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    results = run_all(args.rounds, args.model, args.seed)
    command = "python -m protocols.experiments" + (
        f" --model {args.model}" if args.model != "logreg" else ""
    )
    text = markdown(results, command)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    else:
        print(text)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

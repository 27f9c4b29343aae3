"""What active mode costs a party and the server, against semi-honest mode in the same run.

    python -m bench.active_cost                      # prints a markdown table
    python -m bench.active_cost --out docs/active_cost.md --json docs/active_cost.json

Active mode (issue 8) adds Ed25519 signatures on keys, a signed partner set with the masked
input, a ConsistencyCheck round where each survivor signs the list (U3, D'), and, per unmask
request, the signatures that certify that list at every party the recipient's reveals depend on
(the signers within 3h ring positions on a Harary ring, t + 1 on the complete graph). This
benchmark runs the same rounds with and without ``--active`` through ``secagg.sim`` and reports
the party's time in the unmasking step (where the verification happens), its whole-round time,
its download bytes, the signatures per unmask request and the server's time. Graph parameters
come from the finder for the expected dropout (the active finder picks a larger k and t).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from typing import Any

import numpy as np

from secagg import sim

CASES = [
    # (clients, dim, graph)
    (100, 10_000, "complete"),
    (200, 10_000, "harary"),
    (1000, 10_000, "harary"),
]
QUICK_CASES = [(60, 1000, "complete"), (120, 1000, "harary")]


def _one(clients: int, dim: int, kind: str, active: bool, seed: int) -> dict[str, Any]:
    setup = sim.resolve_parameters(
        clients, dim, graph_kind=kind, dropout_rate=0.05, corruption_rate=0.05, active=active
    )
    script = sim.scripted_dropouts(clients, 0.05, 0.0, seed)
    report = sim.run_round(setup, script, seed=seed, workers=sim.default_workers())
    config, _ = sim.build_config(setup)
    # What the server forwards per request (consistency.signatures_for): t + 1 on the complete
    # graph, the signers within 3h ring positions on a ring.
    h = config.graph.ring_half_width
    sigs = 0 if not active else (setup.threshold + 1 if h is None else min(clients, 6 * h + 1))
    return {
        "clients": clients,
        "dim": dim,
        "graph": kind,
        "active": active,
        "neighbors": setup.neighbors,
        "threshold": setup.threshold,
        "correct": report["correct"],
        "client_unmask_seconds": report["client_phase_seconds"]["unmask"],
        "client_consistency_seconds": report["client_phase_seconds"].get("consistency", 0.0),
        "client_seconds_mean": report["client_seconds"]["mean"],
        "client_download_mean": report["bytes"]["client_download_mean"],
        "client_upload_mean": report["bytes"]["client_upload_mean"],
        "signatures_per_request_max": sigs,
        "server_seconds": report["server_seconds"],
    }


def run(quick: bool) -> list[dict[str, Any]]:
    rows = []
    for clients, dim, kind in QUICK_CASES if quick else CASES:
        for active in (False, True):
            rows.append(_one(clients, dim, kind, active, seed=clients))
            print(f"done n={clients} {kind} active={active}", file=sys.stderr)
    return rows


def markdown(rows: list[dict[str, Any]], command: str) -> str:
    lines = [
        f"Command: `{command}` ({platform.processor() or platform.machine()}, Python"
        f" {platform.python_version()}); 5% of parties drop before their masked input; the"
        " finder plans for 5% dropout and 5% corruption. Active"
        " and semi-honest rounds of each size run back to back in this one run; the finder picks"
        " k and t for each mode (active needs 2t > k). Load average when the table was"
        f" written: {os.getloadavg()[0]:.1f} (2 cores; other jobs may have been running).",
        "",
        "| n | d | graph | mode | k | t | party unmask step (ms) | party round (ms) |"
        " party download (KB) | signatures per request | server (s) | correct |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['clients']} | {r['dim']} | {r['graph']} |"
            f" {'active' if r['active'] else 'semi-honest'} | {r['neighbors']} | {r['threshold']} |"
            f" {1e3 * r['client_unmask_seconds']:.1f} | {1e3 * r['client_seconds_mean']:.1f} |"
            f" {r['client_download_mean'] / 1024:.1f} | {r['signatures_per_request_max']} |"
            f" {r['server_seconds']:.2f} | {r['correct']} |"
        )
    pairs = [(a, b) for a, b in zip(rows[::2], rows[1::2], strict=True)]
    lines.append("")
    lines.append("Active / semi-honest, same n and d: ")
    for semi, act in pairs:
        lines.append(
            f"- n={semi['clients']} {semi['graph']}: party round"
            f" {act['client_seconds_mean'] / semi['client_seconds_mean']:.2f}x, download"
            f" {act['client_download_mean'] / semi['client_download_mean']:.2f}x, server"
            f" {act['server_seconds'] / semi['server_seconds']:.2f}x"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--out", default=None, help="write the markdown table here")
    parser.add_argument("--json", default=None, help="write the raw rows here")
    args = parser.parse_args()
    rows = run(args.quick)
    command = "python -m bench.active_cost" + (" --quick" if args.quick else "")
    text = markdown(rows, command)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                rows,
                fh,
                indent=1,
                default=lambda o: o.item() if isinstance(o, np.generic) else str(o),
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

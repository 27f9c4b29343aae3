"""ServerApp: Flower's DefaultWorkflow with secagg's drop-in SecAggPlusWorkflow; after each
round it compares the engine's output (the survivors' sum in Z_(2^B)) with the sum it expects
from the survivors' node ids, word for word."""

from __future__ import annotations

import json
import logging
import sys
import time

import numpy as np
from flwr.app import Context
from flwr.common import ndarrays_to_parameters
from flwr.server import ServerConfig
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow
from flwr.serverapp import Grid, ServerApp

from secagg.flower import SecAggPlusWorkflow
from sumcheck import MAX_WEIGHT, Q, grid_values

app = ServerApp()


def wait_for_nodes(grid: Grid, count: int, timeout: float = 300.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(nodes)} of {count} nodes connected")
        time.sleep(1.0)
    return nodes


@app.main()
def main(grid: Grid, context: Context) -> None:
    # Stage progress on stdout (the deployment test waits for it to kill a SuperNode mid-round).
    handler = logging.StreamHandler(sys.stdout)
    logging.getLogger("secagg.flower").addHandler(handler)
    logging.getLogger("secagg.flower").setLevel(logging.INFO)
    cfg = context.run_config
    n, dim = int(cfg["min-nodes"]), int(cfg["dim"])
    wait_for_nodes(grid, n)
    strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=3,
        min_available_clients=3,
        initial_parameters=ndarrays_to_parameters([np.zeros(dim, dtype=np.float32)]),
    )
    workflow = SecAggPlusWorkflow(
        int(cfg["num-shares"]),
        int(cfg["reconstruction-threshold"]),
        max_weight=MAX_WEIGHT,
        timeout=float(cfg["stage-timeout"]),
    )
    rounds: list[dict[str, object]] = []

    def checked(grid: Grid, ctx: Context) -> None:
        start = time.perf_counter()
        workflow(grid, ctx)
        report = workflow.last_report
        assert report is not None
        entry: dict[str, object] = {
            "sampled": len(report.sampled),
            "survivors": list(report.survivors),
            "dropped": list(report.dropped),
            "error": report.error,
            "seconds": time.perf_counter() - start,
            "stage_seconds": report.stage_seconds,
        }
        if report.total is not None:
            total = report.total.astype(np.uint64)
            expected = np.zeros(dim + 1, dtype=np.uint64)
            expected[0] = len(report.survivors) * Q
            for nid in report.survivors:
                expected[1:] += np.asarray(grid_values(nid, dim), dtype=np.uint64)
            mask = np.uint64((1 << report.modulus_bits) - 1)
            entry["exact"] = bool(np.array_equal(total & mask, expected & mask))
        print("sumcheck " + json.dumps(entry), flush=True)
        rounds.append(entry)

    legacy = LegacyContext(
        context, config=ServerConfig(num_rounds=int(cfg["num-server-rounds"])), strategy=strategy
    )
    DefaultWorkflow(fit_workflow=checked)(grid, legacy)
    out = str(cfg.get("results-file", ""))
    if out:
        with open(out, "w") as fh:
            json.dump({"rounds": rounds}, fh)

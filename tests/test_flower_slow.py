"""Slow end-to-end runs on Flower's own engines (``pytest -m slow tests/test_flower_slow.py``).

* Ray ``run_simulation``: several rounds of the drop-in SecAgg+ with a node dropping.
* ``flwr run`` of the example app on Flower's simulation runtime.
* A TLS deployment on loopback: ``flower-superlink`` + 10 ``flower-supernode`` processes
  (certificates generated here with ``cryptography``); one SuperNode is SIGKILLed in the middle
  of a round, and the round still completes with the survivors' exact sum.
* The example app on that deployment reaches the in-process accuracy within one point.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench/ lives at the repository root

from bench.flower_deploy import APP, LocalFederation  # noqa: E402

SUMCHECK = ROOT / "examples" / "flower_sum_check"

pytestmark = pytest.mark.slow


def test_ray_run_simulation_several_rounds_with_a_dropping_node() -> None:
    import flwr.compat.common.recorddict_compat as compat
    from flwr.client import NumPyClient
    from flwr.clientapp import ClientApp
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server import ServerConfig
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from secagg.flower import SecAggPlusWorkflow, secaggplus_mod

    n, dim, rounds = 8, 50, 3
    lazy = 5  # partition 5 never sends its masked vector (it raises at that stage)

    class Node(NumPyClient):  # type: ignore[misc]
        def __init__(self, pid: int) -> None:
            self.pid = pid

        def fit(self, parameters: Any, config: Any) -> Any:
            if self.pid == lazy:
                raise RuntimeError("this node drops before its masked vector")
            return [np.full(dim, 0.1 * self.pid, dtype=np.float32)], 10 + self.pid, {}

    client = ClientApp(
        client_fn=lambda ctx: Node(int(ctx.node_config["partition-id"])).to_client(),
        mods=[secaggplus_mod],
    )
    server = ServerApp()
    seen: dict[str, Any] = {"reports": []}

    @server.main()
    def main(grid: Any, context: Any) -> None:
        strategy = FedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=n,
            min_available_clients=n,
            initial_parameters=ndarrays_to_parameters([np.zeros(dim, dtype=np.float32)]),
        )
        legacy = LegacyContext(context, config=ServerConfig(num_rounds=rounds), strategy=strategy)
        workflow = SecAggPlusWorkflow(5, 3, timeout=120.0)

        def fit(grid: Any, ctx: Any) -> None:
            workflow(grid, ctx)
            seen["reports"].append(workflow.last_report)

        DefaultWorkflow(fit_workflow=fit)(grid, legacy)
        seen["params"] = parameters_to_ndarrays(
            compat.arrayrecord_to_parameters(legacy.state.array_records["parameters"], True)
        )

    logging.getLogger("flwr").setLevel(logging.WARNING)
    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=n,
        backend_config={"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": 2}},
    )
    reports = seen["reports"]
    assert len(reports) == rounds
    for report in reports:
        assert report.error is None and len(report.survivors) == n - 1 and len(report.dropped) == 1
    pids = [p for p in range(n) if p != lazy]
    expected = sum(0.1 * p * (10 + p) for p in pids) / sum(10 + p for p in pids)
    got = seen["params"][0]
    # Flower's quantisation bound: one step 2c/Q per survivor, over the total quantised weight.
    q_total = sum(round((10 + p) / 1000 * 4194304) for p in pids)
    assert np.max(np.abs(got - expected)) <= len(pids) * 16.0 / q_total


def _federation_run(
    fed: LocalFederation, app: Path, config: dict[str, Any], timeout: float
) -> dict[str, Any]:
    results = fed.dir / "results.json"
    proc = fed.run(app, config | {"results-file": str(results)}, timeout=timeout)
    rc = fed.wait(proc)
    assert rc == 0 and results.exists(), fed.log("flwr-run")[-4000:]
    return dict(json.loads(results.read_text()))


def test_flwr_run_simulation_of_the_example_app() -> None:
    pytest.importorskip("torch")
    with LocalFederation(4, simulation=True) as fed:
        out = _federation_run(fed, APP, {"num-server-rounds": 2, "min-nodes": 4}, 1200)
    assert [r["round"] for r in out["rounds"]] == [1, 2]
    assert out["final"]["accuracy"] > 0.80


def test_tls_deployment_sigkill_one_supernode_mid_round_exact_sum() -> None:
    nodes = 10
    with LocalFederation(nodes, simulation=False, tls=True) as fed:
        results = fed.dir / "results.json"
        proc = fed.run(
            SUMCHECK,
            {
                "num-server-rounds": 2,
                "min-nodes": nodes,
                "stage-timeout": 240.0,  # ten ClientApp processes start per stage on loopback
                "results-file": str(results),
            },
            timeout=1800,
        )
        # Wait until round 1 is past its setup stage, then SIGKILL one SuperNode.
        deadline = time.monotonic() + 900
        while "secagg stage share_keys (round 1)" not in fed.log("flwr-run"):
            assert proc.poll() is None, fed.log("flwr-run")[-4000:]
            assert time.monotonic() < deadline, "round 1 never reached share_keys"
            time.sleep(0.5)
        fed.kill_supernode(3)
        rc = fed.wait(proc)
        assert rc == 0 and results.exists(), fed.log("flwr-run")[-4000:]
        rounds = json.loads(results.read_text())["rounds"]
    assert len(rounds) == 2
    first = rounds[0]
    assert first["error"] is None and first["exact"] is True, first
    assert first["sampled"] == nodes and len(first["dropped"]) == 1, first
    assert len(first["survivors"]) == nodes - 1
    second = rounds[1]
    assert second["error"] is None and second["exact"] is True, second
    assert len(second["survivors"]) == nodes - 1


def test_deployment_training_matches_in_process_accuracy() -> None:
    pytest.importorskip("torch")
    sys.path.insert(0, str(APP))
    from ppflower.client_app import app as client_app
    from ppflower.server_app import run_training
    from test_flower_app import app_config

    from secagg.flower.inprocess import InProcessGrid

    nodes, rounds = 10, 3
    ids = [1 + i for i in range(nodes)]
    grid = InProcessGrid(
        client_app,
        ids,
        node_config={
            nid: {"partition-id": i, "num-partitions": nodes} for i, nid in enumerate(ids)
        },
    )
    local = run_training(grid, app_config(**{"num-server-rounds": rounds, "min-nodes": nodes}))
    with LocalFederation(nodes, simulation=False, tls=True) as fed:
        out = _federation_run(
            fed, APP, {"num-server-rounds": rounds, "min-nodes": nodes}, timeout=3600
        )
    assert abs(out["final"]["accuracy"] - local[-1]["accuracy"]) <= 0.01, (out, local)

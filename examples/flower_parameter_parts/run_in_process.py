"""Run the app's training in one process over ``InProcessGrid`` (protobuf on every message).

The ServerApp's loop and the real ClientApp (with secagg's mod), without Ray or a SuperLink:
the quickest way to measure a configuration. Settings come from ``pyproject.toml``'s run
config, overridden by ``key=value`` arguments as with ``flwr run --run-config``::

    python examples/flower_parameter_parts/run_in_process.py --nodes 10 num-server-rounds=5
    python examples/flower_parameter_parts/run_in_process.py --nodes 10 dp-epsilon=8

Prints one JSON object (every round's entry) on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import tomllib

APP_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(APP_DIR))


def run_config(overrides: list[str]) -> dict[str, Any]:
    with open(APP_DIR / "pyproject.toml", "rb") as fh:
        cfg: dict[str, Any] = dict(tomllib.load(fh)["tool"]["flwr"]["app"]["config"])
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or key not in cfg:
            raise SystemExit(f"usage: unknown run-config override {item!r}")
        cfg[key] = type(cfg[key])(raw) if not isinstance(cfg[key], bool) else raw == "true"
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.ERROR)
    from ppflower.client_app import app as client_app
    from ppflower.server_app import run_training

    from secagg.flower.inprocess import InProcessGrid

    n = args.nodes
    ids = [101 + i for i in range(n)]
    grid = InProcessGrid(
        client_app,
        ids,
        node_config={nid: {"partition-id": i, "num-partitions": n} for i, nid in enumerate(ids)},
    )
    cfg = run_config(args.overrides) | {"min-nodes": n}
    history = run_training(grid, cfg)
    print(json.dumps({"nodes": n, "config": cfg, "rounds": history}))


if __name__ == "__main__":
    main()

"""ServerApp: the server of the random parameter-part protocol with part-wise secure aggregation.

Each round it draws every node's random part (CSPRNG, every selected block with at least
``min-holders`` holders plus a margin for dropouts), sends each node its own part in its own
message, and learns from :func:`secagg.flower.partwise.partwise_aggregate` only the per-block
sums over the surviving holders; it applies the update rule and evaluates on the held-out split.

With ``dp-epsilon`` > 0 the nodes add distributed DP noise to each block before masking (node-
level DP: one node's update per round is the privacy unit), the server records the (epsilon,
delta) spent after each round, and training stops at the first round the budget refuses.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict
from flwr.serverapp import Grid, ServerApp

from ppflower import task
from protocols.parameter_parts.selection import select_parts
from secagg.errors import AbortedError, ConfigError
from secagg.flower.partwise import (
    PartwiseDP,
    PartwiseDPAccountant,
    PrivacyBudgetError,
    partwise_aggregate,
)

log = logging.getLogger("ppflower")
app = ServerApp()

TRAIN_KEYS = (
    "seed",
    "lr",
    "local-epochs",
    "batch-size",
    "gamma",
    "upload-policy",
    "upload-fraction",
    "threshold-tau",
)


def wait_for_nodes(grid: Grid, count: int, timeout: float = 300.0) -> list[int]:
    """The connected nodes, once at least ``count`` are there."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count:
            return nodes
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(nodes)} of {count} nodes connected in {timeout} s")
        time.sleep(1.0)


def dp_settings(cfg: dict[str, Any]) -> PartwiseDP | None:
    """The run's distributed-DP settings (``dp-epsilon`` 0: off)."""
    epsilon = float(cfg.get("dp-epsilon", 0.0))
    if epsilon == 0.0:
        return None
    if str(cfg["rule"]) == "mean_over_uploaders":
        raise ConfigError(
            "rule='mean_over_uploaders' with dp-epsilon: the upload counts would reach the server"
            " un-noised; use rule='mean' or 'add'"
        )
    rounds = int(cfg.get("dp-rounds", 0)) or int(cfg["num-server-rounds"])
    return PartwiseDP(
        epsilon=epsilon,
        delta=float(cfg.get("dp-delta", 1e-5)),
        clip=float(cfg.get("dp-clip", 1.0)),
        rounds=rounds,
        bits=int(cfg.get("dp-bits", 32)),
    )


def run_training(grid: Grid, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The whole run (also called directly by tests over an in-process Grid)."""
    seed = int(cfg["seed"])
    model = task.initial_model(seed)
    layers = task.model_layers(model)
    global_vec = task.global_vector(model)
    rule = str(cfg["rule"])
    min_holders = int(cfg["min-holders"])
    settings = dp_settings(cfg)
    ledger = PartwiseDPAccountant(settings) if settings is not None else None
    history: list[dict[str, Any]] = []
    for rnd in range(1, int(cfg["num-server-rounds"]) + 1):
        start = time.perf_counter()
        nodes = wait_for_nodes(grid, int(cfg["min-nodes"]))
        n = len(nodes)
        selection = select_parts(
            global_vec.size,
            layers,
            n,
            float(cfg["download-fraction"]),
            unit=str(cfg["part-unit"]),
            block_size=int(cfg["block-size"]),
            min_holders=min(n, min_holders + task.margin(n)),
        )
        holdings = {nid: selection.holdings[i] for i, nid in enumerate(nodes)}
        contents = {}
        for i, nid in enumerate(nodes):
            where = selection.party_indices(i)
            train_cfg = {k: cfg[k] for k in TRAIN_KEYS} | {"round": rnd}
            contents[nid] = RecordDict(
                {
                    "ppflower.part": ArrayRecord(
                        {"positions": Array(where), "values": Array(global_vec[where])}
                    ),
                    "ppflower.train": ConfigRecord(train_cfg),
                }
            )
        entry: dict[str, Any] = {"round": rnd, "nodes": n}
        try:
            result = partwise_aggregate(
                grid,
                selection.block_sizes,
                holdings,
                contents,
                round_index=rnd,
                clip=float(cfg["gamma"]),
                min_holders=min(n, min_holders),
                count_channel=rule == "mean_over_uploaders",
                timeout=float(cfg["stage-timeout"]),
                dp=ledger,
            )
            global_vec = task.apply_rule(
                global_vec, result.sums, result.holders, result.uploaders, rule
            )
            task.set_vector(model, global_vec)
            entry |= {
                "survivors": len(result.report.survivors),
                "dropped": list(result.report.dropped),
                "refused": {str(k): v for k, v in result.report.refused.items()},
            }
            if result.dp is not None:
                entry |= {
                    "epsilon": result.dp.epsilon,
                    "delta": result.dp.delta,
                    "noise_std_min": result.dp.min_noise_std,
                    "noise_floor_min": min(f for f in result.dp.noise.floors if f > 0),
                }
        except PrivacyBudgetError as exc:  # nothing was sent; the run ends within its budget
            log.warning("round %d refused: %s", rnd, exc)
            entry["budget_refused"] = str(exc)
            history.append(entry | task.score(model, seed))
            break
        except AbortedError as exc:  # too few survivors: the model stays as it was
            entry["aborted"] = str(exc)
            if ledger is not None:  # charged anyway (conservative: noised inputs were sent)
                entry |= {"epsilon": ledger.spent[0], "delta": ledger.spent[1]}
        entry |= task.score(model, seed)
        entry["seconds"] = time.perf_counter() - start
        log.warning("round %d: %s", rnd, json.dumps(entry))
        history.append(entry)
    return history


@app.main()
def main(grid: Grid, context: Context) -> None:
    history = run_training(grid, dict(context.run_config))
    out = str(context.run_config.get("results-file", ""))
    if out:
        with open(out, "w") as fh:
            json.dump({"rounds": history, "final": history[-1] if history else None}, fh)
    print(json.dumps({"final": history[-1] if history else None}), flush=True)

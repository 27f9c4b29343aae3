"""Centralized training on the pooled data: the upper baseline every protocol is compared with."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from protocols.datasets import TabularData
from protocols.models import make_model
from protocols.training import evaluate, local_train


def epoch_seed(seed: int, epoch: int) -> int:
    """A distinct shuffling seed per (run seed, epoch), without collisions like seed + epoch."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def train_centralized(
    data: TabularData,
    model_kind: str = "logreg",
    epochs: int = 10,
    lr: float = 0.05,
    batch_size: int = 64,
    seed: int = 0,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    *,
    hidden: int = 32,
    optimizer: str = "sgd",
) -> list[dict[str, float]]:
    """Train one model on all training rows; return the test metrics after every epoch.

    Each dict has ``epoch`` (1-based), ``accuracy``, ``auc`` and ``loss`` on the test set;
    ``on_epoch`` (e.g. a progress printer) gets each dict as soon as it is computed. The defaults
    bring logistic regression on Adult within about 0.005 of sklearn's LogisticRegression
    (0.84-0.855 test accuracy depending on the split seed).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    model = make_model(model_kind, data.n_features, hidden=hidden, seed=seed)
    history: list[dict[str, float]] = []
    for epoch in range(1, epochs + 1):
        local_train(
            model,
            data.x_train,
            data.y_train,
            epochs=1,
            batch_size=batch_size,
            lr=lr,
            optimizer=optimizer,
            seed=epoch_seed(seed, epoch),
        )
        metrics = {"epoch": epoch, **evaluate(model, data.x_test, data.y_test)}
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
    return history

"""Tests for protocols.models, protocols.training and protocols.centralized."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.centralized import train_centralized
from protocols.datasets import TabularData
from protocols.models import (
    flat_parameters,
    make_model,
    num_parameters,
    parameter_layers,
    set_flat_parameters,
)
from protocols.training import evaluate, local_train, roc_auc

torch.set_num_threads(1)


def _toy(n: int = 400, f: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    gen = np.random.default_rng(seed)
    x = gen.normal(size=(n, f)).astype(np.float32)
    w = gen.normal(size=f)
    y = (x @ w + 0.3 * gen.normal(size=n) > 0).astype(np.float32)
    return x, y


@pytest.mark.parametrize(("kind", "expected"), [("logreg", 7 + 1), ("mlp", 7 * 4 + 4 + 4 + 1)])
def test_model_shapes_and_layers(kind: str, expected: int) -> None:
    model = make_model(kind, 7, hidden=4)
    assert num_parameters(model) == expected
    out = model(torch.zeros(3, 7))
    assert out.shape == (3,)
    layers = parameter_layers(model)
    assert layers[0][1] == 0 and layers[-1][2] == expected
    for (_, _, stop), (_, start, _) in itertools.pairwise(layers):
        assert stop == start  # contiguous, in parameters() order
    assert [n for n, _, _ in layers] == [n for n, _ in model.named_parameters()]
    for (_, start, stop), p in zip(layers, model.parameters(), strict=True):
        assert stop - start == p.numel()
        assert np.array_equal(flat_parameters(model)[start:stop], p.detach().numpy().ravel())


def test_make_model_is_deterministic_and_keeps_global_rng() -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = flat_parameters(make_model("mlp", 6, seed=4))
    assert torch.rand(1) == before  # global RNG untouched
    b = flat_parameters(make_model("mlp", 6, seed=4))
    c = flat_parameters(make_model("mlp", 6, seed=5))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    with pytest.raises(ValueError, match="unknown model kind"):
        make_model("svm", 3)


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(["logreg", "mlp"]), f=st.integers(1, 20), hidden=st.integers(1, 8))
def test_flat_round_trip(kind: str, f: int, hidden: int) -> None:
    model = make_model(kind, f, hidden=hidden)
    vec = flat_parameters(model)
    assert vec.dtype == np.float32 and vec.ndim == 1
    new = np.arange(vec.size, dtype=np.float32) / 7
    set_flat_parameters(model, new)
    assert np.array_equal(flat_parameters(model), new)
    vec[:] = 0  # a copy, not a view of the parameters
    assert np.array_equal(flat_parameters(model), new)


def test_set_flat_parameters_rejects_bad_vectors() -> None:
    model = make_model("logreg", 3)
    with pytest.raises(ValueError, match="expected a flat vector of 4"):
        set_flat_parameters(model, np.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        set_flat_parameters(model, np.array([0, 0, np.nan, 0]))


@pytest.mark.parametrize(
    ("kind", "optimizer", "lr"), [("logreg", "sgd", 0.5), ("mlp", "adam", 0.01)]
)
def test_local_train_reduces_loss_deterministically(kind: str, optimizer: str, lr: float) -> None:
    x, y = _toy()
    model = make_model(kind, x.shape[1])
    start = evaluate(model, x, y)["loss"]
    local_train(model, x, y, epochs=3, batch_size=32, lr=lr, optimizer=optimizer, seed=1)
    after = evaluate(model, x, y)
    assert after["loss"] < 0.7 * start
    assert after["accuracy"] > 0.9
    twin = make_model(kind, x.shape[1])
    local_train(twin, x, y, epochs=3, batch_size=32, lr=lr, optimizer=optimizer, seed=1)
    assert np.array_equal(flat_parameters(twin), flat_parameters(model))
    other = make_model(kind, x.shape[1])
    local_train(other, x, y, epochs=3, batch_size=32, lr=lr, optimizer=optimizer, seed=2)
    assert not np.array_equal(flat_parameters(other), flat_parameters(model))


def test_local_train_edge_cases() -> None:
    x, y = _toy(10)
    model = make_model("logreg", 5)
    before = flat_parameters(model)
    local_train(model, x, y, epochs=0)
    local_train(model, x[:0], y[:0])
    assert np.array_equal(flat_parameters(model), before)
    with pytest.raises(ValueError, match="unknown optimizer"):
        local_train(model, x, y, optimizer="lbfgs")
    with pytest.raises(ValueError, match="x must be"):
        local_train(model, x, y[:5])


def _brute_force_auc(scores: np.ndarray, y: np.ndarray) -> float:
    pos, neg = scores[y == 1], scores[y == 0]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return wins / (pos.size * neg.size)


@settings(max_examples=50, deadline=None)
@given(
    data=st.lists(st.tuples(st.integers(-3, 3), st.booleans()), min_size=2, max_size=40).filter(
        lambda d: len({b for _, b in d}) == 2
    )
)
def test_roc_auc_matches_pair_count_with_ties(data: list[tuple[int, bool]]) -> None:
    scores = np.array([s for s, _ in data], dtype=np.float64)
    y = np.array([b for _, b in data], dtype=np.float64)
    assert roc_auc(scores, y) == pytest.approx(_brute_force_auc(scores, y), abs=1e-12)


def test_evaluate_on_a_toy_model() -> None:
    model = make_model("logreg", 1)
    set_flat_parameters(model, np.array([2.0, -1.0], dtype=np.float32))  # logit = 2x - 1
    x = np.array([[0.0], [1.0], [2.0], [0.25], [0.75]], dtype=np.float32)
    y = np.array([0, 1, 1, 1, 0], dtype=np.float32)
    z = 2 * x[:, 0].astype(np.float64) - 1  # -1, 1, 3, -0.5, 0.5
    metrics = evaluate(model, x, y)
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["auc"] == pytest.approx(_brute_force_auc(z, y))  # 5 of 6 pairs
    assert metrics["auc"] == pytest.approx(5 / 6)
    p = 1 / (1 + np.exp(-z))
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()
    assert metrics["loss"] == pytest.approx(bce, rel=1e-6)
    assert np.isnan(evaluate(model, x, np.ones(5))["auc"])  # one class: undefined


def test_train_centralized_on_toy_data() -> None:
    x, y = _toy(600, 4, seed=3)
    data = TabularData(x[:500], y[:500], x[500:], y[500:], ("a", "b", "c", "d"), "toy")
    seen: list[dict[str, float]] = []
    history = train_centralized(data, "logreg", epochs=3, lr=0.5, seed=1, on_epoch=seen.append)
    assert seen == history and [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["accuracy"] > 0.9 and history[-1]["auc"] > 0.95
    again = train_centralized(data, "logreg", epochs=3, lr=0.5, seed=1)
    assert again == history

"""Tests for protocols.parameter_parts.upload: upload policies and clipping."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from protocols.parameter_parts import upload as upload_module
from protocols.parameter_parts.upload import clip_l2, clip_values, upload_count, upload_mask
from secagg.crypto import rng

finite = st.floats(-1e6, 1e6, allow_nan=False, width=64)
vectors = arrays(np.float64, st.integers(0, 200), elements=finite)
fractions = st.floats(0.0, 1.0)


def test_upload_count_is_a_robust_ceiling() -> None:
    assert upload_count(10, 0.7) == 7  # 0.7 * 10 == 7.000000000000001 in floats
    assert upload_count(10, 0.71) == 8
    assert upload_count(3, 0.1) == 1
    assert upload_count(0, 0.5) == 0
    assert upload_count(5, 1.0) == 5
    with pytest.raises(ValueError, match="upload_fraction"):
        upload_count(5, 1.5)


def test_all_and_threshold() -> None:
    delta = np.array([0.5, -0.01, 0.0, -2.0, 0.02])
    assert upload_mask(delta, "all").all()
    assert upload_mask(delta, "threshold", tau=0.01).tolist() == [True, False, False, True, True]
    assert upload_mask(delta, "threshold").tolist() == [True, True, False, True, True]
    with pytest.raises(ValueError, match="tau"):
        upload_mask(delta, "threshold", tau=-1.0)


@settings(max_examples=80, deadline=None)
@given(delta=vectors, fraction=fractions)
def test_topk_keeps_the_largest(delta: np.ndarray, fraction: float) -> None:
    mask = upload_mask(delta, "topk", upload_fraction=fraction)
    k = math.ceil(round(fraction * delta.size, 9))
    assert mask.dtype == bool and mask.shape == delta.shape
    assert mask.sum() == k
    if 0 < k < delta.size:
        assert np.abs(delta[mask]).min() >= np.abs(delta[~mask]).max()


@settings(max_examples=50, deadline=None)
@given(delta=vectors, fraction=fractions)
def test_random_count(delta: np.ndarray, fraction: float) -> None:
    mask = upload_mask(delta, "random", upload_fraction=fraction)
    assert mask.sum() == math.ceil(round(fraction * delta.size, 9))


def test_random_is_unpredictable_and_uniform(monkeypatch: pytest.MonkeyPatch) -> None:
    delta = np.linspace(-1, 1, 50)
    masks = [upload_mask(delta, "random", 0.2) for _ in range(2000)]
    assert len({m.tobytes() for m in masks}) > 1990
    counts = np.sum(masks, axis=0)
    expected = 2000 * 10 / 50
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 100, counts  # 49 dof: P(chi2 > 100) ~ 2e-5
    # It draws from the project's CSPRNG (the testing hook makes it reproducible).
    with pytest.warns(RuntimeWarning), rng.deterministic_for_testing(1):
        a = upload_mask(delta, "random", 0.2)
    with pytest.warns(RuntimeWarning), rng.deterministic_for_testing(1):
        b = upload_mask(delta, "random", 0.2)
    assert np.array_equal(a, b)
    used: list[int] = []
    original = rng.random_words

    def counting(count: int, dtype: np.dtype) -> np.ndarray:
        used.append(count)
        return original(count, dtype)

    monkeypatch.setattr(upload_module.rng, "random_words", counting)
    upload_mask(delta, "random", 0.2)
    assert used == [50]


def test_mask_keeps_shape_and_rejects_bad_input() -> None:
    delta = np.arange(12, dtype=np.float32).reshape(3, 4)
    mask = upload_mask(delta, "topk", 0.25)
    assert mask.shape == (3, 4) and mask.sum() == 3 and mask[2, 1:].all()
    with pytest.raises(ValueError, match="unknown upload policy"):
        upload_mask(delta, "largest")
    with pytest.raises(ValueError, match="NaN"):
        upload_mask(np.array([1.0, np.nan]), "all")
    assert upload_mask(np.zeros(0), "topk", 0.5).shape == (0,)


@settings(max_examples=60, deadline=None)
@given(delta=vectors, gamma=st.floats(1e-3, 1e3))
def test_clip_values(delta: np.ndarray, gamma: float) -> None:
    out = clip_values(delta, gamma)
    assert np.all(np.abs(out) <= gamma)
    inside = np.abs(delta) <= gamma
    assert np.array_equal(out[inside], delta[inside])
    assert np.array_equal(np.sign(out), np.sign(delta))


@settings(max_examples=80, deadline=None)
@given(
    delta=st.one_of(
        vectors, arrays(np.float32, st.integers(0, 200), elements=st.floats(-1e4, 1e4, width=32))
    ),
    bound=st.floats(1e-3, 1e3),
)
def test_clip_l2(delta: np.ndarray, bound: float) -> None:
    out = clip_l2(delta, bound)
    assert out.dtype == delta.dtype and out is not delta
    norm = float(np.linalg.norm(delta.astype(np.float64)))
    assert float(np.linalg.norm(out.astype(np.float64))) <= bound  # exactly, not approximately
    if norm <= bound:
        assert np.array_equal(out, delta)
    else:
        # Same direction, norm at the bound up to float rounding.
        assert float(np.linalg.norm(out.astype(np.float64))) == pytest.approx(bound, rel=1e-5)
        expected = delta.astype(np.float64) * (bound / norm)
        assert np.allclose(out.astype(np.float64), expected, rtol=1e-5, atol=1e-30)


def test_clip_arguments_and_copies() -> None:
    delta = np.array([3.0, -4.0])
    assert clip_l2(delta, 1.0).tolist() == pytest.approx([0.6, -0.8])
    assert delta.tolist() == [3.0, -4.0]  # input untouched
    assert clip_values([1, -5, 2], 2).tolist() == [1.0, -2.0, 2.0]  # ints become floats
    with pytest.raises(ValueError, match="gamma"):
        clip_values(delta, 0.0)
    with pytest.raises(ValueError, match="bound"):
        clip_l2(delta, -1.0)
    with pytest.raises(ValueError, match="NaN"):
        clip_l2(np.array([np.inf]), 1.0)

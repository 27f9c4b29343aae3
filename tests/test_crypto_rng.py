"""Tests for secagg.crypto.rng: the OS CSPRNG, rejection sampling and the testing hook."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator

import numpy as np
import pytest

from secagg.crypto import rng


@pytest.mark.parametrize("n", [0, 1, 16, 32, 1000])
def test_token_bytes_length(n: int) -> None:
    out = rng.token_bytes(n)
    assert isinstance(out, bytes)
    assert len(out) == n


def test_token_bytes_varies() -> None:
    draws = {rng.token_bytes(16) for _ in range(100)}
    assert len(draws) == 100


def test_random_words_shape_dtype_and_variability() -> None:
    for dtype in (np.uint16, np.uint32, np.uint64):
        a = rng.random_words(1000, dtype)
        b = rng.random_words(1000, dtype)
        assert a.dtype == np.dtype(dtype) and a.shape == (1000,)
        assert not np.array_equal(a, b)
    assert rng.random_words(0, np.uint32).shape == (0,)


@pytest.mark.parametrize("bound", [1, 2, 3, 7, 255, 256, 257, 2**32 - 5, 2**64, 2**130 + 17])
def test_random_below_range(bound: int) -> None:
    for _ in range(200):
        v = rng.random_below(bound)
        assert isinstance(v, int)
        assert 0 <= v < bound
    if bound == 1:
        assert rng.random_below(1) == 0


@pytest.mark.parametrize("bound", [0, -1, -(2**70)])
def test_random_below_rejects_non_positive(bound: int) -> None:
    with pytest.raises(ValueError):
        rng.random_below(bound)


def test_random_below_rough_uniformity() -> None:
    bound, n = 10, 20_000
    counts = np.bincount([rng.random_below(bound) for _ in range(n)], minlength=bound)
    expected = n / bound
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    # 9 degrees of freedom: P(chi2 > 45) ~ 1e-6.
    assert chi2 < 45, counts


def test_random_below_large_bound_hits_top_half() -> None:
    bound = 3 * 2**100
    draws = [rng.random_below(bound) for _ in range(200)]
    assert any(d >= 2 * 2**100 for d in draws)
    assert any(d < 2**100 for d in draws)


def test_random_below_rejects_biased_tail(monkeypatch: pytest.MonkeyPatch) -> None:
    """Values at or above the largest multiple of the bound are rejected, not reduced."""
    bound = 3
    nbytes = (bound.bit_length() + 7) // 8 + 8
    limit = (256**nbytes // bound) * bound
    feed: Iterator[bytes] = iter(
        [
            (256**nbytes - 1).to_bytes(nbytes, "big"),  # rejected
            limit.to_bytes(nbytes, "big"),  # rejected (== limit)
            (limit - 1).to_bytes(nbytes, "big"),  # accepted
        ]
    )
    calls: list[int] = []

    def source(n: int) -> bytes:
        calls.append(n)
        return next(feed)

    monkeypatch.setattr(rng, "_source", source)
    assert rng.random_below(bound) == (limit - 1) % bound
    assert calls == [nbytes, nbytes, nbytes]


def _draw() -> tuple[bytes, bytes, int, bytes]:
    return (
        rng.token_bytes(5),
        rng.token_bytes(40),
        rng.random_below(10**9),
        rng.random_words(8, np.uint32).tobytes(),
    )


def test_deterministic_for_testing_reproducible() -> None:
    with pytest.warns(RuntimeWarning, match="deterministic"), rng.deterministic_for_testing(42):
        first = _draw()
    with pytest.warns(RuntimeWarning), rng.deterministic_for_testing(42):
        second = _draw()
    with pytest.warns(RuntimeWarning), rng.deterministic_for_testing(43):
        other = _draw()
    with pytest.warns(RuntimeWarning), rng.deterministic_for_testing("42"):
        other_type = _draw()
    assert first == second
    assert other != first
    assert other_type != first  # repr(42) != repr("42")
    # Within one context successive draws differ (a counter advances).
    assert first[0] != first[1][:5]


def test_deterministic_draws_are_not_constant() -> None:
    with pytest.warns(RuntimeWarning), rng.deterministic_for_testing(b"seed"):
        draws = [rng.token_bytes(16) for _ in range(50)]
    assert len(set(draws)) == 50


def test_deterministic_restores_os_source() -> None:
    assert rng._source is os.urandom
    with pytest.warns(RuntimeWarning), rng.deterministic_for_testing(1):
        assert rng._source is not os.urandom
        inside = rng.token_bytes(32)
    assert rng._source is os.urandom
    with pytest.warns(RuntimeWarning), rng.deterministic_for_testing(1):
        assert rng.token_bytes(32) == inside
    # Back on the OS source: not the seeded stream's first output any more.
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning outside the hook
        assert rng.token_bytes(32) != inside


def test_deterministic_restores_on_exception() -> None:
    with (
        pytest.warns(RuntimeWarning),
        pytest.raises(KeyError),
        rng.deterministic_for_testing(7),
    ):
        raise KeyError("boom")
    assert rng._source is os.urandom


def test_deterministic_nested_restores_outer() -> None:
    with pytest.warns(RuntimeWarning), rng.deterministic_for_testing("outer"):
        outer_source = rng._source
        with rng.deterministic_for_testing("inner"):
            assert rng._source is not outer_source
        assert rng._source is outer_source
    assert rng._source is os.urandom

"""Tests for protocols.parameter_parts.selection: units, the min-holders guarantee, CSPRNG use."""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.parameter_parts import selection as selection_module
from protocols.parameter_parts.selection import (
    PartSelection,
    block_offsets,
    expected_fraction,
    make_blocks,
    select_parts,
)
from secagg.crypto import rng
from secagg.layout import BlockLayout

LAYERS = [("hidden.weight", 0, 320), ("hidden.bias", 320, 352), ("out.weight", 352, 384)]
LAYERS += [("out.bias", 384, 385)]


def _check_guarantee(sel: PartSelection, min_holders: int) -> None:
    counts = sel.holder_counts()
    assert np.all((counts == 0) | (counts >= min_holders))
    for blocks in sel.holdings:
        assert len(blocks) >= 1
        assert list(blocks) == sorted(set(blocks))


def test_units_cut_the_vector() -> None:
    assert make_blocks(5, [], "element") == (1, 1, 1, 1, 1)
    assert make_blocks(385, LAYERS, "block", 16) == (16,) * 24 + (1,)
    assert make_blocks(32, [], "block", 16) == (16, 16)
    assert make_blocks(385, LAYERS, "layer") == (320, 32, 32, 1)
    assert block_offsets((3, 1, 2)).tolist() == [0, 3, 4, 6]
    with pytest.raises(ValueError, match="unknown part unit"):
        make_blocks(5, [], "row")
    with pytest.raises(ValueError, match="needs the model's parameter layers"):
        make_blocks(5, [], "layer")
    with pytest.raises(ValueError, match="layers cover 385 parameters, the model has 400"):
        make_blocks(400, LAYERS, "block")
    with pytest.raises(ValueError, match="expected a non-empty span from 320"):
        make_blocks(385, [("a", 0, 320), ("b", 321, 385)], "layer")


@settings(max_examples=60, deadline=None)
@given(
    num_params=st.integers(1, 400),
    parties=st.integers(1, 25),
    fraction=st.floats(0.01, 1.0),
    unit=st.sampled_from(["element", "block", "layer"]),
    block_size=st.integers(1, 40),
    min_holders=st.integers(1, 6),
)
def test_min_holders_guarantee(
    num_params: int, parties: int, fraction: float, unit: str, block_size: int, min_holders: int
) -> None:
    layers = [("w", 0, (num_params + 1) // 2)] if num_params > 1 else []
    layers = [*layers, ("b", layers[0][2] if layers else 0, num_params)]
    if parties < min_holders:
        with pytest.raises(ValueError, match="cannot give every selected block"):
            select_parts(num_params, layers, parties, fraction, unit, block_size, min_holders)
        return
    sel = select_parts(num_params, layers, parties, fraction, unit, block_size, min_holders)
    _check_guarantee(sel, min_holders)
    assert sel.num_params == num_params and sel.parties == parties
    assert sel.block_offsets()[-1] == num_params
    # Each party gets at least its drawn share of the blocks (repair only ever adds).
    k = min(sel.num_blocks, max(1, round(fraction * sel.num_blocks)))
    assert all(len(h) >= k for h in sel.holdings)
    if fraction == 1.0:
        assert all(h == tuple(range(sel.num_blocks)) for h in sel.holdings)


@pytest.mark.parametrize("unit", ["element", "block"])
@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5])
def test_fractions_respected(unit: str, fraction: float) -> None:
    # 20 parties: the expected holders per block (>= 2) rarely need repair for min_holders=3.
    sel = select_parts(4000, [], 20, fraction, unit, block_size=8, min_holders=3)
    realized = np.array([len(h) for h in sel.holdings]) / sel.num_blocks
    assert np.all(realized >= fraction - 1e-9)
    assert realized.mean() == pytest.approx(expected_fraction(20, fraction, 3), rel=0.05)
    assert sel.param_fractions().mean() == pytest.approx(realized.mean(), rel=0.02)
    # Coverage: each block is held about fraction * parties times on average.
    assert sel.holder_counts().mean() == pytest.approx(20 * realized.mean(), rel=1e-9)


def test_repair_inflates_only_thin_blocks() -> None:
    # 10 parties at 10%: one expected holder per block, so repair is heavy; still exact.
    sel = select_parts(20_000, [], 10, 0.1, "element", min_holders=3)
    _check_guarantee(sel, 3)
    counts = np.bincount(sel.holder_counts())
    assert counts[1] == counts[2] == 0 and counts[0] > 0 and counts[3] > 0
    mean = np.mean([len(h) for h in sel.holdings]) / sel.num_blocks
    assert mean == pytest.approx(expected_fraction(10, 0.1, 3), rel=0.05)


def test_two_calls_differ_and_parties_differ() -> None:
    a = select_parts(385, LAYERS, 8, 0.5, "block", block_size=4)
    b = select_parts(385, LAYERS, 8, 0.5, "block", block_size=4)
    assert a.holdings != b.holdings
    assert len(set(a.holdings)) == 8  # every party a different part


def test_selection_uses_the_project_csprng(monkeypatch: pytest.MonkeyPatch) -> None:
    # Reproducible only through secagg's testing hook; numpy's and Python's global RNGs play no
    # part (reseeding them changes nothing, and they are never consumed).
    def draw() -> PartSelection:
        np.random.seed(0)
        random.seed(0)
        with pytest.warns(RuntimeWarning, match="not secure"), rng.deterministic_for_testing(7):
            return select_parts(1000, [], 6, 0.3, "element", min_holders=3)

    assert draw() == draw()
    calls: list[int] = []
    original: Callable[[int], bytes] = rng.token_bytes

    def counting(n: int) -> bytes:
        calls.append(n)
        return original(n)

    monkeypatch.setattr(selection_module.rng, "token_bytes", counting)
    state = np.random.get_state()[1].copy()
    select_parts(1000, [], 6, 0.3, "element", min_holders=3)
    assert calls  # every draw went through the CSPRNG
    assert np.array_equal(np.random.get_state()[1], state)


def test_uniform_marginals() -> None:
    # Every block is equally likely to be chosen: chi-square over many small draws.
    nb, k, trials = 10, 3, 3000
    counts = np.zeros(nb)
    for _ in range(trials // 30):
        sel = select_parts(nb, [], 30, k / nb, "element", min_holders=1)
        for h in sel.holdings:
            counts[list(h)] += 1
    expected = trials * k / nb
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 40, counts  # 9 dof: P(chi2 > 40) ~ 1e-5


def test_argument_checks() -> None:
    with pytest.raises(ValueError, match="download_fraction"):
        select_parts(10, [], 5, 0.0)
    with pytest.raises(ValueError, match="download_fraction"):
        select_parts(10, [], 5, 1.5)
    with pytest.raises(ValueError, match="num_params"):
        select_parts(0, [], 5, 0.5)
    with pytest.raises(ValueError, match="2 parties cannot"):
        select_parts(10, [], 2, 0.5, min_holders=3)


def test_part_selection_helpers_and_layout() -> None:
    sel = PartSelection((3, 1, 2), ((0, 2), (0, 2), (0,)), unit="block", min_holders=2)
    assert sel.num_blocks == 3 and sel.num_params == 6
    assert sel.holder_counts().tolist() == [3, 0, 2]
    assert sel.holders() == ((0, 1, 2), (), (0, 1))
    assert sel.party_indices(0).tolist() == [0, 1, 2, 4, 5]
    assert sel.party_mask(2).tolist() == [True, True, True, False, False, False]
    assert sel.param_fractions().tolist() == pytest.approx([5 / 6, 5 / 6, 3 / 6])
    layout = sel.to_layout()
    assert isinstance(layout, BlockLayout)
    assert layout.holders == sel.holders() and layout.min_holders == 2
    with pytest.raises(ValueError, match="need 0 or at least min_holders=3"):
        PartSelection((3, 1, 2), ((0, 2), (0, 2), (0,)), min_holders=3)
    with pytest.raises(ValueError, match="strictly increasing"):
        PartSelection((3, 1), ((1, 0),))
    with pytest.raises(ValueError, match="out of range"):
        PartSelection((3, 1), ((0, 2),))


def test_layer_unit_with_a_real_model() -> None:
    from protocols.models import make_model, num_parameters, parameter_layers

    model = make_model("mlp", 9, hidden=5)
    layers = parameter_layers(model)
    sel = select_parts(num_parameters(model), layers, 6, 0.5, "layer", min_holders=3)
    assert sel.block_sizes == tuple(stop - start for _, start, stop in layers)
    assert all(len(h) >= 2 for h in sel.holdings)  # half of the 4 tensors, plus any repair
    _check_guarantee(sel, 3)

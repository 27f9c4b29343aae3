"""The server-view audit: masked inputs look uniform and uncorrelated; fails without masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from audits import server_view


def test_server_view_quick_passes(tmp_path: Path) -> None:
    summary = server_view.run(quick=True, out=tmp_path)
    assert summary["audit"] == "server-view"
    assert summary["passed"] is True, summary["findings"]
    assert all(summary["checks"].values())
    for run in summary["runs"]:
        assert run["aggregate_exact"]
        assert run["max_abs_r"] < run["r_bound"]
        assert run["min_p_chi2"] >= summary["p_value_limit"]
        assert run["min_p_ks"] >= summary["p_value_limit"]
    for name in ("report.md", "summary.json", "server_view.png"):
        assert (tmp_path / name).stat().st_size > 0
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["passed"] is True
    assert data["command"].startswith("secagg audit server-view")
    assert "PASSED" in (tmp_path / "report.md").read_text()


def test_server_view_fails_without_masks(tmp_path: Path) -> None:
    summary = server_view.run(quick=True, out=tmp_path, weaken="no-masks")
    assert summary["passed"] is False
    assert not summary["checks"]["uniformity"]
    assert not summary["checks"]["correlation"]
    assert summary["checks"]["aggregate_exact"]  # the sum alone cannot tell
    assert (tmp_path / "server_view.png").exists()
    assert "FAILED" in (tmp_path / "report.md").read_text()


def test_masks_are_restored_after_weakening() -> None:
    from secagg.crypto import prg

    before = prg.add_mask
    with server_view.masks_disabled():
        assert prg.add_mask is not before
    assert prg.add_mask is before
    acc = np.zeros(8, dtype=np.uint32)
    prg.add_mask(acc, bytes(16))
    assert acc.any()


def test_statistics_reject_structure() -> None:
    gen = np.random.default_rng(0)
    uniform = gen.integers(0, 2**20, size=4096)
    assert server_view.chi_square_uniform(uniform, 20)[1] > 1e-4
    assert server_view.ks_uniform(uniform / 2**20)[1] > 1e-4
    small = gen.integers(0, 2**10, size=4096)  # only the low bits used
    assert server_view.chi_square_uniform(small, 20)[1] < 1e-10
    assert server_view.ks_uniform(small / 2**20)[1] < 1e-10


def test_unknown_weakening_is_refused() -> None:
    with pytest.raises(ValueError):
        server_view.run(quick=True, weaken="nope")

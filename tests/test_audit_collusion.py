"""The collusion audit: t-1 colluders learn nothing about an honest survivor, t learn it all,
a lying server gets nothing in active mode; a too-low threshold makes the audit fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from audits import collusion

#: Checks the audit makes. ``partwise_thin_block_not_revealed_by_non_holders`` was the audit's
#: first finding (a malicious server asking the parties NOT holding a thin block got the shares
#: it needed); the engine now checks the blocks of every survivor whose share it reveals.
HOLDING = (
    "below_threshold_fails",
    "tolerated_colluders_fail",
    "threshold_is_tight",
    "aggregate_exact",
    "consistent_lie_keeps_self_mask",
    "active_refuses_split_view",
    "partwise_thin_block_refused",
    "partwise_thin_block_not_revealed_by_non_holders",
)


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("collusion")
    return collusion.run(quick=True, out=out), out


def test_collusion_quick_checks(quick: tuple[dict, Path]) -> None:
    summary, _ = quick
    assert summary["audit"] == "collusion"
    for name in HOLDING:
        assert summary["checks"][name] is True, (name, summary["findings"])
    curve = summary["curve"]
    t = summary["threshold"]
    assert [p["colluders"] for p in curve] == list(range(t + 2))
    for p in curve:
        if p["colluders"] < t:
            assert not p["key_recovered"] and p["exact_fraction"] < 0.01
            assert 0.45 < p["mean_abs_rel_error"] < 0.55
        else:
            assert p["key_recovered"] and p["exact_fraction"] == 1.0
    active = summary["lying_server_active"]
    assert active["refused"] > 0 and not active["x_v_exposed"]
    assert summary["lying_server_semi_honest"]["detected"] == 0  # semi-honest cannot tell


def test_collusion_quick_passes(quick: tuple[dict, Path]) -> None:
    summary, _ = quick
    assert summary["passed"] is True, summary["findings"]


def test_collusion_writes_report(quick: tuple[dict, Path]) -> None:
    summary, out = quick
    for name in ("report.md", "summary.json", "collusion.png"):
        assert (out / name).stat().st_size > 0
    data = json.loads((out / "summary.json").read_text())
    assert data["passed"] is summary["passed"]
    assert data["command"].startswith("secagg audit collusion")


def test_collusion_fails_with_low_threshold(tmp_path: Path) -> None:
    summary = collusion.run(quick=True, out=tmp_path, weaken="low-threshold")
    assert summary["passed"] is False
    assert summary["threshold"] == summary["tolerated_colluders"]
    assert summary["checks"]["tolerated_colluders_fail"] is False
    at_c = summary["curve"][summary["tolerated_colluders"]]
    assert at_c["key_recovered"] and at_c["exact_fraction"] == 1.0
    assert (tmp_path / "collusion.png").exists()
    assert "FAILED" in (tmp_path / "report.md").read_text()

"""The collusion audit: t-1 colluders learn nothing about an honest survivor, t learn it all,
a lying server gets nothing in active mode; the exact search of the server's strategies finds
nothing against the issue-8 rule and finds the issue's attacks against the old one (each replayed
on the real engines); a too-low threshold or the old rule makes the audit fail."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("z3")

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
    "strategy_search_finds_nothing",
    "strategy_search_model_admits_honest_round",
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


def test_collusion_quick_search_space(quick: tuple[dict, Path]) -> None:
    """The quick search ran every task to a proof (no time-outs), found nothing, and the report
    lists every solver call."""
    summary, out = quick
    search = summary["strategy_search"]
    assert search["rule"] == "new"
    assert search["counts"] == {"unsat": len(search["tasks"])}, search["counts"]
    assert search["found"] == [] and search["sanity"] == "sat"
    report = (out / "report.md").read_text()
    assert "Systematic strategy search" in report
    calls = [line for line in report.splitlines() if re.search(r"\| unsat \| [0-9.]+ \|$", line)]
    assert len(calls) == len(search["tasks"])


def test_collusion_legacy_rule_finds_and_replays_the_issue_attacks(tmp_path: Path) -> None:
    """--weaken legacy-rule: the search finds the issue's attacks (Petersen whole-vector split
    lists, harary(20,6) part-wise isolation, harary(12,4) per-component sums); each replays on
    the real engines inside legacy_rule_for_audit() and recovers the value exactly, and the same
    strategy is refused under the rule in force. The audit fails."""
    summary = collusion.run(quick=True, out=tmp_path, weaken="legacy-rule")
    assert summary["passed"] is False
    assert summary["checks"]["strategy_search_finds_nothing"] is False
    for name in HOLDING[:-2]:  # the complete-graph sections are unaffected by the old rule
        assert summary["checks"][name] is True, name
    search = summary["strategy_search"]
    assert search["rule"] == "old"
    found = {row["instance"].split(" rule")[0]: row for row in search["found"]}
    assert {row["goal"] for row in search["found"]} == {"isolate", "split"}
    assert any(k.startswith("petersen") for k in found)
    assert any(k.startswith("harary(n=20,k=6)") for k in found)
    for row in search["found"]:
        old, new = row["replays"]
        assert old["rule"] == "old" and old["recovered"] is True, row
        assert new["rule"] == "new" and new["recovered"] is False and new["answered"] == 0, row
    assert "FOUND" in (tmp_path / "report.md").read_text()

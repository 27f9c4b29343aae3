"""The inversion audit: plaintext uploads give the record back, the secure transcript does not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("torch")

from audits import inversion
from protocols.models import flat_parameters, make_model


def test_inversion_quick_passes(tmp_path: Path) -> None:
    summary = inversion.run(quick=True, out=tmp_path)
    assert summary["audit"] == "inversion"
    assert summary["passed"] is True, summary["findings"]
    assert all(isinstance(f, str) for f in summary["findings"])
    assert summary["plaintext"]["exact_error"] < inversion.EXACT_LIMIT
    assert summary["criteria"]["dlg_ok"]
    secure = summary["secure"]
    for name in ("exact", "exact_projected", "dlg", "dlg_projected"):
        assert secure[name]["no_better_than_guess"], secure[name]
    for r in secure["rounds"]:
        assert r["messages"]["MaskedInput"] == r["views"] == 5
        assert r["sum_max_abs_error"] < 1e-4  # the real aggregation summed correctly
    for name in ("report.md", "summary.json", "inversion_records.png"):
        assert (tmp_path / name).stat().st_size > 0
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["passed"] is True
    assert data["command"].startswith("secagg audit inversion")
    report = (tmp_path / "report.md").read_text()
    assert "PASSED" in report and "inversion_records.png" in report


def test_inversion_fails_without_secure_aggregation(tmp_path: Path) -> None:
    summary = inversion.run(quick=True, out=tmp_path, weaken="no-secure-aggregation")
    assert summary["passed"] is False
    assert summary["criteria"]["exact_ok"] and not summary["criteria"]["secure_ok"]
    assert summary["secure"]["exact"]["mean_error"] < 1e-4  # the records come back
    assert "FAILED" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "inversion_records.png").exists()


def test_unknown_weakening_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown weakening"):
        inversion.run(quick=True, weaken="no-such-thing")


def test_exact_attack_and_parts_attack_on_one_record() -> None:
    model = make_model("mlp", 6, hidden=4, seed=1)
    x = np.array([0.5, -1.2, 1.0, 0.0, 0.0, 1.0])  # columns 2..3 and 4..5: one-hot groups
    update = inversion.one_step_update(model, x[None, :], np.array([1.0]))
    guess, candidates = inversion.exact_attack(update, model)
    assert inversion.rel_error(guess, x) < 1e-4
    assert all(inversion.rel_error(c, x) < 1e-4 for c in candidates)
    # Without the bias, one uploaded one-hot 1 in a row still fixes that row's scale.
    seen = update.copy()
    seen[24:28] = np.nan  # the hidden bias (4 x 6 weights come first)
    rec, by_bias, recovered = inversion.parts_attack(seen, model, np.array([2, 3, 4, 5]))
    assert not by_bias.any() and recovered.all()
    np.testing.assert_allclose(rec, x, atol=1e-4)
    assert len(update) == len(flat_parameters(model))

"""The DP audit: empirical epsilon lower bounds stay below the claim for the real mechanism and
exceed it when the noise is removed; its statistics (Clopper-Pearson, GDP epsilon) are right."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from audits import dp


def test_beta_quantile_by_bisection_matches_scipy() -> None:
    special = pytest.importorskip("scipy.special")
    for q, a, b in [(0.975, 1, 500), (0.975, 7, 494), (0.025, 30, 3), (0.5, 2.5, 9.0)]:
        assert dp.beta_ppf_bisection(q, a, b) == pytest.approx(
            float(special.betaincinv(a, b, q)), rel=1e-9, abs=1e-12
        )


def test_clopper_pearson_zero_successes_has_the_closed_form() -> None:
    # k = 0: the upper bound solves (1 - p)^n = alpha.
    assert dp.clopper_pearson_upper(0, 500, 0.025) == pytest.approx(1 - 0.025 ** (1 / 500))
    assert dp.clopper_pearson_upper(500, 500, 0.025) == 1.0


def test_gdp_epsilon_matches_the_two_gaussian_form_and_known_values() -> None:
    # mu = 1: epsilon at delta 1e-5 (Balle & Wang's exact formula) is about 4.98.
    for mu in (0.5, 0.85, 1.0, 2.0):
        two = dp.two_gaussian_epsilon(mu, 1.0, 0.0, 1.0, 1e-5)
        assert dp.gdp_epsilon(mu, 1e-5) == pytest.approx(two, rel=1e-6)
    assert dp.gdp_epsilon(0.0, 1e-5) == 0.0
    assert math.isinf(dp.gdp_epsilon(math.inf, 1e-5))


def test_membership_bound_of_a_perfect_separation_is_limited_by_the_trials() -> None:
    n = 400
    result = dp.mi_epsilon_lower_bound(np.ones(n), np.zeros(n), 1e-5)
    hi = 1 - 0.025 ** (1 / n)
    assert result["eps_lb"] == pytest.approx(math.log((1 - 1e-5 - hi) / hi))
    # No separation at all: nothing to find.
    same = dp.mi_epsilon_lower_bound(np.zeros(n), np.zeros(n), 1e-5)
    assert same["eps_lb"] == 0.0


def test_quick_audit_passes_with_bounds_below_the_claims_and_writes_the_report(
    tmp_path: Path,
) -> None:
    summary = dp.run(quick=True, out=tmp_path)
    assert summary["audit"] == "dp" and summary["passed"] is True
    assert summary["command"].startswith("secagg audit dp")
    claims = [r["claimed_epsilon"] for r in summary["results"]]
    assert claims == [4.0, 8.0]
    for r in summary["results"]:
        assert r["accountant_epsilon"] <= r["claimed_epsilon"] + 1e-9
        assert 0.0 <= r["one_shot"]["eps_lower"] <= r["claimed_epsilon"]
        assert 0.0 <= r["membership"]["eps_lb"] <= r["claimed_epsilon"]
        # The attacks see the canary: the inserted canaries' cosines are shifted.
        assert r["one_shot"]["mu"] > 0.3
    for name in ("report.md", "summary.json", "dp_audit.png"):
        assert (tmp_path / name).stat().st_size > 0
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["passed"] is True and len(data["results"]) == 2
    assert "PASSED" in (tmp_path / "report.md").read_text()


def test_audit_without_noise_fails() -> None:
    summary = dp.run(quick=True, weaken="no-noise")
    assert summary["passed"] is False
    at4 = summary["results"][0]
    assert at4["one_shot"]["eps_lower"] > 4.0
    assert at4["membership"]["eps_lb"] > 4.0
    assert summary["results"][1]["one_shot"]["eps_lower"] > 8.0


@pytest.mark.slow
def test_audit_with_a_hundredth_of_the_noise_fails() -> None:
    summary = dp.run(quick=True, weaken="low-noise")
    assert summary["passed"] is False
    assert all(r["one_shot"]["eps_lower"] > r["claimed_epsilon"] for r in summary["results"])


def test_unknown_weakening_is_refused() -> None:
    with pytest.raises(ValueError):
        dp.run(quick=True, weaken="nothing")

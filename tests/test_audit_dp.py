"""The DP audit: for DP on random parameter parts, the delivered noise, the membership-inference
lower bound and the one-shot estimate stay below the claim for the real mechanism and catch
missing or miscalibrated noise; its statistics (Clopper-Pearson, GDP epsilon) are right."""

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
    assert summary["config"]["protocol"] == "parameter-parts"
    claims = [r["claimed_epsilon"] for r in summary["results"]]
    assert claims == [4.0, 8.0]
    for r in summary["results"]:
        assert r["accountant_epsilon"] <= r["claimed_epsilon"] + 1e-9
        assert r["delivered_epsilon"] <= r["claimed_epsilon"] + 1e-6
        assert r["delivered_sigma2_min"] >= r["calibrated_sigma2_total"]
        assert 0.0 <= r["one_shot"]["lower95_one_sided"] <= r["claimed_epsilon"]
        assert r["one_shot"]["ci95_low"] <= r["one_shot"]["eps_estimate"]
        assert 0.0 <= r["membership"]["eps_lb"] <= r["claimed_epsilon"]
        assert r["detected_by"] == []
        # Real parts: about the download fraction; the engine's worst case drops parties.
        assert 0.4 < r["part_fraction_mean"] < 0.7
        assert r["worst_case_dropped_mean"] > 0
        # The attacks see the canary: the inserted canaries' scores are shifted.
        assert r["one_shot"]["mu"] > 0.3
    for name in ("report.md", "summary.json", "dp_audit.png"):
        assert (tmp_path / name).stat().st_size > 0
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["passed"] is True and len(data["results"]) == 2
    report = (tmp_path / "report.md").read_text()
    assert "PASSED" in report and "estimate" in report and "95% CI" in report


def test_audit_without_noise_fails_and_states_its_trial_limit() -> None:
    summary = dp.run(quick=True, weaken="no-noise")
    assert summary["passed"] is False
    at4, at8 = summary["results"]
    assert math.isinf(at4["delivered_epsilon"])
    assert at4["one_shot"]["lower95_one_sided"] > 4.0
    assert at4["membership"]["eps_lb"] > 4.0
    assert at8["one_shot"]["lower95_one_sided"] > 8.0
    assert "delivered-noise accounting" in at8["detected_by"]
    # 2,000 quick trials per side cannot give an MI bound above 8: said so in the findings.
    assert at8["membership"]["saturation"] < 8.0
    assert any("cannot fail a claim of 8" in f for f in summary["findings"])


def test_full_audit_trial_count_can_fail_an_epsilon_8_claim() -> None:
    assert dp.mi_saturation(12_000) > 8.0
    assert dp.mi_saturation(500) < 5.0


def test_delivered_noise_catches_every_miscalibrated_cohort() -> None:
    """Calibrated for all n parties, or for one contributor more than the engine guarantees
    (t + 2 instead of t + 1 on the whole model): too little noise in the sums the engine
    releases. One contributor fewer (t instead of t + 1) is MORE noise: correctly not flagged."""
    honest = dp.Mechanism(4.0, 5, None, pool=16).delivered_epsilon()[0]
    assert honest <= 4.0 + 1e-6
    more = dp.Mechanism(4.0, 5, "one-more", pool=16).delivered_epsilon()[0]
    assert 4.0 < more < 5.0  # a few percent: far below what the attacks can resolve
    fewer = dp.Mechanism(4.0, 5, "one-fewer", pool=16).delivered_epsilon()[0]
    assert fewer < honest
    everyone = dp.Mechanism(4.0, 5, "all-parties", pool=16)
    assert everyone.delivered_epsilon()[0] > 6.0
    # Gross enough for the one-shot estimate to see it too.
    assert dp.one_shot(everyone, 256, 4)["lower95_one_sided"] > 4.0


def test_worst_case_dropouts_are_accepted_by_the_engine_with_those_survivors() -> None:
    """The audit's survivors are the engine's: run a real part-wise round with the audit's
    dropout pattern and compare the per-block survivor counts; one more drop is refused."""
    from protocols.dp_training import block_noise_floors
    from secagg import encoding, graph
    from secagg.config import RoundConfig
    from secagg.crypto import rng
    from secagg.errors import AbortedError
    from secagg.sim import DropoutScript, aggregate_in_memory

    mech = dp.Mechanism(4.0, 5, None, pool=1)
    trainer = mech.trainer
    selection = trainer.draw_parts()
    dropped, alive = dp.worst_case_dropouts(
        selection.holdings, dp.OWNER, trainer.threshold, trainer.min_holders
    )
    assert dropped and dp.OWNER not in dropped
    layout = selection.to_layout(trainer.min_holders)
    config = RoundConfig(
        session_id=rng.token_bytes(16),
        round_index=1,
        graph=graph.complete_graph(dp.PARTIES),
        threshold=trainer.threshold,
        dim=layout.dim,
        modulus_bits=20,
        layout=layout,
    )
    inputs = {
        u: encoding.to_ring(np.zeros(layout.input_length(u), dtype=np.int64), 20)
        for u in range(dp.PARTIES)
    }
    outcome = aggregate_in_memory(
        config, inputs, DropoutScript(dict.fromkeys(dropped, "masked_input"))
    )
    assert outcome.result.block_survivors == tuple(int(a) for a in alive)
    floors = block_noise_floors(
        selection.holder_counts(), dp.PARTIES, trainer.threshold, trainer.min_holders
    )
    assert np.all(alive >= floors)  # the trainer's floors hold for the worst case
    # Dropping any further party that shares a block with the owner is refused by the engine.
    mine = set(selection.holdings[dp.OWNER])
    extras = [
        v
        for v in range(dp.PARTIES)
        if v != dp.OWNER and v not in dropped and mine & set(selection.holdings[v])
    ]
    assert extras
    for extra in extras[:2]:
        script = DropoutScript(dict.fromkeys(dropped | {extra}, "masked_input"))
        with pytest.raises(AbortedError):
            aggregate_in_memory(config, inputs, script)


def test_noise_sum_table_is_the_exact_law_of_the_engines_noise() -> None:
    from fractions import Fraction

    from secagg.dp.samplers import discrete_gaussian

    sigma2, count = Fraction(3, 2), 3
    table = dp.NoiseSumTable(sigma2, count)
    # Exact pmf by direct convolution on a wide support.
    x = np.arange(-40, 41, dtype=np.float64)
    one = np.exp(-(x * x) / 3.0)
    one /= one.sum()
    law = np.convolve(np.convolve(one, one), one)
    assert table.cdf is not None
    table_law = np.diff(np.concatenate([[0.0], table.cdf]))
    grid = np.arange(table.offset, table.offset + table_law.size)
    for value, p in zip(range(-10, 11), law[120 - 10 : 120 + 11], strict=True):
        assert table_law[int(np.searchsorted(grid, value))] == pytest.approx(p, rel=1e-9)
    # Against the library's sampler (what every party adds), summed over three parties.
    n = 60_000
    engine = discrete_gaussian(sigma2, 3 * n).reshape(3, n).sum(axis=0)
    simulated = table.sample((n,))
    for sample in (engine, simulated):
        assert abs(sample.var() / 4.5 - 1) < 5 * math.sqrt(2 / n)
    # Two-sample Kolmogorov-Smirnov distance, well inside the 1e-3 critical value (~0.011).
    values = np.arange(-12, 13)
    cdf_a = np.searchsorted(np.sort(engine), values, side="right") / n
    cdf_b = np.searchsorted(np.sort(simulated), values, side="right") / n
    assert np.max(np.abs(cdf_a - cdf_b)) < 0.011


@pytest.mark.slow
def test_full_audit_without_noise_fails_an_epsilon_8_claim_by_membership_inference() -> None:
    summary = dp.run(quick=False, weaken="no-noise")
    at8 = summary["results"][1]
    assert at8["membership"]["eps_lb"] > 8.0
    assert "membership inference (lower bound)" in at8["detected_by"]


def test_unknown_weakening_is_refused() -> None:
    with pytest.raises(ValueError):
        dp.run(quick=True, weaken="nothing")

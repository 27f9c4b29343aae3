"""The DP layer composed with secure aggregation and training.

- the decoded sum carries the calibrated noise when EXACTLY the threshold t of parties survive,
  also per block in part-wise mode;
- a round that could reveal a sum of fewer contributions than the noise was calibrated for is
  refused;
- record-level DP training reports an epsilon within the target and still learns;
- DP on random parameter parts: real parts each round, per-block noise calibrated to the block's
  guaranteed surviving holders (checked through the real engine), a public normaliser, local
  DP-SGD on the party's part only, and a claim stated as conditional when preprocessing is not
  public.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from protocols.dp_training import (
    DPOptions,
    NoisyGradientTrainer,
    PartsSpec,
    calibrate_step_noise,
    clip_rows,
    per_example_gradients,
    round_rows_conditionally,
)
from protocols.models import make_model
from secagg import encoding
from secagg.cli import main
from secagg.config import RoundConfig
from secagg.crypto import rng
from secagg.dp.mechanisms import check_noise_floor, min_contributions
from secagg.dp.samplers import discrete_gaussian
from secagg.errors import AbortedError, ConfigError
from secagg.graph import complete_graph
from secagg.layout import BlockLayout
from secagg.sim import DropoutScript, aggregate_in_memory

BITS = 32


def _variance_ok(sample: np.ndarray, target: float) -> bool:
    # Sample variance of n normal-ish values has relative std sqrt(2/n); allow 5 of them.
    n = sample.size
    return abs(sample.var() / target - 1) < 5 * np.sqrt(2 / n)


def test_decoded_noise_has_target_variance_with_the_fewest_survivors() -> None:
    """The fewest survivors the protocol accepts is t + 1 (each survivor needs t surviving
    neighbours holding its shares); with exactly that many, the sum carries the target noise."""
    n, t, dim = 8, 4, 4096
    sigma2_total = Fraction(40_000)
    config = RoundConfig(
        session_id=rng.token_bytes(16),
        round_index=0,
        graph=complete_graph(n),
        threshold=t,
        dim=dim,
        modulus_bits=BITS,
    )
    fewest = min_contributions(config)
    assert fewest == t + 1
    check_noise_floor(config, fewest)
    inputs = {
        u: encoding.to_ring(discrete_gaussian(sigma2_total / fewest, dim), BITS) for u in range(n)
    }
    # The others drop after ShareKeys: exactly t + 1 noise shares remain in the sum.
    outcome = aggregate_in_memory(
        config, inputs, DropoutScript({u: "masked_input" for u in range(fewest, n)})
    )
    assert len(outcome.result.survivors) == fewest
    # One party fewer is refused: never a sum with less than the calibrated noise.
    with pytest.raises(AbortedError):
        aggregate_in_memory(config, inputs, DropoutScript({u: "masked_input" for u in range(t, n)}))
    noise = outcome.result.signed().astype(np.float64)
    assert abs(noise.mean()) < 5 * np.sqrt(float(sigma2_total) / dim)
    assert _variance_ok(noise, float(sigma2_total))


def test_noise_composes_with_part_wise_aggregation() -> None:
    """Per block: exactly min_holders surviving holders still carry the whole target noise."""
    n, min_holders, size = 6, 3, 2048
    sigma2_total = Fraction(9_000)
    # Block 0: parties 0..3; block 1: everyone. Party 3 drops: block 0 keeps exactly 3.
    holdings = tuple(((0, 1) if u < 4 else (1,)) for u in range(n))
    layout = BlockLayout((size, size), holdings, min_holders=min_holders)
    config = RoundConfig(
        session_id=rng.token_bytes(16),
        round_index=0,
        graph=complete_graph(n),
        threshold=3,
        dim=layout.dim,
        modulus_bits=BITS,
        layout=layout,
    )
    check_noise_floor(config, min_holders)
    inputs = {
        u: encoding.to_ring(
            discrete_gaussian(sigma2_total / min_holders, layout.input_length(u)), BITS
        )
        for u in range(n)
    }
    outcome = aggregate_in_memory(config, inputs, DropoutScript({3: "masked_input"}))
    assert outcome.result.block_survivors == (3, 5)
    total = outcome.result.signed().astype(np.float64)
    assert _variance_ok(total[:size], float(sigma2_total))  # exactly min_holders: the target
    assert _variance_ok(total[size:], float(sigma2_total) * 5 / 3)  # more survivors: more noise


def test_round_that_could_reveal_a_thinner_sum_is_refused() -> None:
    config = RoundConfig(
        session_id=rng.token_bytes(16),
        round_index=0,
        graph=complete_graph(8),
        threshold=4,
        dim=16,
        modulus_bits=BITS,
    )
    check_noise_floor(config, 5)  # t + 1 = 5
    with pytest.raises(ConfigError, match="calibrated for sums of at least 6"):
        check_noise_floor(config, 6)
    layout = BlockLayout((8, 8), tuple(((0, 1) if u < 4 else (1,)) for u in range(8)), 2)
    partwise = RoundConfig(
        session_id=rng.token_bytes(16),
        round_index=0,
        graph=complete_graph(8),
        threshold=4,
        dim=16,
        modulus_bits=BITS,
        layout=layout,
    )
    with pytest.raises(ConfigError, match="min_holders 2"):
        check_noise_floor(partwise, 3)


def test_per_example_gradients_match_autograd() -> None:
    model = make_model("mlp", 5, hidden=4, seed=1)
    gen = np.random.default_rng(0)
    x = gen.normal(size=(6, 5)).astype(np.float32)
    y = (gen.random(6) > 0.5).astype(np.float32)
    per_row = per_example_gradients(model, x, y)
    for i in range(6):
        model.zero_grad()
        out = model(torch.as_tensor(x[i : i + 1]))
        torch.nn.functional.binary_cross_entropy_with_logits(
            out, torch.as_tensor(y[i : i + 1])
        ).backward()
        flat = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double().numpy()
        np.testing.assert_allclose(per_row[i], flat, rtol=1e-5, atol=1e-7)


def test_conditional_rounding_respects_the_bound_and_is_unbiased() -> None:
    gen = np.random.default_rng(1)
    rows = clip_rows(gen.normal(size=(4000, 32)) * 3, 10.0)
    bound = 11.5
    rounded = round_rows_conditionally(rows, bound)
    assert np.all(np.linalg.norm(rounded, axis=1) <= bound)
    assert np.all(np.abs(rounded - rows) < 1)
    # Unbiased up to the (rare) conditioning: the mean rounding error is tiny.
    assert abs(float((rounded - rows).mean())) < 0.01


def test_calibration_refuses_a_bit_width_that_cannot_hold_the_sum() -> None:
    options = DPOptions(mode="distributed", epsilon=1.0, bits=8)
    with pytest.raises(ConfigError, match="--dp-bits 8 cannot hold"):
        calibrate_step_noise(options, total_steps=40, rows=26_000, dim=108, parties=5)


def test_distributed_dp_training_reports_epsilon_within_target(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [
        "train",
        "--dp",
        "distributed",
        "--epsilon",
        "2",
        "--parties",
        "5",
        "--rounds",
        "8",
        "--dropout",
        "0.2",
        "--json",
    ]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dp"] == "distributed" and report["secure"] is True
    eps = [r["epsilon"] for r in report["rounds"]]
    assert eps == sorted(eps) and eps[-1] <= 2.0 + 1e-9
    assert report["final"]["epsilon"] == eps[-1]
    assert report["rounds"][-1]["survivors"] == 4
    assert report["final"]["accuracy"] > 0.8


def test_local_dp_sgd_reports_epsilon(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--dp", "local", "--epsilon", "3", "--parties", "4", "--rounds", "2", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert 0 < report["final"]["epsilon"] <= 3.0 + 1e-6
    assert report["final"]["accuracy"] > 0.7


def test_dp_needs_an_epsilon(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--dp", "distributed", "--json"]) == 2
    assert "epsilon" in capsys.readouterr().err


def test_dp_is_never_silently_ignored(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--protocol", "centralized", "--dp", "distributed", "--epsilon", "2"]
    assert main([*argv, "--json"]) == 2
    assert "federated protocol" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# DP on random parameter parts
# --------------------------------------------------------------------------------------------


def test_block_noise_floors_follow_the_engines_acceptance_rules() -> None:
    from protocols.dp_training import block_noise_floors

    # n = 10, t = 5: at most 4 parties drop; every block keeps >= min_holders = 3.
    holders = np.array([0, 3, 5, 7, 8, 10])
    floors = block_noise_floors(holders, parties=10, threshold=5, min_holders=3)
    assert floors.tolist() == [0, 3, 3, 3, 4, 6]
    # The whole model (one block held by all): t + 1, as before.
    assert block_noise_floors(np.array([10]), 10, 5, 2).tolist() == [6]


def test_block_rotation_is_orthonormal_and_inverted_by_the_server() -> None:
    from protocols.dp_training import BlockRotation

    rotation = BlockRotation(rng.token_bytes(16), (8, 8, 5, 1, 8))
    gen = np.random.default_rng(3)
    blocks = np.array([1, 2, 3])
    x = gen.normal(size=(4, 8 + 5 + 1))
    y = rotation.rotate(x, blocks)
    assert y.shape == (4, 8 + 8 + 1)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1))
    np.testing.assert_allclose(rotation.unrotate_rows(y, blocks), x, atol=1e-12)
    # The per-block sums of rotated vectors are the rotated per-block sums.
    whole = gen.normal(size=(1, 30))
    full = rotation.rotate(whole, np.arange(5))
    np.testing.assert_allclose(rotation.unrotate(full[0]), whole[0], atol=1e-12)


def _parts_trainer(
    parties: int, features: int, block_size: int, epsilon: float = 4.0
) -> NoisyGradientTrainer:
    gen = np.random.default_rng(0)
    data = [
        (gen.normal(size=(20, features)).astype(np.float32), np.ones(20, np.float32))
        for _ in range(parties)
    ]
    options = DPOptions(mode="distributed", epsilon=epsilon, records=20 * parties, bits=32)
    parts = PartsSpec(download_fraction=0.5, unit="block", block_size=block_size, min_holders=3)
    return NoisyGradientTrainer(
        make_model("logreg", features), data, options, rounds=2, secure=True, parts=parts
    )


def test_every_released_block_sum_carries_the_target_noise_with_the_fewest_survivors() -> None:
    """Per-block noise through the real part-wise engine, with the dropouts that leave party 0's
    blocks the fewest survivors the engine accepts: every block sum still carries >= T, a block
    at its floor carries about T (never silently less), and one more drop is refused."""
    from audits.dp import worst_case_dropouts

    n = 8
    trainer = _parts_trainer(n, features=2047, block_size=512)
    selection = trainer.draw_parts()
    floors = trainer.floors(selection)
    sigma2 = {int(f): trainer.noise.sigma2_for(int(f)) for f in np.unique(floors[floors > 0])}
    dropped, alive = worst_case_dropouts(
        selection.holdings, 0, trainer.threshold, trainer.min_holders
    )
    assert np.all(alive[floors > 0] >= floors[floors > 0])
    sizes = np.asarray(selection.block_sizes, dtype=np.int64)
    layout = BlockLayout(selection.block_sizes, selection.holdings, min_holders=3)
    config = RoundConfig(
        session_id=rng.token_bytes(16),
        round_index=0,
        graph=complete_graph(n),
        threshold=trainer.threshold,
        dim=layout.dim,
        modulus_bits=BITS,
        layout=layout,
    )
    inputs = {
        u: encoding.to_ring(
            trainer._noise(np.asarray(selection.holdings[u]), floors, sigma2, sizes), BITS
        )
        for u in range(n)
    }
    outcome = aggregate_in_memory(
        config, inputs, DropoutScript(dict.fromkeys(dropped, "masked_input"))
    )
    assert outcome.result.block_survivors == tuple(int(a) for a in alive)
    total = outcome.result.signed().astype(np.float64)
    target = float(trainer.noise.sigma2_total)
    for b, size in enumerate(selection.block_sizes):
        if alive[b] == 0:
            continue
        start = int(sum(selection.block_sizes[:b]))
        expected = float(alive[b] * sigma2[int(floors[b])])
        assert expected >= target
        assert _variance_ok(total[start : start + size], expected)


def test_dp_on_parts_refuses_blocks_that_could_be_one_holder() -> None:
    gen = np.random.default_rng(0)
    data = [(gen.normal(size=(5, 3)).astype(np.float32), np.ones(5, np.float32))] * 4
    options = DPOptions(mode="distributed", epsilon=2.0, records=20)
    with pytest.raises(ConfigError, match="min-holders 1"):
        NoisyGradientTrainer(
            make_model("logreg", 3),
            data,
            options,
            rounds=1,
            secure=True,
            parts=PartsSpec(0.5, "block", 2, min_holders=1),
        )


def test_dp_needs_a_public_record_count() -> None:
    gen = np.random.default_rng(0)
    data = [(gen.normal(size=(5, 3)).astype(np.float32), np.ones(5, np.float32))] * 4
    with pytest.raises(ConfigError, match="public record count"):
        NoisyGradientTrainer(
            make_model("logreg", 3), data, DPOptions(mode="central", epsilon=2.0), 1, secure=False
        )


def test_the_update_is_normalised_by_the_public_count_not_the_rows() -> None:
    """Central DP with negligible noise: the step scales with 1 / records, and adding a row to a
    party does not change the normaliser (only that row's clipped gradient enters)."""
    gen = np.random.default_rng(0)
    x = gen.normal(size=(40, 3)).astype(np.float32)
    y = (gen.random(40) > 0.5).astype(np.float32)
    steps = {}
    for records in (100, 200):
        model = make_model("logreg", 3, seed=1)
        before = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy().copy()
        options = DPOptions(mode="central", epsilon=1e5, records=records, steps_per_round=1)
        trainer = NoisyGradientTrainer(
            model, [(x[:20], y[:20]), (x[20:], y[20:])], options, 1, secure=False
        )
        trainer.run_round(1, set())
        steps[records] = trainer.global_vec - before
    np.testing.assert_allclose(steps[100], 2 * steps[200], rtol=0.02, atol=1e-4)


def test_parts_dp_training_draws_real_parts_and_reports_the_noise_floor(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [
        "train",
        "--protocol",
        "parameter-parts",
        "--secure",
        "--dp",
        "distributed",
        "--epsilon",
        "4",
        "--delta",
        "1e-5",
        "--parties",
        "6",
        "--rounds",
        "3",
        "--json",
    ]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["final"]["epsilon"] <= 4.0 + 1e-9
    for r in report["rounds"]:
        assert 0.4 < r["part_fraction_mean"] < 0.8  # real parts, about the download fraction
        floor = r["noise_floor"]
        assert floor["guaranteed_holders_min"] >= 3
        assert floor["sigma2_block_min"] >= report["rounds"][-1]["noise"]["sigma2_total"]
    privacy = report["privacy"]
    assert privacy["preprocessing_inside_guarantee"] is True
    assert privacy["amplification"] == "none claimed"
    assert report["final"]["accuracy"] > 0.75


def test_csv_dp_needs_a_public_count_and_states_a_conditional_claim(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gen = np.random.default_rng(0)
    rows = ["a,b,c,label"] + [
        f"{gen.normal():.3f},{gen.choice(['x', 'y'])},{gen.integers(5)},{int(gen.random() > 0.5)}"
        for _ in range(200)
    ]
    path = tmp_path / "data.csv"
    path.write_text("\n".join(rows) + "\n")
    base = ["train", "--dataset", str(path), "--target", "label", "--parties", "4"]
    base += ["--rounds", "1", "--dp", "central", "--epsilon", "2", "--no-secure", "--json"]
    assert main(base) == 3
    assert "--dp-records" in capsys.readouterr().err
    assert main([*base, "--dp-records", "150"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["privacy"]["preprocessing_inside_guarantee"] is False
    assert "CONDITIONAL on fixed preprocessing" in report["privacy"]["claim"]


def test_local_dp_sgd_trains_only_the_party_part() -> None:
    from protocols.models import flat_parameters
    from protocols.training import local_train_dp_sgd

    model = make_model("mlp", 5, hidden=4, seed=0)
    before = flat_parameters(model).copy()
    part = np.zeros(before.size, dtype=bool)
    part[:7] = True
    part[-3:] = True
    gen = np.random.default_rng(0)
    x = gen.normal(size=(200, 5)).astype(np.float32)
    y = (gen.random(200) > 0.5).astype(np.float32)
    steps, rate = local_train_dp_sgd(
        model,
        x,
        y,
        epochs=1,
        batch_size=32,
        lr=0.5,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        trainable=part,
    )
    after = flat_parameters(model)
    assert steps > 0 and rate == pytest.approx(0.16)
    np.testing.assert_array_equal(after[~part], before[~part])
    assert np.all(after[part] != before[part])


@pytest.mark.parametrize(
    "extra",
    [
        ["--dp", "distributed", "--upload-policy", "topk"],
        ["--dp", "central", "--rule", "add"],
        ["--dp", "local", "--dp-steps", "3"],
        ["--dp", "local", "--dp-records", "1000"],
    ],
)
def test_dp_flags_that_would_be_ignored_are_usage_errors(
    extra: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--epsilon", "2", *extra, "--json"]) == 2
    assert "would be ignored" in capsys.readouterr().err

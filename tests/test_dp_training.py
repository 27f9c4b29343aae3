"""The DP layer composed with secure aggregation and training.

- the decoded sum carries the calibrated noise when EXACTLY the threshold t of parties survive,
  also per block in part-wise mode;
- a round that could reveal a sum of fewer contributions than the noise was calibrated for is
  refused;
- record-level DP training reports an epsilon within the target and still learns.
"""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
import torch

from protocols.dp_training import (
    DPOptions,
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
        "4",
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

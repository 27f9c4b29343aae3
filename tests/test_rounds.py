"""secagg.rounds: plan_round (config and encoder from one B) and aggregate (one-call round);
plus the issue-9 regressions of the finder, the simulator and the encoder."""

from __future__ import annotations

import numpy as np
import pytest

import secagg
from secagg import (
    AbortedError,
    ConfigError,
    DropoutScript,
    EncodingError,
    FixedPointEncoder,
    GraphParameters,
    SecAggError,
    aggregate,
    complete_parameters,
    count_at_rate,
    find_harary_parameters,
    plan_round,
    sim,
)
from secagg.encoding import choose_modulus_bits, to_ring, unpack


def test_plan_chooses_graph_threshold_and_one_modulus() -> None:
    plan = plan_round(40, 100, dropout_rate=0.1, corruption_rate=0.05, clip=2.0, value_bits=12)
    config, encoder = plan.config, plan.encoder
    assert config.modulus_bits == encoder.modulus_bits == choose_modulus_bits(12, 40)
    assert encoder.max_summands == 40 and encoder.clip == 2.0 and config.dim == 100
    expected = find_harary_parameters(40, 0.1, 0.05)
    assert config.threshold == expected.t and config.graph.degree == expected.k
    assert config.graph.kind == expected.kind
    complete = plan_round(40, 100, graph_kind="complete")
    assert complete.config.graph.kind == "complete"
    assert complete.threshold == complete_parameters(40, 0.1, 0.05).t


def test_aggregate_mean_with_dropouts_flat_vectors() -> None:
    n, d = 8, 50
    plan = plan_round(n, d, dropout_rate=0.25, graph_kind="complete", value_bits=20)
    gen = np.random.default_rng(0)
    xs = {u: gen.uniform(-1, 1, size=d) for u in range(n)}
    out = aggregate(plan, xs, dropouts=[2, 5])
    assert out.survivors == (0, 1, 3, 4, 6, 7) and out.dropped == (2, 5)
    exact = np.mean([xs[u] for u in out.survivors], axis=0)
    assert np.max(np.abs(out.mean - exact)) < 1e-4
    assert out.traffic.upload_bytes[0] > 0


def test_aggregate_absent_party_and_late_dropout_phases() -> None:
    n = 6
    plan = plan_round(n, 4, dropout_rate=0.34, graph_kind="complete")
    xs = {u: np.full(4, 0.5) for u in range(n) if u != 1}  # party 1 never shows up
    out = aggregate(plan, xs, dropouts={4: "unmask"})  # 4 drops after sending its input
    assert 4 in out.survivors and 1 not in out.survivors
    assert np.allclose(out.mean, 0.5, atol=1e-4)


def test_aggregate_active_mode_generates_keys_for_simulation() -> None:
    plan = plan_round(7, 6, dropout_rate=0.15, graph_kind="complete", active=True)
    assert plan.config.active and plan.signing_keys is not None
    out = aggregate(plan, [np.full(6, u / 10) for u in range(7)], dropouts=[0])
    assert np.allclose(out.mean, np.mean([u / 10 for u in range(1, 7)]), atol=1e-3)


def test_aggregate_refuses_what_does_not_fit() -> None:
    plan = plan_round(6, 3, dropout_rate=0.2, graph_kind="complete")
    with pytest.raises(AbortedError):
        aggregate(plan, [np.zeros(3)] * 6, dropouts=[0, 1, 2, 3])  # 2 left, t = 3
    with pytest.raises(ConfigError, match="shape"):
        aggregate(plan, [np.zeros(4)] * 6)
    with pytest.raises(ConfigError, match="got 9"):
        aggregate(plan, {9: np.zeros(3)})
    with pytest.raises(ConfigError, match="'share'"):
        aggregate(plan, [np.zeros(3)] * 6, dropouts={0: "share"})
    with pytest.raises(ConfigError, match="graph_kind"):
        plan_round(6, 3, graph_kind="ring")
    with pytest.raises(ConfigError, match="weighted"):
        plan_round(6, 3, weighted=True)


def test_for_round_changes_only_the_round() -> None:
    plan = plan_round(5, 3, graph_kind="complete")
    later = plan.for_round(4)
    assert later.config.round_index == 4 and later.config.session_id == plan.config.session_id
    assert later.encoder == plan.encoder


# -- regressions (issue 9) -----------------------------------------------------------------------


def test_finder_fallback_to_complete_graph_with_odd_k_builds() -> None:
    # n=1000, dropout 0.4, corruption 0.55: the sparse analysis is hopeless, the finder falls
    # back to the complete graph with k = 999 (odd), which harary_graph refuses.
    params = find_harary_parameters(1000, 0.4, 0.55)
    assert params.kind == "complete" and params.k == 999
    g = params.graph(1000)
    assert g.kind == "complete" and g.degree == 999
    plan = plan_round(1000, 10, dropout_rate=0.4, corruption_rate=0.55)
    assert plan.config.graph.kind == "complete" and plan.threshold == params.t
    with pytest.raises(ConfigError, match="need n=1000"):
        params.graph(999)
    # The older recipe, harary_graph(n, params.k, seed), also works on the fallback now.
    assert secagg.harary_graph(1000, params.k, bytes(32)) == g
    with pytest.raises(ConfigError, match="even"):
        secagg.harary_graph(1000, 7, bytes(32))
    with pytest.raises(ConfigError, match="got 16 bytes"):
        secagg.harary_graph(1000, 8, bytes(16))


@pytest.mark.parametrize("n", [0, 1, 2])
def test_finder_refuses_fewer_than_three_parties(n: int) -> None:
    for finder in (find_harary_parameters, complete_parameters):
        with pytest.raises(ConfigError, match=f"n >= 3, got n={n}"):
            finder(n, 0.0, 0.0)
    p = complete_parameters(3, 0.0, 0.0)
    assert p.t == 2 and p.k == 2


def test_graph_parameters_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="even k, got k=3"):
        GraphParameters(3, 2)
    with pytest.raises(ConfigError, match="t <= k, got k=4, t=1"):
        GraphParameters(4, 1)
    with pytest.raises(ConfigError, match=r"t must be an integer, got 2\.5"):
        GraphParameters(4, 2.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"dropout_rate=1\.2"):
        find_harary_parameters(10, 1.2, 0.0)
    # every library error is a SecAggError (and stays a ValueError for old callers)
    with pytest.raises(SecAggError):
        complete_parameters(100, 0.5, 0.05)


@pytest.mark.parametrize(("n", "rate"), [(13, 0.2), (100, 0.29), (30, 0.1), (7, 0.5), (10, 0.05)])
def test_simulator_drops_what_the_finder_plans_for(n: int, rate: float) -> None:
    planned = count_at_rate(rate, n)
    script = sim.scripted_dropouts(n, rate, 0.0, seed=3)
    assert len(script.drops) == planned == int(np.floor(rate * n + 1e-9))


def test_simulate_13_parties_at_20_percent_never_aborts() -> None:
    setup = sim.resolve_parameters(13, 16, dropout_rate=0.2, corruption_rate=0.05)
    for seed in range(10):
        report = sim.run_round(setup, sim.scripted_dropouts(13, 0.2, 0.0, seed), seed=seed)
        assert report["correct"] and report["dropped"] == 2


def test_dropout_script_validates_and_names_the_phase() -> None:
    with pytest.raises(ConfigError, match="'masked-input', not a phase"):
        DropoutScript({3: "masked-input"})
    with pytest.raises(ConfigError, match="got -1"):
        DropoutScript({-1: "unmask"})
    script = DropoutScript.before("masked_input", [3, 4])
    assert script.alive(3, "share_keys") and not script.alive(3, "masked_input")


def test_unpack_of_nothing() -> None:
    for bits in (7, 16, 20, 60, 64):
        assert unpack(b"", bits, 0).size == 0
    with pytest.raises(EncodingError, match="expected 0"):
        unpack(b"\x00", 20, 0)
    with pytest.raises(EncodingError, match="count must be >= 0, got -1"):
        unpack(b"", 20, -1)


def test_absurdly_small_clip_is_refused() -> None:
    with pytest.raises(EncodingError, match="clip=1e-305"):
        FixedPointEncoder(clip=1e-305, value_bits=16, modulus_bits=20, max_summands=4)
    tiny = FixedPointEncoder(clip=1e-290, value_bits=16, modulus_bits=20, max_summands=4)
    words = tiny.encode([5e-291])
    assert tiny.decode_sum(words, 1)[0] == pytest.approx(5e-291, rel=1e-3)


def test_encoder_names_the_wrong_argument() -> None:
    with pytest.raises(EncodingError, match="max_summands must be >= 1, got 0"):
        FixedPointEncoder(clip=1.0, value_bits=16, modulus_bits=20, max_summands=0)
    with pytest.raises(EncodingError, match=r"value_bits must be an integer, got 16\.0"):
        FixedPointEncoder(clip=1.0, value_bits=16.0, modulus_bits=20, max_summands=2)  # type: ignore[arg-type]
    with pytest.raises(EncodingError, match="clip must be a positive finite number, got 'x'"):
        FixedPointEncoder(clip="x", value_bits=16, modulus_bits=20, max_summands=2)  # type: ignore[arg-type]
    with pytest.raises(EncodingError, match="num_summands must be >= 1, got 0"):
        choose_modulus_bits(16, 0)
    enc = FixedPointEncoder(clip=1.0, value_bits=16, modulus_bits=20, max_summands=2)
    with pytest.raises(EncodingError, match="num_summands=3"):
        enc.decode_sum(enc.encode([0.1]), 3)


@pytest.mark.parametrize("bad", [["a", "b"], [1j, 2.0], np.array([1 + 2j]), [object()]])
def test_strings_and_complex_numbers_are_encoding_errors(bad: object) -> None:
    enc = FixedPointEncoder(clip=1.0, value_bits=16, modulus_bits=20, max_summands=2)
    with pytest.raises(EncodingError, match="real numbers"):
        enc.encode(bad)  # type: ignore[arg-type]
    with pytest.raises(EncodingError, match="real numbers"):
        to_ring(np.asarray(bad), 20)


def test_to_ring_refuses_fractions_it_would_truncate() -> None:
    with pytest.raises(EncodingError, match=r"values\[1\] = 1.5"):
        to_ring(np.array([1.0, 1.5]), 20)
    assert to_ring(np.array([1.0, -2.0]), 20).tolist() == [1, (1 << 20) - 2]


def test_public_surface() -> None:
    for name in ("ArraySpec", "plan_round", "aggregate", "RoundPlan", "DropoutScript"):
        assert name in secagg.__all__ and hasattr(secagg, name)

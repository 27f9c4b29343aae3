"""Property tests of whole rounds: random cohorts, graphs, thresholds, moduli, dropout schedules.

The invariant (Bonawitz et al. 2017, section 4; Bell et al. 2020, section 3): a round either
outputs exactly sum_{u in U3} x_u mod 2^B, with U3 the parties whose masked input reached the
server, or ends with a typed protocol error; and it never outputs anything for fewer than t
inputs. What the server sees of one party (its masked vector) is neither the input nor repeatable.
"""

from __future__ import annotations

import numpy as np
from helpers import (
    PHASES,
    Router,
    decoded,
    make_config,
    masked_vector,
    plain_sum,
    random_inputs,
    run_round,
)
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from secagg import messages as wire
from secagg.errors import AbortedError, LocalProtocolError, ProtocolError, RemoteProtocolError

SETTINGS = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=False,
)


@st.composite
def scenarios(draw: st.DrawFn, max_n: int = 40) -> dict:
    n = draw(st.integers(3, max_n))
    active = draw(st.booleans())
    # Active mode runs only where its argument holds: complete graphs and Harary rings with
    # n >= 3k/2 + 1 (RoundConfig refuses the rest).
    top = min(n - 2, 2 * (n - 1) // 3) if active else n - 2
    degrees = list(range(2, top + 1, 2))
    kinds = ["complete", "harary"] if degrees else ["complete"]
    kind = draw(st.sampled_from(kinds))
    k = draw(st.sampled_from(degrees)) if kind == "harary" else n - 1
    # RoundConfig refuses t = 1 (a share would be the secret) and, in active mode, 2t <= k.
    t = draw(st.integers(k // 2 + 1 if active else 2, k))
    dim = draw(st.integers(1, 64))
    bits = draw(st.integers(2, 64))
    drops = draw(st.dictionaries(st.integers(0, n - 1), st.sampled_from(PHASES), max_size=n))
    return {
        "n": n,
        "kind": kind,
        "k": k,
        "t": t,
        "dim": dim,
        "bits": bits,
        "active": active,
        "drops": drops,
        "input_early": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def _config(s: dict):
    return make_config(
        s["n"],
        t=s["t"],
        dim=s["dim"],
        bits=s["bits"],
        kind=s["kind"],
        k=s["k"],
        active=s["active"],
    )


@settings(SETTINGS, max_examples=45)
@given(scenarios())
def test_round_outputs_exact_sum_of_survivors_or_typed_error(s: dict) -> None:
    config, signing = _config(s)
    inputs = random_inputs(s["n"], s["dim"], s["bits"], s["seed"])
    out = run_round(config, signing, inputs, s["drops"], input_early=s["input_early"])

    event("output" if out.result is not None else f"error: {type(out.error).__name__}")
    event(f"dropouts: {'none' if not s['drops'] else 'some'}")
    # Exactly one of: a result, or the server's typed error.
    assert (out.result is None) != (out.error is None)
    # An honest round never hits an internal error, at the server or at any party.
    assert not isinstance(out.error, LocalProtocolError), out.error
    for u, err in out.client_errors.items():
        assert isinstance(err, (RemoteProtocolError, AbortedError)), (u, err)

    if len(out.masked_senders) < s["t"]:
        # Never an output for fewer than t inputs.
        assert out.result is None
        assert isinstance(out.error, ProtocolError)

    if out.result is None:
        assert isinstance(out.error, (AbortedError, RemoteProtocolError)), out.error
    else:
        result = out.result
        assert result.survivors == tuple(sorted(out.masked_senders))
        assert len(result.survivors) >= s["t"]
        assert not set(result.survivors) & set(result.dropped)
        assert result.modulus_bits == s["bits"]
        expected = plain_sum(inputs, result.survivors, s["bits"])
        np.testing.assert_array_equal(result.total.astype(np.uint64), expected)
        # Every survivor is a party that was scheduled to send its masked input.
        for u in result.survivors:
            assert s["drops"].get(u) not in ("advertise", "share_keys", "masked_input")

    if not s["drops"]:
        # Liveness: with nobody dropping, an honest round always completes, with everyone.
        assert out.result is not None, (out.error, out.client_errors)
        assert out.result.survivors == tuple(range(s["n"]))

    # What the server receives of each party is masked: never its input (2^-64 false alarm).
    if s["dim"] * s["bits"] >= 64:
        for m in decoded(out.server_inbox, wire.MaskedInput):
            y = masked_vector(config, m).astype(np.uint64)
            assert not np.array_equal(y, inputs[m.sender]), m.sender


@settings(SETTINGS, max_examples=12)
@given(
    scenarios(max_n=12).filter(lambda s: s["dim"] * s["bits"] >= 64),
)
def test_masked_vector_is_fresh_each_run(s: dict) -> None:
    """Two runs with the same config and inputs: every party's masked vector differs between the
    runs and from its input (fresh keys and self-mask seeds in every run)."""
    s = {**s, "drops": {}}
    config, signing = _config(s)
    inputs = random_inputs(s["n"], s["dim"], s["bits"], s["seed"])
    seen: list[dict[int, np.ndarray]] = []
    for _ in range(2):
        router = Router(config, signing, inputs, {}, input_early=s["input_early"])
        out = router.run()
        assert out.result is not None
        seen.append(
            {
                m.sender: masked_vector(config, m).astype(np.uint64)
                for m in decoded(out.server_inbox, wire.MaskedInput)
            }
        )
        np.testing.assert_array_equal(
            out.result.total.astype(np.uint64), plain_sum(inputs, range(s["n"]), s["bits"])
        )
    assert seen[0].keys() == seen[1].keys() == set(range(s["n"]))
    for u in range(s["n"]):
        assert not np.array_equal(seen[0][u], inputs[u])
        assert not np.array_equal(seen[0][u], seen[1][u])


@settings(SETTINGS, max_examples=15)
@given(scenarios(max_n=16))
def test_below_threshold_survivors_never_yield_output(s: dict) -> None:
    """Force fewer than t masked inputs: the round must end in an error, never a result."""
    n, t = s["n"], s["t"]
    # Everyone except t-1 parties (or fewer) stops before sending its masked input.
    keep = sorted(s["drops"])[: max(t - 1, 0)] if s["drops"] else list(range(t - 1))
    drops = {u: "masked_input" for u in range(n) if u not in keep}
    drops.update({u: p for u, p in s["drops"].items() if u in keep and p != "advertise"})
    config, signing = _config(s)
    inputs = random_inputs(n, s["dim"], s["bits"], s["seed"])
    out = run_round(config, signing, inputs, drops, input_early=s["input_early"])
    assert len(out.masked_senders) < t
    assert out.result is None
    assert isinstance(out.error, (AbortedError, RemoteProtocolError))

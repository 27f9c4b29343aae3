"""End to end: the parameter-part protocol with part-wise secure aggregation.

The secure path must compute exactly what the plaintext path computes on the same encoded
updates (secure aggregation changes only the encoding), never reveal a thin block, and train a
model on real data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.aggregation import (
    PartUpdate,
    SecureSettings,
    aggregate_plain,
    aggregate_secure,
)
from protocols.parameter_parts.selection import select_parts
from protocols.parameter_parts.upload import upload_mask
from secagg.cli import main
from secagg.errors import AbortedError
from secagg.graph import complete_parameters


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    parties=st.integers(4, 9),
    num_params=st.integers(5, 60),
    fraction=st.sampled_from([0.2, 0.5, 1.0]),
    unit=st.sampled_from(["element", "block", "layer"]),
    policy=st.sampled_from(["all", "topk", "threshold", "random"]),
    count_channel=st.booleans(),
    drops=st.integers(0, 2),
    seed=st.integers(0, 2**31),
)
def test_secure_sums_equal_plaintext_sums_of_the_same_encoded_updates(
    parties: int,
    num_params: int,
    fraction: float,
    unit: str,
    policy: str,
    count_channel: bool,
    drops: int,
    seed: int,
) -> None:
    gen = np.random.default_rng(seed)
    layers = [("w", 0, num_params - 1), ("b", num_params - 1, num_params)]
    min_holders = 2
    selection = select_parts(
        num_params,
        layers,
        parties,
        fraction,
        unit=unit,
        block_size=4,
        min_holders=min(parties, min_holders + drops),
    )
    s = SecureSettings(clip=1.0, value_bits=16)
    scale = (2 ** (s.value_bits - 1) - 1) / s.clip
    updates = {}
    for u in range(parties):
        size = selection.party_indices(u).size
        # Values on the encoder's grid: stochastic rounding is then exact, so the secure sums
        # must equal the plaintext sums bit for bit.
        values = gen.integers(-(2**15) + 1, 2**15 - 1, size=size) / scale
        kept = upload_mask(values, policy, upload_fraction=0.3, tau=0.5)
        updates[u] = PartUpdate(np.where(kept, values, 0.0), kept)
    dropped = {int(u) for u in gen.permutation(parties)[:drops]}
    plain = aggregate_plain(selection, updates, dropped, count_channel)
    try:
        secure = aggregate_secure(
            selection, updates, dropped, count_channel, s, round_index=1, min_holders=min_holders
        )
    except AbortedError:
        # Only legitimate when a block's surviving holders fell below min_holders, or when the
        # survivors have fewer than t surviving neighbours (the round's threshold).
        t = complete_parameters(parties, min(max(0.05, drops / parties), 0.3), 0.05).t
        thin = any(0 < c < min_holders for c in np.unique(plain.holders))
        assert thin or len(plain.survivors) - 1 < t
        return
    assert secure.survivors == plain.survivors
    np.testing.assert_array_equal(secure.holders, plain.holders)
    np.testing.assert_allclose(secure.sums, plain.sums, rtol=0, atol=1e-9)
    if count_channel:
        np.testing.assert_array_equal(secure.uploaders, plain.uploaders)
    # Traffic follows the part: a bigger part never uploads a smaller masked vector.
    sizes = {u: selection.party_indices(u).size for u in secure.survivors}
    order = sorted(secure.survivors, key=lambda u: sizes[u])
    payloads = [secure.payload_bytes[u] for u in order]
    assert payloads == sorted(payloads)


def _train(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main(["train", "--json", *args]) == 0
    out, _ = capsys.readouterr()
    return json.loads(out)


def test_short_secure_training_on_adult(capsys: pytest.CaptureFixture[str]) -> None:
    secure = _train(capsys, "--parties", "5", "--rounds", "3", "--dropout", "0.2")
    plain = _train(capsys, "--parties", "5", "--rounds", "3", "--dropout", "0.2", "--no-secure")
    assert secure["secure"] is True and plain["secure"] is False
    assert {"rounds", "final", "protocol", "secure", "dp"} <= secure.keys()
    assert len(secure["rounds"]) == 3
    for r in secure["rounds"]:
        assert {"round", "accuracy", "auc", "loss"} <= r.keys()
        assert r["survivors"] == 4  # one of five parties dropped mid-protocol every round
        assert r["aborted"] is None
    assert secure["final"]["accuracy"] > 0.78
    # Secure aggregation changes only the encoding.
    assert abs(secure["final"]["accuracy"] - plain["final"]["accuracy"]) < 0.005


def test_train_on_a_users_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gen = np.random.default_rng(1)
    rows = 400
    income = gen.normal(50, 15, rows)
    region = gen.choice(["north", "south", "east"], rows)
    churn = np.where(income + gen.normal(0, 10, rows) > 55, "yes", "no")
    lines = ["income,region,age,label"]
    for i in range(rows):
        age = "" if i % 17 == 0 else str(int(gen.integers(18, 80)))
        lines.append(f"{income[i]:.2f},{region[i]},{age},{churn[i]}")
    path = tmp_path / "customers.csv"
    path.write_text("\n".join(lines) + "\n")
    report = _train(
        capsys,
        "--dataset",
        str(path),
        "--target",
        "label",
        "--parties",
        "4",
        "--rounds",
        "10",
        "--lr",
        "0.5",
    )
    assert report["final"]["accuracy"] > 0.7  # the majority class is about 0.6
    # A bad target is a one-line error and a non-zero exit.
    assert main(["train", "--dataset", str(path), "--target", "nope", "--json"]) == 2
    _, err = capsys.readouterr()
    assert "nope" in err and err.count("\n") == 1


def test_report_with_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    assert main(["train", "--parties", "4", "--rounds", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    assert (out / "training.png").stat().st_size > 1000
    assert "final accuracy" in (out / "report.md").read_text()

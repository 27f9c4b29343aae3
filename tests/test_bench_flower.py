"""Smoke test of the Flower SecAgg+ benchmark driver (needs `flwr==1.42.0`, extra `bench`)."""

import pytest

pytest.importorskip("flwr")


@pytest.mark.slow
def test_flower_secaggplus_small_round_is_correct() -> None:
    from bench.flower_secaggplus import run_flower_secaggplus

    res = run_flower_secaggplus(
        n=20,
        dim=500,
        num_shares=7,
        reconstruction_threshold=4,
        dropout=0.1,
        seed=1,
        timed_clients=5,
        progress=False,
    )
    assert res["correct"], res
    assert res["survivors"] == 18 and res["dropped"] == 2
    assert res["flwr_version"] == "1.42.0"
    assert res["client_seconds"]["count"] == 5
    assert res["server_seconds"] > 0 and res["client_seconds"]["mean"] > 0
    assert set(res["server_stage_seconds"]) == {
        "setup",
        "share_keys",
        "collect_masked_vectors",
        "unmask",
    }


@pytest.mark.slow
def test_flower_secaggplus_cli_prints_one_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from bench.flower_secaggplus import main

    rc = main(
        [
            "--clients",
            "12",
            "--dim",
            "100",
            "--num-shares",
            "5",
            "--threshold",
            "3",
            "--dropout",
            "0.1",
            "--json",
            "--quiet",
        ]
    )
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and len(out) == 1
    assert json.loads(out[0])["correct"] is True

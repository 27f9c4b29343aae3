"""The ``secagg`` command-line contract (ARCHITECTURE.md section 4)."""

from __future__ import annotations

import json

import pytest

from secagg.cli import main

SIMULATE_KEYS = {
    "clients",
    "dim",
    "survivors",
    "graph",
    "neighbors",
    "threshold",
    "modulus_bits",
    "correct",
    "server_seconds",
    "client_seconds",
    "plaintext_seconds",
    "bytes",
    "expansion",
    "peak_memory_mb",
}


@pytest.mark.parametrize(
    "extra",
    [[], ["--graph", "complete"], ["--active"], ["--late-dropout", "0.1"], ["--workers", "2"]],
)
def test_simulate_json_contract(extra: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["simulate", "--clients", "12", "--dim", "300", "--dropout", "0.1", "--json", *extra]
    assert main(argv) == 0
    out, _ = capsys.readouterr()
    report = json.loads(out)  # exactly one JSON object on stdout
    assert report.keys() >= SIMULATE_KEYS
    assert report["correct"] is True
    assert report["clients"] == 12 and report["dim"] == 300
    assert report["survivors"] <= 12 - 1  # one party dropped before masking
    assert {"mean", "max"} <= report["client_seconds"].keys()
    assert {"client_upload_mean", "client_download_mean"} <= report["bytes"].keys()
    assert report["expansion"] > 0


def test_simulate_human_output_goes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--clients", "6", "--dim", "50", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert "correct        True" in err


def test_simulate_error_is_one_line_and_non_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--clients", "12", "--dim", "10", "--bits", "4", "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and "error" in err


@pytest.mark.parametrize("command", [[], ["simulate"], ["train"], ["audit"]])
def test_help_on_every_subcommand(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    assert "usage" in capsys.readouterr().out

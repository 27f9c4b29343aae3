"""The ``secagg`` command-line contract (ARCHITECTURE.md section 4, docs/cli.md)."""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from secagg.cli import ExitCode, build_parser, main

ROOT = Path(__file__).resolve().parent.parent

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
    assert main(argv) == ExitCode.OK
    out, _ = capsys.readouterr()
    report = json.loads(out)  # exactly one JSON object on stdout
    assert report.keys() >= SIMULATE_KEYS
    assert report["correct"] is True
    assert report["clients"] == 12 and report["dim"] == 300
    assert report["dropped"] == 1  # floor(0.1 * 12): the count the finder planned for
    assert {"mean", "max"} <= report["client_seconds"].keys()
    assert {"client_upload_mean", "client_download_mean"} <= report["bytes"].keys()
    assert report["expansion"] > 0


def test_simulate_human_output_goes_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--clients", "6", "--dim", "50", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert "correct        True" in out
    assert err == ""


def test_refused_configuration_exits_3_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--clients", "12", "--dim", "10", "--bits", "4", "--json"]) == 3
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and "--bits 4" in err and "Traceback" not in err


def test_traceback_only_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["simulate", "--clients", "12", "--dim", "10", "--bits", "4", "--traceback"]
    assert main(argv) == 3
    assert "Traceback" in capsys.readouterr().err


def test_harary_dropout_rate_means_what_the_finder_planned(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Regression (issue 9): the finder planned floor(0.2 * 13) = 2 dropouts while the simulator
    # dropped round(2.6) = 3, and about 1 run in 5 aborted. Both now use graph.count_at_rate.
    for seed in range(8):
        argv = [
            "simulate",
            "--clients",
            "13",
            "--dim",
            "20",
            "--dropout",
            "0.2",
            "--graph",
            "harary",
            "--seed",
            str(seed),
            "--json",
        ]
        assert main(argv) == 0, capsys.readouterr().err
        report = json.loads(capsys.readouterr().out)
        assert report["dropped"] == 2 and report["correct"] is True


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--epsilon", "4"], "--epsilon without --dp"),
        (["train", "--delta", "1e-6"], "--delta without --dp"),
        (["train", "--dp", "distributed"], "needs --epsilon"),
        (["train", "--target", "income"], "--target would be ignored"),
        (["train", "--compare"], "add --out"),
        (["train", "--protocol", "fedavg", "--download-fraction", "0.3"], "would be ignored"),
        (["train", "--upload-fraction", "0.3"], "--upload-policy topk or random"),
        (["train", "--threshold-tau", "0.1"], "--upload-policy threshold"),
        (["train", "--part-unit", "layer", "--block-size", "4"], "--part-unit block"),
        (["train", "--dataset", "/nonexistent/x.csv", "--target", "y"], "no such file"),
        (["train", "--download-fraction", "1.5"], "must be in (0, 1]"),
        (["simulate", "--graph", "complete", "--neighbors", "4"], "--graph harary"),
        (["simulate", "--dropout", "0.6", "--late-dropout", "0.5"], "below 1"),
        (["simulate", "--neighbors", "4", "--threshold", "3", "--corruption", "0.1"], "automatic"),
        (["simulate", "--clients", "0"], "positive integer"),
        (["audit", "dp", "--weaken", "no-masks"], "not a safeguard"),
        (["nonsense"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2_before_any_work(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--json"] if argv != ["nonsense"] else argv) == ExitCode.USAGE
    out, err = capsys.readouterr()
    assert out == ""
    assert message in err


def test_out_is_checked_before_work_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    for command in (["train"], ["audit", "collusion"]):
        assert main([*command, "--out", str(blocker / "report"), "--json"]) == ExitCode.USAGE
        assert "--out" in capsys.readouterr().err
    assert main(["train", "--out", str(blocker), "--json"]) == ExitCode.USAGE
    assert "not a directory" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("secagg 0.1")


@pytest.mark.parametrize("command", [[], ["simulate"], ["train"], ["audit"]])
def test_help_on_every_subcommand(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage" in out
    assert "exit status:" in out and "3  protocol or configuration refused" in out


def test_every_flag_has_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {"simulate", "train", "audit"} <= sub.choices.keys()
    for name, command in [("secagg", parser), *sub.choices.items()]:
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"


def test_internal_error_exits_4(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from secagg import sim

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("bug")

    monkeypatch.setattr(sim, "run_round", broken)
    assert main(["simulate", "--clients", "5", "--dim", "4", "--json"]) == ExitCode.INTERNAL
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "internal error: KeyError" in err


def test_failed_check_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from secagg import sim

    real = sim.run_round

    def wrong_sum(*args: object, **kwargs: object) -> dict[str, object]:
        report = real(*args, **kwargs)  # type: ignore[arg-type]
        report["correct"] = False  # as if the unmasked sum differed from the plaintext sum
        return report

    monkeypatch.setattr(sim, "run_round", wrong_sum)
    assert main(["simulate", "--clients", "5", "--dim", "4", "--json"]) == ExitCode.CHECK_FAILED
    assert json.loads(capsys.readouterr().out)["correct"] is False


def test_core_never_imports_the_layers_above() -> None:
    """secagg/ is the bottom layer: protocols and audits register their subcommands through
    the ``secagg.commands`` entry points instead of being imported by the core."""
    for path in (ROOT / "secagg").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in ("protocols", "audits", "bench"), (path, name)


def test_console_script_end_to_end() -> None:
    """The installed ``secagg`` script: JSON on stdout only, exit codes as documented."""
    script = Path(sys.executable).with_name("secagg")
    done = subprocess.run(
        [str(script), "simulate", "--clients", "5", "--dim", "8", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and json.loads(done.stdout)["correct"] is True
    done = subprocess.run(
        [str(script), "train", "--epsilon", "1"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and done.stdout == "" and done.stderr.count("\n") == 1


def test_stale_metadata_first_on_the_path_does_not_hide_subcommands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source checkout's leftover ``secagg.egg-info`` (no ``secagg.commands``) found before
    the installed metadata once made ``train`` and ``audit`` vanish mid-suite."""
    stale = tmp_path / "secagg.egg-info"
    stale.mkdir()
    (stale / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: secagg\nVersion: 0.0.1\n")
    (stale / "entry_points.txt").write_text("[console_scripts]\nsecagg = secagg.cli:main\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {"simulate", "train", "audit"} <= sub.choices.keys()

"""Regenerate the measured figures in docs/ from a run, so they cannot go stale.

    python scripts/doc_figures.py                 # bytes figures (seconds)
    python scripts/doc_figures.py --full          # also accuracy tables and the grid (minutes)
    python scripts/doc_figures.py --check         # exit 1 if a bytes figure in docs/ is stale

Each figure lives in its document between two markers::

    <!-- BEGIN generated:NAME by scripts/doc_figures.py -->
    ...
    <!-- END generated:NAME -->

and is rewritten in place from a fresh measurement with the code as it is. The byte counts are
(nearly) deterministic functions of the protocol and are re-checked by tests/test_doc_figures.py
on every test run; accuracies and timings are measured by ``--full`` (every run's command and
machine are stated next to the numbers). docs/parameter_parts_table.md is written whole by
``python -m protocols.experiments`` (which ``--full`` calls). docs/benchmarks.md is written whole
by ``python -m bench.run``; this script refreshes only its upload-expansion line.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))


def _region(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- BEGIN generated:{re.escape(name)} by scripts/doc_figures\.py -->\n)(.*?)"
        rf"(<!-- END generated:{re.escape(name)} -->)",
        re.S,
    )


def read_region(path: Path, name: str) -> str:
    match = _region(name).search(path.read_text())
    if match is None:
        raise SystemExit(f"{path}: no generated region {name!r}")
    return match.group(2)


def write_region(path: Path, name: str, body: str) -> bool:
    """Replace the region's body; True if it changed."""
    text = path.read_text()
    match = _region(name).search(text)
    if match is None:
        raise SystemExit(f"{path}: no generated region {name!r}")
    if match.group(2) == body:
        return False
    path.write_text(text[: match.start(2)] + body + text[match.end(2) :])
    return True


def _fill(text: str, indent: str = "") -> str:
    return textwrap.fill(text, width=100, subsequent_indent=indent, break_on_hyphens=False)


def _machine() -> str:
    return f"Python {platform.python_version()}, {os.cpu_count()} cores ({platform.machine()})"


# -- secure aggregation: upload expansion (docs/benchmarks.md) -----------------------------------

EXPANSION_LINE = re.compile(
    r"n=(\d+), d=([\d,]+), harary k=(\d+), B=(\d+): a party that stays for the whole round"
    r" uploads ([\d,]+) bytes, \*\*([\d.]+)\*\*"
)


def measure_expansion() -> dict[str, Any]:
    """The round `python -m bench.run` reports: n=100, d=100,000, Harary graph, 10% dropped
    before masking and 5% during unmasking; a full-round party's upload bytes."""
    from secagg import sim

    setup = sim.resolve_parameters(100, 100_000, dropout_rate=0.15)
    script = sim.scripted_dropouts(100, 0.1, 0.05, seed=0)
    report = sim.run_round(setup, script, seed=0, workers=sim.default_workers())
    return {
        "n": 100,
        "dim": 100_000,
        "k": report["neighbors"],
        "bits": report["modulus_bits"],
        "upload": report["bytes"]["client_upload_full_round_mean"],
        "expansion": report["expansion"],
    }


def render_expansion(m: dict[str, Any]) -> str:
    # Same wording as bench/run.py's report, so either can refresh the line.
    return (
        f"n={m['n']}, d={m['dim']:,}, harary k={m['k']}, B={m['bits']}: a party that stays for"
        f" the whole round uploads {m['upload']:,.0f} bytes, **{m['expansion']:.3f}** x its"
        f" vector as float32 (bound B/32 + 0.1 = {m['bits'] / 32 + 0.1:.3f}; bytes re-measured"
        " by `python scripts/doc_figures.py` after the run above).\n"
    )


def update_expansion(check: bool) -> bool:
    """Refresh (or check) the upload-expansion line of docs/benchmarks.md. True if stale."""
    path = DOCS / "benchmarks.md"
    text = path.read_text()
    match = EXPANSION_LINE.search(text)
    if match is None:
        raise SystemExit(f"{path}: no upload-expansion line")
    m = measure_expansion()
    documented = float(match.group(5).replace(",", ""))
    # A full-round party's bytes vary by a few bytes with who dropped (share messages);
    # anything beyond 0.1% is a change of the protocol the document has not caught up with.
    stale = (
        int(match.group(3)) != m["k"]
        or int(match.group(4)) != m["bits"]
        or abs(documented - m["upload"]) > 1e-3 * m["upload"]
    )
    if not check:  # writing: always the fresh measurement
        end = text.index("\n", match.start()) + 1
        path.write_text(text[: match.start()] + render_expansion(m) + text[end:])
    return stale


# -- parameter parts: bytes (docs/parameter_parts.md) --------------------------------------------


def measure_part_bytes() -> dict[str, Any]:
    """One FedAvg round (the whole model both ways, 10 parties, complete graph, no dropout):
    a deterministic byte count for the whole model, and the model sizes."""
    from protocols import runner
    from protocols.models import make_model
    from protocols.parameter_parts.protocol import ProtocolSettings

    data = runner.load_data("adult", None, 0)
    options = runner.TrainOptions(protocol="fedavg", rounds=1, settings=ProtocolSettings())
    result = runner.run(options, data=data)
    first = result["rounds"][0]
    features = result["features"]

    def size(kind: str) -> int:
        return sum(p.numel() for p in make_model(kind, features).parameters())

    return {
        "parties": result["parties"],
        "payload": first["payload_bytes_mean"],
        "upload": first["upload_bytes_mean"],
        "logreg": size("logreg"),
        "mlp": size("mlp"),
        "bits": result["settings"]["value_bits"],
    }


def render_part_bytes(m: dict[str, Any]) -> str:
    overhead = m["upload"] - m["payload"]
    neighbours = m["parties"] - 1
    text = (
        "- **Bytes per party scale with its part**: the masked vector is B bits per coordinate"
        f" of the part ({m['payload']:,.0f} bytes for the whole {m['logreg']}-parameter model,"
        " about f times that at a download fraction f: the table's *masked vector* column; the"
        " JSON reports it per round as `payload_bytes_mean` next to `part_fraction_mean`). On"
        " top of it comes the rest of the protocol (public keys, sealed Shamir shares for each"
        " neighbour, the revealed shares): a fixed"
        f" {overhead:,.0f} bytes with {neighbours} neighbours, about"
        f" {overhead / neighbours:,.0f} per neighbour, which for this tiny model dominates the"
        f" upload ({m['upload']:,.0f} bytes in all). For a model with thousands of parameters"
        f" (`--model mlp`: {m['mlp']:,}) the masked vector dominates instead."
    )
    return _fill(text, indent="  ") + "\n"


def update_part_bytes(check: bool) -> bool:
    path = DOCS / "parameter_parts.md"
    body = render_part_bytes(measure_part_bytes())
    stale = read_region(path, "part-bytes") != body
    if stale and not check:
        write_region(path, "part-bytes", body)
    return stale


# -- parameter parts: accuracy (docs/parameter_parts.md, --full) ---------------------------------

RUNS = (
    ("--protocol parameter-parts --secure", "parameter-parts", True),
    ("--protocol parameter-parts --no-secure", "parameter-parts", False),
    ("--protocol fedavg --secure", "fedavg", True),
    ("--protocol centralized", "centralized", True),
)


def measure_results(repeats: int = 3) -> dict[str, Any]:
    from dataclasses import replace

    from protocols import runner
    from protocols.parameter_parts.protocol import ProtocolSettings

    data = runner.load_data("adult", None, 0)
    rows = []
    for flags, protocol, secure in RUNS:
        settings = replace(ProtocolSettings(), secure=secure)
        options = runner.TrainOptions(protocol=protocol, rounds=20, settings=settings)
        result = runner.run(options, data=data)
        rows.append((flags, result["final"]["accuracy"], result["final"]["auc"], result["seconds"]))
        print(f"{flags}: {result['final']['accuracy']:.4f}", file=sys.stderr, flush=True)
    # The same secure command again: what --seed does and does not fix.
    settings = ProtocolSettings()
    again = [
        runner.run(runner.TrainOptions(rounds=20, settings=settings), data=data)["final"][
            "accuracy"
        ]
        for _ in range(repeats - 1)
    ]
    return {"rows": rows, "secure_runs": [rows[0][1], *again], "features": data.x_train.shape[1]}


def render_results(m: dict[str, Any]) -> str:
    rows = {flags: (acc, auc, sec) for flags, acc, auc, sec in m["rows"]}
    lines = [
        _fill(
            f"Measured by `python scripts/doc_figures.py --full` ({_machine()}): 10 parties, 20"
            " rounds, logistic regression, `--seed 0`, each row one `secagg train` run with the"
            " other settings at their defaults. Times are wall-clock on a machine shared with"
            " other jobs: compare them within one run only."
        ),
        "",
        "| run | final accuracy | final AUC | time |",
        "| --- | --- | --- | --- |",
    ]
    for flags, _, _ in RUNS:
        acc, auc, sec = rows[flags]
        lines.append(f"| `{flags}` | {acc:.4f} | {auc:.4f} | {sec:.1f} s |")
    secure = rows[RUNS[0][0]][0]
    plain = rows[RUNS[1][0]][0]
    fedavg = rows[RUNS[2][0]][0]
    central = rows[RUNS[3][0]][0]
    runs = m["secure_runs"]
    lines += [
        "",
        f"The secure run is {100 * (central - secure):.2f} points below centralized (bound: 1.5)"
        f" and {100 * (secure - fedavg):+.2f} against secure FedAvg (bound: 1); secure and"
        f" plaintext aggregation differ by {100 * abs(secure - plain):.2f} points (bound: 0.2):"
        " the encoding error (about 1e-6 per value) is far below what moves a prediction.",
        "",
        "`--seed` fixes the data split, the model's initialisation and the local training order;"
        " the parts each party receives, the masks and the stochastic rounding come from the"
        " CSPRNG on purpose, so runs are not bit-for-bit reproducible. The secure command run"
        f" {len(runs)} times gave accuracies {min(runs):.4f} to {max(runs):.4f}.",
    ]
    # Wrap the two closing paragraphs like the rest of the page.
    lines[-3] = _fill(lines[-3])
    lines[-1] = _fill(lines[-1])
    return "\n".join(lines) + "\n"


def update_results(check: bool) -> bool:
    path = DOCS / "parameter_parts.md"
    body = render_results(measure_results())
    stale = read_region(path, "part-results") != body
    if stale and not check:
        write_region(path, "part-results", body)
    return stale


def update_grid(check: bool) -> bool:
    from protocols import experiments

    results = experiments.run_all(20, "logreg", 0)
    text = experiments.markdown(results, "python -m protocols.experiments")
    path = DOCS / "parameter_parts_table.md"
    stale = path.read_text() != text
    if stale and not check:
        path.write_text(text)
    return stale


def parse_grid(path: Path) -> list[dict[str, Any]]:
    """The cells of docs/parameter_parts_table.md (as written by protocols.experiments)."""
    cells = []
    for line in path.read_text().splitlines():
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        if len(parts) != 9 or parts[0] not in ("iid", "dirichlet"):
            continue
        cells.append(
            {
                "split": parts[0],
                "fraction": float(parts[1]),
                "policy": parts[2],
                "accuracy": float(parts[3]),
            }
        )
    if not cells:
        raise SystemExit(f"{path}: no table rows")
    return cells


def render_grid_summary(cells: list[dict[str, Any]]) -> str:
    """The prose under the grid, computed from the grid itself (so the two cannot disagree)."""
    acc = {(c["split"], c["fraction"], c["policy"]): c["accuracy"] for c in cells}
    fractions = sorted({c["fraction"] for c in cells if c["policy"] == "all 1"})
    iid_all = [acc["iid", f, "all 1"] for f in fractions]
    skew_cost = 100 * (
        acc["dirichlet", fractions[-1], "all 1"] - acc["dirichlet", fractions[0], "all 1"]
    )

    def change(policy: str, split: str) -> str:
        diffs = [100 * (acc[split, f, policy] - acc[split, f, "all 1"]) for f in fractions]
        low, high = round(min(diffs), 1) + 0.0, round(max(diffs), 1) + 0.0  # no "-0.0"
        return f"{low:+.1f} to {high:+.1f}"

    text = (
        "- **Accuracy** barely depends on the download fraction for this model (IID, upload"
        f" `all`: {min(iid_all):.4f} to {max(iid_all):.4f} over fractions"
        f" {', '.join(f'{f:g}' for f in fractions)}); under label skew the smallest part"
        f" costs {skew_cost:.1f} points against the whole model. Against `all` at the same"
        f" fraction, `topk 0.1` changes accuracy by {change('topk 0.1', 'iid')} points (IID) and"
        f" {change('topk 0.1', 'dirichlet')} (label skew), `topk 0.5` by"
        f" {change('topk 0.5', 'iid')} and {change('topk 0.5', 'dirichlet')}. Each cell is one"
        " run: parts, masks and rounding come from the CSPRNG, so small differences are within"
        " run-to-run variation (see the repeated run above)."
    )
    return _fill(text, indent="  ") + "\n"


def update_grid_summary(check: bool) -> bool:
    path = DOCS / "parameter_parts.md"
    body = render_grid_summary(parse_grid(DOCS / "parameter_parts_table.md"))
    stale = read_region(path, "part-grid-summary") != body
    if stale and not check:
        write_region(path, "part-grid-summary", body)
    return stale


FAST: dict[str, Callable[[bool], bool]] = {
    "part-grid-summary": update_grid_summary,
    "upload-expansion": update_expansion,
    "part-bytes": update_part_bytes,
}
FULL: dict[str, Callable[[bool], bool]] = {
    "part-results": update_results,
    "part-grid": update_grid,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="also accuracy tables (minutes)")
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if stale")
    parser.add_argument(
        "--only", choices=[*FAST, *FULL], action="append", help="just these figures"
    )
    args = parser.parse_args(argv)
    chosen = {**FAST, **(FULL if args.full else {})}
    if args.only:
        chosen = {name: {**FAST, **FULL}[name] for name in args.only}
    stale = []
    for name, update in chosen.items():
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        if update(args.check):
            stale.append(name)
    verb = "stale" if args.check else "rewritten"
    print(f"{verb}: {', '.join(stale) or 'none'}", file=sys.stderr)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())

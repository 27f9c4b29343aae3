"""Writing an audit's report: markdown for people, summary.json for pipelines, PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become None, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_report(
    out: Path, summary: dict[str, Any], body: str, figures: dict[str, Any] | None = None
) -> list[Path]:
    """Write ``report.md`` (verdict, findings, ``body``), ``summary.json`` and the figures.

    Args:
        out: the directory (created).
        summary: the audit's summary (``audit``, ``passed``, ``findings``, figures).
        body: markdown after the verdict and findings (method, tables, plot links).
        figures: file name -> matplotlib Figure, saved as PNG and closed.
    """
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in (figures or {}).items():
        path = out / name
        fig.savefig(path, dpi=110)
        import matplotlib.pyplot as plt

        plt.close(fig)
        written.append(path)
    verdict = "PASSED" if summary["passed"] else "FAILED"
    lines = [f"# Audit: {summary['audit']} - {verdict}", ""]
    if summary.get("command"):
        lines += [f"Made by `{summary['command']}`.", ""]
    lines += ["## Findings", ""] + [f"- {f}" for f in summary["findings"]] + ["", body, ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    data = out / "summary.json"
    data.write_text(json.dumps(_clean(summary), indent=1))
    return [report, data, *written]


def clean(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary as it goes into JSON (for ``--json`` output)."""
    result: dict[str, Any] = _clean(summary)
    return result

"""``secagg audit NAME``: registered into the core's command through the ``secagg.commands``
entry point (see :mod:`secagg.cli`), so that the engine never imports the audits.

Cheap to import: an audit's module (torch, matplotlib, scipy) is loaded only when it runs.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from audits import AUDITS
from secagg.cli import UsageError, add_command, writable_directory

#: The safeguards each audit can switch off on purpose (``--weaken``), to show it failing.
WEAKENINGS: dict[str, tuple[str, ...]] = {
    "server-view": ("no-masks",),
    "inversion": ("no-secure-aggregation",),
    "collusion": ("low-threshold", "legacy-rule"),
    "dp": ("no-noise", "low-noise", "all-parties", "one-fewer", "one-more"),
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``audit`` to the ``secagg`` command."""
    weakenings = "; ".join(f"{name}: {', '.join(w)}" for name, w in WEAKENINGS.items())
    audit = add_command(
        sub,
        "audit",
        help="attack the library's own transcripts and models, and write a report",
        description="Run a privacy audit: server-view (what the server receives is uniform and "
        "uncorrelated with the inputs), inversion (reconstructing records from updates), "
        "collusion (the server with colluding parties, a lying server, thin blocks), dp "
        "(empirical epsilon lower bounds against the accountant). Exit status 1 when the audit "
        "fails. Needs the 'train' extra.",
        handler=_audit,
        human=_human_audit,
    )
    audit.add_argument("name", choices=list(AUDITS), help="the audit to run")
    audit.add_argument(
        "--out",
        default=None,
        help="directory for report.md, PNGs and summary.json, checked before the audit runs",
    )
    audit.add_argument("--quick", action="store_true", help="small sizes (as in the test suite)")
    audit.add_argument(
        "--weaken",
        default=None,
        metavar="SAFEGUARD",
        help=f"switch one safeguard off on purpose, to see the audit fail ({weakenings})",
    )


def _audit(args: argparse.Namespace) -> dict[str, Any]:
    allowed = WEAKENINGS[args.name]
    if args.weaken is not None and args.weaken not in allowed:
        raise UsageError(
            f"--weaken {args.weaken} is not a safeguard of the {args.name} audit"
            f" (choose from {', '.join(allowed)})"
        )
    out = writable_directory("--out", args.out) if args.out is not None else None
    module = importlib.import_module("audits." + args.name.replace("-", "_"))
    from audits.report import clean

    summary: dict[str, Any] = module.run(quick=args.quick, out=out, weaken=args.weaken)
    result: dict[str, Any] = clean(summary)
    return result


def _human_audit(report: dict[str, Any]) -> str:
    verdict = "PASSED" if report["passed"] else "FAILED"
    return "\n".join(
        [f"audit {report['audit']}: {verdict}"] + [f"  - {f}" for f in report["findings"]]
    )

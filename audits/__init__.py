"""Privacy audits: scripts that attack the library's own transcripts and models.

Each audit is a module with ``run(quick: bool = False, out: Path | None = None,
weaken: str | None = None) -> dict``. The returned summary has at least ``audit`` (its name),
``passed`` (bool), ``findings`` (list of one-line strings) and the audit's own figures; with
``out`` it writes ``report.md``, PNG plots and ``summary.json`` there (see
:func:`audits.report.write_report`). ``weaken`` switches one safeguard off on purpose, so that
the audit can be shown to fail (``passed: false``) when protection is missing.
"""

AUDITS = ("server-view", "inversion", "collusion", "dp")

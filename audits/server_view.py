"""Audit "server-view": is everything the server receives indistinguishable from noise?

Runs real rounds (complete and Harary graphs, with dropouts at masking and at unmasking) through
:func:`secagg.sim.aggregate_in_memory` with ``transcript=...``, so the audit sees exactly the wire
bytes the server received. Every MaskedInput is decoded and, per party:

(a) uniformity over Z_(2^B): a chi-square test over 64 buckets of the top 6 bits and a
    Kolmogorov-Smirnov test of y / 2^B against U(0, 1), with p-values;
(b) the Pearson correlation between the masked vector and the true input (both read as signed
    two's-complement integers) stays below 4 / sqrt(d) (under independence r ~ N(0, 1/d), so a
    4-sigma bound);
(c) the round's output equals the plaintext sum of the survivors' inputs exactly.

A party fails (a) only if a p-value falls below ``ALPHA / m`` (Bonferroni over the m tests of the
run, ALPHA = 1e-3), so an honest run fails with probability below 1e-3.

``weaken="no-masks"`` simulates a broken deployment: ``secagg.crypto.prg.add_mask`` and
``expand_blocks`` produce all-zero keystreams (patched in a context manager and restored), so the
parties send their inputs in the clear, while the sum is still correct. (a) and (b) must then
fail, and with them the audit.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from secagg import encoding, graph
from secagg import messages as wire
from secagg.config import RoundConfig
from secagg.crypto import prg, rng
from secagg.sim import DropoutScript, aggregate_in_memory

NAME = "server-view"
ALPHA = 1e-3
BUCKETS = 64
VALUE_BITS = 16

# -- statistics (numpy / math only) ----------------------------------------------------------


def _gammq(a: float, x: float) -> float:
    """Upper regularized incomplete gamma Q(a, x) (Numerical Recipes, gser / gcf)."""
    if x <= 0:
        return 1.0
    gln = math.lgamma(a)
    if x < a + 1:  # series for P(a, x)
        ap, total, delta = a, 1.0 / a, 1.0 / a
        for _ in range(10_000):
            ap += 1
            delta *= x / ap
            total += delta
            if abs(delta) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(-x + a * math.log(x) - gln))
    tiny = 1e-300  # continued fraction for Q(a, x) (modified Lentz)
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return math.exp(-x + a * math.log(x) - gln) * h


def chi_square_uniform(
    words: npt.NDArray[Any], bits: int, buckets: int = BUCKETS
) -> tuple[float, float]:
    """Chi-square statistic and p-value of the top log2(buckets) bits against uniform."""
    top = int(math.log2(buckets))
    idx = (np.asarray(words).astype(np.uint64) >> np.uint64(bits - top)).astype(np.int64)
    counts = np.bincount(idx, minlength=buckets).astype(np.float64)
    expected = counts.sum() / buckets
    stat = float(((counts - expected) ** 2 / expected).sum())
    return stat, _gammq((buckets - 1) / 2, stat / 2)


def _kolmogorov_q(lam: float) -> float:
    """P[K > lam] for the Kolmogorov distribution."""
    if lam < 0.2:
        return 1.0
    total = 0.0
    for j in range(1, 101):
        term = 2 * (-1) ** (j - 1) * math.exp(-2 * j * j * lam * lam)
        total += term
        if abs(term) < 1e-16:
            break
    return min(1.0, max(0.0, total))


def ks_uniform(u: npt.NDArray[np.float64]) -> tuple[float, float]:
    """One-sample KS statistic D and p-value of samples in [0, 1) against U(0, 1)
    (asymptotic distribution with the Stephens correction)."""
    x = np.sort(np.asarray(u, dtype=np.float64))
    n = x.size
    i = np.arange(1, n + 1, dtype=np.float64)
    d = float(max((i / n - x).max(), (x - (i - 1) / n).max()))
    sq = math.sqrt(n)
    return d, _kolmogorov_q((sq + 0.12 + 0.11 / sq) * d)


def pearson(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> float:
    a = np.asarray(a, dtype=np.float64) - np.mean(a)
    b = np.asarray(b, dtype=np.float64) - np.mean(b)
    denom = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else 0.0


# -- the weakened deployment -------------------------------------------------------------------


@contextlib.contextmanager
def masks_disabled() -> Iterator[None]:
    """Every PRG mask becomes zero (parties and server alike): inputs travel in the clear."""
    saved = prg.add_mask, prg.expand_blocks

    def no_mask(accumulator: Any, seed: bytes, **_: Any) -> None:
        return None

    def zero_blocks(seed: bytes, block_ids: Any, block_sizes: Any, dtype: Any) -> Any:
        return np.zeros(int(np.sum(block_sizes)), dtype=np.dtype(dtype))

    prg.add_mask, prg.expand_blocks = no_mask, zero_blocks  # type: ignore[assignment]
    try:
        yield
    finally:
        prg.add_mask, prg.expand_blocks = saved  # type: ignore[assignment]


# -- rounds ------------------------------------------------------------------------------------


def _inputs(n: int, dim: int, bits: int, seed: int) -> dict[int, npt.NDArray[Any]]:
    """Gradient-like inputs: rounded Gaussians (scale 2^10) clipped to 16-bit signed values,
    encoded in Z_(2^B). Far from uniform over the ring, so unmasked data is easy to spot."""
    gen = np.random.default_rng(seed)
    bound = 2 ** (VALUE_BITS - 1) - 1
    out = {}
    for u in range(n):
        x = np.clip(np.rint(gen.normal(0, 2**10, size=dim)), -bound, bound).astype(np.int64)
        out[u] = encoding.to_ring(x, bits)
    return out


def _scenarios(quick: bool) -> list[dict[str, Any]]:
    d = 4096 if quick else 65536
    out = [
        {
            "name": "complete",
            "n": 12,
            "kind": "complete",
            "k": 11,
            "t": 6,
            "dim": d,
            "drops": {3: "masked_input", 7: "unmask"},
        },
        {
            "name": "harary",
            "n": 20,
            "kind": "harary",
            "k": 8,
            "t": 4,
            "dim": d,
            "drops": {2: "masked_input", 11: "masked_input", 15: "unmask"},
        },
    ]
    if not quick:
        out.append(
            {
                "name": "harary-64bit",
                "n": 40,
                "kind": "harary",
                "k": 10,
                "t": 5,
                "dim": d,
                "bits": 64,
                "drops": {1: "masked_input", 9: "masked_input", 20: "unmask"},
            }
        )
    return out


def _run_scenario(sc: dict[str, Any], seed: int) -> dict[str, Any]:
    n, dim = sc["n"], sc["dim"]
    bits = sc.get("bits", encoding.choose_modulus_bits(VALUE_BITS, n))
    g = (
        graph.complete_graph(n)
        if sc["kind"] == "complete"
        else graph.harary_graph(n, sc["k"], rng.token_bytes(32))
    )
    config = RoundConfig(
        session_id=rng.token_bytes(16),
        round_index=0,
        graph=g,
        threshold=sc["t"],
        dim=dim,
        modulus_bits=bits,
    )
    inputs = _inputs(n, dim, bits, seed)
    transcript: list[bytes] = []
    outcome = aggregate_in_memory(
        config, inputs, DropoutScript(dict(sc["drops"])), transcript=transcript
    )
    masked = {}
    for data in transcript:
        m = wire.decode(data)
        if isinstance(m, wire.MaskedInput):
            masked[m.sender] = encoding.unpack(m.payload, bits, m.count)
    result = outcome.result
    expected = np.zeros(dim, dtype=np.uint64)
    for u in result.survivors:
        expected += inputs[u].astype(np.uint64)
    expected = encoding.reduce(expected, bits) if bits < 64 else expected
    exact = bool(np.array_equal(result.total.astype(np.uint64), expected))
    parties = []
    for u, y in sorted(masked.items()):
        chi2, p_chi2 = chi_square_uniform(y, bits)
        ks_d, p_ks = ks_uniform(y.astype(np.float64) / 2.0**bits)
        r = pearson(encoding.from_ring(y, bits), encoding.from_ring(inputs[u], bits))
        parties.append(
            {"party": u, "chi2": chi2, "p_chi2": p_chi2, "ks_d": ks_d, "p_ks": p_ks, "r": r}
        )
    return {
        "name": sc["name"],
        "n": n,
        "graph": g.kind,
        "k": g.degree,
        "t": sc["t"],
        "dim": dim,
        "modulus_bits": bits,
        "survivors": len(result.survivors),
        "dropped_before_masking": sorted(u for u, p in sc["drops"].items() if p == "masked_input"),
        "dropped_at_unmask": sorted(u for u, p in sc["drops"].items() if p == "unmask"),
        "masked_inputs_seen": len(masked),
        "aggregate_exact": exact,
        "r_bound": 4 / math.sqrt(dim),
        "parties": parties,
        "_example": (masked, inputs, bits),
    }


def _figure(example: tuple[dict[int, Any], dict[int, Any], int], title: str) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    masked, inputs, bits = example
    u = min(masked)
    y = masked[u].astype(np.float64) / 2.0**bits
    x = inputs[u].astype(np.float64) / 2.0**bits
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.hist(y, bins=BUCKETS, range=(0, 1), density=True, alpha=0.75, label=f"masked y_{u}")
    ax1.hist(
        x,
        bins=BUCKETS,
        range=(0, 1),
        density=True,
        histtype="step",
        color="C3",
        label=f"true x_{u} (ring)",
    )
    ax1.axhline(1.0, color="k", ls="--", lw=1, label="U(0,1)")
    ax1.set_xlabel("value / 2^B")
    ax1.set_ylabel("density")
    ax1.set_yscale("log")
    ax1.set_title("masked values vs uniform")
    ax1.legend(fontsize=8)
    sel = np.random.default_rng(0).permutation(y.size)[:3000]
    xs = encoding.from_ring(inputs[u], bits)[sel]
    ax2.scatter(xs, y[sel], s=2, alpha=0.5)
    ax2.set_xlabel(f"true input x_{u} (signed)")
    ax2.set_ylabel(f"masked y_{u} / 2^B")
    ax2.set_title(f"masked vs true, party {u}")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def run(quick: bool = False, out: Path | None = None, weaken: str | None = None) -> dict[str, Any]:
    """Run the audit; see the module docstring. ``weaken``: None or ``"no-masks"``."""
    if weaken not in (None, "no-masks"):
        raise ValueError(f"unknown weakening {weaken!r} for {NAME} (use 'no-masks')")
    start = time.perf_counter()
    ctx = masks_disabled() if weaken == "no-masks" else contextlib.nullcontext()
    with ctx:
        runs = [_run_scenario(sc, seed=100 + i) for i, sc in enumerate(_scenarios(quick))]
    m = sum(2 * len(r["parties"]) for r in runs)
    p_limit = ALPHA / m
    findings: list[str] = []
    ok_uniform = ok_corr = ok_sum = True
    for r in runs:
        ps = r["parties"]
        min_chi = min(p["p_chi2"] for p in ps)
        min_ks = min(p["p_ks"] for p in ps)
        max_r = max(abs(p["r"]) for p in ps)
        uniform = min_chi >= p_limit and min_ks >= p_limit
        corr = max_r < r["r_bound"]
        ok_uniform &= uniform
        ok_corr &= corr
        ok_sum &= r["aggregate_exact"]
        r.update(
            min_p_chi2=min_chi,
            min_p_ks=min_ks,
            max_abs_r=max_r,
            uniform_ok=uniform,
            correlation_ok=corr,
        )
        findings.append(
            f"{r['name']} (n={r['n']}, k={r['k']}, t={r['t']}, d={r['dim']}, B={r['modulus_bits']},"
            f" {len(ps)} masked inputs): uniformity {'OK' if uniform else 'FAILED'}"
            f" (min p chi2={min_chi:.3g}, min p KS={min_ks:.3g}; limit {p_limit:.2g}),"
            f" correlation {'OK' if corr else 'FAILED'} (max |r|={max_r:.4f} vs bound"
            f" {r['r_bound']:.4f}), aggregate {'exact' if r['aggregate_exact'] else 'WRONG'}"
        )
    if weaken:
        findings.append(
            "weakened (no-masks): all PRG masks zeroed; the sum is still exact, so only the"
            " server-view tests can tell"
        )
    passed = ok_uniform and ok_corr and ok_sum
    seconds = time.perf_counter() - start
    example = runs[0].pop("_example")
    for r in runs[1:]:
        r.pop("_example")
    cmd = f"secagg audit {NAME}" + (" --quick" if quick else "")
    cmd += f" --weaken {weaken}" if weaken else ""
    summary: dict[str, Any] = {
        "audit": NAME,
        "passed": passed,
        "findings": findings,
        "weaken": weaken,
        "quick": quick,
        "seconds": seconds,
        "p_value_limit": p_limit,
        "alpha": ALPHA,
        "checks": {"uniformity": ok_uniform, "correlation": ok_corr, "aggregate_exact": ok_sum},
        "runs": runs,
    }
    if out is not None:
        summary["command"] = cmd + f" --out {out}"
        rows = [
            "| run | party | chi2 (63 df) | p chi2 | KS D | p KS | r |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in runs:
            for p in r["parties"]:
                rows.append(
                    f"| {r['name']} | {p['party']} | {p['chi2']:.1f} | {p['p_chi2']:.3g} |"
                    f" {p['ks_d']:.4f} | {p['p_ks']:.3g} | {p['r']:+.4f} |"
                )
        body = "\n".join(
            [
                "## Method",
                "",
                "Real rounds through `aggregate_in_memory(..., transcript=...)`; every MaskedInput"
                " the server received is decoded. Per party: chi-square of the top 6 bits"
                f" ({BUCKETS} buckets) and KS of y/2^B against U(0,1); Pearson r between the"
                " signed masked vector and the signed true input, bound 4/sqrt(d). Inputs are"
                " rounded N(0, 2^10) values clipped to 16 bits (far from uniform on the ring)."
                f" A p-value below ALPHA/m = {ALPHA:g}/{m} = {p_limit:.2g} (Bonferroni) fails."
                " The output is compared with the plaintext sum of the survivors.",
                "",
                "`--weaken no-masks` zeroes every PRG keystream (parties and server), i.e. a"
                " deployment whose masking is broken but whose sums are still right.",
                "",
                "## Results",
                "",
                *rows,
                "",
                "![masked values](server_view.png)",
            ]
        )
        title = f"{runs[0]['name']}: n={runs[0]['n']}, d={runs[0]['dim']}" + (
            " (WEAKENED: no masks)" if weaken else ""
        )
        from audits.report import write_report

        write_report(out, summary, body, {"server_view.png": _figure(example, title)})
    return summary

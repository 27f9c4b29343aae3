"""Benchmarks of the secure aggregation engine, measured in one run on one machine.

    python -m bench.run --out docs/benchmarks.md          # full run (Flower included if installed)
    python -m bench.run --quick                           # smaller sizes, no Flower

Every figure in the table is measured here, in this run; ratios compare numbers of the same run:
- **keystream+add limit**: the mask bytes the protocol must expand with AES-128-CTR (through the
  ``cryptography`` package, straight into a reused buffer) and add in place with numpy, with no
  protocol logic at all. It is the floor for mask work on one core.
- **plaintext**: summing the same integer vectors in the clear.
- **Flower**: Flower 1.42's own SecAgg+ (``bench/flower_secaggplus.py``) at the same n, d,
  neighbours, threshold and dropout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secagg import encoding, graph, sim
from secagg.config import RoundConfig
from secagg.crypto import keys
from secagg.engine.advertise import KeyAgreement, PartySecrets
from secagg.engine.masked_input import check_input, client_masked_input
from secagg.engine.masking import DroppedPartyMasks, MaskContext, total_mask
from secagg.engine.share_keys import HeldShares
from secagg.messages import KeyEntry


def keystream_add_seconds(dim: int, dtype: type = np.uint32, reps: int = 200) -> float:
    """Seconds to expand one mask of ``dim`` words with raw AES-128-CTR and add it in place."""
    width = np.dtype(dtype).itemsize
    zeros = bytes(dim * width)
    out = bytearray(dim * width + 16)
    view = np.frombuffer(out, dtype=dtype, count=dim)
    acc = np.zeros(dim, dtype=dtype)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(reps):
            enc = Cipher(algorithms.AES(os.urandom(16)), modes.CTR(bytes(16))).encryptor()
            enc.update_into(zeros, out)
            np.add(acc, view, out=acc)
        best = min(best, (time.perf_counter() - start) / reps)
    return best


def server_mask_work(dim: int, survivors: int, pairs: int, bits: int) -> float:
    """Seconds for the engine's own mask regeneration (``masking.total_mask``: X25519 + HKDF +
    AES-CTR + in-place add) for ``survivors`` self masks and ``pairs`` dropped-party pairs, on
    one core, with fresh random keys."""
    ctx = MaskContext(os.urandom(16), 0, dim, encoding.word_dtype(bits))
    self_seeds = [(u, os.urandom(16)) for u in range(survivors)]
    per_party = 20
    dropped = []
    for v in range(-(-pairs // per_party)):
        sk, _ = keys.generate_x25519()
        count = min(per_party, pairs - v * per_party)
        peers = tuple((1000 + w, keys.generate_x25519()[1]) for w in range(count))
        dropped.append(DroppedPartyMasks(v, sk, peers))
    start = time.perf_counter()
    total_mask(ctx, self_seeds, dropped)
    return time.perf_counter() - start


def client_mask_work(dim: int, k: int, bits: int, reps: int = 5) -> float:
    """Seconds for the engine's masking function (``client_masked_input``: validation copy,
    k X25519 + HKDF, k+1 expansions and adds, reduction and B-bit packing) for one party."""
    config = RoundConfig(
        session_id=os.urandom(16),
        round_index=0,
        graph=graph.complete_graph(k + 1),
        threshold=2,
        dim=dim,
        modulus_bits=bits,
    )
    mask_private, mask_public = keys.generate_x25519()
    enc_private, enc_public = keys.generate_x25519()
    own = KeyEntry(0, mask_public, enc_public)
    neighbors = {
        v: KeyEntry(v, keys.generate_x25519()[1], keys.generate_x25519()[1])
        for v in range(1, k + 1)
    }
    agreement = KeyAgreement(own, neighbors)
    held = HeldShares(os.urandom(16), dict.fromkeys(neighbors, b""), dict.fromkeys(neighbors, b""))
    x = np.zeros(dim, dtype=np.uint64)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        words = check_input(config, x, 0)
        client_masked_input(
            config, 0, PartySecrets(mask_private, enc_private), agreement, held, words
        )
        best = min(best, time.perf_counter() - start)
    return best


def simulate(
    clients: int,
    dim: int,
    *,
    dropout: float,
    late: float = 0.0,
    graph: str = "harary",
    neighbors: int | None = None,
    threshold: int | None = None,
    workers: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    setup = sim.resolve_parameters(
        clients,
        dim,
        graph_kind=graph,
        neighbors=neighbors,
        threshold=threshold,
        dropout_rate=max(0.05, dropout + late),
    )
    script = sim.scripted_dropouts(clients, dropout, late, seed)
    start = time.perf_counter()
    report = sim.run_round(setup, script, seed=seed, workers=workers or sim.default_workers())
    report["wall_seconds"] = time.perf_counter() - start
    return report


def mask_ratios(report: dict[str, Any], limit: float) -> dict[str, float]:
    """Server and client mask work, each against the limit for its own number of expansions.

    ``*_mask_seconds`` time the engine's mask functions alone on one core with the round's
    counts; ``*_step_seconds`` are the whole protocol steps from the simulation (server: the
    unmasking transition with share reconstruction and its process pool; client: the masking
    step with share opening and message decoding)."""
    expansions = report["mask_expansions"]
    survivors = report["survivors"]
    pairs = expansions["server"] - survivors
    k = round(expansions["client_mean"]) - 1
    bits, dim = report["modulus_bits"], report["dim"]
    return {
        "server_mask_seconds": server_mask_work(dim, survivors, pairs, bits),
        "server_step_seconds": report["server_phase_seconds"].get("collect_unmask", 0.0),
        "server_limit_seconds": expansions["server"] * limit,
        "client_mask_seconds": client_mask_work(dim, k, bits),
        "client_step_seconds": report["client_phase_seconds"].get("masked_input", 0.0),
        "client_limit_seconds": expansions["client_mean"] * limit,
    }


def run(quick: bool, with_flower: bool) -> dict[str, Any]:
    results: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "workers": sim.default_workers(),
        }
    }
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    limit_100k = keystream_add_seconds(100_000)
    limit_1m = keystream_add_seconds(1_000_000, reps=40)
    results["limit"] = {"per_mask_100k": limit_100k, "per_mask_1m": limit_1m}
    log(f"keystream+add: {limit_100k * 1e6:.0f} us per 100k-word mask")

    n = 100 if quick else 500
    log(f"secagg at the Flower configuration (n={n}, d=100000, k=20, t=11, 10% dropped)")
    ours = simulate(n, 100_000, dropout=0.1, neighbors=20, threshold=11)
    results["flower_config"] = {"secagg": ours, "ratios": mask_ratios(ours, limit_100k)}
    if with_flower:
        from bench.flower_secaggplus import run_flower_secaggplus

        log("Flower SecAgg+ at the same configuration (takes minutes)")
        flower = run_flower_secaggplus(n, 100_000, 21, 11, 0.1, seed=0, progress=False)
        results["flower_config"]["flower"] = flower

    log("complete graph (SecAgg), d=100000, 10% dropped")
    complete = simulate(n, 100_000, dropout=0.1, graph="complete")
    results["complete"] = {"secagg": complete, "ratios": mask_ratios(complete, limit_100k)}

    big_n, big_d = (200, 200_000) if quick else (1000, 1_000_000)
    log(f"harary (SecAgg+) n={big_n}, d={big_d}, 10% dropped")
    big = simulate(big_n, big_d, dropout=0.1)
    results["harary_large"] = {
        "secagg": big,
        "ratios": mask_ratios(big, limit_1m if big_d == 1_000_000 else limit_100k * 2),
    }

    log("n=100, d=100000 harary, 10% + 5% late dropout (expansion)")
    results["expansion"] = simulate(100, 100_000, dropout=0.1, late=0.05)
    try:
        from bench.dp_sampler import table

        log("DP noise samplers")
        results["dp_samplers"] = table(200_000 if quick else 1_000_000, 1 if quick else 3)
    except ImportError as exc:  # the samplers' Skellam needs the train extra (randomgen)
        results["dp_samplers"] = f"not measured: {exc}"
    return results


def _fmt(x: float) -> str:
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def markdown(results: dict[str, Any], command: str) -> str:
    m = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Made by `{command}` on one machine, in one run: Python {m['python']},"
        f" {m['cores']} cores ({m['processor']}), {m['workers']} worker processes.",
        "Every ratio compares numbers measured in this same run. Timings are wall-clock seconds;",
        "in the simulation clients and server take turns (a chunk of clients computes on the",
        "worker processes, then the server handles their replies), so server time is not slowed",
        "by simulated clients (see `secagg.sim.run_round`). Re-run the command to refresh this.",
        "",
        "## Keystream+add limit",
        "",
        "| mask | seconds per mask | GB/s of keystream |",
        "| --- | --- | --- |",
    ]
    for key, dim in (("per_mask_100k", 100_000), ("per_mask_1m", 1_000_000)):
        secs = results["limit"][key]
        lines.append(f"| {dim:,} x uint32 | {secs * 1e6:.0f} us | {4 * dim / secs / 1e9:.2f} |")
    fc = results["flower_config"]
    ours = fc["secagg"]
    lines += [
        "",
        f"## Against Flower's SecAgg+ (n={ours['clients']}, d={ours['dim']:,},"
        f" k={ours['neighbors']}, t={ours['threshold']}, {ours['dropped']} dropped before"
        " masking)",
        "",
        "| | server s | client s (mean) | client s (max) | correct |",
        "| --- | --- | --- | --- | --- |",
        f"| secagg | {_fmt(ours['server_seconds'])} | {ours['client_seconds']['mean']:.4f}"
        f" | {ours['client_seconds']['max']:.4f} | {ours['correct']} |",
    ]
    if "flower" in fc:
        fl = fc["flower"]
        lines.append(
            f"| Flower {fl.get('flwr_version', '')} | {_fmt(fl['server_seconds'])}"
            f" | {fl['client_seconds']['mean']:.4f} | {fl['client_seconds']['max']:.4f}"
            f" | {fl['correct']} |"
        )
        lines.append(
            f"| **speed-up** | **{fl['server_seconds'] / ours['server_seconds']:.0f}x**"
            f" | **{fl['client_seconds']['mean'] / ours['client_seconds']['mean']:.1f}x** | | |"
        )
    else:
        lines.append("| Flower | not measured in this run (install the `bench` extra) | | | |")
    lines += [
        f"| plaintext sum of the same vectors | {ours['plaintext_seconds']:.4f} | | | |",
        "",
        "## Mask work against the keystream+add limit",
        "",
        "*Mask work* times the engine's own mask functions on one core with the round's counts",
        "(server: `masking.total_mask`, i.e. X25519 and HKDF for every pair of a dropped party",
        "and a survivor, then AES-CTR expansion and in-place add of every self mask and pairwise",
        "mask; client: `client_masked_input`, i.e. k X25519 + HKDF, k+1 expansions and adds,",
        "reduction and B-bit packing). *Whole step* is the full protocol step in the simulation",
        "(server: the unmasking transition incl. share reconstruction, with the mask work split",
        "over the worker processes; client: the masking step incl. opening shares and decoding).",
        "*Limit* is the keystream+add limit for the same number of expansions on one core.",
        "",
        "| configuration | server mask work s | whole step s | limit s | mask/limit |"
        " step/limit | client mask work ms | whole step ms | limit ms | mask/limit |"
        " step/limit |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, key in (
        ("Flower configuration", "flower_config"),
        ("complete graph", "complete"),
        ("harary, large", "harary_large"),
    ):
        r = results[key]["ratios"]
        rep = results[key]["secagg"]
        sl, cl = r["server_limit_seconds"], r["client_limit_seconds"]
        lines.append(
            f"| {name} (n={rep['clients']}, d={rep['dim']:,}) | {_fmt(r['server_mask_seconds'])}"
            f" | {_fmt(r['server_step_seconds'])} | {_fmt(sl)}"
            f" | **{r['server_mask_seconds'] / sl:.2f}** | {r['server_step_seconds'] / sl:.2f}"
            f" | {r['client_mask_seconds'] * 1e3:.2f} | {r['client_step_seconds'] * 1e3:.2f}"
            f" | {cl * 1e3:.2f} | **{r['client_mask_seconds'] / cl:.2f}**"
            f" | {r['client_step_seconds'] / cl:.2f} |"
        )
    lines += [
        "",
        "## Scale",
        "",
        "| configuration | survivors | k | t | B | server s | client s (mean) | plaintext s |"
        " command wall s | peak MB | correct |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, rep in (
        ("complete, 10% dropped", results["complete"]["secagg"]),
        ("harary, 10% dropped", results["harary_large"]["secagg"]),
        ("harary, Flower configuration", ours),
    ):
        lines.append(
            f"| {name} (n={rep['clients']}, d={rep['dim']:,}) | {rep['survivors']}"
            f" | {rep['neighbors']} | {rep['threshold']} | {rep['modulus_bits']}"
            f" | {_fmt(rep['server_seconds'])} | {rep['client_seconds']['mean']:.4f}"
            f" | {rep['plaintext_seconds']:.3f} | {_fmt(rep['wall_seconds'])}"
            f" | {rep['peak_memory_mb']:.0f} | {rep['correct']} |"
        )
    e = results["expansion"]
    lines += [
        "",
        "## Upload expansion",
        "",
        f"n={e['clients']}, d={e['dim']:,}, harary k={e['neighbors']}, B={e['modulus_bits']}:"
        f" a party that stays for the whole round uploads"
        f" {e['bytes']['client_upload_full_round_mean']:,.0f} bytes, **{e['expansion']:.3f}** x"
        f" its vector as float32 (bound B/32 + 0.1 = {e['modulus_bits'] / 32 + 0.1:.3f}).",
        "",
        "## DP noise samplers",
        "",
        "Exact discrete Gaussian (Canonne, Kamath, Steinke 2020) and Skellam, all randomness from",
        "the CSPRNG (`python -m bench.dp_sampler` prints this table alone):",
        "",
        results.get("dp_samplers", "not measured"),
        "",
        "Reference points from the literature (other machines, not comparable to the ratios"
        " above): Bonawitz et al. 2017, Java, d=100K, n=500: server 2 s at 0% dropout, 62 s at"
        " 10%, 143 s at 30%; client about 0.85 s.",
        "",
    ]
    return "\n".join(lines)


def _kept_sections(previous: str) -> str:
    """Sections other benchmarks write between ``<!-- name:begin -->`` / ``<!-- name:end -->``
    markers (Flower adapter, scaling, active mode): regenerating this table keeps them."""
    kept = re.findall(r"<!-- ([\w-]+):begin -->.*?<!-- \1:end -->", previous, flags=re.S)
    blocks = re.finditer(r"(<!-- ([\w-]+):begin -->.*?<!-- \2:end -->)", previous, flags=re.S)
    return "".join("\n" + m.group(1) + "\n" for m in blocks) if kept else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--no-flower", action="store_true", help="skip Flower's SecAgg+")
    parser.add_argument("--out", default=None, help="write the markdown table here")
    parser.add_argument("--json", default=None, help="write the raw results here")
    args = parser.parse_args()
    args.out_previous = ""
    if args.out and os.path.exists(args.out):
        with open(args.out) as fh:
            args.out_previous = fh.read()
    with_flower = not args.no_flower and not args.quick
    if with_flower:
        try:
            import flwr  # noqa: F401
        except ImportError:
            print("flwr is not installed: Flower is left out", file=sys.stderr)
            with_flower = False
    results = run(args.quick, with_flower)
    command = "python -m bench.run" + (" --quick" if args.quick else "")
    text = markdown(results, command)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + _kept_sections(args.out_previous))
    else:
        print(text)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())

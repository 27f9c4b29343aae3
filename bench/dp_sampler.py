"""Speed of the DP noise samplers (secagg.dp.samplers), all randomness from the CSPRNG.

    python -m bench.dp_sampler                     # 1,000,000 samples, best of 3
    python -m bench.dp_sampler --samples 200000 --reps 1

Prints a markdown table: sampler, sigma2 (Skellam: its variance 2 mu), sigma, samples, seconds
(best of ``--reps``), samples per second.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from fractions import Fraction
from functools import partial

import numpy as np
import numpy.typing as npt

from secagg.dp.samplers import discrete_gaussian, skellam

GAUSSIAN_SIGMA2: list[Fraction | int] = [Fraction(1, 2), 10, 10**2, 10**4, 10**6, 10**8, 10**12]
SKELLAM_VARIANCE = [10**2, 10**4, 10**6, 10**8]


def best_seconds(draw: Callable[[], npt.NDArray[np.int64]], reps: int) -> float:
    best = math.inf
    for _ in range(reps):
        start = time.perf_counter()
        draw()
        best = min(best, time.perf_counter() - start)
    return best


def table(n: int = 1_000_000, reps: int = 3) -> str:
    """The markdown table of sampler speeds (``n`` samples each, best of ``reps``)."""
    rows: list[tuple[str, str, float, float]] = []
    for sigma2 in GAUSSIAN_SIGMA2:
        secs = best_seconds(partial(discrete_gaussian, sigma2, n), reps)
        rows.append(("discrete Gaussian (exact)", str(sigma2), float(sigma2), secs))
    for var in SKELLAM_VARIANCE:
        secs = best_seconds(partial(skellam, var / 2, n), reps)
        rows.append(("Skellam (AES-CTR + PTRS)", str(var), float(var), secs))
    lines = [
        "| sampler | sigma2 | sigma | samples | seconds | samples/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, label, variance, secs in rows:
        sigma = math.sqrt(variance)
        lines.append(f"| {name} | {label} | {sigma:.4g} | {n:,} | {secs:.3f} | {n / secs:,.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Speed of the DP noise samplers.")
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    print(table(args.samples, args.reps))


if __name__ == "__main__":
    main()

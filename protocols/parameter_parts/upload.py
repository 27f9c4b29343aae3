"""Step 3 of a round: which coordinates of its change a party uploads, and how they are clipped.

Policies (Shokri & Shmatikov's DSSGD "selective" upload and simple variants):

* ``all``: every coordinate of the part;
* ``topk``: the ``ceil(upload_fraction * n)`` coordinates of largest magnitude;
* ``threshold``: coordinates with ``|change| > tau``;
* ``random``: ``ceil(upload_fraction * n)`` coordinates uniformly at random, drawn from
  :mod:`secagg.crypto.rng` (a predictable choice would let an observer know which coordinates
  carry information).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from secagg.crypto import rng

POLICIES = ("all", "topk", "threshold", "random")
BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.floating]


def upload_count(n: int, upload_fraction: float) -> int:
    """``ceil(upload_fraction * n)``, robust to float noise (0.7 * 10 is 7, not 8)."""
    if not 0.0 <= upload_fraction <= 1.0:
        raise ValueError(f"upload_fraction must be in [0, 1], got {upload_fraction}")
    return min(n, math.ceil(round(upload_fraction * n, 9)))


def upload_mask(
    delta: npt.ArrayLike, policy: str, upload_fraction: float = 0.1, tau: float = 0.0
) -> BoolArray:
    """Boolean mask (same shape as ``delta``) of the coordinates to upload."""
    values = np.asarray(delta, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError("delta contains NaN or infinity")
    flat = values.reshape(-1)
    mask = np.zeros(flat.size, dtype=bool)
    if policy == "all":
        mask[:] = True
    elif policy == "topk":
        k = upload_count(flat.size, upload_fraction)
        if k == flat.size:
            mask[:] = True
        elif k > 0:
            # argpartition picks exactly k even when magnitudes tie at the cut.
            mask[np.argpartition(-np.abs(flat), k - 1)[:k]] = True
    elif policy == "threshold":
        if not (tau >= 0 and math.isfinite(tau)):
            raise ValueError(f"tau must be finite and non-negative, got {tau}")
        mask = np.abs(flat) > tau
    elif policy == "random":
        k = upload_count(flat.size, upload_fraction)
        if k == flat.size:
            mask[:] = True
        elif k > 0:
            keys = rng.random_words(flat.size, np.uint64)
            mask[np.argpartition(keys, k - 1)[:k]] = True
    else:
        raise ValueError(f"unknown upload policy {policy!r}; use one of {POLICIES}")
    return mask.reshape(values.shape)


def _as_float(delta: npt.ArrayLike) -> FloatArray:
    """A float copy of ``delta`` (float inputs keep their dtype, others become float64)."""
    arr = np.asarray(delta)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError("delta contains NaN or infinity")
    return arr.copy()


def clip_values(delta: npt.ArrayLike, gamma: float) -> FloatArray:
    """DSSGD's per-value clip of every coordinate to ``[-gamma, gamma]`` (a copy)."""
    if not gamma > 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    out = _as_float(delta)
    np.clip(out, -gamma, gamma, out=out)
    return out


def clip_l2(delta: npt.ArrayLike, bound: float) -> FloatArray:
    """Scale ``delta`` down (never up) so its L2 norm is at most ``bound`` (a copy).

    The DP sensitivity argument needs the norm bound to hold exactly, so after scaling the norm
    is re-measured in float64 and the result nudged down if float rounding overshot.
    """
    if not (bound > 0 and math.isfinite(bound)):
        raise ValueError(f"bound must be positive and finite, got {bound}")
    out = _as_float(delta)
    norm = float(np.linalg.norm(out.astype(np.float64)))
    if norm <= bound:
        return out
    out *= out.dtype.type(bound / norm)
    shrink = out.dtype.type(1.0 - 4 * np.finfo(out.dtype).eps)
    while float(np.linalg.norm(out.astype(np.float64))) > bound:
        out *= shrink
    return out

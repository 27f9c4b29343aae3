"""The one source of randomness in secagg: the operating system's CSPRNG.

Every seed, key, Shamir coefficient, rounding decision and noise sample comes from here. Bulk
randomness (millions of words) is an AES-128-CTR keystream under a fresh 128-bit key from
``os.urandom``, a standard CSPRNG construction (NIST SP 800-90A CTR_DRBG without reseeding within
one call).

Tests may need reproducible runs: :func:`deterministic_for_testing` is the one explicit hook. It
swaps the source for a seeded keystream and warns loudly, like Opacus' non-secure mode.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import numpy.typing as npt

from secagg.crypto import prg

_lock = threading.Lock()
_source: Callable[[int], bytes] = os.urandom


def token_bytes(n: int) -> bytes:
    """``n`` bytes from the CSPRNG (or the testing hook's stream, when active)."""
    return _source(n)


def random_words(count: int, dtype: npt.DTypeLike) -> npt.NDArray[np.unsignedinteger]:
    """``count`` uniformly random unsigned words of ``dtype`` (a fresh array)."""
    return prg.expand(token_bytes(prg.SEED_BYTES), count, dtype)


def random_below(bound: int) -> int:
    """A uniform integer in ``[0, bound)`` by rejection sampling (no modulo bias)."""
    if bound <= 0:
        raise ValueError("bound must be positive")
    nbytes = (bound.bit_length() + 7) // 8 + 8
    limit = (256**nbytes // bound) * bound
    while True:
        value = int.from_bytes(token_bytes(nbytes), "big")
        if value < limit:
            return value % bound


@contextlib.contextmanager
def deterministic_for_testing(seed: bytes | str | int) -> Iterator[None]:
    """TESTING ONLY: make every draw from this module reproducible from ``seed``.

    Never use in production: anyone who knows the seed knows every key and mask.
    """
    warnings.warn(
        "secagg randomness is deterministic (testing hook active): not secure",
        RuntimeWarning,
        stacklevel=3,
    )
    key = hashlib.sha256(repr(seed).encode()).digest()[: prg.SEED_BYTES]
    state = {"counter": 0}

    def seeded(n: int) -> bytes:
        with _lock:
            stream = state["counter"]
            state["counter"] += 1
        return prg.expand(key, (n + 7) // 8, np.uint64, stream=stream).tobytes()[:n]

    global _source
    previous = _source
    _source = seeded
    try:
        yield
    finally:
        _source = previous

"""Neighbour graphs for SecAgg (complete graph) and SecAgg+ (random Harary graph).

In SecAgg (Bonawitz et al. 2017) every party masks with, and Shamir-shares its secrets to, all
n-1 other parties. SecAgg+ (Bell et al. CCS 2020) replaces the complete graph by a sparse random
graph with k = O(log n) neighbours: a Harary graph H_{k,n} whose vertices are placed on a ring in
a uniformly random order. Security then holds only with high probability, so ``k`` and the Shamir
threshold ``t`` are chosen from tail bounds (``find_harary_parameters``).

Conventions used everywhere in this module (and by the engine):

* parties are ``0..n-1``; ``neighbors[u]`` never contains ``u``;
* ``k`` counts neighbours, NOT the party itself;
* ``t`` is the number of neighbour shares needed to reconstruct a secret (a party never holds a
  share of its own secrets).
"""

from __future__ import annotations

import bisect
import itertools
import math
import numbers
import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secagg.errors import ConfigError

PartyId = int  # parties are 0..n-1

SEED_BYTES = 32
PERMUTATION_INFO = b"secagg/v1/graph-permutation"
KIND_COMPLETE = "complete"
KIND_HARARY = "harary"
_KINDS = (KIND_COMPLETE, KIND_HARARY)
_MAGIC = b"secagg/v1/graph\x00"
_RING_KIND = 2  # wire kind of a Harary graph sent as its ring order

# Upper bounds on the statistical parameters: keeps every tail probability representable in a
# float64 (2^-257 / 10^9 is far above the smallest normal double).
_MAX_BITS = 256.0
_LN2 = math.log(2.0)


# ---------------------------------------------------------------------------------------------
# Cryptographic permutation
# ---------------------------------------------------------------------------------------------


class _WordStream:
    """Stream of uniform 64-bit words from AES-256-CTR (zero IV, single-use key)."""

    _CHUNK_WORDS = 1 << 14

    def __init__(self, key: bytes) -> None:
        # A zero initial counter is safe: the key is derived from the seed for this one purpose
        # and encrypts nothing but this keystream.
        self._enc = Cipher(algorithms.AES256(key), modes.CTR(bytes(16))).encryptor()
        self._buf: npt.NDArray[np.uint64] = np.empty(0, dtype=np.uint64)
        self._pos = 0

    def peek(self, count: int) -> npt.NDArray[np.uint64]:
        """The next ``count`` words, without consuming them."""
        missing = self._pos + count - self._buf.size
        if missing > 0:
            words = max(missing, self._CHUNK_WORDS)
            raw = self._enc.update(bytes(8 * words))
            fresh = np.frombuffer(raw, dtype="<u8").astype(np.uint64)
            self._buf = np.concatenate((self._buf[self._pos :], fresh))
            self._pos = 0
        return self._buf[self._pos : self._pos + count]

    def advance(self, count: int) -> None:
        self._pos += count


def _check_seed(seed: bytes) -> None:
    if not isinstance(seed, bytes | bytearray) or len(seed) != SEED_BYTES:
        got = f"{len(seed)} bytes" if isinstance(seed, bytes | bytearray) else type(seed).__name__
        raise ConfigError(f"graph seed must be {SEED_BYTES} bytes, got {got}")


def secure_permutation(n: int, seed: bytes) -> npt.NDArray[np.int64]:
    """A uniformly random permutation of ``0..n-1``, deterministic in ``seed``.

    Fisher-Yates (Knuth, TAOCP vol. 2, Algorithm 3.4.2P) driven by an AES-256-CTR keystream whose
    key is HKDF-SHA256(seed, info=``PERMUTATION_INFO``). Each index j in [0, i] is drawn from a
    64-bit word with rejection sampling, so there is no modulo bias: a word is accepted only
    below the largest multiple of i+1 that fits in 2^64.
    """
    if n < 0:
        raise ConfigError(f"n must be >= 0, got {n}")
    _check_seed(seed)
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=PERMUTATION_INFO).derive(
        bytes(seed)
    )
    stream = _WordStream(key)
    perm = list(range(n))
    all_ones = np.uint64(0xFFFFFFFFFFFFFFFF)
    i = n - 1  # next Fisher-Yates step draws j uniform in [0, i]
    while i > 0:
        # Draw the indices of many steps at once; the stream is still consumed word by word in
        # order, a rejected word being skipped and the next one used for the same step.
        count = min(i, 4096)
        bounds = np.arange(i + 1, i + 1 - count, -1, dtype=np.uint64)
        words = stream.peek(count)
        # Accept a word iff it is below the largest multiple of the bound that fits in 2^64,
        # i.e. word <= 2^64 - 1 - (2^64 mod bound); (0 - bound) mod bound == 2^64 mod bound.
        excess = (np.uint64(0) - bounds) % bounds
        rejected = np.flatnonzero(words > all_ones - excess)  # probability < n / 2^64 per word
        accepted = int(rejected[0]) if rejected.size else count
        for j in (words[:accepted] % bounds[:accepted]).tolist():
            perm[i], perm[j] = perm[j], perm[i]
            i -= 1
        stream.advance(accepted + (1 if accepted < count else 0))
    return np.asarray(perm, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Graphs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NeighborGraph:
    """An undirected graph on parties 0..n-1, as sorted adjacency tuples (no self loops).

    ``ring`` (Harary graphs built by :func:`harary_graph`): ``ring[p]`` is the party at ring
    position p, and every party is joined to the ``degree // 2`` nearest positions on each side.
    The active mode's argument that at most one group of parties can ever be unmasked relies on
    this ring structure (docs/protocol.md, "Active security on sparse graphs"), so ``validate``
    checks that the adjacency really is that circulant graph.
    """

    n: int
    kind: str  # "complete" or "harary"
    neighbors: tuple[tuple[int, ...], ...]
    ring: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        # Cheap structural checks only; ``validate`` does the O(n k log k) ones.
        if self.kind not in _KINDS:
            raise ValueError(f"unknown graph kind {self.kind!r}, expected one of {_KINDS}")
        if self.n < 1 or len(self.neighbors) != self.n:
            raise ValueError("graph must have n >= 1 and one neighbour list per party")
        if self.ring is not None and (self.kind != KIND_HARARY or len(self.ring) != self.n):
            raise ValueError("a ring order belongs to a Harary graph and lists every party once")

    @property
    def ring_half_width(self) -> int | None:
        """h = k/2 for a Harary graph with a known ring order (neighbours are the h nearest ring
        positions on each side), else None."""
        return None if self.ring is None else self.degree // 2

    @property
    def degree(self) -> int:
        """Largest number of neighbours of any party (the party itself not counted)."""
        return max((len(row) for row in self.neighbors), default=0)

    def are_neighbors(self, u: PartyId, v: PartyId) -> bool:
        """True iff u and v are distinct parties joined by an edge."""
        if not (0 <= u < self.n and 0 <= v < self.n):
            raise ValueError(f"party ids must be in [0, {self.n}), got {u}, {v}")
        row = self.neighbors[u]
        i = bisect.bisect_left(row, v)
        return i < len(row) and row[i] == v

    def validate(self) -> None:
        """Raise ValueError unless rows are sorted, in range, loop-free and symmetric."""
        for u, row in enumerate(self.neighbors):
            if any(not 0 <= v < self.n for v in row):
                raise ValueError(f"party {u} has a neighbour out of range")
            if any(a >= b for a, b in itertools.pairwise(row)):
                raise ValueError(f"neighbours of party {u} are not strictly increasing")
            if u in row:
                raise ValueError(f"party {u} lists itself as a neighbour")
            for v in row:
                if not self.are_neighbors(v, u):
                    raise ValueError(f"edge {u}-{v} is not symmetric")
        if self.kind == KIND_COMPLETE and any(len(r) != self.n - 1 for r in self.neighbors):
            raise ValueError("a complete graph must connect every pair of parties")
        if self.ring is not None:
            ring = np.asarray(self.ring, dtype=np.int64)
            if not np.array_equal(np.sort(ring), np.arange(self.n)):
                raise ValueError("the ring order is not a permutation of the parties")
            expected = _circulant_rows(ring, self.degree)
            if expected != self.neighbors:
                raise ValueError("the neighbours are not the Harary graph of the ring order")

    def to_bytes(self) -> bytes:
        """Canonical encoding (for binding the graph into transcripts / signatures).

        ``magic | kind (u8) | n (u32)``, then for a Harary graph, per party: ``count (u32)`` and
        the sorted neighbour ids (u32 each), all big-endian. A complete graph is the header only.
        A Harary graph with a ring order is kind 2: ``k (u32)`` and the ring (n u32).
        """
        if self.ring is not None:
            head = struct.pack(">BII", _RING_KIND, self.n, self.degree)
            return _MAGIC + head + np.asarray(self.ring, dtype=">u4").tobytes()
        out = [_MAGIC, struct.pack(">BI", _KINDS.index(self.kind), self.n)]
        if self.kind == KIND_HARARY:
            for row in self.neighbors:
                out.append(np.asarray((len(row), *row), dtype=">u4").tobytes())
        return b"".join(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> NeighborGraph:
        """Inverse of ``to_bytes``; validates the decoded graph."""
        head = len(_MAGIC) + 5
        if len(data) < head or not data.startswith(_MAGIC):
            raise ValueError("not an encoded neighbour graph")
        kind_index, n = struct.unpack_from(">BI", data, len(_MAGIC))
        if kind_index == _RING_KIND:
            if len(data) != head + 4 + 4 * n:
                raise ValueError("truncated or oversized ring-ordered Harary graph")
            (k,) = struct.unpack_from(">I", data, head)
            ring = np.frombuffer(data, dtype=">u4", offset=head + 4).astype(np.int64)
            if n < 2 or k < 2 or k % 2 or k >= n - 1:
                raise ValueError("invalid degree in ring-ordered Harary graph")
            if not np.array_equal(np.sort(ring), np.arange(n)):
                raise ValueError("the ring order is not a permutation of the parties")
            return _ring_graph(ring, k)
        if kind_index >= len(_KINDS):
            raise ValueError("unknown graph kind in encoding")
        if _KINDS[kind_index] == KIND_COMPLETE:
            if len(data) != head:
                raise ValueError("trailing bytes after complete-graph header")
            return complete_graph(n)
        if (len(data) - head) % 4:
            raise ValueError("truncated neighbour graph encoding")
        words = np.frombuffer(data, dtype=">u4", offset=head).tolist()
        rows: list[tuple[int, ...]] = []
        pos = 0
        for _ in range(n):
            if pos >= len(words) or pos + 1 + words[pos] > len(words):
                raise ValueError("truncated neighbour graph encoding")
            count = words[pos]
            rows.append(tuple(words[pos + 1 : pos + 1 + count]))
            pos += 1 + count
        if pos != len(words):
            raise ValueError("trailing bytes after neighbour graph")
        graph = cls(n=n, kind=KIND_HARARY, neighbors=tuple(rows))
        graph.validate()
        return graph


def complete_graph(n: int) -> NeighborGraph:
    """The complete graph K_n of SecAgg (Bonawitz et al. 2017): everyone neighbours everyone."""
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    everyone = tuple(range(n))
    rows = tuple(everyone[:u] + everyone[u + 1 :] for u in range(n))
    return NeighborGraph(n=n, kind=KIND_COMPLETE, neighbors=rows)


def harary_graph(n: int, k: int, seed: bytes) -> NeighborGraph:
    """Random Harary graph H_{k,n} of SecAgg+ (Bell et al. 2020).

    Parties are placed on a ring in the order given by ``secure_permutation(n, seed)``; each is
    joined to the k/2 nearest ring positions on either side, so the graph is k-regular. The random
    placement is what makes a party's neighbours a uniform k-subset of the other parties, which
    the tail bounds of ``find_harary_parameters`` assume; so the seed must not be chosen by, or
    known in advance to, an adversary choosing which parties to corrupt.

    ``k`` must be even and >= 2. If k >= n-1 every party would be adjacent to all others, so the
    complete graph is returned (``kind == "complete"``, degree n-1, no seed used); then k may be
    odd, as the finders' complete-graph fallback k = n-1 is.

    Raises:
        ConfigError: n < 2, k < 2, an odd k < n-1, or a seed that is not 32 bytes.
    """
    if n < 2:
        raise ConfigError(f"a Harary graph needs n >= 2 parties, got n={n}")
    if k < 2:
        raise ConfigError(f"Harary degree k must be even and >= 2, got k={k}")
    _check_seed(seed)
    if k >= n - 1:
        return complete_graph(n)
    if k % 2:
        raise ConfigError(f"Harary degree k must be even (or n-1 = {n - 1}), got k={k}")
    ring = secure_permutation(n, seed)  # ring[p] = party at ring position p
    return _ring_graph(ring, k)


def _circulant_rows(ring: npt.NDArray[np.int64], k: int) -> tuple[tuple[int, ...], ...]:
    """Sorted neighbour rows of the circulant graph: each party joined to the k/2 nearest ring
    positions on either side."""
    n = len(ring)
    position = np.empty(n, dtype=np.int64)
    position[ring] = np.arange(n, dtype=np.int64)
    half = k // 2
    # k < n-1 and k even give half < n/2, so the 2*half offsets reach 2*half distinct parties.
    offsets = np.concatenate((np.arange(-half, 0), np.arange(1, half + 1)))
    adjacency = ring[(position[:, None] + offsets[None, :]) % n]
    adjacency.sort(axis=1)
    return tuple(tuple(row) for row in adjacency.tolist())


def _ring_graph(ring: npt.NDArray[np.int64], k: int) -> NeighborGraph:
    rows = _circulant_rows(ring, k)
    return NeighborGraph(n=len(ring), kind=KIND_HARARY, neighbors=rows, ring=tuple(ring.tolist()))


# ---------------------------------------------------------------------------------------------
# Parameters (k, t)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GraphParameters:
    """Degree, Shamir threshold and the kind of graph they were chosen for.

    k: neighbours per party, not counting itself (k = n-1 means the complete graph).
    t: Shamir threshold; shares held by any t neighbours reconstruct a party's secret. At least
        2: with t = 1 every share is the secret itself, so one neighbour could unmask.
    kind: ``"harary"`` (k even, a random H_{k,n}) or ``"complete"`` (k = n-1, any parity: the
        finders fall back to it); build the graph with :meth:`graph`, which picks the right one.

    Raises:
        ConfigError: non-integer k or t, t outside [2, k], an unknown kind, or an odd Harary k.
    """

    k: int
    t: int
    kind: str = KIND_HARARY

    def __post_init__(self) -> None:
        for name, value in (("k", self.k), ("t", self.t)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
        if not 2 <= self.t <= self.k:
            raise ConfigError(f"need 2 <= t <= k, got k={self.k}, t={self.t}")
        if self.kind not in _KINDS:
            raise ConfigError(f"kind must be one of {_KINDS}, got {self.kind!r}")
        if self.kind == KIND_HARARY and self.k % 2:
            raise ConfigError(f"a Harary graph needs an even k, got k={self.k}")

    def graph(self, n: int, seed: bytes | None = None) -> NeighborGraph:
        """The neighbour graph these parameters describe, on ``n`` parties.

        Args:
            n: the number of parties (for ``kind == "complete"`` it must be k + 1).
            seed: 32 bytes placing the parties on the Harary ring; ``None`` draws it from the
                CSPRNG. It must not be known to whoever picks the corrupted parties before
                they are picked (see :func:`harary_graph`). Unused for the complete graph.
        """
        if self.kind == KIND_COMPLETE:
            if n != self.k + 1:
                raise ConfigError(
                    f"complete-graph parameters with k={self.k} need n={self.k + 1}, got n={n}"
                )
            return complete_graph(n)
        if seed is None:
            from secagg.crypto import rng

            seed = rng.token_bytes(SEED_BYTES)
        return harary_graph(n, self.k, seed)


def _check_inputs(n: int, dropout_rate: float, corruption_rate: float) -> None:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 3:
        # n = 2: a party's one neighbour learns its input from the sum, and no threshold t >= 2
        # fits in one neighbour; n < 2 is not an aggregation at all.
        raise ConfigError(
            f"secure aggregation needs an integer number of parties n >= 3, got n={n!r}"
        )
    for name, rate in (("dropout_rate", dropout_rate), ("corruption_rate", corruption_rate)):
        if not (isinstance(rate, numbers.Real) and 0.0 <= rate < 1.0):
            raise ConfigError(f"{name} must be in [0, 1), got {name}={rate!r}")


def count_at_rate(rate: float, n: int) -> int:
    """The number of parties a rate stands for: floor(rate * n).

    The one definition of "a dropout (or corruption) rate" in the library: the (k, t) finders
    plan for exactly this many dropouts and corruptions, and the simulator drops exactly this
    many parties, so what a user asks for is what the parameters tolerate. Floor, as Google's
    production finder does (its published (k, t) values depend on it). Robust to the float
    error of e.g. 0.29 * 100 = 28.999...96: the tiny relative nudge rounds in the conservative
    direction (more dropouts / corruptions).
    """
    return min(n, math.floor(rate * n * (1.0 + 1e-12)))


_count = count_at_rate


def _log_hypergeom_pmf(N: int, M: int, k: int) -> tuple[int, npt.NDArray[np.float64]]:
    """log P[X = x] for X ~ Hypergeometric(population N, M marked, k drawn), x over the support.

    Returns (lo, logpmf) where logpmf[i] = log P[X = lo + i]. One point from lgamma, the rest from
    the exact ratio P[x+1]/P[x] = (M-x)(k-x) / ((x+1)(N-M-k+x+1)), accumulated in log space.
    """
    lo, hi = max(0, k - (N - M)), min(k, M)

    def log_comb(a: int, b: int) -> float:
        return math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)

    first = log_comb(M, lo) + log_comb(N - M, k - lo) - log_comb(N, k)
    x = np.arange(lo, hi, dtype=np.float64)
    steps = np.log((M - x) * (k - x) / ((x + 1) * (N - M - k + x + 1)))
    out = np.empty(hi - lo + 1, dtype=np.float64)
    out[0] = first
    np.cumsum(steps, out=out[1:])
    out[1:] += first
    return lo, out


def _log_sum_exp(values: npt.NDArray[np.float64]) -> float:
    if values.size == 0:
        return -math.inf
    top = float(values.max())
    return top + math.log(float(np.exp(values - top).sum()))


def _min_secure_threshold(N: int, M: int, k: int, log_q: float) -> int:
    """Smallest t with P[X >= t] < q, X ~ Hypergeometric(N, M, k)."""
    lo, logpmf = _log_hypergeom_pmf(N, M, k)
    top = float(logpmf.max())
    # Upper tails summed from the far end (small terms first: no cancellation).
    tails = np.cumsum(np.exp(logpmf[::-1] - top))[::-1]
    with np.errstate(divide="ignore"):
        log_tails = np.log(tails) + top
    ok = np.flatnonzero(log_tails < log_q)
    return lo + int(ok[0]) if ok.size else lo + logpmf.size


def _log_prob_disconnected(n: int, k: int, bad: int) -> float:
    """Union bound on log P[removing `bad` random parties disconnects the ring graph H_{k,n}].

    Removing vertices disconnects H_{k,n} only if the removed set covers two runs of k/2
    consecutive ring positions with survivors between them on both sides (a single run leaves a
    path around the ring). There are n(n-k-1)/2 such pairs of runs, and a fixed set of k positions
    is all bad with probability C(n-k, bad-k) / C(n, bad) = bad!/(bad-k)! * (n-k)!/n!.
    """
    if k > bad:
        return -math.inf
    return (
        math.log(n)
        + math.log(n - k - 1)
        - _LN2
        + math.lgamma(bad + 1)
        - math.lgamma(bad - k + 1)
        + math.lgamma(n - k + 1)
        - math.lgamma(n + 1)
    )


def find_harary_parameters(
    n: int,
    dropout_rate: float,
    corruption_rate: float,
    *,
    security_bits: float = 40,
    correctness_bits: float = 20,
    semi_honest: bool = True,
) -> GraphParameters:
    """Smallest even k (and its t) making SecAgg+ on a random H_{k,n} secure and correct.

    Model (Bell et al. 2020; same bounds as Google's production finder
    ``fcp/secagg/server/graph_parameter_finder.cc`` in google-parfait/federated-compute): at most
    C = floor(corruption_rate*n) parties are corrupted and D = floor(dropout_rate*n) drop out,
    fixed before the ring order is drawn, so each party's neighbours are a uniform k-subset of the
    other n-1 parties. The search returns the first even k = 2, 4, ... < n-1 such that

    * security, split evenly (2^-(s+1) each, s = ``security_bits``):
      - the honest survivors stay connected: union bound of ``_log_prob_disconnected`` with
        C + D removed parties < 2^-(s+1) (else the server learns partial sums);
      - union over the n parties of P[A >= t] < 2^-(s+1)/n, A ~ Hyp(n-1, C, k) the corrupted
        neighbours of an honest party (t shares would reveal its secrets);
      - active server (``semi_honest=False``): it may tell different neighbours different dropout
        stories and collect t shares of each kind; two t-sets overlap in >= 2t-k neighbours, so we
        need 2t - k > A, i.e. t = floor((k + A_max)/2) + 1 with A_max the bound above minus one;
    * correctness: union over the n parties of P[S < t] < 2^-c/n (c = ``correctness_bits``),
      S ~ Hyp(n-1, n-1-D, k) the surviving neighbours (worst case: the party itself survives).

    The smallest secure t is returned (most robust to dropouts), but never below 2, so that no
    single neighbour can reconstruct.

    Mapping to the production code: its ``degree`` is the number of neighbours without the self
    edge (the server adds 1 for the self-edge in ``SecretSharingHararyGraph``) and its threshold
    is checked against neighbour shares only (the party's own share is never counted in the
    bounds), so its (degree, threshold) is our (k, t) unchanged. Differences, both conservative:
    we draw neighbours from n-1 parties where production uses n (identical results at 5%/5%,
    e.g. n=10^4 -> (34, 20), n=10^6 -> (38, 22); at 45%/45%, n=10^4 we get (3498, 1773) against
    (3494, 1771)), and we apply t >= 2 before the correctness check (production clamps after it,
    which for n=10, 33% dropout returns t=2 with t > its correctness bound).

    Fallback: if no k < n-1 works, or the rates make the sparse analysis hopeless (as production:
    corruption + dropout > 0.9 semi-honest, corruption + 2*dropout > 0.9 active), the complete
    graph's parameters are returned (k = n-1 of either parity, ``kind == "complete"``, see
    ``complete_parameters``): build the graph with ``GraphParameters.graph``, which picks the
    right one. ConfigError (a ValueError) for n < 3, rates outside [0, 1), or when even the
    complete graph has no secure and correct threshold.
    """
    _check_inputs(n, dropout_rate, corruption_rate)
    for name, bits in (("security_bits", security_bits), ("correctness_bits", correctness_bits)):
        if not 0 < bits <= _MAX_BITS:
            raise ConfigError(f"{name} must be in (0, {_MAX_BITS}], got {name}={bits!r}")

    def complete() -> GraphParameters:
        return complete_parameters(n, dropout_rate, corruption_rate, active=not semi_honest)

    spread = corruption_rate + (1 if semi_honest else 2) * dropout_rate
    if spread > 0.9:
        return complete()

    C, D = _count(corruption_rate, n), _count(dropout_rate, n)
    log_sec_event = -(security_bits + 1) * _LN2
    log_q_sec = log_sec_event - math.log(n)
    log_q_corr = -correctness_bits * _LN2 - math.log(n)
    others = n - 1
    survivors = max(others - D, 0)
    for k in range(2, n - 1, 2):
        if not semi_honest and n < 3 * (k // 2) + 1:
            # Active mode's argument on a ring needs n >= 3k/2 + 1 (docs/protocol.md, lemma 3):
            # larger k fall back to the complete graph.
            break
        if _log_prob_disconnected(n, k, C + D) >= log_sec_event:
            continue
        t = _min_secure_threshold(others, min(C, others), k, log_q_sec)
        if not semi_honest:
            t = (t - 1 + k) // 2 + 1
        t = max(t, 2)
        if t > k:
            continue
        lo, logpmf = _log_hypergeom_pmf(others, survivors, k)
        # log P[S <= t-1]
        if _log_sum_exp(logpmf[: max(t - lo, 0)]) < log_q_corr:
            return GraphParameters(k=k, t=t)
    return complete()


def complete_parameters(
    n: int, dropout_rate: float, corruption_rate: float, *, active: bool = False
) -> GraphParameters:
    """(k, t) for SecAgg on the complete graph: k = n-1 and the smallest threshold allowed.

    With C = floor(corruption_rate*n) and D = floor(dropout_rate*n), counts are deterministic:

    * semi-honest (Bonawitz et al. 2017, honest-but-curious analysis): t > C so the corrupted
      parties' shares never suffice, and t > k/2 (a majority of share holders) as a margin
      against a server that deviates once;
    * active (Bonawitz et al. 2017, active analysis with the consistency check, which asks for
      t > 2n/3): a lying server gathers both share kinds of an honest party only through corrupted
      parties in the overlap of two t-sets of holders, so t > (k + C)/2, and t > 2k/3;
    * correctness: every party keeps at least k - D surviving neighbours (worst case: it survives
      itself), so t <= k - D.

    The threshold is never below 2 (one neighbour alone must not reconstruct).

    Raises:
        ConfigError: n < 3, a rate outside [0, 1), or no threshold meets both the security and
            the correctness condition.
    """
    _check_inputs(n, dropout_rate, corruption_rate)
    k = n - 1
    C, D = min(_count(corruption_rate, n), k), _count(dropout_rate, n)
    t = max((k + C) // 2 + 1, (2 * k) // 3 + 1) if active else max(C + 1, k // 2 + 1)
    t = max(t, 2)
    if t > k - D:
        mode = "active" if active else "semi-honest"
        raise ConfigError(
            f"no secure and correct threshold for n={n}, dropout_rate={dropout_rate}, "
            f"corruption_rate={corruption_rate} ({mode}): security needs t >= {t} but only "
            f"{k - D} of the {k} neighbours are guaranteed to survive"
        )
    return GraphParameters(k=k, t=t, kind=KIND_COMPLETE)

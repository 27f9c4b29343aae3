"""Tests for secagg.graph: permutation, complete/Harary graphs and the (k, t) finder."""

from __future__ import annotations

import collections
import hashlib
import math
import time
from fractions import Fraction

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.graph import (
    GraphParameters,
    NeighborGraph,
    complete_graph,
    complete_parameters,
    find_harary_parameters,
    harary_graph,
    secure_permutation,
)

SEED = bytes(range(32))
seeds = st.binary(min_size=32, max_size=32)


def _seed(i: int) -> bytes:
    return hashlib.sha256(i.to_bytes(8, "big")).digest()


def _reference_permutation(n: int, seed: bytes) -> list[int]:
    """Word-at-a-time spec of secure_permutation (HKDF -> AES-256-CTR -> Fisher-Yates)."""
    key = HKDF(hashes.SHA256(), 32, None, b"secagg/v1/graph-permutation").derive(seed)
    enc = Cipher(algorithms.AES256(key), modes.CTR(bytes(16))).encryptor()

    def word() -> int:
        return int.from_bytes(enc.update(bytes(8)), "little")

    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        limit = 2**64 - 2**64 % (i + 1)
        w = word()
        while w >= limit:
            w = word()
        j = w % (i + 1)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def _is_connected(g: NeighborGraph) -> bool:
    seen = {0}
    todo = [0]
    while todo:
        for v in g.neighbors[todo.pop()]:
            if v not in seen:
                seen.add(v)
                todo.append(v)
    return len(seen) == g.n


# --- permutation ------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 300), seed=seeds)
def test_permutation_is_a_permutation_and_matches_reference(n: int, seed: bytes) -> None:
    perm = secure_permutation(n, seed)
    assert perm.dtype == np.int64
    assert sorted(perm.tolist()) == list(range(n))
    assert perm.tolist() == _reference_permutation(n, seed)


def test_permutation_large_n_matches_reference_across_chunks() -> None:
    n = 10_000  # several 4096-step batches
    assert secure_permutation(n, SEED).tolist() == _reference_permutation(n, SEED)


def test_permutation_deterministic_and_seed_dependent() -> None:
    a = secure_permutation(1000, SEED)
    assert np.array_equal(a, secure_permutation(1000, SEED))
    b = secure_permutation(1000, bytes(32))
    assert not np.array_equal(a, b)
    assert len({tuple(secure_permutation(50, _seed(i)).tolist()) for i in range(20)}) == 20


def test_permutation_is_close_to_uniform() -> None:
    # 3! = 6 outcomes over 3000 fixed seeds; chi-square with 5 d.o.f., 20.5 is the 0.1% point.
    counts = collections.Counter(
        tuple(secure_permutation(3, _seed(i)).tolist()) for i in range(3000)
    )
    assert len(counts) == 6
    chi2 = sum((c - 500) ** 2 / 500 for c in counts.values())
    assert chi2 < 20.5


@pytest.mark.parametrize("seed", [b"", bytes(31), bytes(33)])
def test_permutation_rejects_bad_seed(seed: bytes) -> None:
    with pytest.raises(ValueError):
        secure_permutation(10, seed)


# --- graphs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 10])
def test_complete_graph(n: int) -> None:
    g = complete_graph(n)
    g.validate()
    assert g.kind == "complete" and g.n == n and g.degree == n - 1
    for u in range(n):
        assert g.neighbors[u] == tuple(v for v in range(n) if v != u)
        assert not g.are_neighbors(u, u)
    if n > 1:
        assert g.are_neighbors(0, n - 1)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), seed=seeds)
def test_harary_graph_is_regular_symmetric_loop_free_connected(
    data: st.DataObject, seed: bytes
) -> None:
    n = data.draw(st.integers(4, 80), label="n")
    k = data.draw(st.integers(1, (n - 2) // 2), label="k/2") * 2
    g = harary_graph(n, k, seed)
    g.validate()  # sorted, in range, no self loops, symmetric
    assert g.kind == "harary" and g.n == n and g.degree == k
    assert all(len(row) == k and u not in row for u, row in enumerate(g.neighbors))
    assert all(g.are_neighbors(v, u) for u, row in enumerate(g.neighbors) for v in row)
    assert _is_connected(g)
    assert g == harary_graph(n, k, seed)  # deterministic in the seed


def test_harary_graph_follows_the_ring_order() -> None:
    n, k = 30, 6
    ring = secure_permutation(n, SEED).tolist()
    g = harary_graph(n, k, SEED)
    for p, u in enumerate(ring):
        expected = {ring[(p + d) % n] for d in (-3, -2, -1, 1, 2, 3)}
        assert set(g.neighbors[u]) == expected


def test_harary_graph_differs_across_seeds() -> None:
    assert harary_graph(200, 10, _seed(1)) != harary_graph(200, 10, _seed(2))


@pytest.mark.parametrize(("n", "k"), [(2, 2), (3, 2), (5, 4), (6, 6), (7, 10)])
def test_harary_graph_falls_back_to_complete(n: int, k: int) -> None:
    assert harary_graph(n, k, SEED) == complete_graph(n)


@pytest.mark.parametrize(
    ("n", "k", "seed"), [(10, 3, SEED), (10, 0, SEED), (1, 2, SEED), (10, 4, bytes(16))]
)
def test_harary_graph_rejects_bad_input(n: int, k: int, seed: bytes) -> None:
    with pytest.raises(ValueError):
        harary_graph(n, k, seed)


def test_graph_encoding_roundtrip_and_tamper_detection() -> None:
    for g in (harary_graph(50, 8, SEED), complete_graph(7)):
        assert NeighborGraph.from_bytes(g.to_bytes()) == g
    data = bytearray(harary_graph(20, 4, SEED).to_bytes())
    data[-1] ^= 1  # breaks sortedness or symmetry of the last row
    with pytest.raises(ValueError):
        NeighborGraph.from_bytes(bytes(data))
    with pytest.raises(ValueError):
        NeighborGraph.from_bytes(bytes(data[:-2]))


def test_are_neighbors_rejects_out_of_range() -> None:
    with pytest.raises(ValueError):
        complete_graph(3).are_neighbors(0, 3)


# --- parameters ---------------------------------------------------------------------------------

# Google's production finder, fcp/secagg/server/graph_parameter_finder_test.cc
# (google-parfait/federated-compute): (n, dropout, corruption, semi_honest) -> (degree, threshold).
# Their degree excludes the self edge and their threshold counts neighbour shares only, so it is
# our (k, t) as is.
PRODUCTION = [
    (10_000, 0.05, 0.05, True, 34, 20),
    (1_000_000, 0.05, 0.05, True, 38, 22),
    (100, 0.05, 0.05, True, 12, 6),
    (1_000, 0.05, 0.05, True, 30, 17),
    (100_000, 0.05, 0.05, True, 36, 21),
    (10_000, 0.05, 0.05, False, 62, 44),
    (1_000_000, 0.05, 0.05, False, 74, 52),
    (1_000_000, 0.33, 0.05, True, 102, 34),
    (1_000_000, 0.05, 0.33, True, 110, 83),
    (1_000_000, 0.05, 0.33, False, 212, 173),
    (1_000_000, 0.33, 0.33, True, 518, 270),
    (100, 0.33, 0.33, True, 68, 34),
]


@pytest.mark.parametrize(("n", "drop", "corr", "semi_honest", "k", "t"), PRODUCTION)
def test_finder_reproduces_production_values(
    n: int, drop: float, corr: float, semi_honest: bool, k: int, t: int
) -> None:
    assert find_harary_parameters(n, drop, corr, semi_honest=semi_honest) == GraphParameters(k, t)


def test_finder_is_fast() -> None:
    start = time.perf_counter()
    for n in (10**4, 10**5, 10**6):
        find_harary_parameters(n, 0.05, 0.05)
        find_harary_parameters(n, 0.1, 0.1, semi_honest=False)
    assert time.perf_counter() - start < 0.5


def _exact_tail(N: int, M: int, k: int, xs: range) -> Fraction:
    return Fraction(sum(math.comb(M, x) * math.comb(N - M, k - x) for x in xs), math.comb(N, k))


@pytest.mark.parametrize(("n", "drop", "corr"), [(1_000, 0.05, 0.05), (2_000, 0.2, 0.1)])
def test_finder_bounds_hold_in_exact_arithmetic(n: int, drop: float, corr: float) -> None:
    p = find_harary_parameters(n, drop, corr)
    C, D = round(corr * n), round(drop * n)
    q_sec = Fraction(1, 2**41 * n)
    q_corr = Fraction(1, 2**20 * n)
    # security: an honest party has >= t corrupted neighbours with probability < 2^-41 / n
    assert _exact_tail(n - 1, C, p.k, range(p.t, p.k + 1)) < q_sec
    assert _exact_tail(n - 1, C, p.k, range(p.t - 1, p.k + 1)) >= q_sec  # t is the smallest
    # correctness: fewer than t surviving neighbours with probability < 2^-20 / n
    assert _exact_tail(n - 1, n - 1 - D, p.k, range(p.t)) < q_corr


def test_finder_is_monotone_and_t_at_most_k() -> None:
    for n in (1_000, 100_000):
        for fixed in (0.0, 0.05, 0.2):
            rates = (0.0, 0.01, 0.05, 0.1, 0.2, 0.3)
            by_drop = [find_harary_parameters(n, d, fixed) for d in rates]
            by_corr = [find_harary_parameters(n, fixed, c) for c in rates]
            for seq in (by_drop, by_corr):
                assert all(2 <= p.t <= p.k < n for p in seq)
                assert [p.k for p in seq] == sorted(p.k for p in seq)
                assert [p.t for p in seq] == sorted(p.t for p in seq)
        for d in (0.0, 0.05, 0.2):
            honest = find_harary_parameters(n, d, 0.05)
            active = find_harary_parameters(n, d, 0.05, semi_honest=False)
            assert active.k >= honest.k and active.t > honest.t


@pytest.mark.parametrize("n", range(2, 16))
def test_finder_small_n_gives_usable_parameters(n: int) -> None:
    for drop, corr in ((0.0, 0.0), (0.05, 0.05), (0.2, 0.1), (0.33, 0.05)):
        try:
            p = find_harary_parameters(n, drop, corr)
        except ValueError:
            continue
        assert 1 <= p.t <= p.k <= n - 1
        if p.k < n - 1:
            assert p.k % 2 == 0 and p.t >= 2
            g = harary_graph(n, p.k, SEED)
        else:
            assert p == complete_parameters(n, drop, corr)
            g = complete_graph(n)
        assert g.degree == p.k


def test_finder_falls_back_to_complete_graph_for_high_rates() -> None:
    # corruption + dropout > 0.9: no sparse analysis, but the complete graph still works
    assert find_harary_parameters(20, 0.05, 0.86) == GraphParameters(19, 18, "complete")
    with pytest.raises(ValueError, match="no secure and correct threshold"):
        find_harary_parameters(1_000, 0.5, 0.45)


@pytest.mark.parametrize(
    ("n", "drop", "corr"),
    [
        (1, 0.1, 0.1),
        (0, 0.1, 0.1),
        (100, 1.0, 0.1),
        (100, 0.1, 1.0),
        (100, -0.1, 0.1),
        (100, 0.1, -0.01),
        (100, float("nan"), 0.1),
    ],
)
def test_invalid_inputs_raise(n: int, drop: float, corr: float) -> None:
    with pytest.raises(ValueError):
        find_harary_parameters(n, drop, corr)
    with pytest.raises(ValueError):
        complete_parameters(n, drop, corr)


def test_invalid_bits_raise() -> None:
    with pytest.raises(ValueError):
        find_harary_parameters(100, 0.1, 0.1, security_bits=0)
    with pytest.raises(ValueError):
        find_harary_parameters(100, 0.1, 0.1, correctness_bits=-1)


def test_complete_parameters() -> None:
    def complete(k: int, t: int) -> GraphParameters:
        return GraphParameters(k, t, "complete")

    assert complete_parameters(100, 0.05, 0.05) == complete(99, 50)  # majority of 99
    assert complete_parameters(100, 0.05, 0.3) == complete(99, 50)
    assert complete_parameters(100, 0.05, 0.6) == complete(99, 61)  # t > C = 60
    assert complete_parameters(100, 0.05, 0.05, active=True) == complete(99, 67)  # > 2k/3
    assert complete_parameters(100, 0.05, 0.5, active=True) == complete(99, 75)  # >(k+C)/2
    with pytest.raises(ValueError, match="no secure and correct threshold"):
        complete_parameters(100, 0.45, 0.05, active=True)
    with pytest.raises(ValueError):
        complete_parameters(100, 0.5, 0.05)


def test_graph_parameters_validation() -> None:
    with pytest.raises(ValueError):
        GraphParameters(k=4, t=5)
    with pytest.raises(ValueError):
        GraphParameters(k=4, t=0)

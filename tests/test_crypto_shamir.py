"""Tests for secagg.crypto.shamir: vectorized Shamir sharing over GF(2^32 - 5).

On "inconsistent shares": with exactly t shares *any* share values interpolate to some polynomial
of degree t-1, so inconsistency is undetectable in principle. The library only checks that the
interpolated limbs decode to an in-range secret (every 31-bit limb < 2^31 and the value
< 2^(8L)). For a uniformly random wrong share vector that check passes with probability
about 2^(8L) / p^limbs ~ 2^(8L - 32 limbs): 2^-32 for L = 16 or 32 bytes, 2^-24 for L = 1, but
2^-8 for L = 31 (8L = 248 is a multiple of 31). A share tampered in a single limb is caught with
probability only ~1/2, and an adversary who knows its own Lagrange coefficient can shift the secret
by a chosen offset undetected (see ``test_range_check_is_not_integrity_protection``): the range
check is a sanity check, not integrity protection.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.crypto import shamir
from secagg.crypto.shamir import PRIME

P = PRIME


def _secret(rnd: np.random.Generator, size: int) -> bytes:
    return rnd.integers(0, 256, size=size, dtype=np.uint8).tobytes()


def _interpolate_at(xs: list[int], ys: list[int], at: int) -> int:
    """Independent pure-Python Lagrange interpolation mod p."""
    total = 0
    for i, (xi, yi) in enumerate(zip(xs, ys, strict=True)):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * (at - xj) % P
                den = den * (xi - xj) % P
        total = (total + yi * num * pow(den, P - 2, P)) % P
    return total


def _limbs(secret: bytes) -> list[int]:
    value = int.from_bytes(secret, "little")
    mask = (1 << shamir.LIMB_BITS) - 1
    return [(value >> (shamir.LIMB_BITS * i)) & mask for i in range(shamir.limbs_for(len(secret)))]


# ------------------------------------------------------------------------------ basics


@pytest.mark.parametrize(
    ("size", "limbs"), [(1, 1), (3, 1), (4, 2), (16, 5), (31, 8), (32, 9), (64, 17)]
)
def test_limbs_for(size: int, limbs: int) -> None:
    assert shamir.limbs_for(size) == limbs
    assert limbs * shamir.LIMB_BITS >= 8 * size > (limbs - 1) * shamir.LIMB_BITS


def test_prime() -> None:
    assert P == 2**32 - 5
    assert all(pow(a, P - 1, P) == 1 for a in (2, 3, 5, 7, 12345))  # Fermat sanity


def test_split_shape_and_range() -> None:
    secrets = [bytes(range(32)), bytes(32)]
    shares = shamir.split(secrets, 3, [1, 2, 3, 4, 5])
    assert shares.shape == (5, 2, shamir.limbs_for(32))
    assert shares.dtype == np.uint64
    assert np.all(shares < P)


def test_shares_lie_on_degree_t_minus_1_polynomial() -> None:
    """Any t shares interpolate to the same value at every other point (independent check)."""
    secret = bytes(range(16))
    points = [3, 9, 11, 200, 4000, P - 1]
    t = 3
    shares = shamir.split([secret], t, points)
    for limb in range(shares.shape[2]):
        ys = [int(v) for v in shares[:, 0, limb]]
        assert _interpolate_at(points[:t], ys[:t], 0) == _limbs(secret)[limb]
        for k in range(t, len(points)):
            assert _interpolate_at(points[:t], ys[:t], points[k]) == ys[k]


def test_threshold_one_shares_are_the_secret() -> None:
    secret = bytes(range(16))
    shares = shamir.split([secret], 1, [1, 2, 3])
    assert all(list(map(int, shares[i, 0])) == _limbs(secret) for i in range(3))


def test_fresh_randomness_per_split() -> None:
    secret = bytes(16)
    a = shamir.split([secret], 2, [1, 2])
    b = shamir.split([secret], 2, [1, 2])
    assert not np.array_equal(a, b)
    # Same secret twice in one call gets independent polynomials.
    c = shamir.split([secret, secret], 2, [1, 2])
    assert not np.array_equal(c[:, 0], c[:, 1])


# ------------------------------------------------------------------------------ reconstruction


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_t_or_more_holders_reconstruct(data: st.DataObject) -> None:
    t = data.draw(st.integers(1, 12), label="t")
    n = data.draw(st.integers(t, 20), label="n")
    size = data.draw(st.one_of(st.sampled_from([16, 32]), st.integers(1, 64)), label="size")
    m = data.draw(st.integers(1, 3), label="m")
    points = data.draw(
        st.lists(st.integers(1, P - 1), min_size=n, max_size=n, unique=True), label="points"
    )
    secrets = [data.draw(st.binary(min_size=size, max_size=size)) for _ in range(m)]
    shares = shamir.split(secrets, t, points)
    k = data.draw(st.integers(t, n), label="k")
    subset = data.draw(st.permutations(range(n)), label="perm")[:k]
    got = shamir.reconstruct([points[i] for i in subset], shares[subset], size)
    assert got == secrets


@pytest.mark.parametrize("size", [1, 16, 31, 32, 64])
def test_extreme_secret_values(size: int) -> None:
    secrets = [bytes(size), b"\xff" * size, b"\x80" + bytes(size - 1), bytes(size - 1) + b"\x80"]
    points = list(range(1, 8))
    shares = shamir.split(secrets, 4, points)
    assert shamir.reconstruct(points[3:], shares[3:], size) == secrets


def test_party_id_plus_one_points_and_large_points() -> None:
    points = [1, 2, 1000, 2**31, P - 2, P - 1]
    secrets = [bytes(range(32))]
    shares = shamir.split(secrets, 6, points)
    assert shamir.reconstruct(points, shares, 32) == secrets


def test_reconstruct_with_batch() -> None:
    rnd = np.random.default_rng(1)
    points = list(range(1, 11))
    secrets = [_secret(rnd, 32) for _ in range(50)]
    shares = shamir.split(secrets, 4, points)
    holders = (2, 5, 7, 10)
    idx = [points.index(h) for h in holders]
    coeffs = shamir.lagrange_at_zero(holders)
    assert shamir.reconstruct_with(coeffs, shares[idx], 32) == secrets
    # Works for a batch split at different times with the same holder set.
    more = [_secret(rnd, 32) for _ in range(3)]
    shares2 = shamir.split(more, 4, points)
    assert shamir.reconstruct_with(coeffs, shares2[idx], 32) == more


def test_lagrange_identities() -> None:
    pts = (3, 8, 21, 1000, P - 1)
    coeffs = [int(c) for c in shamir.lagrange_at_zero(pts)]
    assert sum(coeffs) % P == 1  # interpolates the constant 1
    for power in range(1, len(pts)):
        assert sum(c * pow(x, power, P) for c, x in zip(coeffs, pts, strict=True)) % P == 0
    assert not shamir.lagrange_at_zero(pts).flags.writeable


@settings(max_examples=60, deadline=None)
@given(
    points=st.lists(st.integers(1, P - 1), min_size=2, max_size=20, unique=True),
    which=st.integers(0, 19),
)
def test_lagrange_excluding_equals_reduced_set(points: list[int], which: int) -> None:
    pts = tuple(points)
    excluded = pts[which % len(pts)]
    reduced = tuple(p for p in pts if p != excluded)
    got = shamir.lagrange_at_zero_excluding(pts, excluded)
    assert np.array_equal(got, shamir.lagrange_at_zero(reduced))


def test_lagrange_excluding_reconstructs() -> None:
    points = tuple(range(1, 9))
    secrets = [bytes(range(16))] * 2
    shares = shamir.split(secrets, 7, list(points))
    for owner in points:
        coeffs = shamir.lagrange_at_zero_excluding(points, owner)
        rows = [i for i, p in enumerate(points) if p != owner]
        assert shamir.reconstruct_with(coeffs, shares[rows], 16) == secrets


def test_lagrange_rejects_bad_points() -> None:
    with pytest.raises(ValueError):
        shamir.lagrange_at_zero((1, 2, 1))
    with pytest.raises(ValueError):
        shamir.lagrange_at_zero((0, 1))
    with pytest.raises(ValueError):
        shamir.lagrange_at_zero((P, 1))  # P = 0 in the field
    with pytest.raises(ValueError):
        shamir.lagrange_at_zero((1, P + 1))  # P + 1 = 1 in the field


# ------------------------------------------------------------------------------ hiding


@pytest.mark.parametrize("t", [2, 3, 5])
def test_fewer_than_t_shares_do_not_reveal(t: int) -> None:
    rnd = np.random.default_rng(t)
    points = list(range(1, t + 3))
    secrets = [_secret(rnd, 32) for _ in range(20)]
    shares = shamir.split(secrets, t, points)
    for i, secret in enumerate(secrets):
        try:
            got = shamir.reconstruct(points[: t - 1], shares[: t - 1, i : i + 1], 32)
        except ValueError:
            continue  # out-of-range interpolation (the usual outcome)
        assert got != [secret]


@pytest.mark.parametrize("t", [2, 4, 7])
def test_t_minus_1_shares_consistent_with_every_secret(t: int) -> None:
    """Information-theoretic hiding, constructively: for t-1 fixed shares of secret A and any
    candidate B there is a degree t-1 polynomial through the t-1 shares with f(0) = B. We build
    its value at a fresh point independently and let the library reconstruct B from it."""
    rnd = np.random.default_rng(100 + t)
    size = 32
    secret_a = _secret(rnd, size)
    points = list(range(1, t + 1))
    shares = shamir.split([secret_a], t, points)
    known_pts, known = points[: t - 1], shares[: t - 1]
    fresh = 10_000
    for candidate in [secret_a, bytes(size), b"\xff" * size, _secret(rnd, size)]:
        extra = np.empty((1, 1, shares.shape[2]), dtype=np.uint64)
        for limb, target in enumerate(_limbs(candidate)):
            ys = [target] + [int(v) for v in known[:, 0, limb]]
            extra[0, 0, limb] = _interpolate_at([0, *known_pts], ys, fresh)
        got = shamir.reconstruct([*known_pts, fresh], np.concatenate([known, extra]), size)
        assert got == [candidate]


def _chi2_homogeneity(a: np.ndarray, b: np.ndarray) -> float:
    table = np.stack([a, b]).astype(np.float64)
    table = table[:, table.sum(axis=0) > 0]  # drop cells neither sample hit
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    return float(((table - expected) ** 2 / expected).sum())


def _share_histogram(secret: bytes, t: int, count: int, n_shares: int) -> np.ndarray:
    """Histogram of (share_1 mod 4, ..., share_{n_shares} mod 4) of limb 0 over many splits."""
    shares = shamir.split([secret] * count, t, list(range(1, t + 1)))
    cells = np.zeros(count, dtype=np.int64)
    for i in range(n_shares):
        cells = cells * 4 + (shares[i, :, 0] % 4).astype(np.int64)
    return np.bincount(cells, minlength=4**n_shares)


@pytest.mark.parametrize("t", [2, 3])
def test_t_minus_1_share_distribution_independent_of_secret(t: int) -> None:
    """Joint distribution of t-1 shares (projected mod 4 per share) is the same for two very
    different secrets, and close to uniform (mod-4 bias of GF(p) elements is ~2^-32)."""
    count = 8192
    secret_a, secret_b = bytes(4), b"\xff" * 4
    hist_a = _share_histogram(secret_a, t, count, t - 1)
    hist_b = _share_histogram(secret_b, t, count, t - 1)
    dof = 4 ** (t - 1) - 1
    # chi-square with dof <= 15: mean dof, sd sqrt(2 dof); bound ~ +10 sd -> essentially never.
    bound = dof + 10 * np.sqrt(2 * dof)
    assert _chi2_homogeneity(hist_a, hist_b) < bound
    for hist in (hist_a, hist_b):
        expected = count / hist.size
        assert float(((hist - expected) ** 2 / expected).sum()) < bound


def test_hiding_statistic_has_power() -> None:
    """Control: the same statistic tells the secrets apart when t shares are looked at (t=1 means
    the share is the secret), so the hiding test above would catch a leaking split."""
    count = 2048
    hist_a = _share_histogram(bytes(4), 1, count, 1)
    hist_b = _share_histogram(b"\x01" + bytes(3), 1, count, 1)
    assert _chi2_homogeneity(hist_a, hist_b) > 1000


# ------------------------------------------------------------------------------ errors


def test_split_errors() -> None:
    secret = [bytes(16)]
    with pytest.raises(ValueError):
        shamir.split([], 1, [1])
    with pytest.raises(ValueError):
        shamir.split(secret, 0, [1, 2])
    with pytest.raises(ValueError):
        shamir.split(secret, 3, [1, 2])
    with pytest.raises(ValueError):
        shamir.split(secret, 2, [1, 1, 2])
    with pytest.raises(ValueError):
        shamir.split(secret, 2, [0, 1, 2])
    with pytest.raises(ValueError):
        shamir.split(secret, 2, [1, P])
    with pytest.raises(ValueError):
        shamir.split([bytes(16), bytes(15)], 1, [1, 2])


def test_malformed_shares() -> None:
    points = [1, 2, 3]
    shares = shamir.split([bytes(range(16))], 3, points)
    coeffs = shamir.lagrange_at_zero(tuple(points))
    too_big = shares.copy()
    too_big[1, 0, 2] = P
    with pytest.raises(ValueError):
        shamir.reconstruct(points, too_big, 16)
    too_big[1, 0, 2] = 2**64 - 1
    with pytest.raises(ValueError):
        shamir.reconstruct_with(coeffs, too_big, 16)
    with pytest.raises(ValueError):  # one row short
        shamir.reconstruct(points, shares[:2], 16)
    with pytest.raises(ValueError):
        shamir.reconstruct_with(coeffs, shares[:2], 16)
    with pytest.raises(ValueError):  # wrong ndim
        shamir.reconstruct_with(coeffs, shares[:, 0], 16)
    with pytest.raises(ValueError):
        shamir.reconstruct_with(coeffs, shares[..., None], 16)
    with pytest.raises(ValueError):  # wrong limb count for the secret size
        shamir.reconstruct(points, shares, 32)
    with pytest.raises(ValueError):
        shamir.reconstruct(points, shares[:, :, :-1], 16)
    with pytest.raises(ValueError):  # duplicate holders
        shamir.reconstruct([1, 1, 2], shares, 16)


@pytest.mark.parametrize("size", [16, 32])
def test_inconsistent_shares_rejected(size: int) -> None:
    """A share replaced by random field elements is rejected unless the interpolation happens to
    land in range: probability ~2^-32 per trial for 16- and 32-byte secrets (see module doc)."""
    rnd = np.random.default_rng(size)
    points = [1, 2, 3, 4]
    for _ in range(100):
        secret = _secret(rnd, size)
        shares = shamir.split([secret], 3, points)
        bad = shares.copy()
        bad[1, 0, :] = rnd.integers(0, P, size=bad.shape[2], dtype=np.uint64)
        if np.array_equal(bad, shares):  # pragma: no cover - probability p^-limbs
            continue
        with pytest.raises(ValueError):
            shamir.reconstruct(points[:3], bad[:3], size)
        with pytest.raises(ValueError):  # more than t holders: still interpolates to garbage
            shamir.reconstruct(points, bad, size)


def test_range_check_is_not_integrity_protection() -> None:
    """Characterizes the documented limitation: a holder that knows its Lagrange coefficient can
    shift limb 0 of the reconstructed secret by +1 and the range check cannot notice (unless limb
    0 of the secret is 2^31 - 1, which we avoid)."""
    points = (1, 2, 3)
    secret = bytes(32)
    shares = shamir.split([secret], 3, list(points))
    coeff = int(shamir.lagrange_at_zero(points)[1])
    bad = shares.copy()
    bad[1, 0, 0] = (int(bad[1, 0, 0]) + pow(coeff, P - 2, P)) % P
    got = shamir.reconstruct(points, bad, 32)
    assert got == [(1).to_bytes(32, "little")]
    assert got != [secret]


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.lists(st.integers(1, 10_000), min_size=1, max_size=70, unique=True).map(tuple),
        min_size=1,
        max_size=12,
    )
)
def test_lagrange_at_zero_many_equals_one_by_one(point_sets: list[tuple[int, ...]]) -> None:
    many = shamir.lagrange_at_zero_many(point_sets)
    for points, coeffs in zip(point_sets, many, strict=True):
        np.testing.assert_array_equal(coeffs, shamir.lagrange_at_zero(points))

"""Shamir secret sharing (Shamir 1979), vectorized over many secrets with numpy.

Field: GF(p) with p = 2^32 - 5, the largest 32-bit prime, so a product of two elements fits in an
unsigned 64-bit word and every field operation is one numpy expression over whole arrays.
A secret of L bytes is split into 31-bit limbs (each < p) and every limb is shared with its own
random polynomial of degree t-1; a share of one secret is ``limbs`` field elements.

Sharing evaluates all polynomials of all secrets at all points in ``t`` vector operations (Horner),
and reconstruction is a dot product with Lagrange coefficients at zero, computed once per holder
set and cached (the server reuses one set for many secrets: Bonawitz et al. 2017, section 6.2 notes
unmasking cost is dominated by the PRG, which holds only if this part is vectorized).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from secagg.crypto import rng

PRIME = 4294967291  # 2^32 - 5
LIMB_BITS = 31
_P = np.uint64(PRIME)

U64Array = npt.NDArray[np.uint64]


def limbs_for(secret_bytes: int) -> int:
    """Number of field elements in one share of a ``secret_bytes``-byte secret."""
    return -(-secret_bytes * 8 // LIMB_BITS)


def _to_limbs(secrets: Sequence[bytes], secret_bytes: int) -> U64Array:
    limbs = limbs_for(secret_bytes)
    out = np.empty((len(secrets), limbs), dtype=np.uint64)
    mask = (1 << LIMB_BITS) - 1
    for row, secret in enumerate(secrets):
        if len(secret) != secret_bytes:
            raise ValueError(f"every secret must be {secret_bytes} bytes")
        value = int.from_bytes(secret, "little")
        out[row] = [(value >> (LIMB_BITS * i)) & mask for i in range(limbs)]
    return out


def _from_limbs(limbs: U64Array, secret_bytes: int) -> list[bytes]:
    secrets = []
    top = 1 << (8 * secret_bytes)
    for row in limbs.tolist():
        value = sum(int(v) << (LIMB_BITS * i) for i, v in enumerate(row))
        if value >= top or any(v >= 1 << LIMB_BITS for v in row):
            # Inconsistent shares interpolate to garbage; never return it as a key.
            raise ValueError("shares are inconsistent (reconstructed value out of range)")
        secrets.append(value.to_bytes(secret_bytes, "little"))
    return secrets


def split(secrets: Sequence[bytes], threshold: int, points: Sequence[int]) -> U64Array:
    """Share every secret at every evaluation point.

    Args:
        secrets: m secrets, all of the same length.
        threshold: t, the number of shares that reconstruct (polynomial degree t-1).
        points: the n distinct non-zero evaluation points (party id + 1).

    Returns:
        An array of shape (n, m, limbs): ``shares[i]`` goes to the holder of ``points[i]``.
    """
    if not secrets:
        raise ValueError("nothing to share")
    secret_bytes = len(secrets[0])
    xs = np.asarray(points, dtype=np.uint64)
    if threshold < 1 or threshold > len(points):
        raise ValueError("need 1 <= threshold <= number of points")
    if np.any(xs == 0) or np.any(xs >= _P) or len(set(points)) != len(points):
        raise ValueError("evaluation points must be distinct and in [1, p)")
    constant = _to_limbs(secrets, secret_bytes)  # (m, limbs)
    shape = constant.shape
    # Coefficients 1..t-1 uniformly in [0, p): draw 64-bit words, reject the rare ones >= p*k.
    coeffs = _uniform_field((threshold - 1, *shape))
    # Horner: f(x) = c0 + x (c1 + x (c2 + ...)), all points and secrets at once.
    acc = np.zeros((len(xs), *shape), dtype=np.uint64)
    x = xs[:, None, None]
    for j in range(threshold - 2, -1, -1):
        acc = (acc * x % _P + coeffs[j][None]) % _P
    return (acc * x % _P + constant[None]) % _P


def _uniform_field(shape: tuple[int, ...]) -> U64Array:
    count = int(np.prod(shape))
    limit = np.uint64((2**64 // PRIME) * PRIME)
    words = rng.random_words(count, np.uint64)
    bad = words >= limit
    while np.any(bad):  # probability ~2^-32 per word
        words[bad] = rng.random_words(int(bad.sum()), np.uint64)
        bad = words >= limit
    return (words % _P).reshape(shape)


@functools.lru_cache(maxsize=4096)
def lagrange_at_zero(points: tuple[int, ...]) -> U64Array:
    """Lagrange coefficients l_i with f(0) = sum_i l_i f(x_i), for a set of holders (cached).

    l_i = prod_{j != i} x_j / (x_j - x_i). All denominators are inverted with one modular
    exponentiation (Montgomery's batch inversion), so a set costs O(t^2) multiplications and a
    single pow instead of t of them.
    """
    xs = [int(x) % PRIME for x in points]
    if len(set(xs)) != len(xs) or 0 in xs:
        raise ValueError("evaluation points must be distinct and non-zero")
    n = len(xs)
    if n <= 64:
        numer, denom = [], []
        for i, xi in enumerate(xs):
            num = den = 1
            for j, xj in enumerate(xs):
                if j != i:
                    num = num * xj % PRIME
                    den = den * (xj - xi) % PRIME
            numer.append(num)
            denom.append(den)
    else:
        x = np.asarray(xs, dtype=np.uint64)
        diff = (x[None, :] + _P - x[:, None]) % _P  # diff[i, j] = x_j - x_i
        np.fill_diagonal(diff, 1)
        num_matrix = np.broadcast_to(x[None, :], (n, n)).copy()
        np.fill_diagonal(num_matrix, 1)
        numer = _prod_mod(num_matrix).tolist()
        denom = _prod_mod(diff).tolist()
    inverses = _batch_inverse([int(d) for d in denom])
    coeffs = np.asarray(
        [int(a) * b % PRIME for a, b in zip(numer, inverses, strict=True)], dtype=np.uint64
    )
    coeffs.setflags(write=False)
    return coeffs


def lagrange_at_zero_many(point_sets: Sequence[tuple[int, ...]]) -> list[U64Array]:
    """:func:`lagrange_at_zero` for many holder sets at once (the server's unmasking step with
    a sparse graph has one set per party): the products of all sets of one size are computed in
    a few whole-array passes and every denominator is inverted with a single pow."""
    out: dict[tuple[int, ...], U64Array] = {}
    todo = [p for p in dict.fromkeys(point_sets)]
    by_size: dict[int, list[tuple[int, ...]]] = {}
    for pts in todo:
        if len(set(pts)) != len(pts) or any(x % PRIME == 0 for x in pts):
            raise ValueError("evaluation points must be distinct and non-zero")
        by_size.setdefault(len(pts), []).append(pts)
    for size, sets in by_size.items():
        x = np.asarray(sets, dtype=np.uint64) % _P  # (S, t)
        eye = np.eye(size, dtype=bool)[None]
        diff = (x[:, None, :] + _P - x[:, :, None]) % _P  # diff[s, i, j] = x_j - x_i
        diff = np.where(eye, np.uint64(1), diff)
        nums = np.where(eye, np.uint64(1), np.broadcast_to(x[:, None, :], diff.shape))
        numer = _prod_mod(nums.reshape(-1, size)).reshape(len(sets), size)
        denom = _prod_mod(diff.reshape(-1, size)).reshape(len(sets), size)
        inverses = np.asarray(
            _batch_inverse([int(d) for d in denom.ravel().tolist()]), dtype=np.uint64
        )
        coeffs = numer * inverses.reshape(denom.shape) % _P
        for pts, row in zip(sets, coeffs, strict=True):
            row = row.copy()
            row.setflags(write=False)
            out[pts] = row
    return [out[p] for p in point_sets]


def _batch_inverse(values: list[int]) -> list[int]:
    """Modular inverses of non-zero values with one pow (Montgomery's trick)."""
    prefix = [1]
    for v in values:
        prefix.append(prefix[-1] * v % PRIME)
    inv = pow(prefix[-1], PRIME - 2, PRIME)
    out = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        out[i] = inv * prefix[i] % PRIME
        inv = inv * values[i] % PRIME
    return out


def _prod_mod(matrix: U64Array) -> U64Array:
    """Row-wise product modulo p by pairwise halving (log2(n) vector steps)."""
    m = matrix
    while m.shape[1] > 1:
        if m.shape[1] % 2:
            m = np.concatenate([m, np.ones((m.shape[0], 1), dtype=np.uint64)], axis=1)
        m = m[:, 0::2] * m[:, 1::2] % _P
    return m[:, 0]


def reconstruct(points: Sequence[int], shares: U64Array, secret_bytes: int) -> list[bytes]:
    """Recover m secrets from the shares of the same t holders.

    Args:
        points: the holders' evaluation points (t of them, distinct, non-zero).
        shares: array (t, m, limbs): ``shares[i]`` is what the holder of ``points[i]`` revealed.
        secret_bytes: the secrets' length.

    Raises:
        ValueError: shapes do not match, or the shares are inconsistent.
    """
    if len(points) != np.shape(shares)[0]:
        raise ValueError("shares must have shape (len(points), m, limbs)")
    return reconstruct_with(lagrange_at_zero(tuple(int(p) for p in points)), shares, secret_bytes)


def lagrange_at_zero_excluding(points: tuple[int, ...], excluded: int) -> U64Array:
    """Coefficients for ``points`` minus the point ``excluded``, derived in O(t) from the cached
    coefficients of the whole set: l_i(S \\ {u}) = l_i(S) (x_u - x_i) / x_u.

    The server uses this when many secrets share one holder set except for their own owner
    (the complete graph), so it computes one full set of coefficients instead of t of them.
    """
    base = lagrange_at_zero(points)
    idx = points.index(excluded)
    x = np.asarray(points, dtype=np.uint64)
    xu = np.uint64(excluded % PRIME)
    inv_xu = np.uint64(pow(int(xu), PRIME - 2, PRIME))
    factor = (xu + _P - x) % _P * inv_xu % _P
    coeffs = base * factor % _P
    return np.delete(coeffs, idx)


def reconstruct_with(coeffs: U64Array, shares: U64Array, secret_bytes: int) -> list[bytes]:
    """Like :func:`reconstruct` with precomputed Lagrange coefficients (one per share row)."""
    shares = np.asarray(shares, dtype=np.uint64)
    if shares.ndim != 3 or shares.shape[0] != len(coeffs):
        raise ValueError("shares must have shape (len(coeffs), m, limbs)")
    if shares.shape[2] != limbs_for(secret_bytes) or np.any(shares >= _P):
        raise ValueError("malformed shares")
    # Each product is < 2^64 after reduction; summing t < 2^31 reduced terms cannot overflow.
    acc = (shares * coeffs[:, None, None] % _P).sum(axis=0, dtype=np.uint64) % _P
    return _from_limbs(acc, secret_bytes)


# ---------------------------------------------------------------------------------------------
# Row-batched reconstruction: one secret per row, each row with its own holder set (the server's
# unmasking step on a sparse graph, where every owner's t holders differ). Everything is a fixed
# number of whole-array passes over the rows: O(t^2) vector multiplications for the Lagrange
# denominators, one batched inversion (Montgomery's trick along each row, then one vectorized
# Fermat power per row), and t multiply-adds for the interpolation. No Python loop over secrets.


def _mulmod(a: U64Array, b: U64Array) -> U64Array:
    # Both factors are < p < 2^32, so the product fits in 64 bits before the reduction.
    return a * b % _P


def _powmod_rows(base: U64Array, exponent: int) -> U64Array:
    """base ** exponent mod p, elementwise (square and multiply over whole arrays)."""
    result = np.ones_like(base)
    square = base.copy()
    while exponent:
        if exponent & 1:
            result = _mulmod(result, square)
        exponent >>= 1
        if exponent:
            square = _mulmod(square, square)
    return result


def _inverse_rows(values: U64Array) -> U64Array:
    """Modular inverses of the non-zero entries of a 2-D array: Montgomery's trick along each
    row (prefix products), one Fermat inversion per row, then the backward pass."""
    m, t = values.shape
    prefix = np.empty((m, t + 1), dtype=np.uint64)
    prefix[:, 0] = 1
    for i in range(t):
        prefix[:, i + 1] = _mulmod(prefix[:, i], values[:, i])
    inv = _powmod_rows(prefix[:, t], PRIME - 2)
    out = np.empty_like(values)
    for i in range(t - 1, -1, -1):
        out[:, i] = _mulmod(inv, prefix[:, i])
        inv = _mulmod(inv, values[:, i])
    return out


def lagrange_at_zero_rows(points: npt.ArrayLike) -> U64Array:
    """Lagrange coefficients at zero for many holder sets of the same size, one set per row.

    Args:
        points: (m, t) evaluation points; each row distinct and non-zero modulo p.

    Returns:
        (m, t) array: row r equals ``lagrange_at_zero(tuple(points[r]))``.

    Raises:
        ValueError: a row repeats a point or contains zero (mod p).
    """
    x = np.asarray(points, dtype=np.uint64)
    if x.ndim != 2:
        raise ValueError("points must have shape (rows, t)")
    x = x % _P
    m, t = x.shape
    if m == 0 or t == 0:
        return np.zeros((m, t), dtype=np.uint64)
    if np.any(x == 0):
        raise ValueError("evaluation points must be distinct and non-zero")
    # l_i = prod_{j != i} x_j / (x_j - x_i) = (prod_j x_j) / (x_i * prod_{j != i} (x_j - x_i)).
    # Work column-major (one contiguous row of m values per holder position).
    xt = np.ascontiguousarray(x.T)
    denom = xt.copy()
    diff = np.empty(m, dtype=np.uint64)
    for i in range(t):
        for j in range(i + 1, t):
            np.subtract(xt[j], xt[i], out=diff)  # wraps mod 2^64 when x_j < x_i
            diff += _P * (xt[j] < xt[i])  # now x_j - x_i mod p, in [1, p)
            denom[i] = _mulmod(denom[i], diff)
            denom[j] = _mulmod(denom[j], _P - diff)  # x_i - x_j
    if np.any(denom == 0):
        raise ValueError("evaluation points must be distinct and non-zero")
    total = xt[0].copy()
    for i in range(1, t):
        total = _mulmod(total, xt[i])
    return _mulmod(_inverse_rows(np.ascontiguousarray(denom.T)), total[:, None])


def limbs_to_bytes(limbs: U64Array, secret_bytes: int) -> npt.NDArray[np.uint8]:
    """Inverse of the limb split for many secrets at once: (m, limbs) -> (m, secret_bytes).

    Raises:
        ValueError: a row is out of range (a limb >= 2^31 or a value >= 2^(8 L)): the shares
            that produced it were inconsistent (never return garbage as a key).
    """
    nlimbs = limbs_for(secret_bytes)
    if limbs.ndim != 2 or limbs.shape[1] != nlimbs:
        raise ValueError("limbs must have shape (m, limbs_for(secret_bytes))")
    top_bits = 8 * secret_bytes - LIMB_BITS * (nlimbs - 1)
    if np.any(limbs >> np.uint64(LIMB_BITS)) or np.any(limbs[:, -1] >> np.uint64(top_bits)):
        raise ValueError("shares are inconsistent (reconstructed value out of range)")
    out = np.empty((limbs.shape[0], secret_bytes), dtype=np.uint8)
    for j in range(secret_bytes):
        i, shift = divmod(8 * j, LIMB_BITS)
        byte = limbs[:, i] >> np.uint64(shift)
        if shift + 8 > LIMB_BITS and i + 1 < nlimbs:
            byte = byte | (limbs[:, i + 1] << np.uint64(LIMB_BITS - shift))
        out[:, j] = byte & np.uint64(0xFF)
    return out


def reconstruct_rows(
    points: npt.ArrayLike, shares: npt.ArrayLike, secret_bytes: int
) -> npt.NDArray[np.uint8]:
    """Recover one secret per row from its own t holders.

    Args:
        points: (m, t) evaluation points of the holders of each secret.
        shares: (m, t, limbs): ``shares[r, i]`` is what holder ``points[r, i]`` revealed.
        secret_bytes: the secrets' length.

    Returns:
        (m, secret_bytes) uint8 array of the secrets.

    Raises:
        ValueError: shapes do not match, a share is not a field element, or a row interpolates
            to an out-of-range value (inconsistent shares).
    """
    s = np.asarray(shares, dtype=np.uint64)
    coeffs = lagrange_at_zero_rows(points)
    if s.ndim != 3 or s.shape[:2] != coeffs.shape or s.shape[2] != limbs_for(secret_bytes):
        raise ValueError("shares must have shape (rows, t, limbs_for(secret_bytes))")
    if np.any(s >= _P):
        raise ValueError("malformed shares")
    acc = np.zeros((s.shape[0], s.shape[2]), dtype=np.uint64)
    for i in range(s.shape[1]):
        # acc < p and each product is reduced below p: the sum stays far below 2^64.
        acc += s[:, i, :] * coeffs[:, i, None] % _P
        acc %= _P
    return limbs_to_bytes(acc, secret_bytes)

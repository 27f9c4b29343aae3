"""Tests for the server's batched bookkeeping (issue 12): each fast path equals the plain one.

- ``PackedSum`` (bytes added, folded once) equals unpacking and adding every vector.
- The low-order X25519 blocklist refuses exactly the keys OpenSSL's exchange refuses.
- Row-batched Lagrange interpolation equals the per-set one, and rebuilds shared secrets.
- ``ShareRouter.deliveries`` routes like the naive per-ciphertext loop.
- ``RevealedShares`` keeps the persisted ``owner -> {holder: share}`` view.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg import encoding, graph
from secagg.config import RoundConfig
from secagg.crypto import keys, shamir
from secagg.engine.advertise import _LOW_ORDER_KEYS, is_low_order
from secagg.engine.masked_input import PackedSum
from secagg.engine.share_keys import SEALED_BYTES, ShareRouter
from secagg.engine.unmask import RevealedShares, _reconstruct_all
from secagg.errors import AbortedError, EncodingError, RemoteProtocolError
from secagg.messages import EncryptedShares


@settings(max_examples=60, deadline=None)
@given(
    bits=st.integers(8, 64),
    count=st.integers(1, 300),
    parties=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
)
def test_packed_sum_equals_unpacked_sum(bits: int, count: int, parties: int, seed: int) -> None:
    rnd = np.random.default_rng(seed)
    dtype = encoding.word_dtype(bits)
    acc = PackedSum(count, bits)
    expected = np.zeros(count, dtype=dtype)
    for _ in range(parties):
        words = rnd.integers(0, 2**63, size=count, dtype=np.uint64, endpoint=True)
        words = encoding.reduce(words, bits).astype(dtype)
        acc.add(encoding.pack(words, bits))
        encoding.add_packed(expected, encoding.pack(words, bits), bits)
    got = acc.fold().astype(dtype)
    assert np.array_equal(encoding.reduce(got, bits), encoding.reduce(expected, bits))
    assert acc.pending == 0 and not acc.fold().any()


def test_packed_sum_flushes_narrow_counters() -> None:
    # All-ones payloads: the 16-bit byte counters must be flushed before they overflow.
    bits, count = 30, 16
    acc = PackedSum(count, bits)
    ones = encoding.pack(np.full(count, 2**bits - 1, dtype=np.uint32), bits)
    parties = 3 * PackedSum.NARROW_CAPACITY + 5
    for _ in range(parties):
        acc.add(ones)
    want = (parties * (2**bits - 1)) % 2**bits
    assert np.all(acc.fold() % 2**bits == want)


def test_packed_sum_refuses_bad_payloads_before_adding() -> None:
    acc = PackedSum(3, 10)  # 30 bits in 4 bytes: 2 padding bits
    with pytest.raises(EncodingError):
        acc.add(b"\x00" * 5)
    with pytest.raises(EncodingError):
        acc.add(b"\x00\x00\x00\xc0")
    assert acc.pending == 0


def test_low_order_blocklist_matches_openssl() -> None:
    for key in _LOW_ORDER_KEYS:
        for top in (0, 0x80):
            variant = key[:31] + bytes((key[31] | top,))
            assert is_low_order(variant)
            with pytest.raises(RemoteProtocolError):
                keys.check_x25519_public(variant)
    for _ in range(200):
        public = keys.generate_x25519()[1]
        assert not is_low_order(public)
        keys.check_x25519_public(public)


def test_lagrange_rows_equal_per_set_coefficients() -> None:
    rnd = np.random.default_rng(3)
    points = np.stack([rnd.choice(10**6, size=7, replace=False) + 1 for _ in range(40)])
    rows = shamir.lagrange_at_zero_rows(points)
    for r in range(len(points)):
        want = shamir.lagrange_at_zero(tuple(int(p) for p in points[r]))
        assert np.array_equal(rows[r], want)
    with pytest.raises(ValueError):
        shamir.lagrange_at_zero_rows([[1, 2, 1]])
    with pytest.raises(ValueError):
        shamir.lagrange_at_zero_rows([[shamir.PRIME, 2]])


@pytest.mark.parametrize("secret_bytes", [1, 16, 31, 32])
def test_reconstruct_rows_rebuilds_each_secret_from_its_own_holders(secret_bytes: int) -> None:
    rnd = np.random.default_rng(secret_bytes)
    t, m = 4, 25
    secrets = [os.urandom(secret_bytes) for _ in range(m)]
    points = np.stack([rnd.choice(5000, size=t, replace=False) + 1 for _ in range(m)])
    shares = np.stack(
        [shamir.split([s], t, [int(p) for p in points[r]])[:, 0, :] for r, s in enumerate(secrets)]
    )
    got = shamir.reconstruct_rows(points, shares, secret_bytes)
    assert [bytes(row) for row in got] == secrets
    limbs = shamir._to_limbs(secrets, secret_bytes)
    assert [bytes(row) for row in shamir.limbs_to_bytes(limbs, secret_bytes)] == secrets
    bad = limbs.copy()
    bad[0, 0] = 2**31
    with pytest.raises(ValueError):
        shamir.limbs_to_bytes(bad, secret_bytes)


def _config(n: int, k: int) -> RoundConfig:
    return RoundConfig(
        session_id=os.urandom(16),
        round_index=0,
        graph=graph.harary_graph(n, k, os.urandom(32)),
        threshold=k // 2 + 1,
        dim=8,
        modulus_bits=20,
    )


def test_share_router_routes_like_the_naive_loop() -> None:
    cfg = _config(40, 6)
    absent = {3, 17}  # never advertised
    present = {
        u: tuple(v for v in cfg.neighbors(u) if v not in absent)
        for u in range(cfg.num_parties)
        if u not in absent
    }
    router = ShareRouter(cfg, present)
    silent = {5, 22}  # advertised, never shared
    for u, receivers in present.items():
        if u in silent:
            continue
        cts = tuple(f"{u}->{v}".encode().ljust(SEALED_BYTES, b".") for v in receivers)
        router.add(
            EncryptedShares(
                cfg.session_id,
                0,
                u,
                0xFFFFFFFF,
                receivers=receivers,
                ciphertexts=cts,
                self_mask_commitment=bytes(32),
            )
        )
    got = router.deliveries()
    assert sorted(got) == sorted(set(present) - silent)
    for v, delivery in got.items():
        senders = tuple(u for u in sorted(router.sealed) if v in present[u])
        assert delivery.senders == senders
        assert delivery.ciphertexts == tuple(
            f"{u}->{v}".encode().ljust(SEALED_BYTES, b".") for u in senders
        )


def test_revealed_shares_view_and_batched_reconstruction() -> None:
    t = 3
    owners = (4, 9)
    secrets = {o: os.urandom(16) for o in owners}
    holders = {4: [1, 2, 7, 8], 9: [2, 3, 8]}
    shares = {
        o: shamir.split([secrets[o]], t, [h + 1 for h in holders[o]])[:, 0, :] for o in owners
    }
    store = RevealedShares(owners, 4 * shamir.limbs_for(16))
    for h in (1, 2, 3, 7, 8):
        mine = [o for o in owners if h in holders[o]]
        blobs = [shares[o][holders[o].index(h)].astype(">u4").tobytes() for o in mine]
        store.append(h, mine, blobs)
    view = dict(store.items())
    assert sorted(view[4]) == [1, 2, 7, 8] and sorted(view[9]) == [2, 3, 8]
    assert _reconstruct_all(store, t, 16) == secrets
    restored = RevealedShares(owners, store.share_bytes)
    for owner, held in view.items():
        restored[owner] = held
    assert _reconstruct_all(restored, t, 16) == secrets
    assert len(restored) == 2 and list(restored) == list(owners)
    thin = RevealedShares((9,), store.share_bytes)
    thin[9] = {2: view[9][2]}
    with pytest.raises(AbortedError):
        _reconstruct_all(thin, t, 16)


def test_simulator_broadcast_encoding_is_byte_identical() -> None:
    from secagg import messages as wire
    from secagg.sim import _BroadcastEncoder

    session = os.urandom(16)
    survivors = tuple(range(0, 3000, 2))
    dropped = tuple(range(1, 3000, 20))
    requests = [
        wire.UnmaskRequest(session, 7, wire.SERVER, u, survivors=survivors, dropped=dropped)
        for u in survivors[:20]
    ]
    lists = [
        wire.SurvivorList(session, 7, wire.SERVER, u, survivors=survivors, dropped=dropped)
        for u in survivors[:5]
    ]
    # Semi-honest whole-vector requests name only the recipient's partners: short, distinct.
    short = [
        wire.UnmaskRequest(session, 7, wire.SERVER, u, survivors=(u, u + 2), dropped=(u + 1,))
        for u in range(0, 40, 4)
    ]
    encoder = _BroadcastEncoder()
    for m in [*requests, *short, *lists]:
        assert encoder.encode(m) == wire.encode(m)


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(5, 60),
    half=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
    late=st.floats(0.0, 0.9),
    early=st.floats(0.0, 0.5),
)
def test_ring_connectivity_rule_matches_a_bfs(
    n: int, half: int, seed: int, late: float, early: float
) -> None:
    """disconnected_blocks' O(n) ring rule (at most one circular gap wider than h between
    survivors) against a plain BFS over the partners the server routed (neighbours in U2)."""
    from helpers import make_config

    from secagg.engine.unmask import _ring_survivors_connected, disconnected_blocks

    k = 2 * half
    if k >= n - 1:
        return
    config, _ = make_config(n, t=2, kind="harary", k=k, dim=4)
    gen = np.random.default_rng(seed)
    u2 = {u for u in range(n) if gen.random() >= early}
    survivors = {u for u in u2 if gen.random() >= late}
    partners = {u: tuple(v for v in config.neighbors(u) if v in u2) for u in u2}
    seen: set[int] = set()
    if survivors:
        first = min(survivors)
        seen, frontier = {first}, [first]
        while frontier:
            u = frontier.pop()
            for w in partners[u]:
                if w in survivors and w not in seen:
                    seen.add(w)
                    frontier.append(w)
    connected = seen == survivors
    assert _ring_survivors_connected(config, survivors) == connected
    h, t = half, config.threshold
    skipped = 2 * (t + 1) > len(survivors) or (t >= h + 1 and n >= 3 * h + 1)
    if not skipped:  # no lemma covers it: the server's check is the ring rule
        assert disconnected_blocks(config, survivors, partners) == ([] if connected else [0])


@pytest.mark.parametrize("size", [SEALED_BYTES - 1, SEALED_BYTES + 1, 24])
def test_router_refuses_shares_sealed_at_another_length(size: int) -> None:
    """Deliveries are built without re-checking (messages.trusted): a party whose records have
    another length than an honest sealed pair is refused when its message arrives, so no
    delivery ever mixes lengths (which no receiver could decode)."""
    cfg = _config(12, 4)
    present = {u: cfg.neighbors(u) for u in range(cfg.num_parties)}
    router = ShareRouter(cfg, present)
    bad = EncryptedShares(
        cfg.session_id, 0, 3, 0xFFFFFFFF, receivers=present[3],
        ciphertexts=tuple(bytes(size) for _ in present[3]), self_mask_commitment=bytes(32),
    )  # fmt: skip
    with pytest.raises(RemoteProtocolError, match=f"party 3 sealed shares of {size} bytes"):
        router.add(bad)
    assert 3 not in router.sealed

"""Part-wise secure aggregation: per-block masks among holders, per-block sums, per-block checks.

The server must learn, per block, exactly the sum over the block's surviving holders, and
nothing for a block whose surviving holders fall below ``min_holders`` (no party answers the
unmask request then, and the server refuses to ask).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secagg import encoding
from secagg import messages as wire
from secagg.config import RoundConfig
from secagg.crypto import prg, rng
from secagg.engine import ClientEngine, ServerEngine
from secagg.engine.share_keys import HeldShares
from secagg.engine.unmask import client_unmask
from secagg.errors import AbortedError, ConfigError, ProtocolError, RemoteProtocolError
from secagg.graph import complete_graph, harary_graph
from secagg.layout import BlockLayout, concat_ranges
from secagg.sim import DropoutScript, aggregate_in_memory


def test_concat_ranges() -> None:
    out = concat_ranges(np.array([5, 0, 10]), np.array([3, 2, 1]))
    assert out.tolist() == [5, 6, 7, 0, 1, 10]


def test_layout_positions_and_validation() -> None:
    layout = BlockLayout((3, 2, 4), ((0, 2), (0, 1, 2), (1, 2), (0, 1)), min_holders=2)
    assert layout.dim == 9
    assert layout.holders == ((0, 1, 3), (1, 2, 3), (0, 1, 2))
    assert layout.positions([0, 2]).tolist() == [0, 1, 2, 5, 6, 7, 8]
    assert layout.local_positions(1, [2]).tolist() == [5, 6, 7, 8]
    assert layout.common_blocks(0, 1) == (0, 2)
    assert layout.input_length(2) == 6
    with pytest.raises(ConfigError, match="fewer than min_holders"):
        BlockLayout((3, 2), ((0,), (0, 1), (0,)), min_holders=2)
    with pytest.raises(ConfigError):
        BlockLayout((3,), ((0,), (0,)), min_holders=1)
    with pytest.raises(ConfigError):
        BlockLayout((3, 2), ((1, 0), (0, 1)), min_holders=2)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.uint64])
def test_expand_blocks_matches_ctr_streams(dtype: type) -> None:
    seed = rng.token_bytes(16)
    blocks, sizes = [3, 0, 7, 12], [5, 9, 1, 16]
    got = prg.expand_blocks(seed, blocks, sizes, dtype)
    want = np.concatenate(
        [prg.expand(seed, s, dtype, stream=b) for b, s in zip(blocks, sizes, strict=True)]
    )
    np.testing.assert_array_equal(got, want)


@st.composite
def partwise_rounds(draw: st.DrawFn) -> dict:
    n = draw(st.integers(4, 14))
    nb = draw(st.integers(1, 10))
    sizes = tuple(draw(st.lists(st.integers(1, 9), min_size=nb, max_size=nb)))
    min_holders = draw(st.integers(2, min(4, n)))
    holdings = [
        tuple(sorted(draw(st.sets(st.integers(0, nb - 1), min_size=1, max_size=nb))))
        for _ in range(n)
    ]
    # Repair: every held block gets at least min_holders holders.
    for b in range(nb):
        holders = [u for u in range(n) if b in holdings[u]]
        if 0 < len(holders) < min_holders:
            for u in range(n):
                if len(holders) >= min_holders:
                    break
                if b not in holdings[u]:
                    holdings[u] = tuple(sorted({*holdings[u], b}))
                    holders.append(u)
    kind = draw(st.sampled_from(["complete", "harary"])) if n >= 6 else "complete"
    drops = draw(st.sets(st.integers(0, n - 1), max_size=n // 3))
    return {
        "n": n,
        "layout": BlockLayout(sizes, tuple(holdings), min_holders),
        "kind": kind,
        "drops": drops,
        "bits": draw(st.sampled_from([8, 16, 20, 32, 40, 64])),
        "seed": draw(st.integers(0, 2**31)),
    }


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(partwise_rounds())
def test_per_block_sums_equal_plaintext_or_abort(s: dict) -> None:
    n, layout, bits = s["n"], s["layout"], s["bits"]
    if s["kind"] == "complete":
        g, t = complete_graph(n), max(2, (n - 1) // 2)
    else:
        k = 4 if n > 6 else 2
        g, t = harary_graph(n, k, rng.token_bytes(32)), 2
    config = RoundConfig(
        session_id=rng.token_bytes(16),
        round_index=3,
        graph=g,
        threshold=t,
        dim=layout.dim,
        modulus_bits=bits,
        layout=layout,
    )
    gen = np.random.default_rng(s["seed"])
    dtype = encoding.word_dtype(bits)
    inputs = {
        u: (
            gen.integers(0, 2**63, size=layout.input_length(u), dtype=np.uint64)
            & np.uint64(2**bits - 1)
        ).astype(dtype)
        for u in range(n)
    }
    script = DropoutScript({u: "masked_input" for u in s["drops"]})
    try:
        outcome = aggregate_in_memory(config, inputs, script)
    except ProtocolError as exc:
        assert isinstance(exc, (AbortedError, RemoteProtocolError))
        return
    result = outcome.result
    assert set(result.survivors) == set(range(n)) - s["drops"]
    expected = np.zeros(layout.dim, dtype=np.uint64)
    for u in result.survivors:
        expected[layout.positions(layout.holdings[u])] += inputs[u].astype(np.uint64)
    expected &= np.uint64(2**bits - 1) if bits < 64 else np.uint64(2**64 - 1)
    np.testing.assert_array_equal(result.total.astype(np.uint64), expected)
    alive = set(result.survivors)
    for b, holders in enumerate(layout.holders):
        count = sum(1 for h in holders if h in alive)
        assert result.block_survivors[b] == count
        # Never a sum over fewer than min_holders parties.
        assert count == 0 or count >= layout.min_holders
    # A party's traffic follows its part: its masked vector is B bits per coordinate it holds.
    for u in result.survivors:
        assert outcome.upload_bytes[u] >= encoding.packed_size(layout.input_length(u), bits)


def _partwise_config(n: int = 6, min_holders: int = 3) -> RoundConfig:
    # Block 0: parties 0..2 (exactly min_holders); block 1: everyone.
    holdings = tuple(((0, 1) if u < 3 else (1,)) for u in range(n))
    layout = BlockLayout((4, 4), holdings, min_holders=min_holders)
    return RoundConfig(
        session_id=rng.token_bytes(16),
        round_index=1,
        graph=complete_graph(n),
        threshold=2,
        dim=8,
        modulus_bits=16,
        layout=layout,
    )


def test_server_refuses_to_unmask_a_block_below_min_holders() -> None:
    config = _partwise_config()
    inputs = {u: np.ones(config.input_length(u), dtype=np.uint16) for u in range(6)}
    # Party 2 holds block 0 and drops before masking: block 0 keeps 2 < 3 surviving holders.
    with pytest.raises(AbortedError, match="min_holders"):
        aggregate_in_memory(config, inputs, DropoutScript({2: "masked_input"}))


def _held_shares_after_share_keys(config: RoundConfig, party: int) -> HeldShares:
    """Drive a round of 6 parties through ShareKeys; return what ``party`` holds."""
    server = ServerEngine(config)
    clients = {u: ClientEngine(config, u) for u in range(6)}
    pending = []
    for u, c in clients.items():
        c.set_input(np.ones(config.input_length(u), dtype=np.uint16))
        pending += [wire.encode(m) for m in c.start()]
    for _ in range(2):  # keys, then shares
        out = [m for d in pending for m in server.receive(d)]
        pending = [
            wire.encode(r) for m in out for r in clients[m.recipient].receive(wire.encode(m))
        ]
    held = clients[party]._held
    assert held is not None
    return held


def _thin_block_request(config: RoundConfig, party: int) -> wire.UnmaskRequest:
    """Party 2 reported dropped: block 0 keeps only 2 < min_holders surviving holders."""
    return wire.UnmaskRequest(
        config.session_id,
        config.round_index,
        wire.SERVER,
        party,
        survivors=(0, 1, 3, 4, 5),
        dropped=(2,),
    )


def test_party_refuses_an_unmask_request_that_would_reveal_a_thin_block() -> None:
    """Even if a (malicious) server asks anyway, a holder of the thin block reveals nothing."""
    config = _partwise_config()
    held = _held_shares_after_share_keys(config, 0)
    with pytest.raises(RemoteProtocolError, match="min_holders"):
        client_unmask(config, 0, held, _thin_block_request(config, 0), None)


def test_non_holders_refuse_to_unmask_the_holders_of_a_thin_block() -> None:
    """Found by the collusion audit: a malicious server asking the parties that do NOT hold a
    thin block for its holders' self-mask shares must get nothing either. Party 4 holds only
    block 1, but would reveal b_0 and b_1, whose block 0 is thin."""
    config = _partwise_config()
    held = _held_shares_after_share_keys(config, 4)
    with pytest.raises(RemoteProtocolError, match="min_holders"):
        client_unmask(config, 4, held, _thin_block_request(config, 4), None)


def test_withheld_delivery_cannot_isolate_a_holder_in_active_mode() -> None:
    """Found in review: a malicious server withholds the only co-holder's shares from a party,
    so that party masks that block with nobody, then asks everyone else for its self-mask
    share. The party signs its real partner set with its masked input, and every revealer
    checks the owner's blocks against that signed set: nobody answers."""
    from secagg.crypto import keys

    n, t = 5, 3
    signing = [keys.generate_ed25519() for _ in range(n)]
    # Block 1 is held by parties 0 and 1 only (min_holders 2).
    layout = BlockLayout((4, 4), ((0, 1), (0, 1), (0,), (0,), (0,)), min_holders=2)
    config = RoundConfig(
        session_id=rng.token_bytes(16),
        round_index=0,
        graph=complete_graph(n),
        threshold=t,
        dim=8,
        modulus_bits=32,
        active=True,
        verify_keys=tuple(pub for _, pub in signing),
        layout=layout,
    )
    clients = {u: ClientEngine(config, u, signing_key=signing[u][0]) for u in range(n)}
    advertised = {}
    for u, c in clients.items():
        c.set_input(np.ones(config.input_length(u), dtype=np.uint32))
        (advertised[u],) = c.start()

    def to(u: int, **fields: object) -> dict[str, object]:
        return {
            "session_id": config.session_id,
            "round_index": 0,
            "sender": wire.SERVER,
            "recipient": u,
            **fields,
        }

    sealed = {}
    for u, c in clients.items():
        entries = tuple(advertised[v].keys for v in config.neighbors(u))
        (sealed[u],) = c.receive(wire.KeyDirectory(**to(u, entries=entries)))
    masked = {}
    for v, c in clients.items():
        senders, cts = [], []
        for u in range(n):
            if u == v or (v == 0 and u == 1):  # the attack: withhold 1 -> 0
                continue
            senders.append(u)
            cts.append(sealed[u].ciphertexts[sealed[u].receivers.index(v)])
        delivery = wire.ShareDelivery(**to(v, senders=tuple(senders), ciphertexts=tuple(cts)))
        (masked[v],) = c.receive(delivery)
    assert masked[0].peers == (2, 3, 4)  # party 0 signed the partners it really has
    survivors = tuple(range(n))
    signatures = []
    for u, c in clients.items():
        (sig,) = c.receive(wire.SurvivorList(**to(u, survivors=survivors)))
        signatures.append(wire.PartySignature(u, sig.signature))
    revealed_b0 = []
    for u in range(1, n):
        partner_sets = tuple(
            wire.PartnerSet(w, masked[w].peers, masked[w].peers_signature)
            for w in config.neighbors(u)
        )
        request = wire.UnmaskRequest(
            **to(
                u,
                survivors=survivors,
                dropped=(),
                signatures=tuple(signatures),
                partner_sets=partner_sets,
            )
        )
        try:
            (response,) = clients[u].receive(request)
        except RemoteProtocolError as exc:
            assert "min_holders" in str(exc)
            continue
        if 0 in response.self_mask_owners:
            revealed_b0.append(u)
    assert revealed_b0 == []

"""Issue 8, items 1-3, and the engine defects of issue 9: per-neighbourhood certification of the
survivor list, block connectivity, the configuration digest, ClientPolicy, D', and engine API.

The split-list and per-component attacks themselves are replayed in tests/test_sparse_attacks.py
(and searched for systematically by the collusion audit); here are the mechanisms' own tests.
"""

from __future__ import annotations

import dataclasses
import secrets

import numpy as np
import pytest
from helpers import Router, decoded, make_config, plain_sum, random_inputs, run_round
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg import messages as wire
from secagg.config import ClientPolicy, RoundConfig
from secagg.crypto import keys
from secagg.engine import ClientEngine, ServerEngine, consistency
from secagg.engine._state import ClientState, ServerState
from secagg.errors import (
    AbortedError,
    ConfigError,
    LocalProtocolError,
    PolicyError,
    RemoteProtocolError,
)
from secagg.graph import complete_graph, harary_graph
from secagg.layout import BlockLayout
from secagg.sim import aggregate_in_memory

# -- certification ------------------------------------------------------------------------------


def test_sparse_active_round_completes_with_dropouts_and_bounded_signatures() -> None:
    """A ring-ordered Harary graph in active mode: exact sum with drops at every phase, and each
    party checks O(k) signatures (the signers within 3h ring positions), not t or n."""
    n, k, t = 60, 8, 5
    config, signing = make_config(n, t=t, kind="harary", k=k, active=True, dim=16, bits=32)
    inputs = random_inputs(n, 16, 32, seed=3)
    drops = {7: "masked_input", 21: "consistency", 40: "unmask"}
    out = run_round(config, signing, inputs, drops)
    assert out.result is not None, (out.error, out.client_errors)
    np.testing.assert_array_equal(
        out.result.total.astype(np.uint64), plain_sum(inputs, out.result.survivors, 32)
    )
    requests = decoded(out.server_outbox, wire.UnmaskRequest)
    assert requests
    bound = 6 * (k // 2) + 1
    assert max(len(r.signatures) for r in requests) <= bound < n


def _stopped_at_unmask(n: int, k: int, t: int) -> Router:
    config, signing = make_config(n, t=t, kind="harary", k=k, active=True, dim=4, bits=16)
    r = Router(config, signing, random_inputs(n, 4, 16, seed=1))
    r.run_until(ServerState.COLLECT_UNMASK)
    return r


def test_list_certified_only_far_away_is_refused() -> None:
    """t valid signatures on the very list the party signed, but from parties outside the
    neighbourhoods its reveals depend on: the old rule accepted it, the new one refuses."""
    r = _stopped_at_unmask(40, 6, 4)
    cfg = r.config
    me = 0
    genuine = r.pending_for(me)
    assert isinstance(genuine, wire.UnmaskRequest)
    assert cfg.graph.ring is not None
    ring = list(cfg.graph.ring)
    pos = ring.index(me)
    far = [ring[(pos + 20 + i) % 40] for i in range(cfg.threshold)]  # 20 positions away
    payload = consistency.list_payload(cfg, genuine.survivors, genuine.dropped)
    assert r.signing is not None
    sigs = tuple(wire.PartySignature(p, keys.sign(r.signing[p], payload)) for p in sorted(far))
    forged = dataclasses.replace(genuine, signatures=sigs)
    with consistency.legacy_rule_for_audit():
        legacy_client = _copy_client(r, me)
        (response,) = legacy_client.receive(wire.encode(forged))
        assert response.self_mask_owners  # the old rule answered
    client = _copy_client(r, me)
    with pytest.raises(RemoteProtocolError, match="not certified"):
        client.receive(wire.encode(forged))
    assert client.state is ClientState.FAILED
    # The genuine request is answered.
    (response,) = _copy_client(r, me).receive(wire.encode(genuine))
    assert response.self_mask_owners


def _copy_client(r: Router, party: int) -> ClientEngine:
    import copy

    return copy.deepcopy(r.clients[party])


def test_forged_partner_set_naming_non_neighbours_is_refused() -> None:
    r = _stopped_at_unmask(30, 6, 4)
    me = 0
    genuine = r.pending_for(me)
    assert isinstance(genuine, wire.UnmaskRequest)
    victim = genuine.partner_sets[0]
    outsider = next(
        p for p in range(30) if p != victim.party and p not in r.config.neighbors(victim.party)
    )
    peers = tuple(sorted({*victim.peers, outsider}))
    forged_set = wire.PartnerSet(victim.party, peers, victim.signature)
    forged = dataclasses.replace(genuine, partner_sets=(forged_set, *genuine.partner_sets[1:]))
    with pytest.raises(RemoteProtocolError, match=r"not its neighbours|partner-set"):
        _copy_client(r, me).receive(wire.encode(forged))


def test_too_many_signatures_are_refused_before_any_work() -> None:
    r = _stopped_at_unmask(40, 6, 4)
    genuine = r.pending_for(0)
    assert isinstance(genuine, wire.UnmaskRequest)
    padded = tuple(wire.PartySignature(p, bytes(64)) for p in range(40))
    with pytest.raises(RemoteProtocolError, match="more than"):
        _copy_client(r, 0).receive(wire.encode(dataclasses.replace(genuine, signatures=padded)))


def test_certification_counts_match_a_direct_count() -> None:
    cfg, _ = make_config(50, t=6, kind="harary", k=10, active=True)
    rng = np.random.default_rng(5)
    signers = set(rng.choice(50, size=30, replace=False).tolist())
    counts = consistency.certification_counts(cfg, signers, range(50))
    for x in range(50):
        assert counts[x] == len(signers & set(cfg.neighbors(x)))
    complete, _ = make_config(9, t=5, active=True)
    counts = consistency.certification_counts(complete, {0, 1, 2}, range(9))
    assert counts[0] == 2 and counts[5] == 3


def test_active_mode_refuses_graphs_without_an_argument() -> None:
    n = 10
    petersen_rows = [
        (1, 4, 5), (0, 2, 6), (1, 3, 7), (2, 4, 8), (0, 3, 9),
        (0, 7, 8), (1, 8, 9), (2, 5, 9), (3, 5, 6), (4, 6, 7),
    ]  # fmt: skip
    from secagg.graph import NeighborGraph

    petersen = NeighborGraph(n, "harary", tuple(tuple(sorted(r)) for r in petersen_rows))
    pairs = [keys.generate_ed25519() for _ in range(n)]
    with pytest.raises(ConfigError, match="ring order"):
        RoundConfig(
            secrets.token_bytes(16), 0, petersen, 2, 4, 16, active=True,
            verify_keys=tuple(p[1] for p in pairs),
        )  # fmt: skip
    # A ring that is too small for the lemma (n < 3h + 1) is refused too.
    with pytest.raises(ConfigError, match="3k/2"):
        make_config(12, t=5, kind="harary", k=8, active=True)
    # With c colluders a ring needs t >= h + 1 + c (lemma 3), above the 2t > k + c guard.
    with pytest.raises(ConfigError, match="colluders"):
        pairs = [keys.generate_ed25519() for _ in range(30)]
        RoundConfig(
            secrets.token_bytes(16), 0, harary_graph(30, 8, secrets.token_bytes(32)), 5, 4, 16,
            active=True, verify_keys=tuple(p[1] for p in pairs), tolerated_colluders=1,
        )  # fmt: skip
    # The same graph in semi-honest mode is fine.
    RoundConfig(secrets.token_bytes(16), 0, petersen, 2, 4, 16)


# -- block connectivity -------------------------------------------------------------------------


def _two_pair_layout(n: int, k: int, active: bool) -> tuple[RoundConfig, list[bytes] | None]:
    """Block 0 held by two ring-adjacent pairs far apart on a Harary ring: each holder keeps a
    partner holding the block (the old per-holder check passes), but the holders form two
    groups, so the server would learn each pair's sum."""
    base, signing = make_config(n, t=k // 2 + 1, kind="harary", k=k, active=active, dim=8)
    ring = base.graph.ring
    assert ring is not None
    pairs = {ring[0], ring[1], ring[n // 2], ring[n // 2 + 1]}
    holdings = tuple(((0, 1) if u in pairs else (1,)) for u in range(n))
    layout = BlockLayout((4, 4), holdings, min_holders=2)
    return dataclasses.replace(base, layout=layout), signing


def test_semi_honest_server_refuses_a_disconnected_block() -> None:
    config, _ = _two_pair_layout(12, 4, active=False)
    inputs = {u: np.ones(config.input_length(u), dtype=np.uint32) for u in range(12)}
    with pytest.raises(AbortedError, match="not connected"):
        aggregate_in_memory(config, inputs)


def test_active_revealers_refuse_a_block_without_enough_partners_holding_it() -> None:
    """Active mode: each revealed owner needs D_b partners holding the block (here
    min(|A_b|/2, h+1) = 2 for 4 holders), which the pairs do not have."""
    config, signing = _two_pair_layout(30, 6, active=True)
    inputs = {u: np.ones(config.input_length(u), dtype=np.uint32) for u in range(30)}
    with pytest.raises(AbortedError, match=r"one group|min_holders"):
        aggregate_in_memory(config, inputs, signing=signing)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(10, 30),
    half=st.integers(1, 3),
    fraction=st.floats(0.3, 1.0),
    seed=st.integers(0, 2**31),
)
def test_partwise_rounds_either_sum_connected_blocks_exactly_or_abort(
    n: int, half: int, fraction: float, seed: int
) -> None:
    """Random part-wise layouts on Harary rings (semi-honest): every completed round's blocks
    are connected among their surviving holders and the sums are exact; otherwise a typed
    abort. Never a per-group sum."""
    k = 2 * half
    if k >= n - 1:
        return
    base, _ = make_config(n, t=max(2, half), kind="harary", k=k, dim=6)
    rng = np.random.default_rng(seed)
    holdings = []
    for _ in range(n):
        mine = tuple(b for b in range(3) if rng.random() < fraction)
        holdings.append(mine)
    counts = [sum(b in h for h in holdings) for b in range(3)]
    if any(0 < c < 2 for c in counts):
        return
    layout = BlockLayout((2, 2, 2), tuple(holdings), min_holders=2)
    config = dataclasses.replace(base, layout=layout)
    inputs = {u: rng.integers(0, 100, config.input_length(u)).astype(np.uint32) for u in range(n)}
    from secagg.engine.unmask import disconnected_blocks

    partners = {u: config.neighbors(u) for u in range(n)}
    split = disconnected_blocks(config, set(range(n)), partners)
    try:
        out = aggregate_in_memory(config, inputs)
    except AbortedError:
        return
    assert not split
    expected = np.zeros(6, dtype=np.uint64)
    for u in range(n):
        pos = layout.positions(list(layout.holdings[u]))
        expected[pos] += inputs[u].astype(np.uint64)
    assert out.result is not None
    np.testing.assert_array_equal(out.result.total.astype(np.uint64), expected % 2**32)


# -- configuration digest and policy ------------------------------------------------------------


def test_digest_covers_every_field_and_keys_depend_on_it() -> None:
    config, _ = make_config(8, t=3, dim=5)
    variants = [
        dataclasses.replace(config, round_index=1),
        dataclasses.replace(config, threshold=4),
        dataclasses.replace(config, dim=6),
        dataclasses.replace(config, modulus_bits=31),
        dataclasses.replace(config, session_id=secrets.token_bytes(16)),
        dataclasses.replace(config, graph=harary_graph(8, 4, secrets.token_bytes(32))),
        dataclasses.replace(
            config, layout=BlockLayout((2, 3), tuple((0, 1) for _ in range(8)), min_holders=3)
        ),
    ]
    digests = {config.digest, *(v.digest for v in variants)}
    assert len(digests) == len(variants) + 1
    from secagg.engine.masked_input import mask_context
    from secagg.engine.masking import pairwise_seed

    a = pairwise_seed(mask_context(config), b"k" * 32, 1, 2)
    b = pairwise_seed(mask_context(variants[1]), b"k" * 32, 1, 2)
    assert a != b


def test_a_party_given_another_configuration_cannot_join_silently() -> None:
    """The server hands party 0 a downgraded configuration (another threshold): its shares and
    keys are bound to that configuration's digest, so its neighbours refuse them and the
    round never sums anything that disagrees."""
    config, _ = make_config(8, t=4, dim=4, bits=16)
    downgraded = dataclasses.replace(config, threshold=2)
    inputs = random_inputs(8, 4, 16, seed=2)
    r = Router(config, None, inputs)
    r.clients[0] = ClientEngine(downgraded, 0)
    out = r.run()
    if out.result is not None:
        assert 0 not in out.result.survivors
        np.testing.assert_array_equal(
            out.result.total.astype(np.uint64), plain_sum(inputs, out.result.survivors, 16)
        )
    assert any(isinstance(e, RemoteProtocolError) for e in out.client_errors.values())


def test_client_policy_refuses_downgrades_with_named_settings() -> None:
    config, _ = make_config(8, t=3)
    with pytest.raises(PolicyError, match="threshold 3 < policy minimum 4"):
        ClientEngine(config, 0, policy=ClientPolicy(min_threshold=4))
    with pytest.raises(PolicyError, match="requires active"):
        ClientEngine(config, 0, policy=ClientPolicy(require_active=True))
    with pytest.raises(PolicyError, match="neighbours"):
        ClientEngine(config, 0, policy=ClientPolicy(min_neighbors=10))
    layout = BlockLayout((2, 2), tuple((0, 1) for _ in range(8)), min_holders=2)
    with pytest.raises(PolicyError, match="min_holders 2 < policy minimum 3"):
        ClientEngine(
            dataclasses.replace(config, layout=layout, dim=4), 0, policy=ClientPolicy(min_holders=3)
        )
    active, signing = make_config(8, t=5, active=True)
    assert signing is not None
    ClientEngine(active, 0, signing_key=signing[0], policy=ClientPolicy(require_active=True))


def test_config_fields_round_trip() -> None:
    pairs = [keys.generate_ed25519() for _ in range(30)]
    layout = BlockLayout((3, 4), tuple(((0,), (0, 1))[u % 2] for u in range(30)), min_holders=3)
    configs = [
        make_config(6, t=3)[0],
        make_config(30, t=5, kind="harary", k=8)[0],
        RoundConfig(
            secrets.token_bytes(16),
            7,
            harary_graph(30, 8, secrets.token_bytes(32)),
            6,
            7,
            20,
            active=True,
            verify_keys=tuple(p[1] for p in pairs),
            layout=layout,
            tolerated_colluders=1,
        ),
    ]
    import json

    for config in configs:
        fields = json.loads(json.dumps(config.to_fields()))
        again = RoundConfig.from_fields(fields)
        assert again == config and again.digest == config.digest


@pytest.mark.parametrize(
    "mutate",
    [
        lambda f: f.pop("dim"),
        lambda f: f.update(extra=1),
        lambda f: f.update(version=99),
        lambda f: f.update(session_id="zz"),
        lambda f: f.update(threshold=2.5),
        lambda f: f["graph"].update(ring=[0, 0, 1, 2, 3, 4, 5, 6, 7, 8]),
        lambda f: f["graph"].update(kind="torus"),
    ],
)
def test_config_fields_invalid_are_config_errors(mutate) -> None:  # type: ignore[no-untyped-def]
    config, _ = make_config(10, t=3, kind="harary", k=4)
    fields = config.to_fields()
    mutate(fields)
    with pytest.raises(ConfigError):
        RoundConfig.from_fields(fields)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("dim", 10.5),
        ("threshold", 2.5),
        ("modulus_bits", 16.0),
        ("round_index", 1.5),
        ("tolerated_colluders", 0.5),
        ("dim", "8"),
        ("threshold", True),
    ],
)
def test_round_config_refuses_non_integers_naming_them(name: str, value: object) -> None:
    config, _ = make_config(6, t=3)
    with pytest.raises(ConfigError, match=f"{name} must be an integer"):
        dataclasses.replace(config, **{name: value})


def test_round_config_accepts_numpy_integers_as_ints() -> None:
    config, _ = make_config(6, t=3)
    again = dataclasses.replace(config, dim=np.int64(8), threshold=np.int32(3))
    assert type(again.dim) is int and type(again.threshold) is int


# -- D', empty holdings, engine API ---------------------------------------------------------------


def test_dropped_party_nobody_masked_with_does_not_abort_the_round() -> None:
    """Party v shares its keys, but all its neighbours drop before sharing theirs: nobody masked
    with v, so v's mask key is not needed (and nobody holds its shares). The old server asked
    for it anyway once v dropped, and lost the round."""
    n, k = 20, 4
    config, _ = make_config(n, t=2, kind="harary", k=k, dim=4, bits=16)
    v = 0
    drops = {u: "share_keys" for u in config.neighbors(v)}
    drops[v] = "masked_input"
    inputs = random_inputs(n, 4, 16, seed=8)
    out = run_round(config, None, inputs, drops)
    assert out.result is not None, out.error
    assert v in out.result.dropped
    np.testing.assert_array_equal(
        out.result.total.astype(np.uint64), plain_sum(inputs, out.result.survivors, 16)
    )
    for request in decoded(out.server_outbox, wire.UnmaskRequest):
        assert v not in request.dropped


def test_party_with_no_blocks_takes_part_as_a_share_holder() -> None:
    layout = BlockLayout((4, 4), ((0, 1), (0, 1), (0,), (0,), ()), min_holders=2)
    config = RoundConfig(secrets.token_bytes(16), 0, complete_graph(5), 3, 8, 32, layout=layout)
    inputs = {u: np.ones(config.input_length(u), dtype=np.uint32) for u in range(5)}
    out = aggregate_in_memory(config, inputs)
    assert out.result is not None and 4 in out.result.survivors and not out.refusals
    np.testing.assert_array_equal(out.result.total, [4, 4, 4, 4, 2, 2, 2, 2])


def test_server_done_and_failed() -> None:
    config, _ = make_config(5, t=3, dim=4, bits=16)
    r = Router(config, None, random_inputs(5, 4, 16, seed=1))
    assert not r.server.done and not r.server.failed
    r.run()
    assert r.server.done and not r.server.failed and r.server.result is not None
    server = ServerEngine(config)
    with pytest.raises(AbortedError):
        server.close_phase()
    assert server.failed and not server.done


def test_after_a_local_mistake_every_call_names_the_failure() -> None:
    config, _ = make_config(5, t=3, dim=4, bits=16)
    client = ClientEngine(config, 0)
    with pytest.raises(LocalProtocolError):
        client.set_input(np.zeros(3, dtype=np.uint16))  # wrong length
    for call in (client.start, lambda: client.set_input(np.zeros(4, dtype=np.uint16))):
        with pytest.raises(LocalProtocolError, match=r"this engine has failed: .*"):
            call()
    with pytest.raises(LocalProtocolError, match="this engine has failed"):
        client.receive(b"\x00")


def test_signature_router_forwards_exactly_the_signers_within_3h() -> None:
    """The server's indexed selection equals the definition (signers within 3h ring positions
    of the recipient) on random rings and signer sets, wrap-around included."""
    from secagg.engine.consistency import SignatureRouter, _ring_positions

    checked = 0
    for trial in range(30):
        rng = np.random.default_rng(trial)
        n = int(rng.integers(10, 80))
        k = 2 * int(rng.integers(1, max(2, (2 * (n - 1) // 3) // 2)))
        if k >= n - 1 or n < 3 * (k // 2) + 1:
            continue
        cfg, _ = make_config(n, t=k // 2 + 1, kind="harary", k=k, active=True)
        chosen = rng.choice(n, size=int(rng.integers(1, n)), replace=False)
        sigs = {int(p): bytes(64) for p in chosen}
        router = SignatureRouter(cfg, sigs)
        pos, h = _ring_positions(cfg), k // 2
        for u in range(n):
            got = [s.party for s in router.for_recipient(u)]
            offsets = (pos[sorted(sigs)] - pos[u]) % n
            near = [o <= 3 * h or o >= n - 3 * h for o in offsets.tolist()]
            want = [q for q, keep in zip(sorted(sigs), near, strict=True) if keep]
            assert got == want
        checked += 1
    assert checked >= 10

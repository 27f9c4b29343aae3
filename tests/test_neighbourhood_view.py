"""Red team: unmask requests that name only the recipient's partners (issue 12, commit aa30ba2).

In semi-honest whole-vector rounds without tolerated colluders
(:func:`secagg.engine.unmask.neighbourhood_view`) the server now sends party u the list
({u} plus u's surviving partners, u's dropped partners) instead of (U3, D'). The claim under
attack: this is SecAgg+'s O(log n) request (Bell et al. 2020, section 3) and an honest party
reveals nothing it would not have revealed before.

The argument the tests check, with real engines: ``client_unmask`` never reads a list entry
outside {u} and u's neighbours except in three shape checks (ids in range, lists disjoint,
|U3| >= t), and the last is implied by its own "t surviving partners" check (U3 contains u and
its surviving partners, and u is not its own partner, so |U3| >= t + 1). Hence

* whatever a request gets from u, the request cut down to u's neighbourhood gets too, and the
  cut-down request is answered exactly as every full list that agrees with it on u's partners
  (``test_an_answer_depends_only_on_the_partners_status``): a lying server can obtain nothing
  with a short list that it could not obtain with a full one, and the other way round;
* the known semi-honest limit (tell some of v's partners "v survived" and others "v dropped":
  outside that mode's threat model, docs/protocol.md) is exactly as strong with short lists as
  with full ones (``test_split_story_attack_is_the_same_with_short_and_full_lists``);
* modes whose checks need the global list (active, part-wise, tolerated colluders) still get it
  from the honest server, and a server that sends them short lists is refused or gets the
  answer the full list would have got.

Phases and drops are scripted with :class:`helpers.Router` (everything crosses as wire bytes).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import pytest
from helpers import PHASES, Router, alive, decoded, make_config, plain_sum
from hypothesis import event, given, settings
from hypothesis import strategies as st

from secagg import messages as wire
from secagg.config import RoundConfig
from secagg.engine import ClientEngine, consistency
from secagg.engine._state import ClientState, ServerState
from secagg.engine.unmask import neighbourhood_view
from secagg.errors import AbortedError, LocalProtocolError, RemoteProtocolError
from secagg.layout import BlockLayout
from secagg.messages import SERVER

DIM, BITS = 8, 16
SECRET_ATTRS = ("_secrets", "_held", "_self_mask_seed", "_input", "_receive_keys")
#: Fixed graph seeds: the ring layouts (hence who is whose partner) are the same in every run.
SEED_A = bytes(range(32))
SEED_B = bytes(range(32, 64))

Lists = tuple[tuple[int, ...], tuple[int, ...]]
#: (self-mask owners, their shares, mask-key owners, their shares): everything a reply reveals.
Answer = tuple[tuple[int, ...], tuple[bytes, ...], tuple[int, ...], tuple[bytes, ...]]


# -- a round stopped before unmasking -------------------------------------------------------------


def inputs_for(config: RoundConfig, seed: int) -> dict[int, npt.NDArray[np.uint64]]:
    gen = np.random.default_rng(seed)
    return {
        u: gen.integers(0, 1 << BITS, size=config.input_length(u), dtype=np.uint64)
        for u in range(config.num_parties)
    }


def stopped(
    config: RoundConfig,
    signing: list[bytes] | None = None,
    drops: Mapping[int, str] | None = None,
    *,
    stop_at: ServerState = ServerState.COLLECT_UNMASK,
    seed: int = 7,
) -> Router:
    """An honest round run until the server enters ``stop_at`` (that phase's messages pending)."""
    r = Router(config, signing, inputs_for(config, seed), dict(drops or {}))
    r.run_until(stop_at)
    return r


def peers(r: Router, u: int) -> tuple[int, ...]:
    """P(u): the neighbours whose shares u holds (those it masked with)."""
    held = r.clients[u]._held
    assert held is not None
    return held.peers


def global_lists(r: Router) -> Lists:
    """(U3, D'): what the server sent every party before aa30ba2, computed from the parties."""
    u3 = tuple(sorted(r.masked_senders))
    masked_with = set().union(*(peers(r, u) for u in u3))
    return u3, tuple(sorted(masked_with - set(u3)))


def cut(u: int, partners: tuple[int, ...], lists: Lists) -> Lists:
    """A list cut down to u's neighbourhood view: u, its partners listed alive, its partners
    listed dropped (what the honest server now sends when ``lists`` is the truth)."""
    alive, gone = set(lists[0]), set(lists[1])
    return (
        tuple(sorted({u, *(w for w in partners if w in alive)})),
        tuple(w for w in partners if w in gone),
    )


def request(config: RoundConfig, u: int, lists: Lists, **extra: object) -> bytes:
    message = wire.UnmaskRequest(
        config.session_id,
        config.round_index,
        SERVER,
        u,
        survivors=lists[0],
        dropped=lists[1],
        **extra,  # type: ignore[arg-type]
    )
    return wire.encode(message)


def assert_wiped(client: ClientEngine) -> None:
    for name in SECRET_ATTRS:
        assert getattr(client, name, None) is None, name


def ask(client: ClientEngine, data: bytes) -> Answer | None:
    """Hand ``client`` one unmask request: its reply, or None when it refuses (then it returned
    nothing, is FAILED with a RemoteProtocolError and dropped every secret)."""
    try:
        out = client.receive(data)
    except RemoteProtocolError:
        assert client.state is ClientState.FAILED
        assert isinstance(client.error, RemoteProtocolError)
        assert_wiped(client)
        return None
    (reply,) = out
    assert isinstance(reply, wire.UnmaskResponse)
    assert client.state is ClientState.DONE
    return (
        reply.self_mask_owners,
        reply.self_mask_shares,
        reply.mask_key_owners,
        reply.mask_key_shares,
    )


def answer(r: Router, u: int, lists: Lists, **extra: object) -> Answer | None:
    """What u would answer to this request (on a copy of its engine, so u can be asked again)."""
    return ask(copy.deepcopy(r.clients[u]), request(r.config, u, lists, **extra))


def ring_party(config: RoundConfig, position: int) -> int:
    ring = config.graph.ring
    assert ring is not None
    return int(ring[position % config.num_parties])


def some_party(config: RoundConfig, position: int) -> int:
    """The party at this ring position, or party ``position`` on the complete graph."""
    return position if config.graph.ring is None else ring_party(config, position)


# -- the honest server's requests -----------------------------------------------------------------


@pytest.mark.parametrize(("kind", "k"), [("complete", None), ("harary", 4), ("harary", 6)])
def test_honest_server_sends_each_party_its_neighbourhood_view(kind: str, k: int | None) -> None:
    """The requests are exactly ({u} + surviving partners, dropped partners), at most k + 1 ids
    on a ring whatever n, equal to the full (U3, D') on the complete graph, built without
    re-validation (``messages.trusted``) but equal to the checked construction; the honest
    parties all answer and the sum is exact."""
    n, t = 16, 2
    config, _ = make_config(n, t=t, dim=DIM, bits=BITS, kind=kind, k=k, graph_seed=SEED_A)
    spread = [some_party(config, p) for p in (0, 5, 10)]
    drops = {spread[0]: "share_keys", spread[1]: "masked_input", spread[2]: "unmask"}
    r = stopped(config, drops=drops)
    assert neighbourhood_view(config)
    full = global_lists(r)
    for m in r.pending:
        assert isinstance(m, wire.UnmaskRequest)
        u = m.recipient
        assert (m.survivors, m.dropped) == cut(u, peers(r, u), full)
        checked = wire.UnmaskRequest(
            m.session_id, m.round_index, SERVER, u, survivors=m.survivors, dropped=m.dropped
        )
        assert checked == m and wire.encode(checked) == wire.encode(m)
        if k is not None:
            assert len(m.survivors) + len(m.dropped) <= k + 1
        else:
            assert (m.survivors, m.dropped) == full
    outcome = r.run()
    assert outcome.error is None and outcome.result is not None
    assert not any(isinstance(e, RemoteProtocolError) for e in outcome.client_errors.values())
    assert outcome.result.survivors == full[0]
    want = plain_sum(r.inputs, outcome.result.survivors, BITS)  # type: ignore[arg-type]
    assert np.array_equal(outcome.result.total, want)


def _active_ring() -> tuple[RoundConfig, list[bytes] | None]:
    # n >= 3h + 1, 2t > k and t >= h + 1 (docs/protocol.md, "Active security on sparse graphs").
    return make_config(
        10, t=3, dim=DIM, bits=BITS, kind="harary", k=4, active=True, graph_seed=SEED_A
    )


def _part_wise_ring() -> tuple[RoundConfig, list[bytes] | None]:
    """Harary(10, 4), t = 2, two blocks held by everyone, min_holders = 4: every holder needs
    3 surviving partners on each block (one drop leaves its ring neighbours exactly 3)."""
    config, _ = make_config(10, t=2, dim=DIM, bits=BITS, kind="harary", k=4, graph_seed=SEED_A)
    layout = BlockLayout((4, 4), tuple((0, 1) for _ in range(10)), min_holders=4)
    return dataclasses.replace(config, layout=layout, dim=layout.dim), None


def _colluder_ring() -> tuple[RoundConfig, list[bytes] | None]:
    """Harary(10, 6) with one tolerated colluder: t >= h + 1 + c = 5 (n = 3h + 1)."""
    config, _ = make_config(10, t=5, dim=DIM, bits=BITS, kind="harary", k=6, graph_seed=SEED_A)
    return dataclasses.replace(config, tolerated_colluders=1), None


FULL_LIST_MODES = {
    "active complete": lambda: make_config(7, t=4, dim=DIM, bits=BITS, active=True),
    "active harary": _active_ring,
    "part-wise harary": _part_wise_ring,
    "colluders harary": _colluder_ring,
}


@pytest.mark.parametrize("mode", sorted(FULL_LIST_MODES))
def test_modes_whose_checks_need_the_global_list_still_get_it(mode: str) -> None:
    config, signing = FULL_LIST_MODES[mode]()
    assert not neighbourhood_view(config)
    r = stopped(config, signing, {some_party(config, 3): "masked_input"})
    full = global_lists(r)
    assert r.pending
    for m in r.pending:
        assert isinstance(m, wire.UnmaskRequest)
        assert (m.survivors, m.dropped) == full


# -- what a party reveals depends only on its partners' status -------------------------------------


@pytest.fixture(scope="module")
def ring_round() -> Router:
    """Harary(12, 4), t = 2: one party gone before ShareKeys (a neighbour some parties never
    masked with), one before its masked input (a dropped partner)."""
    config, _ = make_config(12, t=2, dim=DIM, bits=BITS, kind="harary", k=4, graph_seed=SEED_B)
    return stopped(
        config, drops={ring_party(config, 0): "share_keys", ring_party(config, 6): "masked_input"}
    )


STATUS = st.sampled_from(["alive", "alive", "alive", "dropped", "dropped", "absent", "both"])
# Biased towards requests a party can accept, so that both outcomes are exercised.
SELF = st.sampled_from(["alive"] * 12 + ["dropped", "absent", "both"])
PARTNER = st.sampled_from(["alive"] * 8 + ["dropped"] * 6 + ["absent", "both"])
NEVER = st.sampled_from(["absent"] * 6 + ["alive", "dropped"])  # neighbour u never masked with
OTHER = st.sampled_from(["alive"] * 4 + ["dropped"] * 4 + ["absent"] * 4 + ["both"])


def _draw_status(
    data: st.DataObject, n: int, u: int, partners: set[int], neighbours: set[int]
) -> dict[int, str]:
    """A status for every party of the round as ``u`` could be told it, drawn per kind of
    party (u itself, its partners, neighbours it never masked with, everyone else)."""
    status = {}
    for p in range(n):
        if p == u:
            kind = SELF
        elif p in partners:
            kind = PARTNER
        else:
            kind = NEVER if p in neighbours else OTHER
        status[p] = data.draw(kind, label=f"status of {p}")
    return status


def _lists_from(status: Mapping[int, str]) -> Lists:
    alive = tuple(sorted(p for p, s in status.items() if s in ("alive", "both")))
    gone = tuple(sorted(p for p, s in status.items() if s in ("dropped", "both")))
    return alive, gone


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_an_answer_depends_only_on_the_partners_status(
    ring_round: Router, data: st.DataObject
) -> None:
    """For any request R (ids out of range, overlaps, omissions and all) and any survivor u:

    1. u answers R only as it answers cut(R), R cut down to u's neighbourhood view: no list
       gets more from u than the short list does;
    2. cut(R) is answered exactly like every full list that agrees with it on u and u's
       neighbours (non-neighbours added on either side): no short list gets more than a full
       one got before the change;
    3. when u answers, |U3| >= t + 1 and t partners survived: the size check never decided."""
    r = ring_round
    cfg = r.config
    t = cfg.threshold
    u = data.draw(st.sampled_from(sorted(r.masked_senders)), label="party")
    partners = peers(r, u)
    neighbours = set(cfg.neighbors(u))
    status = _draw_status(data, cfg.num_parties, u, set(partners), neighbours)
    if data.draw(st.sampled_from([False] * 7 + [True]), label="ids outside the round"):
        status[cfg.num_parties] = status[cfg.num_parties + 3] = "alive"
    lists = _lists_from(status)
    got = answer(r, u, lists)
    short = cut(u, partners, lists)
    got_short = answer(r, u, short)
    assert got is None or got == got_short
    event("R answered" if got is not None else "R refused")
    event("cut(R) answered" if got_short is not None else "cut(R) refused")
    # Any full extension: every other party (not u's neighbour) on one side or the other.
    outside = [p for p in range(cfg.num_parties) if p != u and p not in cfg.neighbors(u)]
    sides = {p: data.draw(st.sampled_from(["alive", "dropped", "absent"])) for p in outside}
    full = (
        tuple(sorted({*short[0], *(p for p, s in sides.items() if s == "alive")})),
        tuple(sorted({*short[1], *(p for p, s in sides.items() if s == "dropped")})),
    )
    assert answer(r, u, full) == got_short
    for reply in (got, got_short):
        if reply is not None:
            assert set(reply[0]) | set(reply[2]) <= set(partners)
            assert not set(reply[0]) & set(reply[2])
    if got is not None:
        alive = set(lists[0])
        assert len(alive & set(partners)) >= t and len(alive) >= t + 1


@pytest.fixture(scope="module")
def wide_round() -> Router:
    """Complete graph n = 8, t = 5 (|U3| < t is easy to draw); party 7 gone before ShareKeys."""
    config, _ = make_config(8, t=5, dim=DIM, bits=BITS)
    return stopped(config, drops={7: "share_keys"})


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_survivor_count_check_is_implied_by_the_partner_check(
    wide_round: Router, data: st.DataObject
) -> None:
    """check_list_shape's |U3| >= t is implied by the t-surviving-partners check of
    client_unmask (and of client_sign). Proof: P(u) is a set of u's neighbours, so u is not in
    it; u in U3 is checked, so |U3| >= |U3 ∩ P(u)| + 1. A list the size check refuses has
    |U3| < t, hence |U3 ∩ P(u)| <= t - 2 < t and the partner check refuses it as well. Here:
    random lists with u on them, ids in range and no overlap (the other shape checks pass),
    and the real engine refuses exactly those that the partner predicate alone refuses."""
    r = wide_round
    cfg = r.config
    t = cfg.threshold
    u = data.draw(st.sampled_from(sorted(r.masked_senders)), label="party")
    partners = set(peers(r, u))
    assert u not in partners
    status = {p: data.draw(STATUS, label=f"status of {p}") for p in range(cfg.num_parties)}
    status = {p: ("alive" if s == "both" else s) for p, s in status.items()}
    status[u] = "alive"
    for p in partners:  # every partner accounted for: only the counting checks can refuse
        if status[p] == "absent":
            status[p] = "dropped"
    for p in set(cfg.neighbors(u)) - partners:
        status[p] = "absent"
    alive, gone = _lists_from(status)
    partner_rule = len(set(alive) & partners) >= t
    try:
        consistency.check_list_shape(cfg, u, alive, gone)
    except RemoteProtocolError as exc:  # the only shape check these lists can fail
        assert "below the threshold" in str(exc) and len(alive) < t
        assert not partner_rule
    event(f"|U3| < t: {len(alive) < t}; partner rule holds: {partner_rule}")
    assert (answer(r, u, (alive, gone)) is not None) == partner_rule


def test_survivor_count_check_in_client_sign_is_implied_too() -> None:
    """Active mode signs before it reveals: client_sign applies both checks; a list with fewer
    than t survivors always has fewer than t surviving partners too (same proof)."""
    config, signing = make_config(7, t=4, dim=DIM, bits=BITS, active=True)
    assert signing is not None
    partners = tuple(p for p in range(7) if p != 0)
    for size in range(1, 7):
        for listed in itertools.combinations(range(7), size):
            if 0 not in listed:
                continue
            gone = tuple(p for p in range(7) if p not in listed)
            partner_rule = len(set(listed) & set(partners)) >= config.threshold
            try:
                consistency.client_sign(config, 0, signing[0], listed, gone, partners)
                signed = True
            except RemoteProtocolError:
                signed = False
            assert signed == partner_rule
            if size < config.threshold:
                assert not partner_rule


# -- the attacks of the brief, with short lists ----------------------------------------------------


def short_forgeries(r: Router, u: int, never: int) -> dict[str, Lists]:
    """Forged neighbourhood views for u: each must be refused. ``never``: a neighbour of u that
    dropped before ShareKeys (u never masked with it)."""
    cfg = r.config
    t = cfg.threshold
    partners = peers(r, u)
    outside = [p for p in range(cfg.num_parties) if p != u and p not in cfg.neighbors(u)]
    few = partners[: t - 1]  # t - 1 partners alive, the rest "dropped"
    rest = tuple(p for p in partners if p not in few)
    honest = cut(u, partners, global_lists(r))
    v = partners[0]
    return {
        "fewer than t surviving partners": (tuple(sorted({u, *few})), rest),
        "fewer than t surviving partners, padded with non-neighbours": (
            tuple(sorted({u, *few, *outside})),
            rest,
        ),
        "a partner both alive and dropped": (honest[0], tuple(sorted({*honest[1], v}))),
        "the party itself dropped": (
            tuple(p for p in honest[0] if p != u),
            tuple(sorted({*honest[1], u})),
        ),
        "the party itself left out": (tuple(p for p in honest[0] if p != u), honest[1]),
        "a partner left out": (
            tuple(p for p in honest[0] if p != v),
            tuple(p for p in honest[1] if p != v),
        ),
        "a neighbour it never masked with, alive": (tuple(sorted({*honest[0], never})), honest[1]),
        "a neighbour it never masked with, dropped": (
            honest[0],
            tuple(sorted({*honest[1], never})),
        ),
        "an id outside the round": (tuple(sorted({*honest[0], cfg.num_parties})), honest[1]),
    }


@pytest.mark.parametrize("kind", ["complete", "harary"])
def test_forged_neighbourhood_views_are_refused(kind: str) -> None:
    n, t = 10, 3
    config, _ = make_config(
        n,
        t=t,
        dim=DIM,
        bits=BITS,
        kind=kind,
        k=None if kind == "complete" else 6,
        graph_seed=SEED_A,
    )
    never = some_party(config, 0)
    r = stopped(config, drops={never: "share_keys"})
    checked = 0
    for u in sorted(r.masked_senders):
        if never not in config.neighbors(u):
            continue
        forgeries = short_forgeries(r, u, never)
        for name, lists in forgeries.items():
            assert answer(r, u, lists) is None, name
        checked += 1
        # Control: the honest view is answered, with one kind of share per partner.
        reply = answer(r, u, cut(u, peers(r, u), global_lists(r)))
        assert reply is not None and set(reply[0]) | set(reply[2]) == set(peers(r, u))
    assert checked >= 2


def test_non_neighbours_on_a_short_list_get_nothing() -> None:
    """A lying server that adds non-neighbours to a party's view (as survivors or dropped)
    receives shares of its partners only: it holds nothing else, and no partner changes side."""
    config, _ = make_config(12, t=2, dim=DIM, bits=BITS, kind="harary", k=4, graph_seed=SEED_B)
    r = stopped(config)
    for u in range(12):
        outside = [p for p in range(12) if p != u and p not in config.neighbors(u)]
        honest = cut(u, peers(r, u), global_lists(r))
        base = answer(r, u, honest)
        assert base is not None
        half = len(outside) // 2
        padded = (
            tuple(sorted({*honest[0], *outside[:half]})),
            tuple(sorted({*honest[1], *outside[half:]})),
        )
        assert answer(r, u, padded) == base


def test_one_party_answers_one_view_only() -> None:
    """Two contradicting views to the same party (v alive, then v dropped): the second gets
    nothing, so one party never hands over both shares of a partner."""
    config, _ = make_config(12, t=2, dim=DIM, bits=BITS, kind="harary", k=4, graph_seed=SEED_B)
    r = stopped(config)
    u = 0
    partners = peers(r, u)
    v = partners[0]
    client = copy.deepcopy(r.clients[u])
    first = ask(client, request(config, u, (tuple(sorted({u, *partners})), ())))
    assert first is not None and v in first[0]
    second = (tuple(sorted({u, *partners} - {v})), (v,))
    with pytest.raises(LocalProtocolError):
        client.receive(request(config, u, second))
    assert client.state is ClientState.DONE
    assert_wiped(client)


def _forged_request(config: RoundConfig, u: int, lists: Lists) -> wire.UnmaskRequest:
    """An UnmaskRequest carrying ``lists`` as they are (repeats, any order): the dataclass
    checks are bypassed the way a host handing Message objects to the engine would."""
    base = wire.UnmaskRequest(
        config.session_id, config.round_index, SERVER, u, survivors=(u,), dropped=()
    )
    forged = copy.copy(base)
    object.__setattr__(forged, "survivors", lists[0])
    object.__setattr__(forged, "dropped", lists[1])
    return forged


def test_repeated_ids_cannot_fake_t_surviving_partners() -> None:
    """A short view that repeats one surviving partner t times (the rest "dropped"), or lists
    it out of order: refused by the codec on the wire and, passed as a Message object, by the
    engine (it counts distinct partners)."""
    config, _ = make_config(12, t=3, dim=DIM, bits=BITS, kind="harary", k=4, graph_seed=SEED_B)
    r = stopped(config)
    for u in range(0, 12, 3):
        partners = peers(r, u)
        one, rest = partners[0], partners[1:]
        outside = [p for p in range(12) if p != u and p not in config.neighbors(u)]
        padded = (tuple(sorted((u, *[one] * config.threshold))), rest)
        # With non-neighbours added |U3| >= t holds, so the partner count is what refuses.
        padded_wide = (tuple(sorted((u, *outside, *[one] * config.threshold))), rest)
        shuffled = (tuple(sorted({u, *partners}, reverse=True)), ())
        for lists in (padded, padded_wide, shuffled):
            forged = _forged_request(config, u, lists)
            with pytest.raises(wire.MessageDecodeError):
                wire.decode(wire.encode(forged))
            client = copy.deepcopy(r.clients[u])
            if lists is not shuffled:
                match = "below the threshold" if lists is padded else "surviving neighbours"
                with pytest.raises(RemoteProtocolError, match=match):
                    client.receive(forged)
                assert_wiped(client)
            else:  # the honest view's set in another order: the honest view's answer
                (message,) = client.receive(forged)
                assert isinstance(message, wire.UnmaskResponse)
                canonical = answer(r, u, (tuple(sorted({u, *partners})), ()))
                assert canonical is not None
                assert (message.self_mask_owners, message.self_mask_shares) == canonical[:2]
                assert message.mask_key_owners == ()


# -- the split-story attack (semi-honest mode's documented limit) ----------------------------------


def _collect(answers: Mapping[int, Answer | None], v: int) -> tuple[set[int], set[int]]:
    """Holders that revealed a share of b_v, and holders that revealed a share of s_v."""
    seeds, mkeys = set(), set()
    for holder, reply in answers.items():
        if reply is None:
            continue
        if v in reply[0]:
            seeds.add(holder)
        if v in reply[2]:
            mkeys.add(holder)
    return seeds, mkeys


SPLITS = [
    ("harary", 2, 0),
    ("harary", 2, 1),
    ("harary", 3, 0),
    ("harary", 3, 1),
    ("harary", 3, 2),  # k + c >= 2t > k: the colluders make the difference
    ("harary", 4, 1),
    ("complete", 3, 0),
    ("complete", 3, 1),
    ("complete", 4, 1),
]


@pytest.mark.parametrize(("kind", "t", "colluding"), SPLITS)
def test_split_story_attack_is_the_same_with_short_and_full_lists(
    kind: str, t: int, colluding: int
) -> None:
    """Tell some of v's partners "v survived" and the others "v dropped" (docs/protocol.md: a
    semi-honest round cannot detect it), with colluding partners that hand over both of their
    shares of v. For every split of v's honest partners, each partner's answer to its short
    view equals its answer to the full list with the same story, so the server collects the
    same shares of b_v and s_v either way. Both secrets (hence x_v) come out exactly when
    |honest partners| + 2 x colluders >= 2t, as before the change; active mode refuses it
    (2t > k + c, tests/test_lying_server.py). Harary(10, 4), or the complete graph on 6."""
    if kind == "harary":
        config, _ = make_config(10, t=t, dim=DIM, bits=BITS, kind=kind, k=4, graph_seed=SEED_A)
    else:
        config, _ = make_config(6, t=t, dim=DIM, bits=BITS)
    r = stopped(config)
    u3, dropped = global_lists(r)
    assert dropped == ()
    v = some_party(config, 0)
    v_partners = peers(r, v)
    colluders = v_partners[:colluding]
    honest = [p for p in v_partners if p not in colluders]
    both_possible = False
    for sides in itertools.product((True, False), repeat=len(honest)):
        told_dropped = {p for p, d in zip(honest, sides, strict=True) if d}
        short: dict[int, Answer | None] = {}
        full: dict[int, Answer | None] = {}
        for p in honest:
            alive_v = (u3, ())
            story = (tuple(x for x in u3 if x != v), (v,)) if p in told_dropped else alive_v
            full[p] = answer(r, p, story)
            short[p] = answer(r, p, cut(p, peers(r, p), story))
            assert short[p] == full[p]
        seeds_short, keys_short = _collect(short, v)
        assert (seeds_short, keys_short) == _collect(full, v)
        # A colluder reveals both of its shares of v.
        seeds = len(seeds_short) + len(colluders)
        keys_ = len(keys_short) + len(colluders)
        both_possible |= seeds >= t and keys_ >= t
    assert both_possible == (len(honest) + 2 * len(colluders) >= 2 * t)


# -- short lists where the mode needs full ones ----------------------------------------------------


def _shorten(r: Router) -> Router:
    """The router's pending unmask requests replaced by each recipient's neighbourhood view
    (signatures and partner sets kept)."""
    full = global_lists(r)
    out: list[wire.Message] = []
    for m in r.pending:
        assert isinstance(m, wire.UnmaskRequest)
        survivors, dropped = cut(m.recipient, peers(r, m.recipient), full)
        forged = copy.copy(m)
        object.__setattr__(forged, "survivors", survivors)
        object.__setattr__(forged, "dropped", dropped)
        out.append(forged)
    r.pending = out
    return r


@pytest.mark.parametrize("mode", ["active complete", "active harary"])
def test_active_mode_refuses_short_requests(mode: str) -> None:
    """Active mode: the list must be the one the party signed, and the server has signatures
    only over the full list. A short request is refused by every party whose view differs from
    the full list; on the complete graph the view *is* the full list, so nothing changes."""
    config, signing = FULL_LIST_MODES[mode]()
    r = _shorten(stopped(config, signing, {some_party(config, 3): "masked_input"}))
    full = global_lists(r)
    differs = {m.recipient for m in r.pending if (m.survivors, m.dropped) != full}  # type: ignore[attr-defined]
    outcome = r.run()
    answered = {m.sender for m in decoded(outcome.server_inbox, wire.UnmaskResponse)}
    assert not answered & differs
    for u in differs:
        assert isinstance(outcome.client_errors[u], RemoteProtocolError)
    if mode == "active complete":
        assert not differs and outcome.result is not None
    else:
        assert differs == set(full[0]) and outcome.result is None


def test_active_short_lists_signed_by_each_party_are_not_certified() -> None:
    """A lying server that shows every party its own neighbourhood view in ConsistencyCheck
    gets each party's signature on a different list; no view is certified (t signing
    neighbours), so every unmask request built on it is refused."""
    config, signing = _active_ring()
    r = stopped(
        config,
        signing,
        {ring_party(config, 3): "masked_input"},
        stop_at=ServerState.COLLECT_SIGNATURES,
    )
    full = global_lists(r)
    masked = {
        m.sender: m
        for m in decoded(r.server_inbox, wire.MaskedInput)
        if isinstance(m, wire.MaskedInput)
    }
    views = {u: cut(u, peers(r, u), full) for u in full[0]}
    signatures: dict[Lists, dict[int, bytes]] = {}
    for u, view in views.items():
        shown = wire.SurvivorList(
            config.session_id, config.round_index, SERVER, u, survivors=view[0], dropped=view[1]
        )
        (sig,) = r.clients[u].receive(wire.encode(shown))
        assert isinstance(sig, wire.SurvivorSignature)
        signatures.setdefault(view, {})[u] = sig.signature
    assert all(len(s) == 1 for s in signatures.values())  # on a ring no two views coincide
    for u, view in views.items():
        sigs = tuple(wire.PartySignature(p, s) for p, s in sorted(signatures[view].items()))
        partner_sets = tuple(
            wire.PartnerSet(w, masked[w].peers, masked[w].peers_signature)
            for w in sorted(peers(r, u))
            if w in masked
        )
        data = request(config, u, view, signatures=sigs, partner_sets=partner_sets)
        assert ask(r.clients[u], data) is None


@pytest.mark.parametrize("mode", ["part-wise harary", "colluders harary"])
def test_short_lists_where_partners_partners_count_are_refused(mode: str) -> None:
    """Part-wise rounds and rounds with tolerated colluders check the partners of every owner
    whose seed share a party reveals (and part-wise the surviving holders of its blocks), which
    reach past its neighbourhood. A short view is answered only as the full list would be, and
    here every party refuses it (a liveness cost for a server that cheats, never a reveal)."""
    config, signing = FULL_LIST_MODES[mode]()
    r = stopped(config, signing, {ring_party(config, 3): "masked_input"})
    full = global_lists(r)
    refused = 0
    for u in full[0]:
        with_full = answer(r, u, full)
        assert with_full is not None
        with_short = answer(r, u, cut(u, peers(r, u), full))
        assert with_short is None or with_short == with_full
        refused += with_short is None
    assert refused == len(full[0])


@pytest.fixture(scope="module", params=["part-wise harary", "colluders harary"])
def global_round(request: pytest.FixtureRequest) -> Router:
    config, signing = FULL_LIST_MODES[request.param]()
    return stopped(config, signing, {ring_party(config, 3): "masked_input"})


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_where_the_global_list_matters_more_survivors_only_add_protection(
    global_round: Router, data: st.DataObject
) -> None:
    """Part-wise and tolerated-colluder rounds read list entries beyond u's neighbourhood
    (surviving holders of blocks, partners' partners). Every such check counts survivors, so
    naming more parties alive can only turn a refusal into the same answer, never change an
    answer: whatever a shorter list gets, the longer list it is cut from got before."""
    r = global_round
    cfg = r.config
    u = data.draw(st.sampled_from(sorted(r.masked_senders)), label="party")
    partners = set(peers(r, u))
    neighbours = set(cfg.neighbors(u))
    status = _draw_status(data, cfg.num_parties, u, set(partners), neighbours)
    lists = _lists_from(status)
    more = dict(status)
    for p in range(cfg.num_parties):
        if status[p] == "absent" and p not in neighbours | {u}:
            more[p] = data.draw(st.sampled_from(["alive", "absent"]), label=f"add {p}")
    got, got_more = answer(r, u, lists), answer(r, u, _lists_from(more))
    event("shorter list answered" if got is not None else "shorter list refused")
    event("longer list answered" if got_more is not None else "longer list refused")
    assert got is None or got == got_more


# -- the honest server stays exact with drops at every phase ---------------------------------------


@st.composite
def rounds(draw: st.DrawFn) -> tuple[RoundConfig, dict[int, str], int]:
    n = draw(st.integers(3, 14), label="n")
    complete = draw(st.booleans(), label="complete graph")
    if complete or n < 5:
        config, _ = make_config(n, t=2, dim=DIM, bits=BITS)
        degree = n - 1
    else:
        k = draw(st.sampled_from([k for k in range(2, n - 1, 2)]), label="k")
        seed = draw(st.binary(min_size=32, max_size=32), label="graph seed")
        config, _ = make_config(n, t=2, dim=DIM, bits=BITS, kind="harary", k=k, graph_seed=seed)
        degree = min(len(nb) for nb in config.graph.neighbors)
    t = draw(st.integers(2, max(2, degree)), label="t")
    config = dataclasses.replace(config, threshold=t)
    drops = draw(
        st.dictionaries(st.integers(0, n - 1), st.sampled_from(PHASES), max_size=n),
        label="drops",
    )
    return config, drops, draw(st.integers(0, 2**32 - 1), label="input seed")


@settings(max_examples=60, deadline=None)
@given(case=rounds())
def test_honest_server_is_exact_with_drops_at_every_phase(
    case: tuple[RoundConfig, dict[int, str], int],
) -> None:
    """Random n, graph (complete or Harary, any even k), t and drops at any phase: the honest
    server either outputs exactly the sum of its survivors' inputs or aborts with a typed
    AbortedError, no honest party ever refuses its (short) request, and every request is the
    recipient's neighbourhood view."""
    config, drops, seed = case
    inputs = inputs_for(config, seed)
    r = Router(config, None, inputs, drops)
    outcome = r.run()
    delivered: dict[int, tuple[int, ...]] = {}
    for m in decoded(outcome.server_outbox, wire.ShareDelivery):
        delivered[m.recipient] = m.senders  # type: ignore[attr-defined]
    requests = decoded(outcome.server_outbox, wire.UnmaskRequest)
    if requests:
        u3 = set(outcome.masked_senders)
        for m in requests:
            u = m.recipient
            gone = tuple(p for p in range(config.num_parties) if p not in u3)
            assert (m.survivors, m.dropped) == cut(  # type: ignore[attr-defined]
                u, delivered[u], (tuple(sorted(u3)), gone)
            )
        # Parties may refuse earlier phases (too few neighbours left), never the honest request.
        asked = {m.recipient for m in requests if alive(drops, m.recipient, "unmask")}
        answered = {m.sender for m in decoded(outcome.server_inbox, wire.UnmaskResponse)}
        assert answered == asked, {u: outcome.client_errors.get(u) for u in asked - answered}
    event(f"unmask requests sent: {bool(requests)}; result: {outcome.result is not None}")
    if outcome.error is not None:
        assert isinstance(outcome.error, AbortedError), outcome.error
        assert outcome.result is None
        return
    result = outcome.result
    assert result is not None
    assert set(result.survivors) == outcome.masked_senders
    assert np.array_equal(result.total, plain_sum(inputs, result.survivors, BITS))

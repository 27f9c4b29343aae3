"""Issue 8, item 6: the two sparse-graph attacks of the issue, replayed against the REAL engines.

Each test drives real ClientEngines through :mod:`audits.attack_replay` (a lying server built
from the parties' real messages: routing, survivor lists handed to different parties, the
signatures honest parties really produced, signed partner sets) and does the attack's arithmetic
on what that server received. Inside ``legacy_rule_for_audit()`` (the pre-issue-8 rule) the
attack recovers the honest party's exact value; with the rule in force honest parties refuse
(RemoteProtocolError) and nothing is recovered.

(a) Split survivor lists: list S (v and its partners alive) goes to the holders of v's shares,
    who reveal b_v; list T (v's block partners dropped) goes to the holders of the partners'
    shares, who reveal their mask keys; the pairwise seeds s_vp follow from the partners' keys.
(b) Per-component block sums: a block whose surviving holders form two components of the
    masking graph gives each component's sum separately, even to an honest-but-curious server.
Model vertices below are ring positions of the Harary graph (``audits.strategy_search``); the
replay maps them to the real parties of a ``harary_graph`` through its ring order.
"""

from __future__ import annotations

import numpy as np
import pytest

from audits.attack_replay import BLOCK, ReplayResult, World, build_world, replay
from audits.strategy_search import Instance, Strategy, petersen_rows, ring_rows
from secagg import graph
from secagg.config import RoundConfig
from secagg.crypto import keys, rng
from secagg.engine.consistency import legacy_rule_for_audit
from secagg.errors import AbortedError, ConfigError
from secagg.layout import BlockLayout
from secagg.sim import DropoutScript, aggregate_in_memory


def _strategy(
    inst: Instance,
    *,
    holders: tuple[int, ...],
    lists: list[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]],
    sets: tuple[tuple[int, ...], ...],
    goal: str = "isolate",
) -> Strategy:
    """Honest routing (everyone masks with all its neighbours); ``lists``: (dropped, signers,
    absent) per list, the survivors being everyone else."""
    rows = inst.neighbors
    everyone = range(inst.n)
    survivors, dropped, signs = [], [], {}
    for j, (gone, signers, absent) in enumerate(lists):
        survivors.append(tuple(u for u in everyone if u not in gone and u not in absent))
        dropped.append(tuple(sorted(gone)))
        signs.update({u: j for u in signers})
    return Strategy(
        instance=inst,
        goal=goal,
        colluders=(),
        holders=holders,
        partners={b: rows[b] for b in everyone},
        masked=tuple(everyone),
        survivors=tuple(survivors),
        dropped=tuple(dropped),
        signs=signs,
        reveals=dict(signs),
        colluder_partners={},
        sets=sets,
    )


def _split_lists(inst: Instance, victim: int, partners: tuple[int, ...]) -> Strategy:
    """S: everyone alive, signed by the victim and its share holders that are not needed for
    T; T: the victim's block partners dropped (with the victim, when a T revealer holds its
    share and would otherwise check it), signed by the partners' other share holders."""
    rows = inst.neighbors
    t_signers = sorted({w for p in partners for w in rows[p]} - {victim, *partners})
    s_signers = sorted({victim, *rows[victim]} - set(t_signers))
    gone = {*partners, *([victim] if set(t_signers) & set(rows[victim]) else [])}
    return _strategy(
        inst,
        holders=inst_holders(inst, victim, partners),
        lists=[((), tuple(s_signers), ()), (tuple(gone), tuple(t_signers), ())],
        sets=((victim,),),
    )


def inst_holders(inst: Instance, victim: int, partners: tuple[int, ...]) -> tuple[int, ...]:
    """Block 0: the victim, its chosen block partners, and a far-away group of min_holders
    adjacent holders (so the block keeps min_holders alive under both lists)."""
    if inst.min_holders is None:
        return tuple(range(inst.n))
    far = inst.n // 2
    return tuple(sorted({victim, *partners, *range(far, far + inst.min_holders)}))


def _assert_refused_all(result: ReplayResult, revealers: list[int]) -> None:
    assert not result.recovered, result.targets
    assert result.answered == [], result.answered
    for u in revealers:
        assert result.refused[u].startswith("RemoteProtocolError"), result.refused[u]


def _real(world: World, model: list[int]) -> list[int]:
    return [world.party[p] for p in model]


# -- (a) split survivor lists, whole vector ----------------------------------------------------


PETERSEN = Instance("petersen", 10, 3, 2, 0, None, 2, "old")


def _petersen_strategy() -> Strategy:
    # v = 0, partners N(0) = {1, 4, 5}. S to 0, 1, 4, 5 (1, 4, 5 hold b_0's shares); T (1, 4, 5
    # dropped) to their other neighbours 2, 6 / 3, 9 / 7, 8, who reveal s_1, s_4, s_5.
    assert petersen_rows()[0] == (1, 4, 5)
    return _strategy(
        PETERSEN,
        holders=tuple(range(10)),
        lists=[((), (0, 1, 4, 5), ()), ((1, 4, 5), (2, 3, 6, 7, 8, 9), ())],
        sets=((0,),),
    )


def test_petersen_active_round_is_refused_by_config() -> None:
    """The new rule's argument covers only complete graphs and Harary rings: RoundConfig refuses
    active mode on the Petersen graph (k=3, t=2; 2t > k holds, which used to be enough)."""
    g = graph.NeighborGraph(n=10, kind=graph.KIND_HARARY, neighbors=petersen_rows())
    verify = tuple(keys.generate_ed25519()[1] for _ in range(10))
    with pytest.raises(ConfigError, match="active mode"):
        RoundConfig(rng.token_bytes(16), 0, g, 2, 8, 32, active=True, verify_keys=verify)


def test_petersen_split_lists_recover_x_v_under_the_old_rule() -> None:
    """Built as the old library accepted it, inside the legacy hook: every honest party answers
    (each request is the list it signed, with >= t signatures), and x_0 comes out exactly, though
    s_0 was never revealed by anyone."""
    strategy = _petersen_strategy()
    world = build_world(strategy, allow_refused_graph=True)
    assert world.refused_config is not None and "active mode" in world.refused_config
    with legacy_rule_for_audit():
        result = replay(strategy, world)
    assert result.refused == {}
    assert sorted(result.answered) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert 0 not in result.mask_keys and {1, 4, 5} <= set(result.mask_keys)
    assert result.recovered and result.targets[0]["exact"]


def test_petersen_split_lists_refused_by_the_new_rule() -> None:
    """The same round and requests without the hook: no list is certified at the parties the
    reveals depend on, every honest party refuses, nothing is recovered."""
    strategy = _petersen_strategy()
    world = build_world(strategy, allow_refused_graph=True)
    result = replay(strategy, world)
    _assert_refused_all(result, list(range(10)))
    assert "not certified" in result.refused[1]
    assert 0 not in result.self_seeds


HARARY_WHOLE = Instance("harary", 10, 4, 3, 0, None, 2, "old")


def test_harary_whole_vector_split_lists_refused_by_the_new_rule() -> None:
    """Whole-vector Harary ring (n=10, k=4, t=3): S to v=0 and its ring neighbours, T (partner 1
    dropped) to everyone else. The old rule accepts both lists (both sides answer; on this ring
    the answers still do not isolate x_0, and the strategy search finds no strategy that does);
    the new rule refuses every request carrying a list not certified where it matters."""
    strategy = _strategy(
        HARARY_WHOLE,
        holders=tuple(range(10)),
        lists=[((), (8, 9, 0, 1, 2), ()), ((1,), (3, 4, 5, 6, 7), ())],
        sets=((0,),),
    )
    world = build_world(strategy)
    with legacy_rule_for_audit():
        old = replay(strategy, world)
    s_side = set(_real(world, [8, 9, 0, 1, 2]))
    t_side = set(_real(world, [3, 4, 5, 6, 7]))
    assert s_side & set(old.answered) and t_side & set(old.answered)  # equivocation accepted
    assert not old.recovered
    new = replay(strategy, build_world(strategy))
    _assert_refused_all(new, list(range(10)))


# -- (a) split survivor lists, part-wise -------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "k", "t", "min_holders", "partners"),
    [(20, 6, 4, 2, (17,)), (24, 8, 5, 3, (20, 21))],
    ids=["harary(20,6) t=4 mh=2", "harary(24,8) t=5 mh=3"],
)
def test_partwise_split_lists(
    n: int, k: int, t: int, min_holders: int, partners: tuple[int, ...]
) -> None:
    """v = ring position 0 shares block 0 only with the partner(s) at the edge of its window
    (ring distance h), plus a far group of min_holders holders. S (all alive) goes to v's share
    holders, who reveal b_v; T (the block partners and v dropped) to the partners' other share
    holders, who reveal the partners' mask keys. Old rule: x_v on block 0 exactly. New rule:
    S is not certified at the partners' neighbours (they signed T): everyone refuses."""
    inst = Instance("harary", n, k, t, 0, min_holders, 2, "old")
    assert all(p in ring_rows(n, k)[0] for p in partners)
    strategy = _split_lists(inst, 0, partners)
    world = build_world(strategy)
    with legacy_rule_for_audit():
        old = replay(strategy, world)
    assert old.recovered, (old.targets, old.refused)
    victim = world.party[0]
    assert victim in old.self_seeds and victim not in old.mask_keys
    assert set(_real(world, list(partners))) <= set(old.mask_keys)
    world = build_world(strategy)
    new = replay(strategy, world)
    _assert_refused_all(new, _real(world, sorted(strategy.signs)))
    assert world.party[0] not in new.self_seeds


# -- (b) per-component block sums --------------------------------------------------------------

COMPONENTS = (0, 1), (5, 8)


def _component_graph() -> tuple[graph.NeighborGraph, bytes]:
    """harary_graph(12, 4) where 0-1 and 5-8 are edges and no edge joins the two pairs (the
    issue's example), and its seed (searched deterministically)."""
    for i in range(10_000):
        seed = i.to_bytes(32, "big")
        g = graph.harary_graph(12, 4, seed)
        a, b = COMPONENTS
        if (
            g.are_neighbors(*a)
            and g.are_neighbors(*b)
            and not any(g.are_neighbors(x, y) for x in a for y in b)
        ):
            return g, seed
    raise AssertionError("no seed")  # pragma: no cover


def test_component_sums_honest_server_aborts() -> None:
    """Semi-honest round, honest routing, everyone alive: the server finds block 0's surviving
    holders {0, 1, 5, 8} split into two masking components and aborts (it would otherwise learn
    x0+x1 and x5+x8 separately)."""
    g, _ = _component_graph()
    holdings = tuple((0,) if u in (0, 1, 5, 8) else () for u in range(12))
    layout = BlockLayout((BLOCK,), holdings, min_holders=2)
    config = RoundConfig(rng.token_bytes(16), 0, g, 3, BLOCK, 32, layout=layout)
    gen = np.random.default_rng(3)
    inputs = {
        u: gen.integers(0, 2**32, size=config.input_length(u), dtype=np.uint64).astype(np.uint32)
        for u in range(12)
    }
    with pytest.raises(AbortedError):
        aggregate_in_memory(config, inputs, DropoutScript({}))


def test_component_sums_leak_under_the_old_rule_and_are_refused_now() -> None:
    """Active round, honest routing, one true survivor list signed by everyone: what an
    honest-but-curious server does with the honest answers. Old rule: both component sums come
    out exactly. New rule: each holder keeps 1 < D_b = min(|A_b|/2, h+1) = 2 block partners,
    so every party revealing a holder's share refuses."""
    g, seed = _component_graph()
    assert g.ring is not None
    position = {u: p for p, u in enumerate(g.ring)}
    inst = Instance("harary", 12, 4, 3, 0, 2, 1, "old")
    strategy = _strategy(
        inst,
        holders=tuple(sorted(position[u] for u in (0, 1, 5, 8))),
        lists=[((), tuple(range(12)), ())],
        sets=tuple(tuple(position[u] for u in c) for c in COMPONENTS),
        goal="split",
    )
    with legacy_rule_for_audit():
        old = replay(strategy, build_world(strategy, graph_seed=seed))
    assert old.refused == {} and old.recovered
    assert [sorted(row["set"]) for row in old.targets] == [list(c) for c in COMPONENTS]
    world = build_world(strategy, graph_seed=seed)
    new = replay(strategy, world)
    assert not new.recovered
    holders_owners = {u for u in range(12) if set(g.neighbors[u]) & {0, 1, 5, 8}}
    for u in holders_owners:
        assert "RemoteProtocolError" in new.refused[u], new.refused.get(u)


# -- found by the strategy search: a colluder as the cut vertex of a block ---------------------


def test_colluder_cut_vertex_split_block() -> None:
    """Found by audits/strategy_search.py against the first issue-8 rule (D_b from the alive
    holders, colluders not counted): harary_graph(12, 4), t=3, one tolerated colluder (ring
    position 2), min_holders 3, block 0 held by positions 0..4; the server withholds the
    deliveries 1 <-> 3, so the honest holders {0, 1} and {3, 4} are linked only through the
    colluder, whose pairwise masks the server knows. Every holder keeps 2 block partners, one
    true list signed by everyone: each group's sum comes out separately. The engine now refuses
    the configuration (t >= h + 1 + c on a Harary ring) and asks D_b >= h + 1 + c partners."""
    inst = Instance("harary", 12, 4, 3, 1, 3, 1, "new")
    rows = inst.neighbors
    strategy = _strategy(
        inst,
        holders=(0, 1, 2, 3, 4),
        lists=[((), tuple(u for u in range(12) if u != 2), ())],
        sets=((0, 1), (3, 4)),
        goal="split",
    )
    strategy.colluders = (2,)
    strategy.masked = tuple(u for u in range(12) if u != 2)
    strategy.partners = {
        **{b: rows[b] for b in range(12)},
        1: tuple(a for a in rows[1] if a != 3),
        3: tuple(a for a in rows[3] if a != 1),
    }
    strategy.colluder_partners = {0: {2: rows[2]}}
    with pytest.raises(ConfigError, match="colluders"):
        build_world(strategy)
    world = build_world(strategy, allow_refused_graph=True)
    with legacy_rule_for_audit():
        old = replay(strategy, world)
    assert old.recovered, (old.targets, old.refused)
    assert [row["exact"] for row in old.targets] == [True, True]
    # Even on the configuration built as before, the new owner check refuses every reveal of a
    # holder's seed (2 block partners < D_b = min(floor((5 + 1) / 2), h + 1 + c) = 3).
    new = replay(strategy, build_world(strategy, allow_refused_graph=True))
    assert not new.recovered
    assert all("RemoteProtocolError" in why for why in new.refused.values())

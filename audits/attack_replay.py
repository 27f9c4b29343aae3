"""Replaying a server strategy (from :mod:`audits.strategy_search`, or written by hand) against
the REAL engines: real ClientEngines for every party, a lying server assembled from their real
messages, and the attack's arithmetic on what that server received.

The driver plays the malicious server: it routes each party's encrypted shares only to the
partners the strategy gives it (withheld deliveries), hands each honest party the survivor list
(U3, D') the strategy assigns it, gathers the signatures honest parties really produce (colluders
sign with their own keys, and sign any partner set), and sends each signer an unmask request for
the list it signed, with the signatures the real server would forward
(``consistency.signatures_for``) and the signed partner sets of its surviving partners. Colluders
hand over everything they hold (their mask keys, self-mask seeds, inputs and the shares they
hold). With every share honest parties revealed, plus the colluders', the driver reconstructs
what t shares allow and removes every mask it can from the sum of each target set's masked
inputs; the strategy succeeds iff that equals the true sum of the set's inputs on the block.
"""

from __future__ import annotations

import dataclasses
import secrets as _secrets
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from audits.strategy_search import Strategy, petersen_rows
from secagg import encoding, graph
from secagg import messages as wire
from secagg.config import RoundConfig
from secagg.crypto import keys, prg, shamir
from secagg.engine import consistency
from secagg.engine.client import ClientEngine
from secagg.engine.masked_input import mask_context
from secagg.engine.masking import add_block_mask, pairwise_seed, self_mask_stream_seed
from secagg.engine.share_keys import MASK_KEY_BYTES
from secagg.errors import ConfigError, ProtocolError
from secagg.layout import BlockLayout

BLOCK = 64  # coordinates of the attacked block
BITS = 32


def legacy_config_for_audit(**fields: Any) -> RoundConfig:
    """A RoundConfig built WITHOUT its validation: what the library accepted before issue 8
    (e.g. active mode on the Petersen graph, which ``RoundConfig`` now refuses). Only for
    showing, inside ``legacy_rule_for_audit()``, the attack that made the refusal necessary."""
    config = object.__new__(RoundConfig)
    defaults = {f.name: f.default for f in dataclasses.fields(RoundConfig)}
    for name, default in defaults.items():
        value = fields.get(name, default)
        if value is dataclasses.MISSING:
            raise ConfigError(f"legacy_config_for_audit needs {name}")
        object.__setattr__(config, name, value)
    return config


@dataclass
class World:
    """The real graph and config of a strategy, and the map model vertex -> party id."""

    config: RoundConfig
    signing: list[bytes]
    party: list[int]  # party[p]: the real party of model vertex p
    refused_config: str | None = None  # RoundConfig's refusal, if the config had to bypass it


def build_world(
    strategy: Strategy, *, allow_refused_graph: bool = False, graph_seed: bytes | None = None
) -> World:
    """The round the strategy runs in.

    Raises:
        ConfigError: RoundConfig refuses the configuration (unless ``allow_refused_graph``:
            then it is built as the old library did, and the refusal is recorded).
    """
    inst = strategy.instance
    n = inst.n
    if inst.graph == "harary":
        g = graph.harary_graph(n, inst.k, graph_seed or _secrets.token_bytes(32))
        assert g.ring is not None
        party = list(g.ring)
    elif inst.graph == "complete":
        g, party = graph.complete_graph(n), list(range(n))
    else:
        g = graph.NeighborGraph(n=n, kind=graph.KIND_HARARY, neighbors=petersen_rows())
        party = list(range(n))
    pairs = [keys.generate_ed25519() for _ in range(n)]
    layout = None
    if inst.min_holders is not None:
        holders = {party[p] for p in strategy.holders}
        # Block 0 is attacked; with ``background`` everyone else holds block 1.
        other: tuple[int, ...] = (1,) if inst.background else ()
        layout = BlockLayout(
            (BLOCK, BLOCK) if inst.background else (BLOCK,),
            tuple((0,) if u in holders else other for u in range(n)),
            min_holders=inst.min_holders,
        )
    fields = {
        "session_id": _secrets.token_bytes(16),
        "round_index": 0,
        "graph": g,
        "threshold": inst.t,
        "dim": BLOCK if layout is None else layout.dim,
        "modulus_bits": BITS,
        "active": True,
        "verify_keys": tuple(p[1] for p in pairs),
        "layout": layout,
        "tolerated_colluders": inst.colluders,
    }
    refused = None
    try:
        config = RoundConfig(**fields)
    except ConfigError as exc:
        if not allow_refused_graph:
            raise
        refused = str(exc)
        config = legacy_config_for_audit(**fields)
    return World(config, [p[0] for p in pairs], party, refused)


@dataclass
class ReplayResult:
    """What the strategy got from the real engines."""

    recovered: bool  # every target set's sum came out exactly (isolate: x_victim itself)
    targets: list[dict[str, Any]] = field(default_factory=list)
    answered: list[int] = field(default_factory=list)  # honest revealers that answered
    refused: dict[int, str] = field(default_factory=dict)  # honest party -> its refusal
    self_seeds: list[int] = field(default_factory=list)  # parties whose b_u was rebuilt
    mask_keys: list[int] = field(default_factory=list)  # parties whose s_u was rebuilt
    refused_config: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _reconstruct(shares: dict[int, bytes], t: int, secret_bytes: int) -> bytes | None:
    if len(shares) < t:
        return None
    holders = sorted(shares)[:t]
    rows = np.stack([np.frombuffer(shares[h], dtype=">u4").astype(np.uint64) for h in holders])
    return shamir.reconstruct([h + 1 for h in holders], rows[:, None, :], secret_bytes)[0]


def replay(strategy: Strategy, world: World | None = None) -> ReplayResult:
    """Run ``strategy`` against real engines (call it inside ``legacy_rule_for_audit()`` to
    apply the old rule). See the module docstring."""
    world = world or build_world(strategy)
    cfg, P = world.config, world.party
    n, t = cfg.num_parties, cfg.threshold
    colluders = {P[p] for p in strategy.colluders}
    masked_honest = {P[p] for p in strategy.masked}
    partners = {P[b]: sorted(P[a] for a in strategy.partners[b]) for b in strategy.partners}
    gen = np.random.default_rng(int.from_bytes(_secrets.token_bytes(8), "little"))
    inputs: dict[int, npt.NDArray[Any]] = {
        u: gen.integers(0, 1 << BITS, size=cfg.input_length(u), dtype=np.uint64).astype(np.uint32)
        for u in range(n)
    }
    clients = {u: ClientEngine(cfg, u, signing_key=world.signing[u]) for u in range(n)}
    out = ReplayResult(recovered=False, refused_config=world.refused_config)

    def to(u: int) -> dict[str, Any]:
        return {
            "session_id": cfg.session_id,
            "round_index": cfg.round_index,
            "sender": wire.SERVER,
            "recipient": u,
        }

    def ask(u: int, message: wire.Message) -> list[wire.Message] | None:
        try:
            return clients[u].receive(wire.encode(message))
        except ProtocolError as exc:
            out.refused[u] = f"{type(exc).__name__}: {exc}"
            return None

    advertised = {}
    for u, c in clients.items():
        c.set_input(inputs[u])
        (advertised[u],) = c.start()
    sealed = {}
    for u in range(n):
        entries = tuple(advertised[v].keys for v in cfg.neighbors(u))
        (sealed[u],) = clients[u].receive(wire.KeyDirectory(**to(u), entries=entries))
    # What colluders hand the server: their keys and seeds, taken before masking drops them.
    mask_private, self_seed = {}, {}
    for u in colluders:
        c = clients[u]
        assert c._secrets is not None and c._self_mask_seed is not None
        mask_private[u], self_seed[u] = c._secrets.mask_private, c._self_mask_seed
    masked: dict[int, wire.MaskedInput] = {}
    for b in range(n):
        if b not in colluders and b not in masked_honest:
            continue  # withheld everything: b never masks
        senders = partners[b]
        cts = tuple(sealed[a].ciphertexts[sealed[a].receivers.index(b)] for a in senders)
        reply = ask(b, wire.ShareDelivery(**to(b), senders=tuple(senders), ciphertexts=cts))
        if reply:
            (masked[b],) = reply
    held = {u: clients[u]._held for u in colluders}
    # Survivor lists: honest parties sign the one they are shown; colluders sign any list.
    lists = [
        (tuple(sorted(P[p] for p in s)), tuple(sorted(P[p] for p in d)))
        for s, d in zip(strategy.survivors, strategy.dropped, strict=True)
    ]
    sigs: list[dict[int, bytes]] = [{} for _ in lists]
    signer_of: dict[int, int] = {}
    for p, j in strategy.signs.items():
        u = P[p]
        survivors, dropped = lists[j]
        reply = ask(u, wire.SurvivorList(**to(u), survivors=survivors, dropped=dropped))
        if reply:
            sigs[j][u] = reply[0].signature  # type: ignore[attr-defined]
            signer_of[u] = j
    for j, (survivors, dropped) in enumerate(lists):
        payload = consistency.list_payload(cfg, survivors, dropped)
        for c in colluders & set(survivors):
            sigs[j][c] = keys.sign(world.signing[c], payload)

    def partner_set(w: int, j: int) -> wire.PartnerSet | None:
        if w in colluders:  # claims whatever the strategy says, signed with its own key
            claimed = tuple(
                sorted(P[x] for x in strategy.colluder_partners.get(j, {}).get(P.index(w), ()))
            )
            signature = keys.sign(world.signing[w], consistency.partners_payload(cfg, w, claimed))
            return wire.PartnerSet(w, claimed, signature)
        if w in masked:
            return wire.PartnerSet(w, masked[w].peers, masked[w].peers_signature)
        return None

    responses: list[wire.UnmaskResponse] = []
    for u, j in sorted(signer_of.items()):
        survivors, dropped = lists[j]
        alive = set(survivors)
        shown = [partner_set(w, j) for w in cfg.neighbors(u) if w in alive]
        request = wire.UnmaskRequest(
            **to(u),
            survivors=survivors,
            dropped=dropped,
            signatures=consistency.signatures_for(cfg, u, sigs[j]),
            partner_sets=tuple(s for s in shown if s is not None),
        )
        reply = ask(u, request)
        if reply:
            responses.append(reply[0])  # type: ignore[arg-type]
            out.answered.append(u)
    # Every share the server now holds, by owner.
    b_shares: dict[int, dict[int, bytes]] = {u: {} for u in range(n)}
    s_shares: dict[int, dict[int, bytes]] = {u: {} for u in range(n)}
    for m in responses:
        for o, share in zip(m.self_mask_owners, m.self_mask_shares, strict=True):
            b_shares[o][m.sender] = share
        for o, share in zip(m.mask_key_owners, m.mask_key_shares, strict=True):
            s_shares[o][m.sender] = share
    for c, h in held.items():
        assert h is not None
        for o, share in h.self_mask_shares.items():
            b_shares[o][c] = share
        for o, share in h.mask_key_shares.items():
            s_shares[o][c] = share
    publics = {u: advertised[u].keys.mask_public for u in range(n)}
    seeds: dict[int, bytes] = dict(self_seed)
    mkeys: dict[int, bytes] = dict(mask_private)
    for o in range(n):
        if o not in seeds and (b := _reconstruct(b_shares[o], t, prg.SEED_BYTES)) is not None:
            seeds[o] = b
        if o not in mkeys:
            s = _reconstruct(s_shares[o], t, MASK_KEY_BYTES)
            if s is not None and keys.x25519_public(s) == publics[o]:
                mkeys[o] = s
    out.self_seeds, out.mask_keys = sorted(seeds), sorted(mkeys)
    # The attack's arithmetic on the block: sum of y_u over the target set, minus every mask
    # the server can compute.
    ctx = mask_context(cfg)
    layout = ctx.layout
    blocks = (0,) if layout is not None else ()
    holders = set(cfg.blocks.holders[0])
    ok = True
    for target in strategy.sets:
        members = [P[p] for p in target]
        total = np.zeros(BLOCK, dtype=ctx.dtype)
        row: dict[str, Any] = {"set": members, "exact": False, "missing": []}
        for u in members:
            if u not in masked or u not in seeds:
                row["missing"].append(f"y or b of {u}")
                continue
            y = encoding.unpack(masked[u].payload, BITS, masked[u].count).astype(ctx.dtype)
            add_block_mask(
                y, self_mask_stream_seed(ctx, seeds[u], u), layout, blocks, None, subtract=True
            )
            for w in masked[u].peers:
                if w not in holders:
                    continue  # no mask on this block
                if w in members and w in masked and u in masked[w].peers:
                    continue  # w added the same pad with the opposite sign: cancels
                if u in mkeys:
                    secret = keys.x25519_shared_secret(mkeys[u], publics[w])
                elif w in mkeys:
                    secret = keys.x25519_shared_secret(mkeys[w], publics[u])
                else:
                    row["missing"].append(f"s_{u},{w}")
                    continue
                add_block_mask(
                    y, pairwise_seed(ctx, secret, u, w), layout, blocks, None, subtract=u < w
                )  # u added it with subtract = u > w
            total += y
        total = encoding.reduce(total, BITS)
        truth = encoding.reduce(
            sum((inputs[u].astype(np.uint64) for u in members), np.zeros(BLOCK, np.uint64)),
            BITS,
        )
        row["exact"] = bool(np.array_equal(total.astype(np.uint64), truth))
        ok = ok and row["exact"]
        out.targets.append(row)
    out.recovered = ok and bool(strategy.sets)
    return out

"""Red team of issue 8's active mode (commit be1d2ba): a lying server with colluders against the
REAL engines, on sparse Harary rings and complete graphs, whole-vector and part-wise.

Spec under attack: /work/briefs/active_rules.md (per-neighbourhood certification (C1), per-owner
protection (C2) with the connectivity degree D_b, the config guard 2t > k + c, n >= 3h + 1) and
docs/protocol.md ("Active security on sparse graphs").

Attacks the engines refuse are plain tests: the honest party raises a typed
``RemoteProtocolError`` (or the configuration a ``ConfigError``/``PolicyError``), returns nothing
and is left FAILED with its secrets wiped. Attacks that work are ``xfail(strict=True,
raises=AssertionError)``: the body asserts the promised property, the assertion fails because
the leak is real, and a fix turns it into an XPASS that strict mode reports.

Breaks of be1d2ba (each leaked there on the real engines; refused since e2d1af2, which derives
D_b from the layout's holders and the tolerated colluders, and needs t >= h + 1 + c on rings):

* two certified lists in distant regions of a ring, each omitting the other region's holders
  of a block, deflated |A_b| and so D_b: both groups' sums came out, no colluder needed
  (smallest: harary_graph(20, 2), t=2, c=0, min_holders=2);
* a colluder as the cut vertex of a block (D_b counted colluding partners): with an honest
  server and honest routing on harary_graph(10, 6), t=4, c=1, min_holders=3; with one withheld
  delivery pair on harary_graph(7, 4), t=3, c=1; on the complete graph n=9, t=5, c=1;
* three colluders isolating one honest holder's block in a 7-holder block (min_holders = c+1):
  harary_graph(8, 4), t=4, c=3.

Open at e2d1af2 (xfail strict):

* semi-honest mode (honest-but-curious server + up to t-1 colluders, the default threat model):
  a colluder is still a cut vertex for disconnected_blocks and the min_holders - 1 rule (two
  groups' sums of one block; with the default min_holders = 2 one colluder isolates a holder
  of a 7-holder block), and on whole-vector rings colluders plus dropouts give the server a
  pair sum x_v + x_v';
* active part-wise configs with min_holders < tolerated_colluders + 2 are accepted: a block held
  by one honest party and c colluders reveals it.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import secrets as _secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from helpers import Router, decoded

from secagg import encoding, graph
from secagg import messages as wire
from secagg.config import ClientPolicy, RoundConfig
from secagg.crypto import keys, prg, shamir
from secagg.engine import ClientEngine, persist
from secagg.engine._state import ClientState
from secagg.engine.consistency import list_payload, partners_payload, signatures_for
from secagg.engine.masked_input import mask_context
from secagg.engine.masking import add_block_mask, pairwise_seed, self_mask_stream_seed
from secagg.engine.share_keys import MASK_KEY_BYTES, self_mask_commitment
from secagg.errors import (
    AbortedError,
    ConfigError,
    PolicyError,
    ProtocolError,
    RemoteProtocolError,
    StateError,
)
from secagg.layout import BlockLayout
from secagg.messages import SERVER

BLOCK = 16  # coordinates per block
BITS = 32
SECRET_ATTRS = ("_secrets", "_held", "_self_mask_seed", "_input", "_receive_keys")

Response = wire.UnmaskResponse


# -- configurations -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """A round configuration, the parties' signing keys, and the ring order (position -> party;
    the identity on the complete graph)."""

    config: RoundConfig
    signing: list[bytes]
    ring: list[int]
    pairs: list[tuple[bytes, bytes]]

    def at(self, *positions: int) -> list[int]:
        """The parties at these ring positions (mod n)."""
        n = self.config.num_parties
        return [self.ring[p % n] for p in positions]


def build(
    n: int,
    t: int,
    *,
    k: int | None = None,
    c: int = 0,
    block0: Iterable[int] | None = None,
    min_holders: int = 2,
    session_id: bytes | None = None,
    round_index: int = 0,
    pairs: list[tuple[bytes, bytes]] | None = None,
    graph_seed: bytes | None = None,
    active: bool = True,
) -> Setup:
    """Active config on harary_graph(n, k) (complete graph when k is None). ``block0``: ring
    positions holding block 0 (part-wise: everyone holds block 1, the holders of block 0 hold
    both); None: whole-vector aggregation."""
    if k is None:
        g = graph.complete_graph(n)
        ring = list(range(n))
    else:
        g = graph.harary_graph(n, k, graph_seed or _secrets.token_bytes(32))
        assert g.ring is not None
        ring = list(g.ring)
    layout = None
    if block0 is not None:
        holders = {ring[p % n] for p in block0}
        layout = BlockLayout(
            (BLOCK, BLOCK),
            tuple((0, 1) if u in holders else (1,) for u in range(n)),
            min_holders=min_holders,
        )
    if pairs is None:
        pairs = [keys.generate_ed25519() for _ in range(n)]
    signing = [p[0] for p in pairs]
    verify = tuple(p[1] for p in pairs)
    config = RoundConfig(
        session_id=session_id or _secrets.token_bytes(16),
        round_index=round_index,
        graph=g,
        threshold=t,
        dim=BLOCK if layout is None else layout.dim,
        modulus_bits=BITS,
        active=active,
        verify_keys=verify if active else None,
        layout=layout,
        tolerated_colluders=c,
    )
    return Setup(config, signing, ring, pairs)


# -- the lying server -----------------------------------------------------------------------------


def forge(msg: wire.Message, **fields: object) -> wire.Message:
    """A copy of a valid message with fields replaced, bypassing dataclass validation."""
    out = copy.copy(msg)
    for name, value in fields.items():
        object.__setattr__(out, name, value)
    return out


@dataclass
class Lab:
    """Real ClientEngines for every party and a malicious server assembled from their real
    messages. Honest key directories; share deliveries as the server likes (``withheld``
    (sender, receiver) pairs are not delivered); colluders hand over their mask keys, self-mask
    seeds and every share they hold, and sign whatever they are asked to."""

    setup: Setup
    colluders: frozenset[int] = frozenset()
    withheld: frozenset[tuple[int, int]] = frozenset()
    clients: dict[int, ClientEngine] = field(init=False)
    inputs: dict[int, npt.NDArray[np.uint64]] = field(init=False)
    publics: dict[int, bytes] = field(init=False)
    commitments: dict[int, bytes] = field(init=False)
    masked: dict[int, wire.MaskedInput] = field(init=False, default_factory=dict)
    errors: dict[int, ProtocolError] = field(init=False, default_factory=dict)
    signatures: dict[tuple[tuple[int, ...], tuple[int, ...]], dict[int, bytes]] = field(
        init=False, default_factory=dict
    )
    responses: list[Response] = field(init=False, default_factory=list)
    colluder_keys: dict[int, bytes] = field(init=False, default_factory=dict)
    colluder_seeds: dict[int, bytes] = field(init=False, default_factory=dict)
    colluder_shares: list[tuple[int, dict[int, bytes], dict[int, bytes]]] = field(
        init=False, default_factory=list
    )

    @property
    def config(self) -> RoundConfig:
        return self.setup.config

    def to(self, u: int) -> dict[str, Any]:
        cfg = self.config
        return {
            "session_id": cfg.session_id,
            "round_index": cfg.round_index,
            "sender": SERVER,
            "recipient": u,
        }

    def __post_init__(self) -> None:
        cfg = self.config
        n = cfg.num_parties
        gen = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))
        self.inputs = {
            u: gen.integers(0, 1 << BITS, size=cfg.input_length(u), dtype=np.uint64)
            for u in range(n)
        }
        self.clients = {
            u: ClientEngine(cfg, u, signing_key=self.setup.signing[u]) for u in range(n)
        }
        advertised = {}
        for u, client in self.clients.items():
            client.set_input(self.inputs[u])
            (advertised[u],) = client.start()
        self.publics = {u: m.keys.mask_public for u, m in advertised.items()}
        sealed: dict[int, wire.EncryptedShares] = {}
        for u in range(n):
            entries = tuple(advertised[v].keys for v in cfg.neighbors(u))
            (msg,) = self.clients[u].receive(wire.KeyDirectory(**self.to(u), entries=entries))
            assert isinstance(msg, wire.EncryptedShares)
            sealed[u] = msg
        self.commitments = {u: m.self_mask_commitment for u, m in sealed.items()}
        for c in self.colluders:
            secrets_ = self.clients[c]._secrets
            assert secrets_ is not None and self.clients[c]._self_mask_seed is not None
            self.colluder_keys[c] = secrets_.mask_private
            self.colluder_seeds[c] = self.clients[c]._self_mask_seed
        for v in range(n):
            senders = tuple(u for u in cfg.neighbors(v) if (u, v) not in self.withheld)
            cts = tuple(sealed[u].ciphertexts[sealed[u].receivers.index(v)] for u in senders)
            delivery = wire.ShareDelivery(**self.to(v), senders=senders, ciphertexts=cts)
            try:
                (msg,) = self.clients[v].receive(wire.encode(delivery))
            except ProtocolError as exc:
                self.errors[v] = exc
                continue
            assert isinstance(msg, wire.MaskedInput)
            self.masked[v] = msg
        for c in self.colluders:
            held = self.clients[c]._held
            assert held is not None
            self.colluder_shares.append(
                (c, dict(held.self_mask_shares), dict(held.mask_key_shares))
            )

    # -- ConsistencyCheck -------------------------------------------------------------------------

    def show(
        self, parties: Iterable[int], survivors: Sequence[int], dropped: Sequence[int] = ()
    ) -> dict[int, bytes]:
        """Show the list (U3, D') to ``parties``; returns every signature on it collected so far
        (colluders sign any list that names them as survivors)."""
        cfg = self.config
        lst = (tuple(survivors), tuple(dropped))
        sigs = self.signatures.setdefault(lst, {})
        for u in parties:
            if u in self.colluders:
                sigs[u] = keys.sign(self.setup.signing[u], list_payload(cfg, *lst))
                continue
            message = wire.SurvivorList(**self.to(u), survivors=(), dropped=())
            data = wire.encode(forge(message, survivors=lst[0], dropped=lst[1]))
            try:
                (reply,) = self.clients[u].receive(data)
            except ProtocolError as exc:
                self.errors.setdefault(u, exc)
                continue
            assert isinstance(reply, wire.SurvivorSignature)
            sigs[u] = reply.signature
        return sigs

    def partner_set(self, w: int, claimed: Sequence[int] | None = None) -> wire.PartnerSet | None:
        """w's signed partner set: the genuine one, or (colluder) any claimed set it signs."""
        if claimed is not None:
            assert w in self.colluders
            payload = partners_payload(self.config, w, tuple(claimed))
            return wire.PartnerSet(w, tuple(claimed), keys.sign(self.setup.signing[w], payload))
        m = self.masked.get(w)
        return None if m is None else wire.PartnerSet(w, m.peers, m.peers_signature)

    # -- Unmasking --------------------------------------------------------------------------------

    def request(
        self,
        u: int,
        survivors: Sequence[int],
        dropped: Sequence[int] = (),
        *,
        signatures: Sequence[wire.PartySignature] | None = None,
        partner_sets: Sequence[wire.PartnerSet] | None = None,
    ) -> bytes:
        """The wire bytes of an unmask request; by default with the signatures the real server
        forwards (``signatures_for``) and the partner sets of u's listed surviving neighbours."""
        cfg = self.config
        lst = (tuple(survivors), tuple(dropped))
        if signatures is None:
            signatures = signatures_for(cfg, u, self.signatures.get(lst, {}))
        if partner_sets is None:
            alive = set(survivors)
            shown = [self.partner_set(w) for w in cfg.neighbors(u) if w in alive]
            partner_sets = [s for s in shown if s is not None]
        base = wire.UnmaskRequest(**self.to(u), survivors=(), dropped=())
        return wire.encode(
            forge(
                base,
                survivors=lst[0],
                dropped=lst[1],
                signatures=tuple(signatures),
                partner_sets=tuple(partner_sets),
            )
        )

    def ask(self, u: int, survivors: Sequence[int], dropped: Sequence[int] = (), **kw: Any) -> Any:
        """Send u an unmask request; returns its response, or the error it refused with."""
        data = self.request(u, survivors, dropped, **kw)
        try:
            (reply,) = self.clients[u].receive(data)
        except ProtocolError as exc:
            self.errors.setdefault(u, exc)
            return exc
        assert isinstance(reply, Response)
        self.responses.append(reply)
        return reply

    # -- what the server can compute --------------------------------------------------------------

    def known_secrets(self) -> tuple[dict[int, bytes], dict[int, bytes]]:
        return known_secrets(
            self.config,
            self.responses,
            self.colluder_shares,
            self.colluder_seeds,
            self.colluder_keys,
            self.publics,
            self.commitments,
        )

    def block_sum(self, members: Iterable[int], block: int = 0) -> npt.NDArray[np.uint64] | None:
        seeds, mkeys = self.known_secrets()
        return block_sum(self.config, self.masked, seeds, mkeys, self.publics, members, block)

    def truth(self, members: Iterable[int], block: int = 0) -> npt.NDArray[np.uint64]:
        return true_block_sum(self.config, self.inputs, members, block)


def _reconstruct(shares: Mapping[int, bytes], t: int, secret_bytes: int) -> bytes | None:
    if len(shares) < t:
        return None
    holders = sorted(shares)[:t]
    rows = np.stack([np.frombuffer(shares[h], dtype=">u4").astype(np.uint64) for h in holders])
    return shamir.reconstruct([h + 1 for h in holders], rows[:, None, :], secret_bytes)[0]


def known_secrets(
    config: RoundConfig,
    responses: Iterable[Response],
    colluder_shares: Iterable[tuple[int, dict[int, bytes], dict[int, bytes]]],
    colluder_seeds: Mapping[int, bytes],
    colluder_keys: Mapping[int, bytes],
    publics: Mapping[int, bytes],
    commitments: Mapping[int, bytes],
) -> tuple[dict[int, bytes], dict[int, bytes]]:
    """Every self-mask seed b_u and mask key s_u the server can rebuild from t revealed or
    colluder-held shares (checked against the commitment / public key), plus the colluders'."""
    n = config.num_parties
    b_shares: dict[int, dict[int, bytes]] = {u: {} for u in range(n)}
    s_shares: dict[int, dict[int, bytes]] = {u: {} for u in range(n)}
    for m in responses:
        for o, share in zip(m.self_mask_owners, m.self_mask_shares, strict=True):
            b_shares[o][m.sender] = share
        for o, share in zip(m.mask_key_owners, m.mask_key_shares, strict=True):
            s_shares[o][m.sender] = share
    for holder, own_b, own_s in colluder_shares:
        for o, share in own_b.items():
            b_shares[o][holder] = share
        for o, share in own_s.items():
            s_shares[o][holder] = share
    seeds, mkeys = dict(colluder_seeds), dict(colluder_keys)
    t = config.threshold
    for o in range(n):
        b = _reconstruct(b_shares[o], t, prg.SEED_BYTES)
        if (
            o not in seeds
            and b is not None
            and self_mask_commitment(config, o, b) == commitments[o]
        ):
            seeds[o] = b
        s = _reconstruct(s_shares[o], t, MASK_KEY_BYTES)
        if o not in mkeys and s is not None and keys.x25519_public(s) == publics[o]:
            mkeys[o] = s
    return seeds, mkeys


def block_sum(
    config: RoundConfig,
    masked: Mapping[int, wire.MaskedInput],
    seeds: Mapping[int, bytes],
    mkeys: Mapping[int, bytes],
    publics: Mapping[int, bytes],
    members: Iterable[int],
    block: int = 0,
) -> npt.NDArray[np.uint64] | None:
    """The server's arithmetic: sum over ``members`` of their masked vectors on ``block``, minus
    every mask it can compute. None when some mask on the block is unknown to it (then nothing
    about the members' inputs comes out: the pads are uniform)."""
    ctx = mask_context(config)
    layout = config.blocks
    part_wise = config.part_wise
    acc = np.zeros(config.dim, dtype=ctx.dtype)
    group = set(members)
    for u in group:
        if u not in masked or u not in seeds:
            return None
        m = masked[u]
        y = encoding.unpack(m.payload, BITS, m.count).astype(ctx.dtype)
        mine = layout.holdings[u] if part_wise else ()
        where = layout.positions(mine) if part_wise else np.arange(config.dim)
        acc[where] += y
        add_block_mask(
            acc,
            self_mask_stream_seed(ctx, seeds[u], u),
            ctx.layout,
            mine,
            where if part_wise else None,
            subtract=True,
        )
        for w in m.peers:
            common = layout.common_blocks(u, w) if part_wise else ()
            if part_wise and block not in common:
                continue  # no pad on this block
            if w in group and w in masked and u in masked[w].peers:
                continue  # w added the same pad with the opposite sign
            if u in mkeys:
                secret = keys.x25519_shared_secret(mkeys[u], publics[w])
            elif w in mkeys:
                secret = keys.x25519_shared_secret(mkeys[w], publics[u])
            else:
                return None
            add_block_mask(
                acc,
                pairwise_seed(ctx, secret, u, w),
                ctx.layout,
                (block,) if part_wise else (),
                layout.positions((block,)) if part_wise else None,
                subtract=u < w,  # u added it with subtract = u > w
            )
    out = acc[layout.positions((block,))] if part_wise else acc
    return encoding.reduce(out, BITS).astype(np.uint64)


def true_block_sum(
    config: RoundConfig,
    inputs: Mapping[int, npt.NDArray[np.uint64]],
    members: Iterable[int],
    block: int = 0,
) -> npt.NDArray[np.uint64]:
    layout = config.blocks
    total = np.zeros(layout.block_sizes[block], dtype=np.uint64)
    for u in members:
        x = inputs[u]
        total += x[layout.local_positions(u, (block,))] if config.part_wise else x
    return total & np.uint64((1 << BITS) - 1)


def leaked(lab_sum: npt.NDArray[np.uint64] | None, truth: npt.NDArray[np.uint64]) -> bool:
    return lab_sum is not None and bool(np.array_equal(lab_sum, truth))


def assert_wiped(client: ClientEngine) -> None:
    for name in SECRET_ATTRS:
        assert getattr(client, name, None) is None, name


def assert_refused(outcome: object, client: ClientEngine, match: str | None = None) -> None:
    """The honest party refused with a typed remote error, and is FAILED with secrets gone."""
    assert isinstance(outcome, RemoteProtocolError), outcome
    if match is not None:
        assert match in str(outcome), str(outcome)
    assert client.state is ClientState.FAILED
    assert_wiped(client)


def everyone(setup: Setup) -> tuple[int, ...]:
    return tuple(range(setup.config.num_parties))


def without(setup: Setup, parties: Iterable[int]) -> tuple[int, ...]:
    gone = set(parties)
    return tuple(u for u in range(setup.config.num_parties) if u not in gone)


def random_words(config: RoundConfig) -> dict[int, npt.NDArray[np.uint64]]:
    gen = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))
    return {
        u: gen.integers(0, 1 << BITS, size=config.input_length(u), dtype=np.uint64)
        for u in range(config.num_parties)
    }


def honest_round(
    setup: Setup, colluders: Sequence[int]
) -> tuple[Router, dict[int, bytes], dict[int, npt.NDArray[np.uint64]]]:
    """A completely honest round through the real ServerEngine; the colluders only hand the
    server their mask keys (read before they mask)."""
    inputs = random_words(setup.config)
    r = Router(setup.config, setup.signing if setup.config.active else None, inputs)
    r.start()
    keys_ = {}
    for c in colluders:
        secrets_ = r.clients[c]._secrets
        assert secrets_ is not None
        keys_[c] = secrets_.mask_private
    r.run()
    return r, keys_, inputs


def recover_from_transcript(
    r: Router, colluder_keys: Mapping[int, bytes], members: Sequence[int]
) -> npt.NDArray[np.uint64] | None:
    """What the server plus the colluders compute from the real server's transcript: the
    revealed shares, the masked inputs and the colluders' mask keys."""
    cfg = r.config
    inbox = [wire.decode(b) for b in r.server_inbox]
    masked = {m.sender: m for m in inbox if isinstance(m, wire.MaskedInput)}
    responses = [m for m in inbox if isinstance(m, Response)]
    publics = {m.sender: m.keys.mask_public for m in inbox if isinstance(m, wire.AdvertiseKeys)}
    commitments = {
        m.sender: m.self_mask_commitment for m in inbox if isinstance(m, wire.EncryptedShares)
    }
    seeds, mkeys = known_secrets(cfg, responses, [], {}, colluder_keys, publics, commitments)
    if not cfg.active:  # semi-honest parties send no partner set: they mask with what arrived
        outbox = [wire.decode(b) for b in r.server_outbox]
        delivered = {m.recipient: m.senders for m in outbox if isinstance(m, wire.ShareDelivery)}
        masked = {u: dataclasses.replace(m, peers=delivered[u]) for u, m in masked.items()}
    return block_sum(cfg, masked, seeds, mkeys, publics, members)


# ================================================================================================
# Breaks of be1d2ba (each leaked there: see the report), refused since e2d1af2
# ================================================================================================


def _two_lists_lab() -> tuple[Lab, list[int], list[int]]:
    """harary_graph(20, 2) (a 20-cycle, h = 1), t = 2, c = 0, part-wise, min_holders = 2.
    Block 0 is held by ring positions {0, 1} (A) and {10, 11} (B); everyone holds block 1.
    Honest key exchange and routing."""
    setup = build(20, 2, k=2, c=0, block0=(0, 1, 10, 11), min_holders=2)
    lab = Lab(setup)
    assert not lab.errors and len(lab.masked) == 20
    return lab, setup.at(0, 1), setup.at(10, 11)


def test_two_lists_in_distant_regions_cannot_split_a_block() -> None:
    """BREAK of be1d2ba (smallest: this configuration, no colluder). D_b was computed from
    |A_b| of the list being checked. Lists: L1 = everyone but B, signed by ring positions
    -4..5; L2 = everyone but A, signed by 6..15. Every honest party signs one list, each list is
    certified at every party the revealers' checks look at, and under L1 block 0 had |A_b| = 2,
    so D_b = 1 and a1, a2 passed with one partner each (B likewise under L2): the server got
    x_a1 + x_a2 and x_b1 + x_b2 separately. Since e2d1af2 D_b uses the layout's 4 holders
    (D_b = 2), and every revealer of an A or B seed refuses."""
    lab, a, b = _two_lists_lab()
    setup = lab.setup
    l1, l2 = without(setup, b), without(setup, a)
    assert len(lab.show(setup.at(*range(-4, 6)), l1)) == 10
    assert len(lab.show(setup.at(*range(6, 16)), l2)) == 10
    for group, lst, positions in ((a, l1, (-1, 0, 1, 2)), (b, l2, (9, 10, 11, 12))):
        for r in setup.at(*positions):
            outcome = lab.ask(r, lst)
            assert_refused(outcome, lab.clients[r], match="blocks [0]")
        assert lab.block_sum(group) is None
    assert not lab.responses


def test_two_lists_true_list_is_refused_and_the_honest_server_aborts() -> None:
    """Control for the layout above: under the true list the block is two separate pairs."""
    lab, _, _ = _two_lists_lab()
    setup = lab.setup
    alive = everyone(setup)
    lab.show(alive, alive)
    (revealer,) = setup.at(-1)
    assert_refused(lab.ask(revealer, alive), lab.clients[revealer], match="blocks [0]")
    r = Router(setup.config, setup.signing, random_words(setup.config))
    out = r.run()
    assert out.result is None and isinstance(out.error, AbortedError)


# -- a colluder as the cut vertex of a block ------------------------------------------------------


def _cut_vertex_lying_server(
    setup: Setup,
    colluders: Sequence[int],
    a: Sequence[int],
    b: Sequence[int],
    revealers: Sequence[int],
) -> tuple[Lab, bool, bool]:
    """Withhold every delivery between A and B, show everyone the true list, ask
    ``revealers``; returns whether A's and B's block-0 sums came out."""
    withheld = frozenset((u, v) for u in a for v in b) | frozenset((v, u) for u in a for v in b)
    lab = Lab(setup, colluders=frozenset(colluders), withheld=withheld)
    alive = everyone(setup)
    lab.show(alive, alive)
    for u in revealers:
        lab.ask(u, alive)
    return (
        lab,
        leaked(lab.block_sum(a), lab.truth(a)),
        leaked(lab.block_sum(b), lab.truth(b)),
    )


def test_colluder_cut_vertex_with_honest_server_and_routing_is_refused() -> None:
    """BREAK of be1d2ba (honest server, honest routing, c = 1 tolerated): harary_graph(10, 6),
    t = 4, min_holders = 3 (= c + 2). Block 0 held by ring positions {-3, -2} (A), 0 (the
    colluder), {2, 3} (B); -1, 1 and 4..6 hold block 1 only. |A_b| = 5 gave D_b = 2: each A and B
    holder had 2 block partners counting the colluder, the server's connectivity check passed
    through the colluder, the round finished, and the server with the colluder's mask key
    computed x_a1 + x_a2 and x_b1 + x_b2 on block 0. Since e2d1af2: RoundConfig refuses
    t = 4 < h + 1 + c on this ring; with t = 5 it is accepted, D_b = 3, and the honest server
    aborts (and so would every revealer)."""
    layout = {"block0": (-3, -2, 0, 2, 3), "min_holders": 3}
    with pytest.raises(ConfigError, match=r"t >= k/2 \+ 1 \+ colluders"):
        build(10, 4, k=6, c=1, **layout)  # type: ignore[arg-type]
    setup = build(10, 5, k=6, c=1, **layout)  # type: ignore[arg-type]
    (c0,) = setup.at(0)
    a, b = setup.at(-3, -2), setup.at(2, 3)
    r, colluder_keys, inputs = honest_round(setup, [c0])
    assert r.server.result is None and isinstance(r.error, AbortedError)
    assert "blocks [0]" in str(r.error)
    assert not decoded(r.server_inbox, wire.UnmaskResponse)
    for group in (a, b):
        got = recover_from_transcript(r, colluder_keys, group)
        assert not leaked(got, true_block_sum(setup.config, inputs, group))


def test_colluder_cut_vertex_smallest_harary_is_refused() -> None:
    """BREAK of be1d2ba (smallest ring): harary_graph(7, 4), t = 3, c = 1, min_holders = 3;
    block 0 at positions {5, 6} (A), 0 (colluder), {1, 2} (B); the server withholds the
    deliveries 6 <-> 1 and shows the true list: the two pairs' sums came out. Since e2d1af2
    t = 3 is refused (needs t >= 4), and with t = 4 = k the withheld deliveries leave 6 and 1
    below t (they refuse them) while every revealer refuses the thin block."""
    layout = {"block0": (0, 1, 2, 5, 6), "min_holders": 3}
    with pytest.raises(ConfigError, match="colluders"):
        build(7, 3, k=4, c=1, **layout)  # type: ignore[arg-type]
    setup = build(7, 4, k=4, c=1, **layout)  # type: ignore[arg-type]
    (c0,) = setup.at(0)
    a, b = setup.at(5, 6), setup.at(1, 2)
    lab, leak_a, leak_b = _cut_vertex_lying_server(setup, [c0], a, b, setup.at(2, 3, 4, 5))
    assert not (leak_a or leak_b)
    assert set(lab.errors) >= set(setup.at(6, 1))  # refused a delivery of 3 < t senders
    assert all(isinstance(e, RemoteProtocolError) for e in lab.errors.values())
    assert not lab.responses


def test_colluder_cut_vertex_complete_graph_is_refused() -> None:
    """BREAK of be1d2ba on the COMPLETE graph: n = 9, t = 5, c = 1, min_holders = 3. Block 0
    held by A = {0, 1}, B = {2, 3} and the colluder 4; the server withholds the deliveries
    between A and B (each keeps 6 >= t partners). D_b was max(2, floor(5/2)) = 2, the colluder
    counting for both groups: 5..8 plus the colluder's held shares gave t shares of every
    seed, and both pairs' sums came out. Since e2d1af2 D_b = floor((5 + 1)/2) = 3: refused."""
    setup = build(9, 5, c=1, block0=(0, 1, 2, 3, 4), min_holders=3)
    lab, leak_a, leak_b = _cut_vertex_lying_server(setup, [4], [0, 1], [2, 3], [5, 6, 7, 8])
    assert not (leak_a or leak_b)
    for u in (5, 6, 7, 8):
        assert_refused(lab.errors.get(u), lab.clients[u], match="blocks [0]")


def test_three_colluders_around_one_holder_cannot_isolate_it() -> None:
    """BREAK of be1d2ba with min_holders = c + 1 (accepted): harary_graph(8, 4), t = 4, c = 3,
    block 0 at positions 0, 1, 3 (colluders), 2 (victim), 5, 6, 7; position 4 holds block 1
    only. D_b = 3 and the victim's three block partners were the colluders: an honest round
    finished and the server + colluders had x_v on block 0 of a 7-holder block. Since e2d1af2
    the ring needs t >= h + 1 + c = 6 > k; on harary_graph(13, 8) with t = 8 the same pattern
    (three colluders, non-holders elsewhere) gives D_b = 5 and the honest server aborts."""
    with pytest.raises(ConfigError, match="colluders"):
        build(8, 4, k=4, c=3, block0=(0, 1, 2, 3, 5, 6, 7), min_holders=4)
    setup = build(13, 8, k=8, c=3, block0=(-2, -1, 0, 1, 5, 6, 7), min_holders=5)
    colluders = setup.at(-2, -1, 1)
    (v,) = setup.at(0)
    r, colluder_keys, inputs = honest_round(setup, colluders)
    assert r.server.result is None and isinstance(r.error, AbortedError)
    got = recover_from_transcript(r, colluder_keys, [v])
    assert not leaked(got, true_block_sum(setup.config, inputs, [v]))


# ================================================================================================
# Open at e2d1af2 (HEAD when written)
# ================================================================================================


def test_limit_semi_honest_undeclared_colluder_cut_vertex_splits_a_block() -> None:
    """Semi-honest round on harary_graph(10, 6), t = 4, min_holders = 3 (= c + 2 for one
    colluder), honest server and routing, nobody drops. Block 0 held by ring positions
    {-3, -2} (A), 0 (the colluder), {2, 3} (B); the others hold block 1 only. Every holder keeps
    2 = min_holders - 1 block partners, the server's disconnected_blocks sees one group (through
    the colluder), the round finishes with the right 5-holder sum, and from its transcript plus
    the colluder's mask key the server computes x_a1 + x_a2 and x_b1 + x_b2 on block 0.
    docs/protocol.md promises 'the server + up to c colluding parties (semi-honest: c <= t-1)'
    learn the same as the server: the sum per block, never a proper group's. Fix: count only
    non-colluding links (min_holders - 1 + c partners per block, or a (c+1)-connected block
    graph) in semi-honest mode too, with c = t - 1 or a configured bound."""
    setup = build(10, 4, k=6, block0=(-3, -2, 0, 2, 3), min_holders=3, active=False)
    (c0,) = setup.at(0)
    a, b = setup.at(-3, -2), setup.at(2, 3)
    r, colluder_keys, inputs = honest_round(setup, [c0])
    result = r.server.result
    assert result is not None, r.error
    holders = setup.config.blocks.holders[0]
    np.testing.assert_array_equal(
        result.total[:BLOCK].astype(np.uint64), true_block_sum(setup.config, inputs, holders)
    )
    leaks = [
        leaked(
            recover_from_transcript(r, colluder_keys, g), true_block_sum(setup.config, inputs, g)
        )
        for g in (a, b)
    ]
    # DOCUMENTED LIMIT (docs/protocol.md, "Colluders on sparse graphs"): with
    # tolerated_colluders = 0 the deterministic checks count the colluder as a link.
    assert all(leaks), leaks
    # Declared, the same layout is refused: D_b = 3 block partners, the pairs have 2.
    declared = build(10, 5, k=6, c=1, block0=(-3, -2, 0, 2, 3), min_holders=3, active=False)
    r, colluder_keys, inputs = honest_round(declared, declared.at(0))
    assert r.server.result is None and isinstance(r.error, AbortedError), r.error
    for group in (declared.at(-3, -2), declared.at(2, 3)):
        got = recover_from_transcript(r, colluder_keys, group)
        assert not leaked(got, true_block_sum(declared.config, inputs, group))


def test_limit_semi_honest_undeclared_colluder_isolates_a_holder() -> None:
    """harary_graph(10, 4), t = 3, semi-honest, min_holders = 2 (the default), honest server and
    routing, nobody drops. Block 0 held by ring positions 0 (victim), 1 (colluder) and 3..7;
    the victim's other neighbours (-2, -1, 2) hold block 1 only. The block's 7 holders are
    connected (through the colluder) and every holder keeps min_holders - 1 = 1 block partner,
    so the round finishes; the victim's only pad on block 0 is with the colluder, and the
    server gets its block value. (layout.py asks for min_holders >= c + 2 to protect one honest
    party among c colluders, but docs/protocol.md's semi-honest row promises it for c <= t-1
    with no such condition, and nothing checks it.)"""
    setup = build(10, 3, k=4, block0=(0, 1, 3, 4, 5, 6, 7), min_holders=2, active=False)
    (v, colluder) = setup.at(0, 1)
    r, colluder_keys, inputs = honest_round(setup, [colluder])
    assert r.server.result is not None, r.error
    got = recover_from_transcript(r, colluder_keys, [v])
    # DOCUMENTED LIMIT: undeclared, the colluder isolates the victim.
    assert leaked(got, true_block_sum(setup.config, inputs, [v]))
    # Declared (min_holders >= c + 2 = 3), the victim's one honest-free partner is not enough.
    declared = build(10, 4, k=4, c=1, block0=(0, 1, 3, 4, 5, 6, 7), min_holders=3, active=False)
    (v, colluder) = declared.at(0, 1)
    r, colluder_keys, inputs = honest_round(declared, [colluder])
    assert r.server.result is None and isinstance(r.error, AbortedError), r.error
    got = recover_from_transcript(r, colluder_keys, [v])
    assert not leaked(got, true_block_sum(declared.config, inputs, [v]))


def test_active_min_holders_below_c_plus_2_reveals_an_honest_block() -> None:
    """Complete graph n = 7, t = 5, tolerated_colluders = 2 (2t = 10 > 6 + 2), min_holders = 3:
    the server (who draws the layout) gives block 0 to party 0 and the two colluders 1, 2. Every
    check passes (3 >= min_holders holders, D_b = 2 partners), the honest round finishes, and
    block 0's sum minus the colluders' inputs is x_0. docs/protocol.md promises a lying server
    + c colluders never learns an honest input; RoundConfig (or ClientPolicy's default) should
    refuse min_holders < c + 2 in active part-wise mode."""
    with pytest.raises(ConfigError, match="min_holders >= 4"):
        build(7, 5, c=2, block0=(0, 1, 2), min_holders=3)
    # With min_holders = c + 2 the same three-holder block is refused as too thin.
    with pytest.raises(ConfigError):
        build(7, 5, c=2, block0=(0, 1, 2), min_holders=4)
    setup = build(7, 5, c=2, block0=(0, 1, 2, 3), min_holders=4)
    r, colluder_keys, inputs = honest_round(setup, [1, 2])
    assert r.server.result is not None or isinstance(r.error, ProtocolError)
    got = recover_from_transcript(r, colluder_keys, [0])
    assert not leaked(got, true_block_sum(setup.config, inputs, [0])), (
        "server + colluders 1, 2 learned party 0's block 0 exactly"
    )


def test_limit_semi_honest_whole_vector_pair_sum_with_undeclared_colluders() -> None:
    """harary_graph(10, 4) (h = 2), t = 3, semi-honest, everything routed honestly. Ring
    positions: -2 and 3 drop before masking, -1 and 2 collude, v and v' sit at 0 and 1, the
    others at 4..7. Every survivor keeps 3 >= t surviving partners, so the honest server
    unmasks; v's and v''s pads are with each other, with the colluders (keys known) and with
    the dropped parties (keys reconstructed as the protocol says). The server gets x_v + x_v'
    and the sum of 4..7 separately. docs/protocol.md: 'the server + up to c colluding parties
    (semi-honest: c <= t-1)' learn only the per-round sum. On sparse graphs the semi-honest
    guarantee with colluders is Bell et al.'s weaker one (an honest input only inside a sum of
    a group); either the docs say so or the server needs t >= h + 1 + (t - 1), i.e. the
    complete graph."""
    setup = build(10, 3, k=4, active=False)
    v, v2 = setup.at(0, 1)
    colluders = setup.at(-1, 2)
    dropped = setup.at(-2, 3)
    inputs = random_words(setup.config)
    r = Router(setup.config, None, inputs, drops=dict.fromkeys(dropped, "masked_input"))
    r.start()
    colluder_keys = {}
    for c in colluders:
        secrets_ = r.clients[c]._secrets
        assert secrets_ is not None
        colluder_keys[c] = secrets_.mask_private
    out = r.run()
    assert out.result is not None, out.error
    assert set(out.result.dropped) == set(dropped)
    got = recover_from_transcript(r, colluder_keys, [v, v2])
    # DOCUMENTED LIMIT: with tolerated_colluders = 0 a sparse graph's guarantee against
    # colluders is Bell et al.'s probabilistic one (colluders not chosen knowing the graph).
    assert leaked(got, true_block_sum(setup.config, inputs, [v, v2]))
    # Declared (c = 2), the ring would need t >= h + 1 + c = 5 (Lemma 3 with colluders): the
    # configuration is refused instead of run.
    with pytest.raises(ConfigError, match="colluders"):
        build(10, 3, k=4, c=2, active=False)
    # Where it fits (k = 8, t = 6 >= 4 + 1 + 1), declared colluders keep every sum whole.
    declared = build(20, 6, k=8, c=1, active=False)
    out = Router(declared.config, None, random_words(declared.config)).run()
    assert out.result is not None, out.error


# ================================================================================================
# The proof sketch, checked exhaustively where it is small enough
# ================================================================================================


def _ring_masks(n: int, h: int) -> list[int]:
    return [sum(1 << ((p + d) % n) for d in range(-h, h + 1) if d) for p in range(n)]


def _core(members: int, rows: list[int], need: int) -> int:
    """The largest subset of ``members`` (bitmask) in which every vertex keeps ``need``
    neighbours inside it (peel vertices with fewer until none is left to peel)."""
    while True:
        thin, rest = 0, members
        while rest:
            low = rest & -rest
            rest ^= low
            if (rows[low.bit_length() - 1] & members).bit_count() < need:
                thin |= low
        if not thin:
            return members
        members &= ~thin


def _two_dense_groups(n: int, h: int, need: int) -> tuple[int, int] | None:
    rows, full = _ring_masks(n, h), (1 << n) - 1
    for a in range(1, full, 2):  # vertex 0 in the first group (the ring is vertex-transitive)
        if _core(a, rows, need) == a and (b := _core(full & ~a, rows, need)):
            return a, b
    return None


@pytest.mark.parametrize("h", [1, 2, 3, 4])
def test_lemma_3_ring_has_no_two_disjoint_groups_of_degree_h_plus_1(h: int) -> None:
    """docs/protocol.md Lemma 3, exhaustively on every vertex subset of C_n(1..h) for
    3h + 1 <= n <= 14: no two disjoint groups each keep h + 1 neighbours inside. (It also holds
    for 2h + 2 <= n < 3h + 1 in this range: the guard n >= 3h + 1 is needed by the proof, not
    by the statement, as far as these sizes show.)"""
    for n in range(3 * h + 1, 15):
        assert _two_dense_groups(n, h, h + 1) is None, (n, h)


def test_lemma_3_is_tight_at_degree_h() -> None:
    """With degree h instead of h + 1 two groups exist (two opposite arcs): the bound the
    colluder-cut-vertex break exploited (a colluder adds the missing neighbour to both)."""
    found = _two_dense_groups(12, 2, 2)
    assert found is not None
    a, b = found
    assert a & b == 0


# ================================================================================================
# Attacks refused at HEAD
# ================================================================================================


def _split_lists_sweep(
    base: Lab, order: Sequence[int], v: int, p: int
) -> tuple[list[str], set[str]]:
    """The issue-8 split: list S (v and its partner p alive) for the holders of v's shares,
    who would reveal b_v, and list T (p dropped) for the holders of p's shares, who would reveal
    s_p; with both, the pad between v and p is known while v's list says p is alive (the step
    the attack repeats for each partner of v). The honest signers are cut at every point of
    ``order`` (S to the first ones, T to the rest): every choice of signature subsets the
    server can make. Asserts the split never completes and x_v never comes out; returns the
    refusal messages and which half ever succeeded on its own ("S": t shares of b_v under S,
    "T": t shares of s_p under T). (b_v and s_p both under T are a normal dropout.)"""
    messages = []
    halves: set[str] = set()
    n, t = base.config.num_parties, base.config.threshold
    s_list = tuple(range(n))
    t_list = tuple(u for u in range(n) if u != p)
    for cut in range(1, len(order)):
        lab = copy.deepcopy(base)
        lab.show(order[:cut], s_list)
        lab.show(order[cut:], t_list, (p,))
        signed_s = set(lab.signatures.get((s_list, ()), {}))
        signed_t = set(lab.signatures.get((t_list, (p,)), {}))
        b_v_under_s = s_p_under_t = 0
        for r in base.config.neighbors(v):
            if r in signed_s:
                reply = lab.ask(r, s_list)
                b_v_under_s += isinstance(reply, Response) and v in reply.self_mask_owners
        for r in base.config.neighbors(p):
            if r in signed_t:
                reply = lab.ask(r, t_list, (p,))
                s_p_under_t += isinstance(reply, Response) and p in reply.mask_key_owners
        assert not (b_v_under_s >= t and s_p_under_t >= t), f"cut {cut}: the split completed"
        halves |= {"S"} if b_v_under_s >= t else set()
        halves |= {"T"} if s_p_under_t >= t else set()
        assert lab.block_sum([v]) is None, f"cut {cut}: x_v recovered"
        for u, err in lab.errors.items():
            assert isinstance(err, RemoteProtocolError), (u, err)
            messages.append(str(err))
    return messages, halves


@pytest.mark.parametrize("kind", ["harary", "complete"])
def test_split_survivor_lists_with_every_signer_cut_are_refused(kind: str) -> None:
    """The issue-8 attack with every split of the honest signers between the two lists
    (harary_graph(20, 6), t = 4; complete graph n = 9, t = 5). Whatever the cut, b_v and s_p are
    never both rebuilt and x_v never comes out; the refusals are (C1) certification failures
    at p (or v) and signers refusing the other list."""
    if kind == "harary":
        setup = build(20, 4, k=6)
        order = setup.at(*range(-9, 11))  # ring order, v at position 0 and p at 1 in the middle
    else:
        setup = build(9, 5)
        order = list(range(9))
    v, p = setup.at(0, 1)
    base = Lab(setup)
    assert not base.errors
    messages, halves = _split_lists_sweep(base, order, v, p)
    assert halves == {"S", "T"}  # each half alone is reachable by some cut; never both at once
    assert any("not certified" in m for m in messages), messages[:5]


def test_split_lists_with_withheld_deliveries_part_wise_are_refused() -> None:
    """The part-wise form of the issue-8 attack on harary_graph(20, 6), t = 4, min_holders = 2:
    block 0 is held by v (position 0), its partner p (1) and position 3; the server withholds
    the deliveries between v and the other block-0 holder so that p is v's only block-0
    partner (D_b = 1 here, so under S v's block passes), and splits the signers at every cut.
    Some cuts give t shares of b_v under S; none gives s_p under T as well: T is not
    certified at p whenever S is, and under T the block-0 holders keep no partner on block 0
    ((C2) refuses every holder of p's shares that also holds shares of v or of position 3)."""
    setup = build(20, 4, k=6, block0=(0, 1, 3), min_holders=2)
    v, p, w = setup.at(0, 1, 3)
    base = Lab(setup, withheld=frozenset({(v, w), (w, v)}))
    assert not base.errors
    messages, halves = _split_lists_sweep(base, setup.at(*range(-9, 11)), v, p)
    assert halves == {"S"}, halves
    assert any("not certified" in m for m in messages), messages[:5]
    assert any("blocks [0]" in m for m in messages), messages[:5]


def _ring_lab(n: int = 20, k: int = 6, t: int = 4, drops: Sequence[int] = ()) -> tuple[Lab, Setup]:
    """A Harary round where ``drops`` (ring positions) never receive shares (they dropped before
    masking; their neighbours still masked with them), at the ConsistencyCheck."""
    setup = build(n, t, k=k)
    gone = set(setup.at(*drops))
    withheld = frozenset((u, v) for v in gone for u in setup.config.neighbors(v))
    lab = Lab(setup, withheld=withheld)
    assert set(lab.errors) == gone  # a party with no delivery cannot mask
    return lab, setup


def test_lists_that_omit_or_add_parties_are_refused() -> None:
    """harary_graph(20, 6), t = 4; position 2 dropped before masking. Party at position 0 signed
    the true list; requests that omit its dropped partner, add a neighbour it never masked
    with, or list it as dropped are refused; a list certified and matching is answered and
    reveals nothing about parties it does not hold shares of."""
    lab, setup = _ring_lab(drops=(2,))
    (me, gone, other) = setup.at(0, 2, 7)
    alive = without(setup, [gone])
    signers = [u for u in alive if u != other]
    true_list = (alive, (gone,))
    lab.show(signers, *true_list)
    # The party signed the true list; each forgery differs from it, so it is refused whatever
    # the signatures (the list is compared before anything else).
    forgeries = {
        "dropped partner omitted": (alive, ()),
        "never-masked neighbour added as dropped": (alive, tuple(sorted((gone, *setup.at(-5))))),
        "the party itself dropped": (without(setup, [gone, me]), tuple(sorted((gone, me)))),
        "a far party added to the dropped list": (
            without(setup, [gone, *setup.at(10)]),
            tuple(sorted((gone, *setup.at(10)))),
        ),
    }
    for name, (survivors, dropped) in forgeries.items():
        trial = copy.deepcopy(lab)
        outcome = trial.ask(me, survivors, dropped)
        assert_refused(outcome, trial.clients[me]), name
    response = lab.ask(me, *true_list)
    assert isinstance(response, Response), response
    owners = set(response.self_mask_owners) | set(response.mask_key_owners)
    assert owners == set(lab.masked[me].peers) and response.mask_key_owners == (gone,)


def test_list_certified_at_peers_but_not_two_hops_away_is_refused() -> None:
    """(C1) covers the partners of the revealer's surviving peers (up to 2h ring positions
    away). Signatures chosen so the list is certified at every peer of the revealer (position
    0) but not at position 6 (a partner of its peer at 3): refused, naming that party. The
    same request with the missing signers added is answered."""
    lab, setup = _ring_lab()
    alive = everyone(setup)
    lab.show(alive, alive)
    me = setup.at(0)[0]
    # Drop signers so that 6 keeps t - 1 = 3 signing neighbours: N(6) = 3..9 minus 6.
    unsigned = set(setup.at(7, 8, 9))
    sigs = lab.signatures[(alive, ())]
    chosen = signatures_for(setup.config, me, {u: s for u, s in sigs.items() if u not in unsigned})
    trial = copy.deepcopy(lab)
    outcome = trial.ask(me, alive, signatures=chosen)
    assert_refused(outcome, trial.clients[me], match="not certified")
    assert str(setup.at(6)[0]) in str(outcome)
    assert isinstance(lab.ask(me, alive), Response)


def test_dropped_party_without_signing_neighbours_is_refused() -> None:
    """A dropped peer whose neighbours did not sign: the list is not certified at it, so its
    mask key is not revealed (the server cannot make a party 'dropped' where nobody agrees)."""
    lab, setup = _ring_lab(drops=(1,))
    (gone,) = setup.at(1)
    alive = without(setup, [gone])
    lst = (alive, (gone,))
    quiet = set(setup.at(-2, -1, 2, 3))  # neighbours of the dropped party that do not sign
    lab.show([u for u in alive if u not in quiet], *lst)
    me = setup.at(0)[0]
    outcome = lab.ask(me, *lst)
    assert_refused(outcome, lab.clients[me], match="not certified")
    assert str(gone) in str(outcome)


def test_forged_stale_missing_and_duplicated_partner_sets_are_refused() -> None:
    """The revealer needs the signed partner set of every surviving peer: a missing one, one
    whose peers were edited (signature no longer matches), one from the previous round (same
    long-term keys, valid signature over round 0's digest), a colluder's set naming a
    non-neighbour, and (object path, no codec) a duplicate entry for one owner whose last copy
    is forged: all refused."""
    pairs = [keys.generate_ed25519() for _ in range(20)]
    session = os.urandom(16)
    seed = os.urandom(32)
    old = build(20, 4, k=6, pairs=pairs, session_id=session, graph_seed=seed, round_index=0)
    old_lab = Lab(old)
    setup = build(20, 4, k=6, pairs=pairs, session_id=session, graph_seed=seed, round_index=1)
    (colluder,) = setup.at(1)
    lab = Lab(setup, colluders=frozenset({colluder}))
    alive = everyone(setup)
    lab.show(alive, alive)
    me = setup.at(0)[0]
    peer = setup.at(-1)[0]
    genuine = [s for w in setup.config.neighbors(me) if (s := lab.partner_set(w)) is not None]
    index = next(i for i, s in enumerate(genuine) if s.party == peer)
    edited = dataclasses.replace(genuine[index], peers=genuine[index].peers[1:])
    stale = old_lab.partner_set(peer)
    assert stale is not None
    outsider = setup.at(10)[0]
    rogue = lab.partner_set(colluder, tuple(sorted({*setup.config.neighbors(colluder), outsider})))
    assert rogue is not None
    cases = {
        "missing": genuine[:index] + genuine[index + 1 :],
        "edited": [*genuine[:index], edited, *genuine[index + 1 :]],
        "stale (previous round)": [*genuine[:index], stale, *genuine[index + 1 :]],
        "colluder names a non-neighbour": [rogue if s.party == colluder else s for s in genuine],
    }
    for name, shown in cases.items():
        trial = copy.deepcopy(lab)
        outcome = trial.ask(me, alive, partner_sets=shown)
        assert_refused(outcome, trial.clients[me], match="partner"), name
    # Object path: a host handing the engine Message objects skips the codec's sortedness.
    trial = copy.deepcopy(lab)
    request = wire.decode(trial.request(me, alive))
    doubled = forge(request, partner_sets=(*request.partner_sets, edited))
    with pytest.raises(RemoteProtocolError, match="partner"):
        trial.clients[me].receive(doubled)
    assert_wiped(trial.clients[me])


def test_reordered_and_duplicated_ids_are_refused() -> None:
    """On the wire the codec refuses unsorted or repeated ids; a host passing Message objects
    skips the codec, and then the engine still refuses: a reordered survivor list is not the
    list the party signed, and a signer repeated to reach t counts once."""
    lab, setup = _ring_lab()
    alive = everyone(setup)
    lab.show(alive, alive)
    me = setup.at(0)[0]
    request = wire.decode(lab.request(me, alive))
    assert isinstance(request, wire.UnmaskRequest)
    reordered = forge(request, survivors=tuple(reversed(alive)))
    with pytest.raises(wire.MessageDecodeError):
        wire.decode(wire.encode(reordered))
    trial = copy.deepcopy(lab)
    with pytest.raises(RemoteProtocolError, match="differs"):
        trial.clients[me].receive(reordered)
    # Repeat one valid signature t times in place of the real signers.
    one = request.signatures[0]
    repeated = forge(request, signatures=(one,) * setup.config.threshold)
    with pytest.raises(wire.MessageDecodeError):
        wire.decode(wire.encode(repeated))
    trial = copy.deepcopy(lab)
    with pytest.raises(RemoteProtocolError, match="not certified"):
        trial.clients[me].receive(repeated)
    assert_wiped(trial.clients[me])


def test_replays_across_rounds_and_sessions_are_refused() -> None:
    """Same long-term signing keys and graph, two sessions (rounds 0 and 1 of one session, and
    another session): a message of the other round, survivor signatures over the same list from
    the other round or session, and share ciphertexts of the other round are all refused."""
    pairs = [keys.generate_ed25519() for _ in range(20)]
    session, seed = os.urandom(16), os.urandom(32)
    labs = {
        name: Lab(build(20, 4, k=6, pairs=pairs, session_id=sid, graph_seed=seed, round_index=r))
        for name, (sid, r) in {
            "round0": (session, 0),
            "round1": (session, 1),
            "other": (os.urandom(16), 1),
        }.items()
    }
    for lab in labs.values():
        alive = everyone(lab.setup)
        lab.show(alive, alive)
    target = labs["round1"]
    alive = everyone(target.setup)
    me = target.setup.at(0)[0]
    for name in ("round0", "other"):
        source = labs[name]
        foreign = signatures_for(source.config, me, source.signatures[(alive, ())])
        trial = copy.deepcopy(target)
        outcome = trial.ask(me, alive, signatures=foreign)
        assert_refused(outcome, trial.clients[me], match="invalid survivor-list signature")
        # The whole request of the other round, re-addressed to this party.
        trial = copy.deepcopy(target)
        with pytest.raises(RemoteProtocolError, match="another session or round"):
            trial.clients[me].receive(source.request(me, alive))


def test_share_ciphertexts_of_another_round_are_refused() -> None:
    """Round 1's party receives round 0's sealed shares from the same neighbours (same
    long-term keys): the AEAD keys and associated data bind the config digest, so the
    delivery fails authentication."""
    pairs = [keys.generate_ed25519() for _ in range(10)]
    session, seed = os.urandom(16), os.urandom(32)
    cfgs = [
        build(10, 3, k=4, pairs=pairs, session_id=session, graph_seed=seed, round_index=r)
        for r in (0, 1)
    ]
    sealed = []
    clients = []
    for setup in cfgs:
        cfg = setup.config
        cs = {u: ClientEngine(cfg, u, signing_key=setup.signing[u]) for u in range(10)}
        adverts = {u: c.start()[0] for u, c in cs.items()}
        out = {}
        for u, c in cs.items():
            entries = tuple(adverts[v].keys for v in cfg.neighbors(u))  # type: ignore[attr-defined]
            directory = wire.KeyDirectory(
                cfg.session_id, cfg.round_index, SERVER, u, entries=entries
            )
            (out[u],) = c.receive(directory)
        sealed.append(out)
        clients.append(cs)
    cfg1 = cfgs[1].config
    me = 0
    senders = cfg1.neighbors(me)
    cts = tuple(sealed[0][u].ciphertexts[sealed[0][u].receivers.index(me)] for u in senders)
    delivery = wire.ShareDelivery(
        cfg1.session_id, cfg1.round_index, SERVER, me, senders=senders, ciphertexts=cts
    )
    with pytest.raises(RemoteProtocolError):
        clients[1][me].receive(wire.encode(delivery))
    assert clients[1][me].state is ClientState.FAILED


def _mixed_config_directory_round(
    config_a: RoundConfig, config_b: RoundConfig, signing: list[bytes], victim: int
) -> tuple[ProtocolError | None, dict[int, ProtocolError]]:
    """The server hands ``victim`` config B and everyone else config A, then routes the key
    directories honestly. Returns the victim's refusal and its neighbours' refusals."""
    n = config_a.num_parties
    configs = {u: config_b if u == victim else config_a for u in range(n)}
    clients = {u: ClientEngine(configs[u], u, signing_key=signing[u]) for u in range(n)}
    adverts = {u: c.start()[0] for u, c in clients.items()}
    errors: dict[int, ProtocolError] = {}
    victim_error: ProtocolError | None = None
    for u in range(n):
        cfg = configs[u]
        entries = tuple(adverts[v].keys for v in cfg.neighbors(u))  # type: ignore[attr-defined]
        directory = wire.KeyDirectory(cfg.session_id, cfg.round_index, SERVER, u, entries=entries)
        try:
            clients[u].receive(wire.encode(directory))
        except ProtocolError as exc:
            if u == victim:
                victim_error = exc
            else:
                errors[u] = exc
    return victim_error, errors


@pytest.mark.parametrize(
    "change",
    [
        {"tolerated_colluders": 0},
        {"active": False, "verify_keys": None},
        {"threshold": 7},
        {"layout": "thin"},
        {"round_index": 1},
    ],
    ids=["fewer-colluders", "semi-honest", "threshold", "layout", "round"],
)
def test_party_handed_another_config_is_refused_both_ways(change: dict[str, Any]) -> None:
    """Config digest mismatch: the server gives party 0 a different RoundConfig (fewer
    tolerated colluders, semi-honest, another threshold, another layout with a thinner block,
    another round). Its key directory (signed by the others over config A's digest) fails
    verification at party 0, and every neighbour refuses party 0's advertisement, so the
    server cannot run party 0 under weaker rules next to the others."""
    setup = build(9, 6, c=2, block0=(0, 1, 2, 3), min_holders=4)
    fields = dict(change)
    if fields.get("layout") == "thin":
        holdings = tuple((0, 1) if u in (0, 1, 2, 4) else (1,) for u in range(9))
        fields["layout"] = BlockLayout((BLOCK, BLOCK), holdings, min_holders=4)
    config_b = dataclasses.replace(setup.config, **fields)
    assert config_b.digest != setup.config.digest
    victim_error, errors = _mixed_config_directory_round(setup.config, config_b, setup.signing, 0)
    if config_b.active:
        assert isinstance(victim_error, RemoteProtocolError), victim_error
    assert set(errors) == set(setup.config.neighbors(0))
    assert all(isinstance(e, RemoteProtocolError) for e in errors.values())


def test_client_policy_refuses_a_consistently_downgraded_region() -> None:
    """If the server hands a whole neighbourhood the same weaker config (so they interoperate
    among themselves), only the parties' own ClientPolicy protects them: each downgrade is
    refused with a PolicyError naming the setting, before any key is drawn."""
    setup = build(9, 6, c=2, block0=(0, 1, 2, 3), min_holders=4)
    policy = ClientPolicy(
        min_threshold=6, min_holders=4, require_active=True, min_tolerated_colluders=2
    )
    ClientEngine(setup.config, 0, signing_key=setup.signing[0], policy=policy)  # accepted
    thin = BlockLayout(
        (BLOCK, BLOCK), tuple((0, 1) if u < 4 else (1,) for u in range(9)), min_holders=2
    )
    downgrades = {
        "tolerated_colluders": {"tolerated_colluders": 0},
        "active": {"active": False, "verify_keys": None},
        "threshold": {"threshold": 5, "tolerated_colluders": 0},
        "min_holders": {"layout": thin, "tolerated_colluders": 0},
    }
    for name, fields in downgrades.items():
        weaker = dataclasses.replace(setup.config, **fields)
        with pytest.raises(PolicyError, match=name.split("_")[-1]):
            ClientEngine(weaker, 0, signing_key=setup.signing[0], policy=policy)


def test_limit_one_colluder_beyond_tolerated_splits_a_block() -> None:
    """Where the claim stops: harary_graph(7, 4), t = 3 with tolerated_colluders = 0 (accepted:
    t >= h + 1). One actual colluder (position 0), block 0 at positions {5, 6} (A), 0, {1, 2}
    (B), deliveries 6 <-> 1 withheld: D_b = 2 counts the colluder, and both pairs' sums come
    out. The guarantee is exactly 'up to tolerated_colluders'; this documents that one more
    breaks it (the configuration needs t >= h + 1 + c for c colluders)."""
    setup = build(7, 3, k=4, c=0, block0=(0, 1, 2, 5, 6), min_holders=3)
    (c0,) = setup.at(0)
    a, b = setup.at(5, 6), setup.at(1, 2)
    lab, leak_a, leak_b = _cut_vertex_lying_server(setup, [c0], a, b, setup.at(2, 3, 4, 5))
    assert leak_a and leak_b, lab.errors
    assert not lab.errors


def _unchecked_harary(n: int, k: int) -> graph.NeighborGraph:
    g = graph.harary_graph(n, k, os.urandom(32))
    return graph.NeighborGraph(n=g.n, kind=g.kind, neighbors=g.neighbors)  # ring order dropped


@pytest.mark.parametrize(
    ("graph_factory", "t", "c", "match"),
    [
        (lambda: graph.harary_graph(9, 6, os.urandom(32)), 5, 0, "3k/2"),  # n < 3h + 1
        (lambda: _unchecked_harary(20, 6), 4, 0, "ring order"),
        (lambda: graph.harary_graph(20, 6, os.urandom(32)), 3, 0, "2 t >"),
        (lambda: graph.harary_graph(20, 6, os.urandom(32)), 4, 1, "colluders"),
        (lambda: graph.harary_graph(20, 8, os.urandom(32)), 6, 2, "colluders"),
        (lambda: graph.complete_graph(9), 5, 2, "2 t >"),
    ],
    ids=["n<3h+1", "no-ring", "2t<=k", "t<h+1+c", "t<h+1+c(k=8)", "complete-2t<=k+c"],
)
def test_active_configs_outside_the_argument_are_refused(
    graph_factory: Any, t: int, c: int, match: str
) -> None:
    g = graph_factory()
    pairs = [keys.generate_ed25519() for _ in range(g.n)]
    with pytest.raises(ConfigError, match=match):
        RoundConfig(
            session_id=os.urandom(16),
            round_index=0,
            graph=g,
            threshold=t,
            dim=8,
            modulus_bits=BITS,
            active=True,
            verify_keys=tuple(p[1] for p in pairs),
            tolerated_colluders=c,
        )


def test_rolled_back_state_cannot_sign_a_second_list() -> None:
    """Lemma 1 assumes an honest party signs one list per round. A server that stores the
    parties' engine states could restore a party from before it signed and have it sign a
    second list. With sealed states and a RollbackGuard the stale blob (and a second opening
    of the newest one) is refused; without the guard the restored engine signs again, which is
    why docs/persistence.md asks for a guard the server cannot roll back."""
    lab, setup = _ring_lab()
    cfg = setup.config
    me = setup.at(0)[0]
    state_key = os.urandom(32)
    guard = persist.RollbackGuard()
    before = lab.clients[me].to_bytes(key=state_key, counter=guard.next_counter())
    host = ClientEngine(cfg, me, signing_key=setup.signing[me])
    host.load_bytes(before, key=state_key, min_counter=guard)
    survivors = everyone(setup)
    listing = wire.SurvivorList(cfg.session_id, cfg.round_index, SERVER, me, survivors=survivors)
    (first,) = host.receive(wire.encode(listing))
    assert isinstance(first, wire.SurvivorSignature)
    after = host.to_bytes(key=state_key, counter=guard.next_counter())

    def reopen(blob: bytes) -> ClientEngine:
        engine = ClientEngine(cfg, me, signing_key=setup.signing[me])
        engine.load_bytes(blob, key=state_key, min_counter=guard)
        return engine

    with pytest.raises(StateError):
        reopen(before)  # rolled back to before the signature
    assert reopen(after).state is ClientState.AWAIT_UNMASK  # the newest state, once
    with pytest.raises(StateError):
        reopen(after)  # a second copy of it
    # Without the guard: the hazard the guard exists for.
    unguarded = ClientEngine(cfg, me, signing_key=setup.signing[me])
    unguarded.load_bytes(before, key=state_key, min_counter=0)
    other = without(setup, setup.at(1))
    second_listing = wire.SurvivorList(
        cfg.session_id, cfg.round_index, SERVER, me, survivors=other, dropped=tuple(setup.at(1))
    )
    (second,) = unguarded.receive(wire.encode(second_listing))
    assert isinstance(second, wire.SurvivorSignature) and second.signature != first.signature

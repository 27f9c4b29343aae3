"""Audit "collusion": the server plus corrupted parties against one honest surviving party v.

Rounds run through a small in-process driver (every message as wire bytes, the server's inbox
kept as its transcript) that also keeps the client engines, so the colluders' state can be
taken: their X25519 mask keys s_u and the Shamir shares they hold of v's secrets.

(a) Below the threshold. The server knows y_v (v's MaskedInput) and b_v (v survived, so the
    honest unmasking reveals t shares of it). The colluders give it s_u for themselves (so the
    pairwise masks between v and colluders come off exactly) and their c < t shares of s_v. The
    attack interpolates s_v from those c shares (a degree c-1 guess), checks it against v's
    advertised S_v, strips PRG(b_v) and every pairwise mask with the guess, and compares the
    result with x_v. Measured: does the guess match S_v, the fraction of coordinates recovered,
    and the mean |error| / 2^(B-1) (0.5 for an error uniform on the ring), with a KS p-value.
(b) At the threshold: with t colluders s_v is exact and x_v comes out exactly (the bound is tight).
(c) A lying server. Consistent lie (everyone told "v dropped"): it collects s_v but not b_v, and
    y_v stays masked by PRG(b_v). Split view (some neighbours told "v dropped", the others the
    truth): in semi-honest mode no honest party can notice (all answer; measured), and x_v leaks
    exactly when both groups reach t (impossible when 2t > k). In active mode
    (``RoundConfig(active=True)``, t from ``complete_parameters(active=True)``) every split is
    tried with every survivor list / signature set the server holds: the honest parties refuse
    (RemoteProtocolError, no response) whatever they did not sign or what lacks t signatures,
    and the server never holds t shares of both b_v and s_v.
(d) Part-wise: a block left with fewer than ``min_holders`` surviving holders. The honest server
    aborts (AbortedError), a holder of the block refuses a forged unmask request, and, as a
    malicious server would, the audit asks the parties that do NOT hold the block: if they
    answer, the server reconstructs the thin block's sum over too few holders.

(e) Systematic search (issue 8, item 5): :mod:`audits.strategy_search` encodes every check an
    honest party makes in active mode (routing with withheld deliveries, several signed survivor
    lists, certification, signed partner sets, block layouts, up to 2 colluders) for an exact
    solver, and asks on small sparse graphs whether ANY server strategy isolates an honest
    party's value on a block, reveals a sum below min_holders, or splits a block into two sums.
    Every strategy found is replayed on the real engines (:mod:`audits.attack_replay`). The
    quick space takes seconds; the full one runs up to ``FULL_SEARCH_BUDGET_S`` and reports
    what it did not reach. A sanity query checks that the model still admits an honest round.

``weaken="low-threshold"``: the round's threshold is set to C, the number of colluders the
deployment is meant to tolerate (C = t - 1 of the honest configuration): the colluders reach t
and v's input is recovered, so the audit fails.
``weaken="legacy-rule"``: the engines run inside ``legacy_rule_for_audit()`` (the rule before
issue 8) and the search models that rule: it finds the issue's attacks, each replayed on the
real engines (value recovered) and again under the rule in force (refused), so the audit fails.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from audits.server_view import ks_uniform
from secagg import encoding, graph
from secagg import messages as wire
from secagg.config import RoundConfig
from secagg.crypto import keys, prg, rng, shamir
from secagg.engine import consistency
from secagg.engine._state import ServerState
from secagg.engine.client import ClientEngine
from secagg.engine.consistency import legacy_rule_for_audit
from secagg.engine.masked_input import mask_context
from secagg.engine.masking import pairwise_seed, self_mask_stream_seed
from secagg.engine.server import ServerEngine
from secagg.engine.share_keys import MASK_KEY_BYTES
from secagg.errors import AbortedError, ProtocolError, RemoteProtocolError
from secagg.layout import BlockLayout
from secagg.sim import DropoutScript, aggregate_in_memory

NAME = "collusion"
N = 12
T_HONEST = 6  # complete graph, k = 11: t > k/2
TOLERATED = T_HONEST - 1  # C, the corrupted parties the deployment is meant to withstand
BITS = 32
VICTIM = 5
WEAKENINGS = (None, "low-threshold", "legacy-rule")
#: The full strategy search stops starting solver calls after this many seconds (the rest are
#: reported as "not run"); the quick one has no budget (it takes seconds).
FULL_SEARCH_BUDGET_S = 2700.0
STATUSES = ("unsat", "sat", "unknown", "not run")

# -- driver --------------------------------------------------------------------------------------


@dataclass
class Round:
    """One server and n client engines wired through wire bytes, with scripted dropouts."""

    config: RoundConfig
    inputs: dict[int, npt.NDArray[Any]]
    drops: dict[int, str] = field(default_factory=dict)
    signing: list[bytes] | None = None
    inbox: list[bytes] = field(default_factory=list)  # the server's view
    pending: list[wire.Message] = field(default_factory=list)
    mask_keys: dict[int, bytes] = field(default_factory=dict)  # s_u, taken while still held
    #: holder -> (owner -> the holder's share of owner's mask key s_owner)
    key_shares: dict[int, dict[int, bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.server = ServerEngine(self.config)
        self.clients = {
            u: ClientEngine(
                self.config, u, signing_key=None if self.signing is None else self.signing[u]
            )
            for u in range(self.config.num_parties)
        }
        self.script = DropoutScript(dict(self.drops))
        self.started = False

    def _to_server(self, outgoing: list[wire.Message]) -> None:
        for m in outgoing:
            data = wire.encode(m)
            self.inbox.append(data)
            self.pending += self.server.receive(data)

    def run_until(self, state: ServerState) -> None:
        """Drive the round until the server enters ``state`` (its messages left in pending)."""
        phase_of = {
            ServerState.COLLECT_SHARES: "share_keys",
            ServerState.COLLECT_MASKED_INPUTS: "masked_input",
            ServerState.COLLECT_SIGNATURES: "consistency",
            ServerState.COLLECT_UNMASK: "unmask",
        }
        if not self.started:
            self.started = True
            for u, c in self.clients.items():
                if self.script.alive(u, "advertise"):
                    c.set_input(self.inputs[u])
                    self._to_server(c.start())
        while self.server.state is not state:
            if self.server.state in (ServerState.DONE, ServerState.FAILED):
                raise RuntimeError(f"round ended before {state.name}")
            if not self.pending:
                self.pending = self.server.close_phase()
                continue
            phase = phase_of[self.server.state]
            batch, self.pending = self.pending, []
            for m in batch:
                u = m.recipient
                if not self.script.alive(u, phase):
                    continue
                c = self.clients[u]
                if c._secrets is not None:
                    self.mask_keys[u] = c._secrets.mask_private
                self._to_server(c.receive(wire.encode(m)))
                if c._held is not None:
                    self.key_shares[u] = dict(c._held.mask_key_shares)

    def finish(self) -> None:
        self.run_until(ServerState.DONE)

    def messages(self, kind: type[wire.Message]) -> list[Any]:
        return [m for m in map(wire.decode, self.inbox) if isinstance(m, kind)]


def _config(
    n: int,
    t: int,
    *,
    active: bool = False,
    layout: BlockLayout | None = None,
    dim: int = 4096,
    bits: int = BITS,
) -> tuple[RoundConfig, list[bytes] | None]:
    signing = verify = None
    if active:
        pairs = [keys.generate_ed25519() for _ in range(n)]
        signing = [p[0] for p in pairs]
        verify = tuple(p[1] for p in pairs)
    config = RoundConfig(
        session_id=rng.token_bytes(16),
        round_index=0,
        graph=graph.complete_graph(n),
        threshold=t,
        dim=dim if layout is None else layout.dim,
        modulus_bits=bits,
        active=active,
        verify_keys=verify,
        layout=layout,
    )
    return config, signing


def _inputs(config: RoundConfig, seed: int) -> dict[int, npt.NDArray[Any]]:
    gen = np.random.default_rng(seed)
    dt = encoding.word_dtype(config.modulus_bits)
    out = {}
    for u in range(config.num_parties):
        x = np.rint(gen.normal(0, 2**10, size=config.input_length(u))).astype(np.int64)
        out[u] = encoding.to_ring(x, config.modulus_bits).astype(dt)
    return out


# -- Shamir, as an attacker with any number of shares does it --------------------------------------


def _interpolate(shares: dict[int, bytes], secret_bytes: int) -> bytes:
    """f(0) of the lowest-degree polynomial through the given shares (holder -> share bytes),
    read back as bytes modulo 2^(8 secret_bytes). Exact with >= t shares; with fewer, the best an
    attacker can do, and a wrong value. With no share at all: zero."""
    if not shares:
        return bytes(secret_bytes)
    holders = sorted(shares)
    rows = np.stack([np.frombuffer(shares[h], dtype=">u4").astype(np.uint64) for h in holders])
    coeffs = shamir.lagrange_at_zero(tuple(h + 1 for h in holders))
    limbs = (rows * coeffs[:, None] % np.uint64(shamir.PRIME)).sum(axis=0) % np.uint64(shamir.PRIME)
    value = sum(int(v) << (shamir.LIMB_BITS * i) for i, v in enumerate(limbs.tolist()))
    return (value % (1 << (8 * secret_bytes))).to_bytes(secret_bytes, "little")


def _collect(
    responses: list[wire.UnmaskResponse], owner: int
) -> tuple[dict[int, bytes], dict[int, bytes]]:
    seeds: dict[int, bytes] = {}
    mkeys: dict[int, bytes] = {}
    for m in responses:
        for o, s in zip(m.self_mask_owners, m.self_mask_shares, strict=True):
            if o == owner:
                seeds[m.sender] = s
        for o, s in zip(m.mask_key_owners, m.mask_key_shares, strict=True):
            if o == owner:
                mkeys[m.sender] = s
    return seeds, mkeys


def _strip(
    config: RoundConfig,
    y: npt.NDArray[Any],
    v: int,
    b_v: bytes | None,
    pair_secrets: dict[int, bytes],
) -> npt.NDArray[Any]:
    """y_v minus PRG(b_v) (if known) minus v's pairwise masks for the given shared secrets."""
    ctx = mask_context(config)
    mask = np.zeros(config.dim, dtype=ctx.dtype)
    if b_v is not None:
        prg.add_mask(mask, self_mask_stream_seed(ctx, b_v, v))
    for w, secret in pair_secrets.items():
        prg.add_mask(mask, pairwise_seed(ctx, secret, v, w), subtract=v > w)
    return encoding.reduce(np.subtract(y.astype(ctx.dtype), mask), config.modulus_bits)


def _error_stats(
    config: RoundConfig, guess: npt.NDArray[Any], x: npt.NDArray[Any]
) -> dict[str, float]:
    bits = config.modulus_bits
    diff = encoding.reduce(np.subtract(guess.astype(np.uint64), x.astype(np.uint64)), bits)
    e = encoding.from_ring(diff, bits).astype(np.float64) / 2.0 ** (bits - 1)
    return {
        "exact_fraction": float(np.mean(diff == 0)),
        "mean_abs_rel_error": float(np.mean(np.abs(e))),
        "ks_p_error_uniform": ks_uniform((e + 1) / 2)[1],
    }


# -- (a)/(b): colluders below and at the threshold ---------------------------------------------


def _colluder_curve(t: int, seed: int, dim: int) -> dict[str, Any]:
    config, _ = _config(N, t, dim=dim)
    drops = {0: "masked_input", 11: "unmask"}
    r = Round(config, _inputs(config, seed), drops)
    r.run_until(ServerState.COLLECT_UNMASK)
    snapshot = copy.deepcopy(r.clients)  # engines at the unmask request, for part (c)
    r.finish()
    result = r.server.result
    assert result is not None
    v = VICTIM
    publics = {m.sender: m.keys.mask_public for m in r.messages(wire.AdvertiseKeys)}
    (y_msg,) = [m for m in r.messages(wire.MaskedInput) if m.sender == v]
    y_v = encoding.unpack(y_msg.payload, config.modulus_bits, config.dim)
    # v's engine wiped its state after answering; U2 as v saw it = neighbours that shared keys.
    shared_keys = {m.sender for m in r.messages(wire.EncryptedShares)}
    peers = tuple(sorted(set(config.neighbors(v)) & shared_keys))
    seeds, _ = _collect(r.messages(wire.UnmaskResponse), v)
    b_v = _interpolate(dict(sorted(seeds.items())[:t]), prg.SEED_BYTES)  # legitimately learnt
    # Colluders: other survivors first (they hold v's shares), never v.
    order = [u for u in range(N) if u != v and u not in drops] + [u for u in drops if u != v]
    held = r.key_shares
    points = []
    for c in range(0, t + 2):
        colluders = order[:c]
        key_shares = {u: held[u][v] for u in colluders}
        s_guess = _interpolate(dict(sorted(key_shares.items())[:t]), MASK_KEY_BYTES)
        key_ok = keys.x25519_public(s_guess) == publics[v]
        secrets = {}
        for w in peers:
            if w in colluders:  # a colluder knows its own s_w: exact s_vw
                secrets[w] = keys.x25519_shared_secret(r.mask_keys[w], publics[v])
            else:
                secrets[w] = keys.x25519_shared_secret(s_guess, publics[w])
        guess = _strip(config, y_v, v, b_v, secrets)
        stats = _error_stats(config, guess, r.inputs[v])
        points.append({"colluders": c, "key_recovered": key_ok, **stats})
    sum_exact = bool(
        np.array_equal(
            result.total.astype(np.uint64),
            encoding.reduce(sum(r.inputs[u].astype(np.uint64) for u in result.survivors), BITS),
        )
    )
    return {
        "config": config,
        "round": r,
        "snapshot": snapshot,
        "points": points,
        "peers": peers,
        "publics": publics,
        "y_v": y_v,
        "sum_exact": sum_exact,
        "survivors": result.survivors,
        "dropped": result.dropped,
    }


# -- (c) lying server ----------------------------------------------------------------------------


def _unmask_request(
    config: RoundConfig,
    party: int,
    survivors: tuple[int, ...],
    dropped: tuple[int, ...],
    signatures: tuple[wire.PartySignature, ...] = (),
    partner_sets: tuple[wire.PartnerSet, ...] = (),
) -> bytes:
    return wire.encode(
        wire.UnmaskRequest(
            config.session_id,
            config.round_index,
            wire.SERVER,
            party,
            survivors=survivors,
            dropped=dropped,
            signatures=signatures,
            partner_sets=partner_sets,
        )
    )


def _partner_sets(r: Round, party: int, survivors: tuple[int, ...]) -> tuple[wire.PartnerSet, ...]:
    """The signed partner sets (from their real masked inputs) of ``party``'s surviving
    neighbours, as an unmask request in active mode must carry them."""
    masked = {m.sender: m for m in r.messages(wire.MaskedInput)}
    return tuple(
        wire.PartnerSet(w, masked[w].peers, masked[w].peers_signature)
        for w in r.config.neighbors(party)
        if w in masked and w in survivors
    )


def _lying_semi_honest(curve: dict[str, Any]) -> dict[str, Any]:
    config: RoundConfig = curve["config"]
    t, v = config.threshold, VICTIM
    snapshot: dict[int, ClientEngine] = curve["snapshot"]
    r: Round = curve["round"]
    survivors = tuple(curve["survivors"])
    dropped = tuple(curve["dropped"])
    told_dropped = tuple(u for u in survivors if u != v)
    lie = (told_dropped, tuple(sorted((*dropped, v))))
    truth = (survivors, dropped)
    answering = [u for u in survivors if u != v and u in snapshot]
    # Consistent lie: everyone hears "v dropped".
    responses = []
    for u in answering:
        c = copy.deepcopy(snapshot[u])
        responses += c.receive(_unmask_request(config, u, *lie))
    seeds, mkeys = _collect(responses, v)
    s_v = _interpolate(dict(sorted(mkeys.items())[:t]), MASK_KEY_BYTES)
    key_ok = keys.x25519_public(s_v) == curve["publics"][v]
    secrets = {w: keys.x25519_shared_secret(s_v, curve["publics"][w]) for w in curve["peers"]}
    residual = _strip(config, curve["y_v"], v, None, secrets)
    consistent = {
        "s_v_shares": len(mkeys),
        "b_v_shares": len(seeds),
        "s_v_recovered": key_ok,
        **_error_stats(config, residual, r.inputs[v]),
    }
    # Split view: the first a answering parties hear "v dropped", the rest the truth.
    splits = []
    for a in range(1, len(answering)):
        group_a, group_b = answering[:a], answering[a:]
        responses, refused = [], 0
        for group, (lst, drp) in ((group_a, lie), (group_b, truth)):
            for u in group:
                c = copy.deepcopy(snapshot[u])
                try:
                    responses += c.receive(_unmask_request(config, u, lst, drp))
                except ProtocolError:
                    refused += 1
        seeds, mkeys = _collect(responses, v)
        leak = len(seeds) >= t and len(mkeys) >= t
        exact = False
        if leak:
            b_v = _interpolate(dict(sorted(seeds.items())[:t]), prg.SEED_BYTES)
            s_v = _interpolate(dict(sorted(mkeys.items())[:t]), MASK_KEY_BYTES)
            sec = {w: keys.x25519_shared_secret(s_v, curve["publics"][w]) for w in curve["peers"]}
            guess = _strip(config, curve["y_v"], v, b_v, sec)
            exact = bool(np.array_equal(guess.astype(np.uint64), r.inputs[v].astype(np.uint64)))
        splits.append(
            {
                "told_dropped": a,
                "told_truth": len(group_b),
                "refused": refused,
                "b_v_shares": len(seeds),
                "s_v_shares": len(mkeys),
                "x_v_recovered": exact,
            }
        )
    return {
        "consistent_lie": consistent,
        "split_views": splits,
        "detected": sum(s["refused"] for s in splits),
        "x_v_leaked": any(s["x_v_recovered"] for s in splits),
    }


def _lying_active(seed: int) -> dict[str, Any]:
    t = graph.complete_parameters(N, 0.0, 0.0, active=True).t
    config, signing = _config(N, t, active=True, dim=64)
    r = Round(config, _inputs(config, seed), {}, signing)
    r.run_until(ServerState.COLLECT_SIGNATURES)
    v = VICTIM
    base = {u: copy.deepcopy(c) for u, c in r.clients.items()}
    everyone = tuple(range(N))
    l1 = tuple(u for u in everyone if u != v)  # "v dropped"
    l2 = everyone
    others = [u for u in everyone if u != v]
    splits, answered_total, refused_total, bad_answers = [], 0, 0, 0
    for a in range(1, len(others)):
        group_a = set(others[:a])
        clients = {u: copy.deepcopy(c) for u, c in base.items()}
        sigs: dict[tuple[int, ...], list[wire.PartySignature]] = {l1: [], l2: []}
        signed: dict[int, tuple[int, ...]] = {}
        for u in everyone:
            lst = l1 if u in group_a else l2
            base_msg = wire.SurvivorList(
                config.session_id,
                config.round_index,
                wire.SERVER,
                u,
                survivors=lst,
                dropped=(v,) if lst == l1 else (),
            )
            (msg,) = clients[u].receive(wire.encode(base_msg))
            sigs[lst].append(wire.PartySignature(u, msg.signature))
            signed[u] = lst
        options = []
        for lst, drp in ((l1, (v,)), (l2, ())):
            for sig_list in (sigs[l1], sigs[l2], sigs[l1] + sigs[l2]):
                usable = tuple(
                    sorted((s for s in sig_list if s.party in lst), key=lambda s: s.party)
                )
                options.append((lst, drp, usable))
        responses = []
        answered = refused = 0
        for u in others:
            for lst, drp, sig_list in options:
                if u not in lst:
                    continue
                c = copy.deepcopy(clients[u])
                try:
                    out = c.receive(
                        _unmask_request(config, u, lst, drp, sig_list, _partner_sets(r, u, lst))
                    )
                except RemoteProtocolError:
                    refused += 1
                    continue
                answered += 1
                responses += out
                # An answer is only legitimate for the list u signed with >= t signatures.
                if lst != signed[u] or len(sig_list) < t:
                    bad_answers += 1
        seeds, mkeys = _collect(responses, v)
        splits.append(
            {
                "told_dropped": a,
                "answered": answered,
                "refused": refused,
                "b_v_holders": len(seeds),
                "s_v_holders": len(mkeys),
                "both_reach_t": len(seeds) >= t and len(mkeys) >= t,
            }
        )
        answered_total += answered
        refused_total += refused
    return {
        "n": N,
        "k": N - 1,
        "t": t,
        "splits": splits,
        "answered": answered_total,
        "refused": refused_total,
        "answers_to_unsigned_or_short_lists": bad_answers,
        "x_v_exposed": any(s["both_reach_t"] for s in splits),
    }


# -- (d) part-wise: a thin block -----------------------------------------------------------------


def _partwise(seed: int, active: bool = False) -> dict[str, Any]:
    n = 8
    # Block 0: parties 0, 1, 2 (exactly min_holders = 3); block 1: everyone.
    holdings = tuple(((0, 1) if u < 3 else (1,)) for u in range(n))
    layout = BlockLayout((256, 256), holdings, min_holders=3)
    t = 4 if active else 3  # active mode needs 2t > k = 7
    config, signing = _config(n, t, layout=layout, bits=BITS, active=active)
    inputs = _inputs(config, seed)
    drops = {2: "masked_input"}  # block 0 keeps 2 < 3 surviving holders
    out: dict[str, Any] = {
        "mode": "active" if active else "semi-honest",
        "n": n,
        "t": t,
        "min_holders": 3,
        "thin_block_holders_alive": 2,
    }
    try:
        aggregate_in_memory(config, inputs, DropoutScript(dict(drops)), signing=signing)
        out["server_aborted"] = False
    except AbortedError as exc:
        out["server_aborted"] = True
        out["server_error"] = str(exc)[:120]
    r = Round(config, inputs, drops, signing)
    r.run_until(ServerState.COLLECT_MASKED_INPUTS)
    for m in list(r.pending):  # deliver the shares; party 2 stops there
        if m.recipient != 2:
            r.inbox += [wire.encode(x) for x in r.clients[m.recipient].receive(wire.encode(m))]
    survivors, dropped = tuple(u for u in range(n) if u != 2), (2,)
    sigs: tuple[wire.PartySignature, ...] = ()
    if active:  # the (malicious) server sends the list to every survivor; all sign it
        collected = []
        for u in survivors:
            msg = wire.SurvivorList(
                config.session_id,
                config.round_index,
                wire.SERVER,
                u,
                survivors=survivors,
                dropped=dropped,
            )
            (reply,) = r.clients[u].receive(wire.encode(msg))
            collected.append(wire.PartySignature(u, reply.signature))
        sigs = tuple(collected)
    holders_refused, nonholder_answers = {}, []
    for u in survivors:
        c = r.clients[u]
        try:
            partners = _partner_sets(r, u, survivors) if active else ()
            nonholder_answers += c.receive(
                _unmask_request(config, u, survivors, dropped, sigs, partners)
            )
            if u < 3:
                holders_refused[u] = False
        except RemoteProtocolError as exc:
            if u < 3:
                holders_refused[u] = "min_holders" in str(exc)
    out["holders_refused"] = all(holders_refused.values())
    out["non_holders_answered"] = sorted(m.sender for m in nonholder_answers)
    # Malicious server: reconstruct block 0's sum over the two surviving holders {0, 1} from the
    # non-holders' answers, as the server's own unmasking would.
    publics = {m.sender: m.keys.mask_public for m in r.messages(wire.AdvertiseKeys)}
    masked = {
        m.sender: encoding.unpack(m.payload, BITS, m.count) for m in r.messages(wire.MaskedInput)
    }
    b, s = {}, {}
    for owner in (0, 1):
        seeds, _ = _collect(nonholder_answers, owner)
        if len(seeds) >= t:
            b[owner] = _interpolate(dict(sorted(seeds.items())[:t]), prg.SEED_BYTES)
    _, mkeys = _collect(nonholder_answers, 2)
    if len(mkeys) >= t:
        s[2] = _interpolate(dict(sorted(mkeys.items())[:t]), MASK_KEY_BYTES)
    revealed = False
    if len(b) == 2 and 2 in s and keys.x25519_public(s[2]) == publics[2]:
        ctx = mask_context(config)
        size = layout.block_sizes[0]
        total = np.zeros(size, dtype=np.uint64)
        for u in (0, 1):
            y = masked[u][:size].astype(np.uint64)  # block 0 comes first in u's vector
            mask = prg.expand_blocks(self_mask_stream_seed(ctx, b[u], u), [0], [size], ctx.dtype)
            secret = keys.x25519_shared_secret(s[2], publics[u])
            pair = prg.expand_blocks(pairwise_seed(ctx, secret, u, 2), [0], [size], ctx.dtype)
            # u < 2 added +PRG(s_u2) on the blocks it shares with party 2.
            total += y - mask.astype(np.uint64) - pair.astype(np.uint64)
        total = encoding.reduce(total, BITS)
        truth = encoding.reduce(inputs[0][:size].astype(np.uint64) + inputs[1][:size], BITS)
        revealed = bool(np.array_equal(total, truth))
    out["thin_block_sum_revealed_via_non_holders"] = revealed
    return out


# -- (e) systematic search of the server's strategies ---------------------------------------------


@contextlib.contextmanager
def _restore_rule() -> Iterator[None]:
    """Leave the legacy hook for the duration of the search (it enters it where it needs)."""
    previous = consistency._legacy_rule
    consistency._legacy_rule = False
    try:
        yield
    finally:
        consistency._legacy_rule = previous


def _replay_row(strategy: Any, legacy: bool) -> dict[str, Any]:
    from audits import attack_replay

    world = attack_replay.build_world(strategy, allow_refused_graph=True)
    if legacy:
        with legacy_rule_for_audit():
            result = attack_replay.replay(strategy, world)
    else:
        result = attack_replay.replay(strategy, world)
    refusals = sorted(set(result.refused.values()))
    return {
        "rule": "old" if legacy else "new",
        "recovered": result.recovered,
        "answered": len(result.answered),
        "refused": len(result.refused),
        "first_refusal": refusals[0][:160] if refusals else None,
        "config_refused": result.refused_config,
    }


def _strategy_search(quick: bool, legacy: bool) -> dict[str, Any]:
    """Issue 8 item 5: the exact search of :mod:`audits.strategy_search`, every strategy found
    replayed against the real engines (old-rule strategies under both rules)."""
    from audits import strategy_search as ss

    rule = "old" if legacy else "new"
    tasks = ss.quick_tasks(rule) if quick else ss.full_tasks(rule)
    begin = time.perf_counter()
    outcomes = ss.run_tasks(tasks, None if quick else FULL_SEARCH_BUDGET_S)
    sanity = ss.solve(ss.Instance("harary", 8, 4, 3, 0, 2, 2, rule), (ss.ANY,), 60_000).status
    rows, found = [], []
    for o in outcomes:
        row: dict[str, Any] = {
            "instance": o.instance.label,
            "goals": list(o.goals),
            "status": o.status,
            "seconds": round(o.seconds, 2),
        }
        if o.found is not None:
            strat = o.found
            row["strategy"] = strat.to_json()
            row["goal"] = strat.goal
            row["sets"] = [list(x) for x in strat.sets]
            row["colluders"] = list(strat.colluders)
            row["replays"] = [_replay_row(strat, legacy)]
            if legacy:  # the same strategy under the rule in force
                row["replays"].append(_replay_row(strat, False))
            found.append(row)
        rows.append(row)
    counts = Counter(o.status for o in outcomes)
    instances = {o.instance for o in outcomes}
    space = (
        (
            "the issue's instances: Petersen k=3 t=2 whole-vector and harary(10,4) t=3"
            " whole-vector (isolate), harary(20,6) t=4 mh=2 (isolate), harary(12,4) t=3 mh=2"
            " with one list (split)"
            if quick
            else "the issue's instances (Petersen k=3 t=2 whole-vector; harary(10,4) t=3"
            " whole-vector; harary(20,6) t=4 mh=2; harary(24,8) t=5 mh=3; harary(12,4) t=3"
            " mh=2 with one list and mh=3 with one colluder), each goal separately"
        )
        if legacy
        else (
            "Harary rings C_n(1..k/2), k=2 n=7 and k=4 n=8, and K_5"
            if quick
            else "Harary rings C_n(1..k/2) for k in {2,4,6,8,10} and n in {3h+1, 4h+1, 30}"
            " (n <= 30), complete graphs K_5, K_7, K_9"
        )
        + "; every t with 2t > k + c (on rings also t >= h+1+c, as RoundConfig demands);"
        " at most c = min(2, 2t-k-1, and t-h-1 on rings) colluders; whole-vector and"
        " part-wise with min_holders 2 and 3 (c <= min_holders - 2); "
        + ("2 survivor lists" if quick else "3 survivor lists for n <= 10, else 2")
        + "; goals isolate, thin, split"
    )
    search: dict[str, Any] = {
        "rule": rule,
        "solver": f"z3 {ss._z3().get_version_string()}",
        "space": space,
        "instances": len(instances),
        "tasks": rows,
        "found": found,
        "counts": dict(counts),
        "sanity": sanity,
        "seconds": time.perf_counter() - begin,
    }
    search["findings"] = _search_findings(search)
    return search


def _by_goal(tasks: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Solver outcomes per goal set ("isolate, thin" / "split" / ...)."""
    out: dict[str, dict[str, int]] = {}
    for row in tasks:
        key = ", ".join(row["goals"])
        out.setdefault(key, {})
        out[key][row["status"]] = out[key].get(row["status"], 0) + 1
    return out


def _search_findings(search: dict[str, Any]) -> list[str]:
    counts = search["counts"]
    per_goal = "; ".join(
        f"{goals}: " + ", ".join(f"{n} {status}" for status, n in sorted(c.items()))
        for goals, c in _by_goal(search["tasks"]).items()
    )
    findings = [
        f"(e) strategy search, rule={search['rule']} ({search['solver']}):"
        f" {len(search['tasks'])} solver calls over {search['instances']} instances"
        f" ({search['space']}): {counts.get('unsat', 0)} proved impossible (unsat),"
        f" {counts.get('sat', 0)} strategies found, {counts.get('unknown', 0)} hit the time"
        f" limit, {counts.get('not run', 0)} not run (budget); by goal: {per_goal};"
        f" {search['seconds']:.0f} s. Sanity: an honest round is"
        f" {'admitted' if search['sanity'] == 'sat' else 'NOT admitted (model vacuous!)'}"
        " by the model",
    ]
    for row in search["found"]:
        replays = "; ".join(
            f"replayed on the real engines under the {r['rule']} rule: value recovered"
            f" {r['recovered']} ({r['answered']} answered, {r['refused']} refused"
            + (", config refused by RoundConfig: built as before" if r["config_refused"] else "")
            + ")"
            for r in row["replays"]
        )
        findings.append(
            f"(e) FOUND {row['goal']} on {row['instance']}: sets {row['sets']}, colluders"
            f" {row['colluders']}; {replays}"
        )
    return findings


def _search_markdown(search: dict[str, Any]) -> list[str]:
    from audits import strategy_search as ss

    doc = (ss.__doc__ or "").strip()
    lines = [
        f"## Systematic strategy search (rule: {search['rule']})",
        "",
        f"Space: {search['space']}. Counts: {search['counts']}; {search['seconds']:.0f} s"
        " (wall clock; the machine is shared, so time limits bite earlier than on an idle one).",
        "",
        "| goals | " + " | ".join(STATUSES) + " |",
        "|---|" + "---|" * len(STATUSES),
        *(
            f"| {goals} | " + " | ".join(str(c.get(st, 0)) for st in STATUSES) + " |"
            for goals, c in _by_goal(search["tasks"]).items()
        ),
        "",
        "### What is modelled (from `audits/strategy_search.py`)",
        "",
        doc,
        "",
        "### Strategies found",
        "",
    ]
    if not search["found"]:
        unknown = search["counts"].get("unknown", 0) + search["counts"].get("not run", 0)
        lines.append(
            "None. Every call that finished was proved impossible (unsat)"
            + (
                f"; {unknown} calls hit their time limit or were not reached: for those"
                " (instance, goal) pairs nothing is claimed."
                if unknown
                else "."
            )
        )
    for row in search["found"]:
        lines += [
            f"- **{row['goal']}** on `{row['instance']}`: learned sums over {row['sets']},"
            f" colluders {row['colluders']}, lists (U3 size, D'): "
            + ", ".join(
                f"({len(u)}, {list(d)})"
                for u, d in zip(
                    row["strategy"]["survivors"], row["strategy"]["dropped"], strict=True
                )
            ),
        ]
        for r in row["replays"]:
            lines.append(
                f"  - replay, {r['rule']} rule: recovered **{r['recovered']}**,"
                f" {r['answered']} answered, {r['refused']} refused"
                + (f" (e.g. `{r['first_refusal']}`)" if r["first_refusal"] else "")
            )
    lines += ["", "### Every solver call", "", "| instance | goals | status | seconds |"]
    lines.append("|---|---|---|---|")
    for row in search["tasks"]:
        lines.append(
            f"| {row['instance']} | {', '.join(row['goals'])} | {row['status']} |"
            f" {row['seconds']} |"
        )
    return lines


# -- figure and entry point ----------------------------------------------------------------------


def _figure(points: list[dict[str, Any]], t: int, weaken: str | None) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = [p["colluders"] for p in points]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(c, [p["mean_abs_rel_error"] for p in points], "o-", label="mean |error| / 2^(B-1)")
    ax.plot(c, [p["exact_fraction"] for p in points], "s--", label="fraction of x_v recovered")
    ax.axhline(0.5, color="gray", ls=":", lw=1, label="uniform error (0.5)")
    ax.axvline(t - 0.5, color="C3", lw=1, label=f"threshold t={t}")
    ax.axvline(TOLERATED, color="k", ls="--", lw=0.8, label=f"tolerated C={TOLERATED}")
    ax.set_xlabel("colluding parties (with the server)")
    ax.set_ylabel("value")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("Recovering honest survivor's x_v" + (" (WEAKENED: t = C)" if weaken else ""))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def run(quick: bool = False, out: Path | None = None, weaken: str | None = None) -> dict[str, Any]:
    """Run the audit; see the module docstring. ``weaken``: None, ``"low-threshold"`` or
    ``"legacy-rule"`` (the engines apply the pre-issue-8 unmasking rule, and the strategy
    search models it)."""
    if weaken not in WEAKENINGS:
        raise ValueError(f"unknown weakening {weaken!r} for {NAME} (use one of {WEAKENINGS[1:]})")
    start = time.perf_counter()
    legacy = weaken == "legacy-rule"
    rule_context = legacy_rule_for_audit if legacy else contextlib.nullcontext
    t = TOLERATED if weaken == "low-threshold" else T_HONEST
    dim = 4096 if quick else 65536
    with rule_context():
        return _run(quick, out, weaken, legacy, rule_context, start, t, dim)


def _run(
    quick: bool,
    out: Path | None,
    weaken: str | None,
    legacy: bool,
    rule_context: Any,
    start: float,
    t: int,
    dim: int,
) -> dict[str, Any]:
    curve = _colluder_curve(t, seed=7, dim=dim)
    points = curve["points"]
    at_c = points[TOLERATED]
    below = [p for p in points if p["colluders"] < t]
    at_or_above = [p for p in points if p["colluders"] >= t]
    ok_below = all(
        not p["key_recovered"]
        and p["exact_fraction"] < 0.01
        and abs(p["mean_abs_rel_error"] - 0.5) < 0.05
        for p in below
    )
    ok_tight = all(p["key_recovered"] and p["exact_fraction"] == 1.0 for p in at_or_above)
    ok_tolerated = not at_c["key_recovered"] and at_c["exact_fraction"] < 0.01
    semi = _lying_semi_honest(curve)
    active = _lying_active(seed=8)
    partwise = _partwise(seed=9)
    partwise_active = _partwise(seed=10, active=True)
    # (e) runs outside the legacy hook: it applies it itself to the replays that need it.
    search = None
    if weaken != "low-threshold":
        with contextlib.ExitStack() as stack:
            if legacy:
                stack.enter_context(_restore_rule())
            search = _strategy_search(quick, legacy)
    ok_consistent_lie = (
        semi["consistent_lie"]["b_v_shares"] == 0
        and semi["consistent_lie"]["exact_fraction"] < 0.01
    )
    ok_active = (
        not active["x_v_exposed"]
        and active["answers_to_unsigned_or_short_lists"] == 0
        and active["refused"] > 0
    )
    ok_partwise_server = all(p["server_aborted"] and p["holders_refused"] for p in (partwise,))
    ok_partwise_nonholders = not any(
        p["thin_block_sum_revealed_via_non_holders"] for p in (partwise, partwise_active)
    )
    checks = {
        "below_threshold_fails": ok_below,
        "tolerated_colluders_fail": ok_tolerated,
        "threshold_is_tight": ok_tight,
        "aggregate_exact": curve["sum_exact"],
        "consistent_lie_keeps_self_mask": ok_consistent_lie,
        "active_refuses_split_view": ok_active,
        "partwise_thin_block_refused": ok_partwise_server,
        "partwise_thin_block_not_revealed_by_non_holders": ok_partwise_nonholders,
    }
    if search is not None:
        checks["strategy_search_finds_nothing"] = not search["found"]
        checks["strategy_search_model_admits_honest_round"] = search["sanity"] == "sat"
    passed = all(checks.values())
    worst = max(below, key=lambda p: p["exact_fraction"]) if below else None
    findings = [
        f"round: complete graph n={N}, k={N - 1}, t={t}, B={BITS}, d={dim}; victim v={VICTIM}"
        f" survives; parties 0 (before masking) and 11 (at unmask) drop; deployment tolerates"
        f" C={TOLERATED} colluders" + (" (WEAKENED: t = C)" if weaken else ""),
        f"(a) with C={TOLERATED} colluders + server: s_v recovered={at_c['key_recovered']},"
        f" {at_c['exact_fraction']:.4f} of x_v recovered, mean |err|/2^(B-1)="
        f"{at_c['mean_abs_rel_error']:.3f} (KS p vs uniform {at_c['ks_p_error_uniform']:.3g})",
    ]
    if worst is not None:
        findings.append(
            f"(a) every c < t={t}: wrong s_v, at most {worst['exact_fraction']:.4f} of"
            f" coordinates right, mean |err| in"
            f" [{min(p['mean_abs_rel_error'] for p in below):.3f},"
            f" {max(p['mean_abs_rel_error'] for p in below):.3f}] -> "
            + ("OK" if ok_below else "FAILED")
        )
    findings += [
        f"(b) c >= t: x_v recovered exactly: {ok_tight} (the bound is tight)",
        f"(c) consistent lie 'v dropped' (semi-honest): server got"
        f" {semi['consistent_lie']['s_v_shares']}"
        f" shares of s_v, {semi['consistent_lie']['b_v_shares']} of b_v; y_v stays masked by"
        f" PRG(b_v) (mean |err| {semi['consistent_lie']['mean_abs_rel_error']:.3f})",
        f"(c) split view, semi-honest: {semi['detected']} refusals over"
        f" {len(semi['split_views'])} splits -- semi-honest parties CANNOT detect it; x_v leaked:"
        f" {semi['x_v_leaked']} (needs both groups >= t, i.e. 2t <= k"
        f"{'' if 2 * t > N - 1 else ' -- the case here'})",
        f"(c) split view, ACTIVE (t={active['t']}, 2t > k={active['k']}):"
        f" {active['refused']} forged requests refused (RemoteProtocolError, no response),"
        f" {active['answered']} answered (all for the list the party signed, with >= t"
        f" signatures: {active['answers_to_unsigned_or_short_lists'] == 0}); t shares of both"
        f" b_v and s_v ever reached: {active['x_v_exposed']}",
        f"(d) part-wise thin block (2 < min_holders=3 surviving holders): server aborted:"
        f" {partwise['server_aborted']}, holders refused a forged request:"
        f" {partwise['holders_refused']}",
        f"(d) malicious server sends the unmask request to everyone anyway: the NON-holders"
        f" {partwise['non_holders_answered']} answer (b_0, b_1 and s_2 shares) and the thin"
        f" block's sum over 2 holders is revealed:"
        f" {partwise['thin_block_sum_revealed_via_non_holders']}"
        f" (semi-honest), {partwise_active['thin_block_sum_revealed_via_non_holders']}"
        " (active)"
        + (
            " -- LEAK: client_unmask/weak_blocks check only the answering party's own blocks,"
            " not the blocks of the peers whose self-mask shares it reveals"
            if not ok_partwise_nonholders
            else ""
        ),
    ]
    if search is not None:
        findings += search["findings"]
    else:
        findings.append("(e) strategy search: not run for this weakening (it does not model t)")
    seconds = time.perf_counter() - start
    cmd = f"secagg audit {NAME}" + (" --quick" if quick else "")
    cmd += f" --weaken {weaken}" if weaken else ""
    summary: dict[str, Any] = {
        "audit": NAME,
        "passed": passed,
        "findings": findings,
        "weaken": weaken,
        "quick": quick,
        "seconds": seconds,
        "threshold": t,
        "tolerated_colluders": TOLERATED,
        "n": N,
        "checks": checks,
        "curve": points,
        "lying_server_semi_honest": semi,
        "lying_server_active": active,
        "partwise": partwise,
        "partwise_active": partwise_active,
        "strategy_search": search,
    }
    if out is not None:
        summary["command"] = cmd + f" --out {out}"
        rows = [
            "| colluders | s_v recovered | fraction of x_v exact | mean abs err / 2^(B-1) |"
            " KS p (err uniform) |",
            "|---|---|---|---|---|",
        ]
        for p in points:
            rows.append(
                f"| {p['colluders']} | {p['key_recovered']} | {p['exact_fraction']:.4f} |"
                f" {p['mean_abs_rel_error']:.4f} | {p['ks_p_error_uniform']:.3g} |"
            )
        srows = [
            "| told 'v dropped' | told truth | refused | b_v shares | s_v shares | x_v recovered |",
            "|---|---|---|---|---|---|",
        ]
        for s in semi["split_views"]:
            srows.append(
                f"| {s['told_dropped']} | {s['told_truth']} | {s['refused']} |"
                f" {s['b_v_shares']} | {s['s_v_shares']} | {s['x_v_recovered']} |"
            )
        arows = [
            "| told 'v dropped' | answered | refused | b_v holders | s_v holders | both >= t |",
            "|---|---|---|---|---|---|",
        ]
        for s in active["splits"]:
            arows.append(
                f"| {s['told_dropped']} | {s['answered']} | {s['refused']} |"
                f" {s['b_v_holders']} | {s['s_v_holders']} | {s['both_reach_t']} |"
            )
        body = "\n".join(
            [
                "## Method",
                "",
                "See the module docstring of `audits/collusion.py`. The colluders' X25519 mask keys"
                " and the shares they hold are taken from their ClientEngine objects during a real"
                " round; the server's view is the wire bytes it received. With c < t shares the"
                " attacker interpolates the lowest-degree polynomial (its best guess of s_v).",
                "",
                "## Recovery vs colluders",
                "",
                *rows,
                "",
                "![recovery](collusion.png)",
                "",
                "## Lying server, semi-honest mode (split view)",
                "",
                "Semi-honest parties cannot see a split view: each request is consistent"
                " by itself. Protection rests on the threshold alone (both groups must reach t).",
                "",
                *srows,
                "",
                f"## Lying server, active mode (t={active['t']})",
                "",
                *arows,
                "",
                "## Part-wise thin block",
                "",
                "```",
                str(partwise),
                str(partwise_active),
                "```",
                "",
                *(_search_markdown(search) if search is not None else []),
            ]
        )
        from audits.report import write_report

        write_report(out, summary, body, {"collusion.png": _figure(points, t, weaken)})
    return summary

"""A malicious server against honest parties (Bonawitz et al. 2017, section 4 and its active
variant; docs/protocol.md, "One round": what each party refuses).

Each forged request must be refused: the honest client raises RemoteProtocolError, returns no
UnmaskResponse (nothing is revealed), and ends FAILED with its secrets dropped. The headline test
shows the one attack semi-honest mode cannot see (telling some parties that v dropped and others
that v survived) really recovers x_v, and that the active mode's consistency check refuses the
inconsistent request. The last tests look at everything an honest-but-curious server receives.
"""

from __future__ import annotations

import copy
import dataclasses
import os

import numpy as np
import pytest
from helpers import Router, decoded, make_config, masked_vector, plain_sum, random_inputs

from secagg import encoding
from secagg import messages as wire
from secagg.config import RoundConfig
from secagg.crypto import keys, prg, shamir
from secagg.engine import ClientEngine
from secagg.engine._state import ClientState, ServerState
from secagg.engine.advertise import signed_payload
from secagg.engine.consistency import list_payload
from secagg.engine.masked_input import mask_context
from secagg.engine.masking import pairwise_seed, self_mask_stream_seed
from secagg.engine.share_keys import MASK_KEY_BYTES
from secagg.errors import ConfigError, LocalProtocolError, RemoteProtocolError
from secagg.graph import complete_parameters
from secagg.messages import SERVER

DIM, BITS = 16, 32
SECRET_ATTRS = ("_secrets", "_held", "_self_mask_seed", "_input", "_receive_keys")


# -- helpers ---------------------------------------------------------------------------------------


def forge(msg: wire.Message, **fields: object) -> wire.Message:
    """A copy of a valid message with fields replaced, bypassing dataclass validation."""
    out = copy.copy(msg)
    for name, value in fields.items():
        object.__setattr__(out, name, value)
    return out


def unmask_request(
    config: RoundConfig,
    party: int,
    survivors: tuple[int, ...],
    dropped: tuple[int, ...],
    signatures: tuple[wire.PartySignature, ...] = (),
    partner_sets: tuple[wire.PartnerSet, ...] = (),
) -> bytes:
    """Wire bytes of an UnmaskRequest, built by hand when the dataclass would refuse it."""
    base = wire.UnmaskRequest(
        config.session_id, config.round_index, SERVER, party, survivors=(), dropped=()
    )
    return wire.encode(
        forge(
            base,
            survivors=survivors,
            dropped=dropped,
            signatures=signatures,
            partner_sets=partner_sets,
        )
    )


def genuine_partner_sets(r: Router, party: int) -> tuple[wire.PartnerSet, ...]:
    """The signed partner sets of ``party``'s neighbours, from their real masked inputs."""
    masked = {m.sender: m for m in decoded(r.server_inbox, wire.MaskedInput)}
    return tuple(
        wire.PartnerSet(w, masked[w].peers, masked[w].peers_signature)
        for w in r.config.neighbors(party)
        if w in masked
    )


def survivor_list(
    config: RoundConfig, party: int, survivors: tuple[int, ...], dropped: tuple[int, ...] = ()
) -> bytes:
    base = wire.SurvivorList(config.session_id, config.round_index, SERVER, party, survivors=())
    return wire.encode(forge(base, survivors=survivors, dropped=dropped))


def signature(
    config: RoundConfig,
    signing: list[bytes],
    signer: int,
    survivors: tuple[int, ...],
    dropped: tuple[int, ...] = (),
) -> wire.PartySignature:
    """What party ``signer`` would sign for this list (the server may have it legitimately)."""
    return wire.PartySignature(
        signer, keys.sign(signing[signer], list_payload(config, survivors, dropped))
    )


def assert_wiped(client: ClientEngine) -> None:
    for name in SECRET_ATTRS:
        assert getattr(client, name, None) is None, name


def assert_refused(client: ClientEngine, payload: wire.Message | bytes) -> None:
    """The honest client refuses: RemoteProtocolError, no reply at all, FAILED, secrets gone, and
    even a later honest-looking unmask request gets nothing."""
    data = payload if isinstance(payload, bytes) else wire.encode(payload)
    try:
        wire.decode(data)
        decodes = True
    except wire.MessageDecodeError:
        decodes = False
    out = None
    with pytest.raises(RemoteProtocolError) as info:
        out = client.receive(data)
    if decodes:  # refused by the engine's checks, not by the codec
        assert not isinstance(info.value, wire.MessageDecodeError), info.value
    assert out is None  # nothing was returned, so no UnmaskResponse left the party
    assert client.state is ClientState.FAILED
    assert isinstance(client.error, RemoteProtocolError)
    assert_wiped(client)
    cfg = client.config
    later = unmask_request(cfg, client.party, tuple(range(cfg.num_parties)), ())
    with pytest.raises(LocalProtocolError):
        client.receive(later)
    assert client.state is ClientState.FAILED


def at_unmask(
    active: bool,
    n: int = 6,
    t: int = 3,
    drops: dict[int, str] | None = None,
    *,
    kind: str = "complete",
    k: int | None = None,
    stop_at: ServerState = ServerState.COLLECT_UNMASK,
    seed: int = 5,
) -> Router:
    """An honest round run until the server enters ``stop_at`` (its messages not yet sent)."""
    config, signing = make_config(n, t=t, dim=DIM, bits=BITS, active=active, kind=kind, k=k)
    r = Router(config, signing, random_inputs(n, DIM, BITS, seed), drops or {})
    r.run_until(stop_at)
    return r


def held_peers(client: ClientEngine) -> tuple[int, ...]:
    assert client._held is not None
    return client._held.peers


def reconstruct(shares: dict[int, bytes], t: int, secret_bytes: int) -> bytes:
    """What the server does with t revealed shares (holder -> share bytes)."""
    holders = sorted(shares)[:t]
    assert len(holders) == t, f"only {len(holders)} shares"
    rows = [np.frombuffer(shares[h], dtype=">u4").astype(np.uint64) for h in holders]
    return shamir.reconstruct([h + 1 for h in holders], np.stack(rows)[:, None, :], secret_bytes)[0]


def mask_publics(r: Router) -> dict[int, bytes]:
    return {m.sender: m.keys.mask_public for m in decoded(r.server_inbox, wire.AdvertiseKeys)}


def strip_masks(
    config: RoundConfig,
    y: np.ndarray,
    owner: int,
    *,
    self_seed: bytes | None,
    mask_key: bytes | None,
    peers: dict[int, bytes],
) -> np.ndarray:
    """y minus PRG(b_owner) (if the seed is known) minus owner's pairwise masks with ``peers``
    (if its mask key is known), mod 2^B."""
    ctx = mask_context(config)
    mask = np.zeros(config.dim, dtype=ctx.dtype)
    if self_seed is not None:
        prg.add_mask(mask, self_mask_stream_seed(ctx, self_seed, owner))
    if mask_key is not None:
        for w, public in peers.items():
            secret = keys.x25519_shared_secret(mask_key, public)
            prg.add_mask(mask, pairwise_seed(ctx, secret, owner, w), subtract=owner > w)
    out = np.subtract(y.astype(ctx.dtype), mask)
    return encoding.reduce(out, config.modulus_bits)


def collect(
    responses: list[wire.UnmaskResponse], owner: int
) -> tuple[dict[int, bytes], dict[int, bytes]]:
    """Shares of owner's self-mask seed and of its mask key, by holder."""
    seeds: dict[int, bytes] = {}
    mkeys: dict[int, bytes] = {}
    for m in responses:
        for o, share in zip(m.self_mask_owners, m.self_mask_shares, strict=True):
            if o == owner:
                seeds[m.sender] = share
        for o, share in zip(m.mask_key_owners, m.mask_key_shares, strict=True):
            if o == owner:
                mkeys[m.sender] = share
    return seeds, mkeys


# -- (a)-(e): forged unmask requests, semi-honest --------------------------------------------------


@pytest.fixture(scope="module")
def semi_round() -> Router:
    """n=6, t=3, complete graph; party 5 dropped before masking (real request: dropped=(5,))."""
    r = at_unmask(False, drops={5: "masked_input"})
    real = r.pending_for(0)
    assert isinstance(real, wire.UnmaskRequest)
    assert real.survivors == (0, 1, 2, 3, 4) and real.dropped == (5,)
    return r


SEMI_FORGERIES = {
    "a: survivors and dropped overlap": ((0, 1, 2, 3, 4), (4, 5)),
    "a: overlap on the dropped party": ((0, 1, 2, 3, 4, 5), (5,)),
    "b: the party itself listed as dropped": ((1, 2, 3, 4), (0, 5)),
    "b: the party itself left out": ((1, 2, 3, 4), (5,)),
    "c: a surviving neighbour omitted": ((0, 1, 2, 3), (5,)),
    "c: the dropped neighbour omitted": ((0, 1, 2, 3, 4), ()),
    "e: survivors below t": ((0, 1), (2, 3, 4, 5)),
    "e: below t, padded with ids outside the cohort": ((0, 1, 100, 101, 102), (2, 3, 4, 5)),
}


@pytest.mark.parametrize("name", sorted(SEMI_FORGERIES))
def test_semi_honest_client_refuses_forged_unmask_request(semi_round: Router, name: str) -> None:
    survivors, dropped = SEMI_FORGERIES[name]
    client = copy.deepcopy(semi_round.clients[0])
    assert client.state is ClientState.AWAIT_SURVIVORS
    assert_refused(client, unmask_request(client.config, 0, survivors, dropped))


def test_semi_honest_client_refuses_signatures(semi_round: Router) -> None:
    cfg = semi_round.config
    sigs = (wire.PartySignature(1, os.urandom(64)), wire.PartySignature(2, os.urandom(64)))
    client = copy.deepcopy(semi_round.clients[0])
    assert_refused(client, unmask_request(cfg, 0, (0, 1, 2, 3, 4), (5,), sigs))


def test_semi_honest_client_answers_the_honest_request(semi_round: Router) -> None:
    """Control: the genuine request is answered with exactly one kind of share per neighbour."""
    client = copy.deepcopy(semi_round.clients[0])
    (resp,) = client.receive(wire.encode(semi_round.pending_for(0)))
    assert isinstance(resp, wire.UnmaskResponse)
    assert resp.self_mask_owners == (1, 2, 3, 4) and resp.mask_key_owners == (5,)
    assert client.state is ClientState.DONE
    assert_wiped(client)


def test_d_party_never_masked_with_is_refused() -> None:
    """Party 5 advertised keys but never shared them: party 0 never masked with it, so listing 5
    (as dropped or as survivor) is probing for shares party 0 does not hold; refused."""
    r = at_unmask(False, drops={5: "share_keys"})
    real = r.pending_for(0)
    assert real.survivors == (0, 1, 2, 3, 4) and real.dropped == ()
    assert 5 not in held_peers(r.clients[0]) and 5 in r.config.neighbors(0)
    for survivors, dropped in (((0, 1, 2, 3, 4), (5,)), ((0, 1, 2, 3, 4, 5), ())):
        client = copy.deepcopy(r.clients[0])
        assert_refused(client, unmask_request(r.config, 0, survivors, dropped))


def test_d_non_neighbours_in_lists_reveal_nothing_about_them() -> None:
    """Harary graph: the global lists name non-neighbours; a party reveals shares only of
    neighbours it masked with (it holds nothing else)."""
    r = at_unmask(False, n=10, t=2, kind="harary", k=4, drops={9: "masked_input", 8: "share_keys"})
    for u in range(8):
        request = r.pending_for(u)
        client = copy.deepcopy(r.clients[u])
        (resp,) = client.receive(wire.encode(request))
        owners = set(resp.self_mask_owners) | set(resp.mask_key_owners)
        assert owners <= set(r.config.neighbors(u))
        assert owners == set(held_peers(r.clients[u]))
        assert not set(resp.self_mask_owners) & set(resp.mask_key_owners)


# -- (f) active mode: the consistency check --------------------------------------------------------


@pytest.fixture(scope="module")
def active_round() -> Router:
    """n=6, t=3, active; party 5 dropped before masking; stopped before the survivor list."""
    r = at_unmask(True, drops={5: "masked_input"}, stop_at=ServerState.COLLECT_SIGNATURES)
    assert r.pending_for(0).survivors == (0, 1, 2, 3, 4)
    return r


def _signed(active_round: Router, party: int = 0) -> ClientEngine:
    """Party ``party`` after signing the genuine survivor list (0..4)."""
    client = copy.deepcopy(active_round.clients[party])
    (sig,) = client.receive(wire.encode(active_round.pending_for(party)))
    assert isinstance(sig, wire.SurvivorSignature)
    assert client.state is ClientState.AWAIT_UNMASK
    return client


L = (0, 1, 2, 3, 4)


def _active_forgeries(cfg: RoundConfig, signing: list[bytes]) -> dict[str, bytes]:
    good = tuple(signature(cfg, signing, p, L, (5,)) for p in (1, 2, 3, 4))
    other = (0, 1, 2, 3)
    other_sigs = tuple(signature(cfg, signing, p, other, (4, 5)) for p in (1, 2, 3))
    alien_cfg = dataclasses.replace(cfg, session_id=os.urandom(16))
    return {
        "different list, validly signed by t others": unmask_request(
            cfg, 0, other, (4, 5), other_sigs
        ),
        "forged signatures": unmask_request(
            cfg, 0, L, (5,), tuple(wire.PartySignature(p, os.urandom(64)) for p in (1, 2, 3, 4))
        ),
        "signatures over another list": unmask_request(cfg, 0, L, (5,), other_sigs),
        "signatures from another session": unmask_request(
            cfg, 0, L, (5,), tuple(signature(alien_cfg, signing, p, L, (5,)) for p in (1, 2, 3, 4))
        ),
        "missing signatures": unmask_request(cfg, 0, L, (5,), ()),
        "too few signatures (t-1)": unmask_request(cfg, 0, L, (5,), good[:2]),
        # t signers certify the list at everyone but themselves: a signer needs t others.
        "t signatures (a signer's own neighbourhood has only t-1)": unmask_request(
            cfg, 0, L, (5,), good[:3]
        ),
        "t valid plus one forged": unmask_request(
            cfg, 0, L, (5,), (*good[:3], wire.PartySignature(4, os.urandom(64)))
        ),
        "signature by a non-survivor": unmask_request(
            cfg, 0, L, (5,), (*good[:3], signature(cfg, signing, 5, L, (5,)))
        ),
        "dropped list contains a signer": unmask_request(cfg, 0, L, (4, 5), good),
        "list extended with the dropped party, re-signed by others": unmask_request(
            cfg, 0, (*L, 5), (), tuple(signature(cfg, signing, p, (*L, 5)) for p in (1, 2, 3))
        ),
    }


@pytest.mark.parametrize(
    "name",
    [
        "different list, validly signed by t others",
        "forged signatures",
        "signatures over another list",
        "signatures from another session",
        "missing signatures",
        "too few signatures (t-1)",
        "t signatures (a signer's own neighbourhood has only t-1)",
        "t valid plus one forged",
        "signature by a non-survivor",
        "dropped list contains a signer",
        "list extended with the dropped party, re-signed by others",
    ],
)
def test_f_active_client_refuses_forged_unmask_request(active_round: Router, name: str) -> None:
    assert active_round.signing is not None
    payload = _active_forgeries(active_round.config, active_round.signing)[name]
    assert_refused(_signed(active_round), payload)


def test_f_active_client_refuses_skipped_consistency_check(active_round: Router) -> None:
    """An unmask request (even with t valid signatures) before the party signed anything."""
    cfg, signing = active_round.config, active_round.signing
    assert signing is not None
    sigs = tuple(signature(cfg, signing, p, L, (5,)) for p in (1, 2, 3, 4))
    client = copy.deepcopy(active_round.clients[0])
    assert client.state is ClientState.AWAIT_SURVIVORS
    assert_refused(client, unmask_request(cfg, 0, L, (5,), sigs))


def test_f_active_client_refuses_to_sign_bad_lists(active_round: Router) -> None:
    cfg = active_round.config
    for survivors in ((1, 2, 3, 4), (0, 1)):  # omits the party; below t
        client = copy.deepcopy(active_round.clients[0])
        assert_refused(client, survivor_list(cfg, 0, survivors))


def test_f_active_client_answers_the_honest_request(active_round: Router) -> None:
    """Control: the genuine list with t + 1 genuine signatures (certified at every party) is
    answered."""
    cfg, signing = active_round.config, active_round.signing
    assert signing is not None
    sigs = tuple(signature(cfg, signing, p, L, (5,)) for p in (0, 1, 2, 3))
    client = _signed(active_round)
    partners = genuine_partner_sets(active_round, 0)
    (resp,) = client.receive(unmask_request(cfg, 0, L, (5,), sigs, partners))
    assert resp.self_mask_owners == (1, 2, 3, 4) and resp.mask_key_owners == (5,)


def test_f_active_client_refuses_without_signed_partner_sets(active_round: Router) -> None:
    """The same genuine request without its neighbours' signed partner sets is refused."""
    cfg, signing = active_round.config, active_round.signing
    assert signing is not None
    sigs = tuple(signature(cfg, signing, p, L, (5,)) for p in (0, 1, 2, 3))
    client = _signed(active_round)
    with pytest.raises(RemoteProtocolError, match="partner set"):
        client.receive(unmask_request(cfg, 0, L, (5,), sigs))


def test_f_active_survivor_ids_outside_cohort_are_a_remote_error(active_round: Router) -> None:
    cfg = active_round.config
    n = cfg.num_parties
    padded = (0, 1, n, n + 1)  # 2 real parties (< t = 3) padded to 4 with nonexistent ids
    client = copy.deepcopy(active_round.clients[0])
    try:
        client.receive(survivor_list(cfg, 0, padded))
    except RemoteProtocolError:
        return  # refusing to sign is the right answer
    request = unmask_request(cfg, 0, padded, (), (wire.PartySignature(n, os.urandom(64)),))
    with pytest.raises(RemoteProtocolError):
        client.receive(request)


# -- (g) active mode: key substitution in the key directory ----------------------------------------


def _directory_forgeries(r: Router) -> dict[str, wire.Message]:
    cfg, signing = r.config, r.signing
    assert signing is not None
    real = r.pending_for(0)
    assert isinstance(real, wire.KeyDirectory)
    entries = list(real.entries)
    e1 = entries[0]
    assert e1.party == 1
    _, evil_mask = keys.generate_x25519()
    _, evil_enc = keys.generate_x25519()
    old_cfg = dataclasses.replace(cfg, round_index=cfg.round_index + 1)
    replayed_sig = keys.sign(signing[1], signed_payload(old_cfg, 1, evil_mask, evil_enc))
    variants = {
        "substituted mask key, original signature": dataclasses.replace(e1, mask_public=evil_mask),
        "substituted encryption key": dataclasses.replace(e1, encryption_public=evil_enc),
        "unsigned entry": dataclasses.replace(e1, signature=b""),
        "forged signature": dataclasses.replace(e1, signature=os.urandom(64)),
        "signature from another round": wire.KeyEntry(1, evil_mask, evil_enc, replayed_sig),
        "party 2's signed keys relabelled as party 1's": dataclasses.replace(entries[1], party=1),
    }
    out = {}
    for name, entry in variants.items():
        out[name] = dataclasses.replace(real, entries=(entry, *entries[1:]))
    return out


@pytest.fixture(scope="module")
def active_keys_round() -> Router:
    r = at_unmask(True, stop_at=ServerState.COLLECT_SHARES)
    return r


@pytest.mark.parametrize(
    "name",
    [
        "substituted mask key, original signature",
        "substituted encryption key",
        "unsigned entry",
        "forged signature",
        "signature from another round",
        "party 2's signed keys relabelled as party 1's",
    ],
)
def test_g_active_client_refuses_key_substitution(active_keys_round: Router, name: str) -> None:
    forged = _directory_forgeries(active_keys_round)[name]
    client = copy.deepcopy(active_keys_round.clients[0])
    assert client.state is ClientState.AWAIT_KEYS
    assert_refused(client, wire.encode(forged))


def test_g_directory_structure_checks_both_modes() -> None:
    """Any mode: a non-neighbour, the party's own key as a neighbour's, too few neighbours."""
    for active in (False, True):
        r = at_unmask(active, n=10, t=3, kind="harary", k=4, stop_at=ServerState.COLLECT_SHARES)
        real = r.pending_for(0)
        outsider = next(u for u in range(1, 10) if u not in r.config.neighbors(0))
        own = r.clients[0]._own_keys
        assert own is not None
        outsider_entry = next(
            m.keys for m in decoded(r.server_inbox, wire.AdvertiseKeys) if m.sender == outsider
        )
        first = real.entries[0]
        cases = [
            tuple(sorted((*real.entries, outsider_entry), key=lambda e: e.party)),
            (dataclasses.replace(own, party=first.party), *real.entries[1:]),
            real.entries[:2],
        ]
        for entries in cases:
            client = copy.deepcopy(r.clients[0])
            forged = forge(real, entries=entries)
            assert_refused(client, wire.encode(forged))


# -- (h) share delivery ----------------------------------------------------------------------------


def _flip(b: bytes, i: int = -1) -> bytes:
    arr = bytearray(b)
    arr[i] ^= 0x01
    return bytes(arr)


@pytest.mark.parametrize("active", [False, True])
def test_h_client_refuses_tampered_or_foreign_share_ciphertexts(active: bool) -> None:
    r = at_unmask(active, n=10, t=3, kind="harary", k=4, stop_at=ServerState.COLLECT_MASKED_INPUTS)
    real = r.pending_for(0)
    assert isinstance(real, wire.ShareDelivery)
    senders, cts = list(real.senders), list(real.ciphertexts)
    outsider = next(u for u in range(1, 10) if u not in r.config.neighbors(0))
    # What party 1 sealed for some other party (the server may try to redirect it).
    sealed = {m.sender: m for m in decoded(r.server_inbox, wire.EncryptedShares)}
    redirected = sealed[senders[0]].ciphertexts[
        next(i for i, v in enumerate(sealed[senders[0]].receivers) if v != 0)
    ]
    variants: dict[str, tuple[list[int], list[bytes]]] = {
        "tag flipped": (senders, [_flip(cts[0]), *cts[1:]]),
        "body flipped": (senders, [_flip(cts[0], 20), *cts[1:]]),
        "nonce flipped": (senders, [_flip(cts[0], 0), *cts[1:]]),
        "two senders swapped": (senders, [cts[1], cts[0], *cts[2:]]),
        "redirected from another recipient": (senders, [redirected, *cts[1:]]),
        "from a non-neighbour": sorted_pairs([*zip(senders, cts, strict=True), (outsider, cts[0])]),
        "fewer than t senders": (senders[:1], cts[:1]),
    }
    for name, (ids, blobs) in variants.items():
        forged = forge(real, senders=tuple(ids), ciphertexts=tuple(blobs))
        client = copy.deepcopy(r.clients[0])
        assert client.state is ClientState.AWAIT_SHARES, name
        assert_refused(client, wire.encode(forged))


def sorted_pairs(pairs: list[tuple[int, bytes]]) -> tuple[list[int], list[bytes]]:
    pairs = sorted(pairs)
    return [p for p, _ in pairs], [c for _, c in pairs]


# -- the headline: telling different parties different stories about v -----------------------------


V = 5  # the victim


def _equivocate_semi_honest(n: int, t: int):
    """Server says 'v dropped' to A and 'v survived' to B; everyone (v too) sent masked input."""
    r = at_unmask(False, n=n, t=t, seed=9)
    everyone = tuple(range(n))
    A, B = (0, 1), tuple(u for u in range(n) if u not in (0, 1, V))
    responses = []
    revealed: dict[int, str] = {}
    for u in A:  # "v dropped": reveal s_v
        (resp,) = r.clients[u].receive(
            unmask_request(r.config, u, tuple(p for p in everyone if p != V), (V,))
        )
        responses.append(resp)
        revealed[u] = "mask key" if V in resp.mask_key_owners else "nothing"
    for u in B:  # the truth: "v survived": reveal b_v
        (resp,) = r.clients[u].receive(wire.encode(r.pending_for(u)))
        responses.append(resp)
        revealed[u] = "self-mask seed" if V in resp.self_mask_owners else "nothing"
    return r, responses, revealed, A, B


def test_headline_semi_honest_cannot_detect_equivocation_and_x_v_leaks() -> None:
    """DOCUMENTED LIMIT of semi-honest mode (docs/protocol.md): a server that lies about whether
    v dropped collects s_v from the parties told "dropped" and b_v from those told "survived".
    Every honest party acts correctly on its own view (one kind of share per neighbour), so none
    can notice; with t <= k/2 both groups reach t and y_v unmasks to x_v exactly. This is the
    threat the active mode's ConsistencyCheck exists for."""
    n, t = 6, 2
    r, responses, revealed, A, B = _equivocate_semi_honest(n, t)
    assert all(revealed[u] == "mask key" for u in A)
    assert all(revealed[u] == "self-mask seed" for u in B)
    for m in responses:  # each party individually revealed one kind per neighbour
        assert not set(m.self_mask_owners) & set(m.mask_key_owners)
    seeds, mkeys = collect(responses, V)
    b_v = reconstruct(seeds, t, prg.SEED_BYTES)
    s_v = reconstruct(mkeys, t, MASK_KEY_BYTES)
    assert keys.x25519_public(s_v) == mask_publics(r)[V]
    (y_msg,) = [m for m in decoded(r.server_inbox, wire.MaskedInput) if m.sender == V]
    publics = mask_publics(r)
    x_v = strip_masks(
        r.config,
        masked_vector(r.config, y_msg),
        V,
        self_seed=b_v,
        mask_key=s_v,
        peers={w: publics[w] for w in range(n) if w != V},
    )
    np.testing.assert_array_equal(x_v.astype(np.uint64), r.inputs[V])  # the input leaked


def _equivocate_active(n: int, t: int, A: tuple[int, ...]):
    """Active mode: the server sends L1 (v dropped) to A and L2 (everyone) to B and v, collects
    each group's signatures and tries every request it can build. Returns the honest parties'
    replies (None where refused) and the engines."""
    r = at_unmask(True, n=n, t=t, stop_at=ServerState.COLLECT_SIGNATURES, seed=9)
    cfg = r.config
    B = tuple(u for u in range(n) if u not in A)  # includes v
    L1 = tuple(u for u in range(n) if u != V)
    L2 = tuple(range(n))
    sigs: dict[tuple[int, ...], list[wire.PartySignature]] = {L1: [], L2: []}
    for group, lst, dropped in ((A, L1, (V,)), (B, L2, ())):
        for u in group:
            (msg,) = r.clients[u].receive(survivor_list(cfg, u, lst, dropped))
            sigs[lst].append(wire.PartySignature(u, msg.signature))
    return r, A, B, L1, L2, sigs


def test_headline_active_mode_refuses_the_inconsistent_request() -> None:
    """Active mode, with the threshold complete_parameters(active=True) picks (t > 2k/3): the
    parties told "v dropped" signed L1, the others signed L2. Neither list can collect t
    signatures, and a party never accepts a list it did not sign: every request the server can
    build is refused, no share of v leaves any honest party."""
    n = 6
    t = complete_parameters(n, 0.0, 0.0, active=True).t
    assert t == 4
    r, A, B, L1, L2, sigs = _equivocate_active(n, t, A=(0, 1, 2))
    assert len(sigs[L1]) < t and len(sigs[L2]) < t
    options = []
    for lst, dropped in ((L1, (V,)), (L2, ())):
        for sig_list in (tuple(sigs[L1]), tuple(sigs[L2]), tuple(sigs[L1] + sigs[L2])):
            options.append((lst, dropped, tuple(sorted(sig_list, key=lambda s: s.party))))
    for u in (*A, *B):
        for lst, dropped, sig_list in options:
            if u not in lst:
                continue
            client = copy.deepcopy(r.clients[u])
            try:
                out = client.receive(unmask_request(r.config, u, lst, dropped, sig_list))
            except RemoteProtocolError:
                assert client.state is ClientState.FAILED
                assert_wiped(client)
                continue
            pytest.fail(f"party {u} answered {lst} / {dropped}: {out}")


def test_active_mode_refuses_thresholds_that_allow_equivocation() -> None:
    """With t <= |N(v)| / 2 a lying server could split v's neighbours into two groups that each
    sign their own survivor list with >= t signatures, and collect t shares of both of v's
    secrets (this used to be demonstrated here with n=6, t=2). RoundConfig now refuses such
    active-mode thresholds outright; complete_parameters(active=True) picks safe ones."""
    with pytest.raises(ConfigError, match="active"):
        make_config(6, t=2, active=True)
    cfg, _ = make_config(6, t=3, active=True)
    assert 2 * cfg.threshold > cfg.graph.degree


def test_state_dict_rollback_hazard() -> None:
    """DOCUMENTED HAZARD (not detectable by the engine): state dicts carry no anti-rollback
    counter. If a party's saved state from before unmasking is restored after it answered (e.g.
    its encrypted state blob is kept where the server can replay it), a semi-honest party
    answers a second, contradicting request and reveals both kinds of shares of v. In active
    mode the signed list is in the saved state, so a restored AWAIT_UNMASK engine refuses a
    different list."""
    r = at_unmask(False, n=6, t=3, seed=4)
    saved = r.clients[0].state_dict()
    (first,) = r.clients[0].receive(wire.encode(r.pending_for(0)))  # V survived: b_V share
    restored = ClientEngine(r.config, 0)
    restored.load_state_dict(saved)
    (second,) = restored.receive(
        unmask_request(r.config, 0, tuple(u for u in range(6) if u != V), (V,))
    )  # "V dropped": s_V share
    assert V in first.self_mask_owners and V in second.mask_key_owners

    ra = at_unmask(True, n=6, t=3, stop_at=ServerState.COLLECT_SIGNATURES, seed=4)
    signer = copy.deepcopy(ra.clients[0])
    signer.receive(wire.encode(ra.pending_for(0)))
    saved = signer.state_dict()
    assert ra.signing is not None
    restored = ClientEngine(ra.config, 0, signing_key=ra.signing[0])
    restored.load_state_dict(saved)
    other = tuple(u for u in range(6) if u != V)
    sigs = tuple(signature(ra.config, ra.signing, p, other) for p in (1, 2, 3))
    assert_refused(restored, unmask_request(ra.config, 0, other, (V,), sigs))


# -- what an honest-but-curious server learns ------------------------------------------------------


def _chi_square_top_bits(words: np.ndarray, bits: int, top: int = 4) -> float:
    bins = np.bincount(
        (words.astype(np.uint64) >> np.uint64(bits - top)).astype(np.int64), minlength=1 << top
    )
    expected = words.size / (1 << top)
    return float(((bins - expected) ** 2 / expected).sum())


CHI2_LIMIT = 60.0  # 15 degrees of freedom: P[chi2 > 60] ~ 1e-7


def test_server_learns_only_the_sum() -> None:
    """Everything the server received in a round with dropouts: each survivor's masked vector
    is far from its input (y - x looks uniform); the shares it got are b_u for survivors and s_v
    for dropped parties only, never both for anyone; with them each y_u stays masked by its
    pairwise masks with other survivors, and only the sum unmasks."""
    n, t, dim, bits = 7, 3, 4096, 32
    config, signing = make_config(n, t=t, dim=dim, bits=bits)
    inputs = random_inputs(n, dim, bits, seed=21)
    drops = {6: "masked_input", 5: "unmask"}
    r = Router(config, signing, inputs, drops)
    out = r.run()
    assert out.result is not None
    survivors, dropped = out.result.survivors, out.result.dropped
    assert survivors == (0, 1, 2, 3, 4, 5) and dropped == (6,)
    np.testing.assert_array_equal(out.result.total, plain_sum(inputs, survivors, bits))

    masked = {
        m.sender: masked_vector(config, m) for m in decoded(out.server_inbox, wire.MaskedInput)
    }
    assert set(masked) == set(survivors)
    modulus = np.uint64((1 << bits) - 1)
    for u, y in masked.items():
        diff = (y.astype(np.uint64) - inputs[u]) & modulus
        assert np.count_nonzero(diff) > dim - 4
        assert _chi_square_top_bits(diff, bits) < CHI2_LIMIT, u

    responses = decoded(out.server_inbox, wire.UnmaskResponse)
    assert {m.sender for m in responses} == set(survivors) - {5}
    seed_owners = {o for m in responses for o in m.self_mask_owners}
    key_owners = {o for m in responses for o in m.mask_key_owners}
    assert seed_owners == set(survivors) and key_owners == set(dropped)
    assert not seed_owners & key_owners

    publics = mask_publics(r)
    b = {u: reconstruct(collect(responses, u)[0], t, prg.SEED_BYTES) for u in survivors}
    s = {v: reconstruct(collect(responses, v)[1], t, MASK_KEY_BYTES) for v in dropped}
    total = np.zeros(dim, dtype=np.uint64)
    for u in survivors:
        # What the server can strip from y_u alone: PRG(b_u) and u's masks with dropped parties
        # (it knows s_v, so it can compute s_uv from v's side).
        partial = strip_masks(config, masked[u], u, self_seed=b[u], mask_key=None, peers={})
        for v in dropped:
            ctx = mask_context(config)
            secret = keys.x25519_shared_secret(s[v], publics[u])
            prg.add_mask(partial, pairwise_seed(ctx, secret, u, v), subtract=u < v)
        encoding.reduce(partial, bits)
        diff = (partial.astype(np.uint64) - inputs[u]) & modulus
        assert np.count_nonzero(diff) > dim - 4, u  # still masked by the survivors' pairs
        assert _chi_square_top_bits(diff, bits) < CHI2_LIMIT, u
        total = (total + partial.astype(np.uint64)) & modulus
    np.testing.assert_array_equal(total, plain_sum(inputs, survivors, bits))  # only the sum


def test_unmask_response_wire_never_carries_both_kinds() -> None:
    """The codec refuses a response revealing both shares of one owner (defence in depth)."""
    r = at_unmask(False, n=4, t=2, seed=3)
    (resp,) = copy.deepcopy(r.clients[0]).receive(wire.encode(r.pending_for(0)))
    both = forge(
        resp,
        mask_key_owners=resp.self_mask_owners[:1],
        mask_key_shares=(os.urandom(4 * shamir.limbs_for(MASK_KEY_BYTES)),),
    )
    with pytest.raises(wire.MessageDecodeError):
        wire.decode(wire.encode(both))


def test_victim_of_key_substitution_drops_out_and_round_stays_correct() -> None:
    """Through the router: the server substitutes a key in party 0's directory (active mode).
    Party 0 refuses and stops; the others finish, and the sum is exactly theirs."""
    n = 6
    config, signing = make_config(n, t=3, dim=DIM, bits=BITS, active=True)
    inputs = random_inputs(n, DIM, BITS, seed=13)
    _, evil = keys.generate_x25519()

    def tamper(m: wire.Message) -> wire.Message:
        if isinstance(m, wire.KeyDirectory) and m.recipient == 0:
            first = dataclasses.replace(m.entries[0], mask_public=evil)
            return dataclasses.replace(m, entries=(first, *m.entries[1:]))
        return m

    r = Router(config, signing, inputs, tamper=tamper)
    out = r.run()
    assert isinstance(out.client_errors.get(0), RemoteProtocolError)
    assert_wiped(r.clients[0])
    assert out.result is not None, out.error
    assert out.result.survivors == (1, 2, 3, 4, 5)
    np.testing.assert_array_equal(out.result.total, plain_sum(inputs, range(1, n), BITS))

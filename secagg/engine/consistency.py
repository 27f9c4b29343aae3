"""Phase 4 (active mode), ConsistencyCheck: survivors sign one list, and every reveal about a
party needs that list certified by a quorum of the party's own neighbourhood.

Bonawitz et al. 2017 (section 4, active protocol round 3) let parties sign the survivor list and
accept an unmask request with t signatures. On the complete graph with 2t > n two t-sets of signers
overlap, so two different lists can never both carry t signatures. On a sparse graph they can:
the server shows list S (v and its partner p alive) to v's share holders, who reveal b_v, and list
T (p dropped) to p's share holders, who reveal p's mask key; s_vp then follows from p's key, and
x_v comes out without s_v ever being rebuilt (issue 8). Checking "t signatures somewhere" is not
enough because the two audiences never meet.

The fix here (docs/protocol.md, "Active security on sparse graphs"):

* the signed list is L = (U3, D'): survivors and the dropped parties whose mask keys are wanted,
  bound to the round configuration's digest; an honest party signs exactly one list per round;
* L is *certified at x* when t parties of N(x) signed it. With 2t > |N(x)| + c (the config guard),
  two different lists can never both be certified at x: their signers in N(x) would share an
  honest party, who signs only once;
* an honest party reveals anything about a neighbour v (b_v or v's mask key) only if L is certified
  at v, and reveals b_v only if L is also certified at every partner of v (from v's signed partner
  set). So every honest reveal about v, and about v's partners, happens under one list, in which
  each partner is either alive (its mask key is never revealed) or dropped (and v's protection was
  checked with it dropped).

A party checks O(k) signatures on a Harary ring (the signers within 3h ring positions) and t+1 on
the complete graph; the server picks them per recipient.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Collection, Iterable, Iterator, Sequence

import numpy as np

from secagg.config import RoundConfig
from secagg.crypto import keys
from secagg.errors import RemoteProtocolError
from secagg.graph import KIND_COMPLETE
from secagg.messages import SERVER, PartnerSet, PartySignature, SurvivorSignature

_legacy_rule = False


@contextlib.contextmanager
def legacy_rule_for_audit() -> Iterator[None]:
    """TESTING HOOK, insecure: inside this block, engines accept an unmask request with any t
    survivor signatures and check blocks with the pre-issue-8 rule. It exists only so that the
    collusion audit and the regression tests can show the sparse-graph attacks work against the
    old rule. Never use it in a deployment."""
    global _legacy_rule
    previous, _legacy_rule = _legacy_rule, True
    try:
        yield
    finally:
        _legacy_rule = previous


def legacy_rule() -> bool:
    """True inside :func:`legacy_rule_for_audit`."""
    return _legacy_rule


def list_payload(config: RoundConfig, survivors: Sequence[int], dropped: Sequence[int]) -> bytes:
    """What a party signs in ConsistencyCheck: (U3, D') bound to the round configuration."""
    return (
        b"secagg/v2/survivor-list"
        + config.digest
        + struct.pack(">QI", config.round_index, len(survivors))
        + np.asarray(survivors, dtype=">u4").tobytes()
        + struct.pack(">I", len(dropped))
        + np.asarray(dropped, dtype=">u4").tobytes()
    )


def check_list_shape(
    config: RoundConfig, party: int, survivors: Sequence[int], dropped: Sequence[int]
) -> None:
    """What any list an honest party signs or acts on must satisfy.

    Raises:
        RemoteProtocolError: parties out of range, overlapping lists, this party not a survivor,
            or fewer survivors than the threshold.
    """
    alive, gone = set(survivors), set(dropped)
    if any(not 0 <= p < config.num_parties for p in alive | gone):
        raise RemoteProtocolError("the survivor list names parties outside this round")
    if alive & gone:
        raise RemoteProtocolError("survivor and dropped lists overlap")
    if party not in alive:
        raise RemoteProtocolError("the survivor list omits this party, which sent its input")
    if len(alive) < config.threshold:
        raise RemoteProtocolError(
            f"survivor list of {len(alive)} parties is below the threshold {config.threshold}"
        )


def client_sign(
    config: RoundConfig,
    party: int,
    signing_key: bytes,
    survivors: Sequence[int],
    dropped: Sequence[int],
    peers: Collection[int],
) -> SurvivorSignature:
    """Sign (U3, D') after checking it is a list this party could act on: it includes the
    signer, accounts for every partner the signer masked with, and leaves it t surviving
    partners. An honest party signs only once per round (the state machine enforces it)."""
    check_list_shape(config, party, survivors, dropped)
    alive, gone = set(survivors), set(dropped)
    missing = set(peers) - alive - gone
    if missing:
        raise RemoteProtocolError(
            f"partners {sorted(missing)[:5]} this party masked with are not on the list"
        )
    if len(alive & set(peers)) < config.threshold:
        raise RemoteProtocolError(
            f"only {len(alive & set(peers))} surviving partners, fewer than the threshold"
            f" {config.threshold}"
        )
    signature = keys.sign(signing_key, list_payload(config, survivors, dropped))
    return SurvivorSignature(
        config.session_id, config.round_index, party, SERVER, signature=signature
    )


# -- certification ------------------------------------------------------------------------------


def _ring_positions(config: RoundConfig) -> np.ndarray:
    ring = config.graph.ring
    assert ring is not None
    position = np.empty(config.num_parties, dtype=np.int64)
    position[np.asarray(ring, dtype=np.int64)] = np.arange(config.num_parties, dtype=np.int64)
    return position


def certification_counts(
    config: RoundConfig, signers: Collection[int], parties: Iterable[int]
) -> dict[int, int]:
    """For each party x, how many of ``signers`` are neighbours of x (|N(x) ∩ signers|)."""
    wanted = list(parties)
    if config.graph.kind == KIND_COMPLETE:
        signer_set = set(signers)
        return {x: len(signer_set) - (x in signer_set) for x in wanted}
    n = config.num_parties
    h = config.graph.ring_half_width
    if h is None:  # not reachable in active mode (RoundConfig refuses it); exact fallback
        signer_set = set(signers)
        return {x: len(signer_set.intersection(config.neighbors(x))) for x in wanted}
    position = _ring_positions(config)
    marks = np.zeros(n, dtype=np.int64)
    marks[position[np.asarray(sorted(signers), dtype=np.int64)]] = 1
    # Circular prefix sums: signers at ring positions p-h .. p+h, minus x itself.
    tripled = np.concatenate((marks, marks, marks))
    prefix = np.concatenate(([0], np.cumsum(tripled)))
    pos = position[np.asarray(wanted, dtype=np.int64)] + n
    window = prefix[pos + h + 1] - prefix[pos - h]
    own = marks[pos - n]
    return dict(zip(wanted, (window - own).tolist(), strict=True))


class SignatureRouter:
    """Which survivor-list signatures the server forwards to each recipient: enough to certify
    the list at every party the recipient's reveals depend on (all within 2h ring positions of
    it), and no more: t+1 signers on the complete graph, the signers within 3h ring positions on
    a Harary ring. Signers are indexed by ring position once, so each recipient costs
    O(log n + h), not O(n)."""

    def __init__(self, config: RoundConfig, signatures: dict[int, bytes]) -> None:
        self.config = config
        self.signatures = signatures
        signers = sorted(signatures)
        self._complete = config.graph.kind == KIND_COMPLETE or config.graph.ring_half_width is None
        if self._complete:
            self._first = tuple(
                PartySignature(p, signatures[p]) for p in signers[: config.threshold + 1]
            )
            return
        self._position = _ring_positions(config)
        at = self._position[np.asarray(signers, dtype=np.int64)]
        order = np.argsort(at)
        self._signer_positions = at[order]
        self._signers_by_position = np.asarray(signers, dtype=np.int64)[order]

    def for_recipient(self, recipient: int) -> tuple[PartySignature, ...]:
        if self._complete:
            return self._first
        config = self.config
        h = config.graph.ring_half_width
        assert h is not None
        n = config.num_parties
        p = int(self._position[recipient])
        lo, hi = p - 3 * h, p + 3 * h
        positions = self._signer_positions
        if hi - lo + 1 >= n:
            picked = self._signers_by_position
        else:
            # The window [lo, hi] on the ring, split where it wraps.
            ranges = [(lo % n, hi % n)] if lo % n <= hi % n else [(lo % n, n - 1), (0, hi % n)]
            parts = [
                self._signers_by_position[
                    np.searchsorted(positions, a, "left") : np.searchsorted(positions, b, "right")
                ]
                for a, b in ranges
            ]
            picked = np.concatenate(parts)
        chosen = sorted(picked.tolist())
        return tuple(PartySignature(q, self.signatures[q]) for q in chosen)


def signatures_for(
    config: RoundConfig, recipient: int, signatures: dict[int, bytes]
) -> tuple[PartySignature, ...]:
    """:class:`SignatureRouter` for one recipient (tests and one-off callers)."""
    return SignatureRouter(config, signatures).for_recipient(recipient)


def max_forwarded_signatures(config: RoundConfig) -> int:
    """Bound on the signatures one unmask request may carry (a party refuses more work). The
    complete graph is linear in n anyway (n shares per party), so any survivor's signature may
    come along there."""
    if config.graph.kind == KIND_COMPLETE or config.graph.ring_half_width is None:
        return config.num_parties
    return min(config.num_parties, 6 * config.graph.ring_half_width + 1)


def check_certified(
    config: RoundConfig,
    survivors: Sequence[int],
    dropped: Sequence[int],
    signatures: Sequence[PartySignature],
    parties: Iterable[int],
) -> None:
    """Verify every forwarded signature on (U3, D') and that the list is certified (t signers
    from N(x)) at every party x in ``parties``.

    Raises:
        RemoteProtocolError: too many signatures, a signature by a non-survivor or an invalid
            one, or some x without t signing neighbours.
    """
    if len(signatures) > max_forwarded_signatures(config):
        raise RemoteProtocolError(
            f"{len(signatures)} survivor-list signatures, more than the"
            f" {max_forwarded_signatures(config)} a party checks"
        )
    _verify_list_signatures(config, survivors, dropped, signatures)
    counts = certification_counts(config, [s.party for s in signatures], parties)
    thin = sorted(x for x, count in counts.items() if count < config.threshold)
    if thin:
        raise RemoteProtocolError(
            f"the survivor list is not certified at parties {thin[:5]}: fewer than"
            f" {config.threshold} of their neighbours signed it"
        )


def _verify_list_signatures(
    config: RoundConfig,
    survivors: Sequence[int],
    dropped: Sequence[int],
    signatures: Sequence[PartySignature],
) -> None:
    """Every signature is by a survivor and valid over (U3, D')."""
    assert config.verify_keys is not None
    alive = set(survivors)
    payload = list_payload(config, survivors, dropped)
    for item in signatures:
        if item.party not in alive:
            raise RemoteProtocolError(f"signature by party {item.party}, not a survivor")
        if not keys.verify(config.verify_keys[item.party], item.signature, payload):
            raise RemoteProtocolError(f"invalid survivor-list signature of party {item.party}")


def verify_legacy(
    config: RoundConfig,
    survivors: Sequence[int],
    dropped: Sequence[int],
    signatures: Sequence[PartySignature],
) -> None:
    """The pre-issue-8 rule (insecure on sparse graphs), for :func:`legacy_rule_for_audit` only:
    any t valid signatures by survivors, wherever they sit in the graph."""
    _verify_list_signatures(config, survivors, dropped, signatures)
    if len({item.party for item in signatures}) < config.threshold:
        raise RemoteProtocolError(
            f"only {len(signatures)} survivor signatures, fewer than the threshold"
            f" {config.threshold}"
        )


# -- partner sets -------------------------------------------------------------------------------


def partners_payload(config: RoundConfig, party: int, peers: Sequence[int]) -> bytes:
    """What a party signs about its masking partners (the neighbours whose shares it received,
    which the server's routing decided): revealers check its blocks against this set, so a
    server that withheld deliveries cannot make them believe it masked with more parties."""
    return (
        b"secagg/v2/partners"
        + config.digest
        + struct.pack(">QII", config.round_index, party, len(peers))
        + np.asarray(peers, dtype=">u4").tobytes()
    )


def verified_partners(config: RoundConfig, partner_set: PartnerSet) -> frozenset[int]:
    """The partner set, after checking its signature.

    Raises:
        RemoteProtocolError: the party is out of range or the signature is invalid.
    """
    assert config.verify_keys is not None
    if not 0 <= partner_set.party < config.num_parties:
        raise RemoteProtocolError("partner set of a party outside this round")
    if not set(partner_set.peers) <= set(config.neighbors(partner_set.party)):
        # Partners are neighbours whose shares arrived: anything else is a forged set (and the
        # certification radius of 2h ring positions relies on it).
        raise RemoteProtocolError(
            f"partner set of party {partner_set.party} names parties that are not its neighbours"
        )
    payload = partners_payload(config, partner_set.party, partner_set.peers)
    if not keys.verify(config.verify_keys[partner_set.party], partner_set.signature, payload):
        raise RemoteProtocolError(f"invalid partner-set signature of party {partner_set.party}")
    return frozenset(partner_set.peers)

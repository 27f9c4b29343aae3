"""Phase 4 (active mode), ConsistencyCheck: survivors sign the survivor list.

Bonawitz et al. 2017, section 4, active protocol round 3: without it, a malicious server could
tell some parties that v dropped (collecting shares of s_v) and others that v survived
(collecting shares of b_v), and unmask y_v. Each honest party signs exactly one list and checks
that the unmask request carries that same list with at least t valid signatures.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from secagg.config import RoundConfig
from secagg.crypto import keys
from secagg.errors import RemoteProtocolError
from secagg.messages import SERVER, PartnerSet, PartySignature, SurvivorSignature


def survivors_payload(config: RoundConfig, survivors: Sequence[int]) -> bytes:
    return (
        b"secagg/v1/survivors"
        + config.session_id
        + struct.pack(f">QI{len(survivors)}I", config.round_index, len(survivors), *survivors)
    )


def client_sign(
    config: RoundConfig, party: int, signing_key: bytes, survivors: Sequence[int]
) -> SurvivorSignature:
    """Sign the survivor list after checking that it includes the signer."""
    if party not in survivors:
        raise RemoteProtocolError("the survivor list omits this party, which sent its input")
    if any(not 0 <= p < config.num_parties for p in survivors):
        raise RemoteProtocolError("the survivor list names parties outside this round")
    if len(survivors) < config.threshold:
        raise RemoteProtocolError(
            f"survivor list of {len(survivors)} parties is below the threshold {config.threshold}"
        )
    signature = keys.sign(signing_key, survivors_payload(config, survivors))
    return SurvivorSignature(
        config.session_id, config.round_index, party, SERVER, signature=signature
    )


def check_signatures(
    config: RoundConfig, survivors: Sequence[int], signatures: Sequence[PartySignature]
) -> None:
    """Every signature is by a survivor and valid over this list; at least t of them.

    Raises:
        RemoteProtocolError: otherwise.
    """
    assert config.verify_keys is not None
    if any(not 0 <= p < config.num_parties for p in survivors):
        raise RemoteProtocolError("the survivor list names parties outside this round")
    alive = set(survivors)
    payload = survivors_payload(config, survivors)
    for item in signatures:
        if item.party not in alive:
            raise RemoteProtocolError(f"signature by party {item.party}, not a survivor")
        if not keys.verify(config.verify_keys[item.party], item.signature, payload):
            raise RemoteProtocolError(f"invalid survivor-list signature of party {item.party}")
    if len({item.party for item in signatures}) < config.threshold:
        raise RemoteProtocolError(
            f"only {len(signatures)} survivor signatures, fewer than the threshold"
            f" {config.threshold}"
        )


def partners_payload(config: RoundConfig, party: int, peers: Sequence[int]) -> bytes:
    """What a party signs about its masking partners (the neighbours whose shares it received,
    which the server's routing decided): revealers check its blocks against this set, so a
    server that withheld deliveries cannot make them believe it masked with more parties."""
    return (
        b"secagg/v1/partners"
        + config.session_id
        + struct.pack(f">QII{len(peers)}I", config.round_index, party, len(peers), *peers)
    )


def verified_partners(config: RoundConfig, partner_set: PartnerSet) -> frozenset[int]:
    """The partner set, after checking its signature.

    Raises:
        RemoteProtocolError: the party is out of range or the signature is invalid.
    """
    assert config.verify_keys is not None
    if not 0 <= partner_set.party < config.num_parties:
        raise RemoteProtocolError("partner set of a party outside this round")
    payload = partners_payload(config, partner_set.party, partner_set.peers)
    if not keys.verify(config.verify_keys[partner_set.party], partner_set.signature, payload):
        raise RemoteProtocolError(f"invalid partner-set signature of party {partner_set.party}")
    return frozenset(partner_set.peers)

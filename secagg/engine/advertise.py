"""Phase 1, AdvertiseKeys: fresh X25519 key pairs, signed in active mode, and the key directory."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import cast

from secagg.config import RoundConfig
from secagg.crypto import keys
from secagg.errors import LocalProtocolError, RemoteProtocolError
from secagg.messages import SERVER, AdvertiseKeys, KeyDirectory, KeyEntry, trusted


@dataclass(frozen=True)
class PartySecrets:
    """A party's ephemeral private keys for this round (never leave the party, except as shares)."""

    mask_private: bytes = field(repr=False)
    encryption_private: bytes = field(repr=False)


@dataclass(frozen=True)
class KeyAgreement:
    """Output of AdvertiseKeys for one party: the only input of ShareKeys.

    Attributes:
        own: the party's own advertised entry.
        neighbors: advertised entries of its neighbours in U1, by party id.
    """

    own: KeyEntry
    neighbors: dict[int, KeyEntry]


def signed_payload(config: RoundConfig, party: int, mask_public: bytes, enc_public: bytes) -> bytes:
    """What a party signs in active mode: its keys bound to the round configuration (digest,
    covering the session), the round and its id."""
    return (
        b"secagg/v1/advertise"
        + config.digest
        + struct.pack(">QI", config.round_index, party)
        + mask_public
        + enc_public
    )


def client_advertise(
    config: RoundConfig, party: int, signing_key: bytes | None
) -> tuple[PartySecrets, AdvertiseKeys]:
    """Draw the round's key pairs and build the AdvertiseKeys message."""
    mask_private, mask_public = keys.generate_x25519()
    enc_private, enc_public = keys.generate_x25519()
    signature = b""
    if config.active:
        if signing_key is None:
            raise LocalProtocolError("active mode needs the party's Ed25519 signing key")
        signature = keys.sign(signing_key, signed_payload(config, party, mask_public, enc_public))
    entry = KeyEntry(party, mask_public, enc_public, signature)
    message = AdvertiseKeys(config.session_id, config.round_index, party, SERVER, keys=entry)
    return PartySecrets(mask_private, enc_private), message


def verify_entry(config: RoundConfig, entry: KeyEntry) -> None:
    """In active mode, check an entry's signature against the party's long-term key.

    Raises:
        RemoteProtocolError: missing or invalid signature.
    """
    if not config.active:
        return
    assert config.verify_keys is not None
    payload = signed_payload(config, entry.party, entry.mask_public, entry.encryption_public)
    if not entry.signature or not keys.verify(
        config.verify_keys[entry.party], entry.signature, payload
    ):
        raise RemoteProtocolError(f"keys of party {entry.party} carry no valid signature")


def client_accept_directory(
    config: RoundConfig, party: int, own: KeyEntry, directory: KeyDirectory
) -> KeyAgreement:
    """Check the neighbours' keys the server forwarded and fix U1 for this party.

    Raises:
        RemoteProtocolError: a non-neighbour, a duplicate key, a bad signature.
        AbortedError-like RemoteProtocolError: fewer than t neighbours present.
    """
    allowed = set(config.neighbors(party))
    seen_keys = {own.mask_public, own.encryption_public}
    neighbors: dict[int, KeyEntry] = {}
    for entry in directory.entries:
        if entry.party not in allowed:
            raise RemoteProtocolError(f"key directory lists party {entry.party}, not a neighbour")
        if entry.mask_public in seen_keys or entry.encryption_public in seen_keys:
            # A reused key would make two pairwise masks equal (and cancel in the wrong place).
            raise RemoteProtocolError(f"party {entry.party} advertises a key already in use")
        seen_keys.update((entry.mask_public, entry.encryption_public))
        verify_entry(config, entry)
        neighbors[entry.party] = entry
    if len(neighbors) < config.threshold:
        raise RemoteProtocolError(
            f"only {len(neighbors)} neighbours advertised keys, fewer than the threshold"
            f" {config.threshold}"
        )
    return KeyAgreement(own, neighbors)


#: The X25519 public keys of small order (RFC 7748, section 7; the list libsodium blocks), with
#: the unused top bit cleared: 0, 1, the two points of order 8, p - 1, p and p + 1. X25519 with
#: any of them gives the all-zero secret for every private key (tests/test_engine_scaling.py
#: checks the list against OpenSSL). A set lookup costs ~0.3 us; probing with an X25519 exchange
#: cost ~40 us per key, most of the server's per-party time in AdvertiseKeys.
_LOW_ORDER_KEYS = frozenset(
    bytes.fromhex(h)
    for h in (
        "00" * 32,
        "01" + "00" * 31,
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "ec" + "ff" * 30 + "7f",
        "ed" + "ff" * 30 + "7f",
        "ee" + "ff" * 30 + "7f",
    )
)


def is_low_order(public_raw: bytes) -> bool:
    """True if the 32-byte X25519 public key is of small order (its top bit is ignored, as
    X25519 does)."""
    return public_raw[:31] + bytes((public_raw[31] & 0x7F,)) in _LOW_ORDER_KEYS


class KeyCollector:
    """Server side of AdvertiseKeys: collects entries, then builds each party's directory."""

    def __init__(self, config: RoundConfig) -> None:
        self.config = config
        self.entries: dict[int, KeyEntry] = {}
        #: After :meth:`directories`: each present party's neighbours in U1 (what it was told).
        self.present_neighbors: dict[int, tuple[int, ...]] = {}

    def add(self, message: AdvertiseKeys) -> None:
        if message.sender in self.entries:
            raise RemoteProtocolError(f"party {message.sender} advertised keys twice")
        verify_entry(self.config, message.keys)
        for public in (message.keys.mask_public, message.keys.encryption_public):
            # A low-order point would make every neighbour's key agreement fail (RFC 7748,
            # section 6.1): refuse it here rather than let one party abort its whole
            # neighbourhood later.
            if is_low_order(public):
                raise RemoteProtocolError(
                    f"invalid X25519 public key of party {message.sender}: low order"
                )
        self.entries[message.sender] = message.keys

    def directories(self) -> dict[int, KeyDirectory]:
        """U1 -> each present party's directory of present neighbours.

        One table lookup per (party, neighbour) and no per-party set: the entries are shared
        by every directory that lists them.
        """
        n = self.config.num_parties
        table: list[KeyEntry | None] = [None] * n
        for party, entry in self.entries.items():
            table[party] = entry
        everyone = len(self.entries) == n
        cfg = self.config
        out = {}
        self.present_neighbors = {}
        for party in sorted(self.entries):
            row = [table[v] for v in cfg.neighbors(party)]
            if everyone:
                entries = cast("tuple[KeyEntry, ...]", tuple(row))
                self.present_neighbors[party] = cfg.neighbors(party)
            else:
                entries = tuple(e for e in row if e is not None)
                self.present_neighbors[party] = tuple(e.party for e in entries)
            # Accepted entries in neighbour order (sorted): nothing to re-check.
            out[party] = trusted(
                KeyDirectory, cfg.session_id, cfg.round_index, SERVER, party, entries=entries
            )
        return out

"""Phase 2, ShareKeys: Shamir shares of the self-mask seed and the mask key, sealed per neighbour.

Bonawitz et al. 2017, section 4, round 1: u shares b_u and s_u^SK with threshold t among its
neighbours present in U1 (Bell et al. 2020 restrict sharing to the graph's neighbourhood), so
that t of them can later rebuild exactly one of the two for the server.
"""

from __future__ import annotations

import hashlib
import itertools
import operator
import struct
from dataclasses import dataclass, field

import numpy as np

from secagg.config import RoundConfig
from secagg.crypto import aead, kdf, keys, rng, shamir
from secagg.crypto.prg import SEED_BYTES
from secagg.engine.advertise import KeyAgreement, PartySecrets
from secagg.errors import RemoteProtocolError
from secagg.messages import SERVER, EncryptedShares, ShareDelivery, trusted

MASK_KEY_BYTES = 32
SELF_SHARE_BYTES = 4 * shamir.limbs_for(SEED_BYTES)
KEY_SHARE_BYTES = 4 * shamir.limbs_for(MASK_KEY_BYTES)
_PLAIN = struct.Struct(">II")
PLAINTEXT_BYTES = _PLAIN.size + SELF_SHARE_BYTES + KEY_SHARE_BYTES
#: Length of every sealed pair of shares (nonce, ciphertext, tag).
SEALED_BYTES = PLAINTEXT_BYTES + aead.OVERHEAD


@dataclass(frozen=True)
class HeldShares:
    """Output of ShareKeys for one party: the only input (with its keys) of the later phases.

    Attributes:
        self_mask_seed: b_u, the party's own seed (forgotten after masking).
        self_mask_shares: owner v -> this party's share of b_v, for neighbours v in U2.
        mask_key_shares: owner v -> this party's share of s_v^SK, for neighbours v in U2.
    """

    self_mask_seed: bytes = field(repr=False)
    self_mask_shares: dict[int, bytes] = field(repr=False)
    mask_key_shares: dict[int, bytes] = field(repr=False)

    @property
    def peers(self) -> tuple[int, ...]:
        """U2 as this party sees it: neighbours whose shares it holds (it masks with them)."""
        return tuple(sorted(self.self_mask_shares))


def share_encryption_key(
    config: RoundConfig, shared_secret: bytes, sender: int, receiver: int
) -> bytes:
    """Directional AES-256-GCM key for shares sent from ``sender`` to ``receiver``."""
    return kdf.derive_key(
        shared_secret,
        kdf.Purpose.SHARE_ENCRYPTION,
        session_id=config.digest,
        round_index=config.round_index,
        parties=(sender, receiver),
    )


def self_mask_commitment(config: RoundConfig, party: int, self_mask_seed: bytes) -> bytes:
    """SHA-256 commitment to b_u, bound to session, round and party. b_u is 128 uniformly random
    bits, so the hash hides it; after reconstruction the server checks the seed against it and
    detects a party that revealed a forged share (which would otherwise corrupt the sum
    silently)."""
    digest = hashlib.sha256(b"secagg/v1/self-mask-commitment")
    digest.update(config.digest + struct.pack(">QI", config.round_index, party))
    digest.update(self_mask_seed)
    return digest.digest()


def client_share_keys(
    config: RoundConfig, party: int, secrets: PartySecrets, agreement: KeyAgreement
) -> tuple[bytes, dict[int, bytes], EncryptedShares]:
    """Draw b_u, split b_u and the mask key among the neighbours in U1, seal each pair.

    Returns:
        (b_u, the keys to open what each neighbour will seal for this party, the message). One
        X25519 per neighbour serves both directions; the directional HKDF labels keep the two
        AES keys apart.
    """
    peers = sorted(agreement.neighbors)
    self_mask_seed = rng.token_bytes(SEED_BYTES)
    points = [v + 1 for v in peers]  # Shamir evaluation points are party id + 1 (never 0)
    seed_shares = shamir.split([self_mask_seed], config.threshold, points)
    key_shares = shamir.split([secrets.mask_private], config.threshold, points)
    shared = keys.x25519_shared_secrets(
        secrets.encryption_private, [agreement.neighbors[v].encryption_public for v in peers]
    )
    sealed: list[bytes] = []
    receive_keys: dict[int, bytes] = {}
    for i, v in enumerate(peers):
        receive_keys[v] = share_encryption_key(config, shared[i], v, party)
        plaintext = (
            _PLAIN.pack(party, v)
            + seed_shares[i, 0].astype(">u4").tobytes()
            + key_shares[i, 0].astype(">u4").tobytes()
        )
        key = share_encryption_key(config, shared[i], party, v)
        ad = aead.share_associated_data(config.digest, config.round_index, party, v)
        sealed.append(aead.encrypt(key, plaintext, ad))
    message = EncryptedShares(
        config.session_id,
        config.round_index,
        party,
        SERVER,
        receivers=tuple(peers),
        ciphertexts=tuple(sealed),
        self_mask_commitment=self_mask_commitment(config, party, self_mask_seed),
    )
    return self_mask_seed, receive_keys, message


def client_accept_delivery(
    config: RoundConfig,
    party: int,
    receive_keys: dict[int, bytes],
    self_mask_seed: bytes,
    delivery: ShareDelivery,
) -> HeldShares:
    """Open the neighbours' sealed shares; the senders are U2 as this party sees it.

    Raises:
        RemoteProtocolError: a share from a non-neighbour, failing authentication or mislabelled,
            or fewer than t neighbours in U2.
    """
    senders = list(delivery.senders)
    unknown = [v for v in senders if v not in receive_keys]
    if unknown:
        raise RemoteProtocolError(
            f"shares from parties {unknown[:5]} that are not neighbours in U1"
        )
    if len(senders) < config.threshold:
        raise RemoteProtocolError(
            f"shares from only {len(senders)} neighbours, fewer than the threshold"
            f" {config.threshold}"
        )
    self_shares: dict[int, bytes] = {}
    key_shares: dict[int, bytes] = {}
    for v, ciphertext in zip(senders, delivery.ciphertexts, strict=True):
        key = receive_keys[v]
        ad = aead.share_associated_data(config.digest, config.round_index, v, party)
        plaintext = aead.decrypt(key, ciphertext, ad)
        if len(plaintext) != PLAINTEXT_BYTES or _PLAIN.unpack_from(plaintext) != (v, party):
            raise RemoteProtocolError(f"share from party {v} is mislabelled or malformed")
        body = plaintext[_PLAIN.size :]
        self_shares[v] = body[:SELF_SHARE_BYTES]
        key_shares[v] = body[SELF_SHARE_BYTES:]
    # Every share limb must be a field element: one vector check over all of them (self-mask
    # shares of every sender, then mask-key shares, in sender order).
    limbs = np.frombuffer(
        b"".join(itertools.chain(self_shares.values(), key_shares.values())), dtype=">u4"
    )
    bad = np.flatnonzero(limbs >= shamir.PRIME)
    if bad.size:
        index, self_limbs = int(bad[0]), len(senders) * SELF_SHARE_BYTES // 4
        v = senders[
            index // (SELF_SHARE_BYTES // 4)
            if index < self_limbs
            else (index - self_limbs) // (KEY_SHARE_BYTES // 4)
        ]
        raise RemoteProtocolError(f"share from party {v} is not a field element")
    return HeldShares(self_mask_seed, self_shares, key_shares)


class ShareRouter:
    """Server side of ShareKeys: checks who sealed for whom, then routes the ciphertexts."""

    def __init__(self, config: RoundConfig, present: dict[int, tuple[int, ...]]) -> None:
        """``present``: U1 -> the neighbours in U1 each party was told about."""
        self.config = config
        self.present = present
        self.sealed: dict[int, tuple[bytes, ...]] = {}
        self.commitments: dict[int, bytes] = {}

    def add(self, message: EncryptedShares) -> None:
        u = message.sender
        if u not in self.present:
            raise RemoteProtocolError(f"party {u} sent shares without advertising keys")
        if u in self.sealed:
            raise RemoteProtocolError(f"party {u} sent shares twice")
        if message.receivers != self.present[u]:
            raise RemoteProtocolError(
                f"party {u} must seal shares for exactly its neighbours in U1"
            )
        # A message's records share one length (decoder); every sender's must be the one an
        # honest party seals, or a delivery would mix lengths and no receiver could decode it.
        if message.ciphertexts and len(message.ciphertexts[0]) != SEALED_BYTES:
            raise RemoteProtocolError(
                f"party {u} sealed shares of {len(message.ciphertexts[0])} bytes, expected"
                f" {SEALED_BYTES}"
            )
        self.sealed[u] = message.ciphertexts
        self.commitments[u] = message.self_mask_commitment

    def deliveries(self) -> dict[int, ShareDelivery]:
        """U2 -> the ciphertexts its neighbours in U2 sealed for it (senders ascending).

        All (sender, receiver) edges are routed at once: one array of receivers, a stable sort
        by receiver (senders stay ascending within each inbox) and one reordering of the
        ciphertext references, instead of a Python append per ciphertext.
        """
        cfg = self.config
        u2 = sorted(self.sealed)
        counts = [len(self.present[u]) for u in u2]
        receivers = np.fromiter(
            itertools.chain.from_iterable(self.present[u] for u in u2),
            dtype=np.int64,
            count=sum(counts),
        )
        senders = np.repeat(np.asarray(u2, dtype=np.int64), counts)
        in_u2 = np.zeros(cfg.num_parties, dtype=bool)
        in_u2[u2] = True
        kept = np.flatnonzero(in_u2[receivers])
        order = kept[np.argsort(receivers[kept], kind="stable")]
        by_receiver = receivers[order]
        targets = np.asarray(u2, dtype=np.int64)
        starts = np.searchsorted(by_receiver, targets, side="left").tolist()
        ends = np.searchsorted(by_receiver, targets, side="right").tolist()
        # Reorder the ciphertext references in C (itemgetter over a flat tuple): no copies, and
        # the tuples each delivery needs are slices of one tuple.
        flat = tuple(itertools.chain.from_iterable(self.sealed[u] for u in u2))
        picks = order.tolist()
        routed: tuple[bytes, ...] = (
            operator.itemgetter(*picks)(flat) if len(picks) > 1 else tuple(flat[i] for i in picks)
        )
        from_ = tuple(senders[order].tolist())
        return {
            # Checked ciphertexts, senders ascending by the stable sort: nothing to re-check.
            v: trusted(
                ShareDelivery,
                cfg.session_id,
                cfg.round_index,
                SERVER,
                v,
                senders=from_[a:b],
                ciphertexts=routed[a:b],
            )
            for v, a, b in zip(u2, starts, ends, strict=True)
        }

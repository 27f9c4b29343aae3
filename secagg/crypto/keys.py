"""X25519 key agreement and Ed25519 signatures on raw 32-byte keys.

Private keys are kept as raw bytes because the protocol Shamir-shares the mask private key
(Bonawitz et al. 2017, section 4: the server reconstructs a dropped party's pairwise masks).
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from secagg.crypto import rng
from secagg.errors import RemoteProtocolError

KEY_BYTES = 32
SIGNATURE_BYTES = 64

_RAW = serialization.Encoding.Raw
_RAW_PRIV = serialization.PrivateFormat.Raw
_RAW_PUB = serialization.PublicFormat.Raw
_NO_ENC = serialization.NoEncryption()


def generate_x25519() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair as ``(private_raw, public_raw)`` from :mod:`secagg.crypto.rng`."""
    private = X25519PrivateKey.from_private_bytes(rng.token_bytes(KEY_BYTES))
    return (
        private.private_bytes(_RAW, _RAW_PRIV, _NO_ENC),
        private.public_key().public_bytes(_RAW, _RAW_PUB),
    )


def x25519_public(private_raw: bytes) -> bytes:
    """The public key of a raw X25519 private key."""
    return (
        X25519PrivateKey.from_private_bytes(private_raw).public_key().public_bytes(_RAW, _RAW_PUB)
    )


def x25519_shared_secret(private_raw: bytes, peer_public_raw: bytes) -> bytes:
    """X25519(private, peer_public).

    Raises:
        RemoteProtocolError: the peer's public key is malformed or of low order (all-zero output).
    """
    try:
        private = X25519PrivateKey.from_private_bytes(private_raw)
        peer = X25519PublicKey.from_public_bytes(peer_public_raw)
        return private.exchange(peer)
    except ValueError as exc:  # wrong length or low-order point (RFC 7748 section 6.1)
        raise RemoteProtocolError(f"invalid X25519 public key: {exc}") from None


_PROBE = X25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def check_x25519_public(public_raw: bytes) -> None:
    """Raise RemoteProtocolError unless ``public_raw`` is a usable X25519 public key.

    Low-order points give an all-zero shared secret with every private key, which
    ``cryptography`` reports as an error; probing with one fixed key detects them.
    """
    try:
        _PROBE.exchange(X25519PublicKey.from_public_bytes(public_raw))
    except ValueError as exc:
        raise RemoteProtocolError(f"invalid X25519 public key: {exc}") from None


def x25519_shared_secrets(private_raw: bytes, peer_publics: list[bytes]) -> list[bytes]:
    """X25519 of one private key with many peers (the private key is loaded once: ~2x faster).

    Raises:
        RemoteProtocolError: a peer's public key is malformed or of low order.
    """
    private = X25519PrivateKey.from_private_bytes(private_raw)
    out = []
    for peer in peer_publics:
        try:
            out.append(private.exchange(X25519PublicKey.from_public_bytes(peer)))
        except ValueError as exc:
            raise RemoteProtocolError(f"invalid X25519 public key: {exc}") from None
    return out


def generate_ed25519() -> tuple[bytes, bytes]:
    """A fresh Ed25519 key pair as ``(private_raw, public_raw)``."""
    private = Ed25519PrivateKey.from_private_bytes(rng.token_bytes(KEY_BYTES))
    return (
        private.private_bytes(_RAW, _RAW_PRIV, _NO_ENC),
        private.public_key().public_bytes(_RAW, _RAW_PUB),
    )


def sign(private_raw: bytes, message: bytes) -> bytes:
    """Ed25519 signature of ``message``."""
    return Ed25519PrivateKey.from_private_bytes(private_raw).sign(message)


def verify(public_raw: bytes, signature: bytes, message: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature of ``message`` under ``public_raw``."""
    try:
        Ed25519PublicKey.from_public_bytes(public_raw).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True

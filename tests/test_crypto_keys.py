"""Tests for secagg.crypto.keys: X25519 agreement and Ed25519 signatures on raw keys."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from secagg.crypto import keys
from secagg.errors import ProtocolError, RemoteProtocolError

# Low-order points of Curve25519 (RFC 7748 section 6.1; cr.yp.to/ecdh.html#validate):
# X25519 with any of them outputs all zeros, which must be rejected.
LOW_ORDER_POINTS = [
    bytes(32),  # 0
    (1).to_bytes(32, "little"),  # 1
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    (2**255 - 19 - 1).to_bytes(32, "little"),  # p - 1
    (2**255 - 19).to_bytes(32, "little"),  # p (non-canonical 0)
    (2**255 - 19 + 1).to_bytes(32, "little"),  # p + 1 (non-canonical 1)
]


def test_generate_x25519_shapes_and_public_matches() -> None:
    priv, pub = keys.generate_x25519()
    assert len(priv) == keys.KEY_BYTES and len(pub) == keys.KEY_BYTES
    assert keys.x25519_public(priv) == pub
    expected = X25519PrivateKey.from_private_bytes(priv).public_key().public_bytes_raw()
    assert pub == expected


def test_generated_keys_differ() -> None:
    assert len({keys.generate_x25519()[0] for _ in range(8)}) == 8
    assert len({keys.generate_ed25519()[0] for _ in range(8)}) == 8


def test_agreement_is_symmetric() -> None:
    a_priv, a_pub = keys.generate_x25519()
    b_priv, b_pub = keys.generate_x25519()
    ab = keys.x25519_shared_secret(a_priv, b_pub)
    ba = keys.x25519_shared_secret(b_priv, a_pub)
    assert ab == ba
    assert len(ab) == 32 and ab != bytes(32)
    _, c_pub = keys.generate_x25519()
    assert keys.x25519_shared_secret(a_priv, c_pub) != ab


def test_agreement_matches_cryptography() -> None:
    a_priv, _ = keys.generate_x25519()
    b = X25519PrivateKey.generate()
    expected = X25519PrivateKey.from_private_bytes(a_priv).exchange(b.public_key())
    assert keys.x25519_shared_secret(a_priv, b.public_key().public_bytes_raw()) == expected


def test_batch_equals_single_calls() -> None:
    priv, _ = keys.generate_x25519()
    peers = [keys.generate_x25519()[1] for _ in range(6)]
    batch = keys.x25519_shared_secrets(priv, peers)
    assert batch == [keys.x25519_shared_secret(priv, p) for p in peers]
    assert len(set(batch)) == len(peers)
    assert keys.x25519_shared_secrets(priv, []) == []


@pytest.mark.parametrize("bad", LOW_ORDER_POINTS, ids=range(len(LOW_ORDER_POINTS)))
def test_low_order_public_key_rejected(bad: bytes) -> None:
    priv, _ = keys.generate_x25519()
    with pytest.raises(RemoteProtocolError):
        keys.x25519_shared_secret(priv, bad)
    good = keys.generate_x25519()[1]
    with pytest.raises(RemoteProtocolError):
        keys.x25519_shared_secrets(priv, [good, bad, good])


@pytest.mark.parametrize("bad", [b"", bytes(31), bytes(33), b"\x09" * 64])
def test_malformed_public_key_rejected(bad: bytes) -> None:
    priv, _ = keys.generate_x25519()
    with pytest.raises(RemoteProtocolError) as info:
        keys.x25519_shared_secret(priv, bad)
    assert isinstance(info.value, ProtocolError)
    with pytest.raises(RemoteProtocolError):
        keys.x25519_shared_secrets(priv, [bad])


def test_public_key_round_trips_through_cryptography() -> None:
    _, pub = keys.generate_x25519()
    assert X25519PublicKey.from_public_bytes(pub).public_bytes_raw() == pub


# ------------------------------------------------------------------------------- Ed25519


def test_sign_verify() -> None:
    priv, pub = keys.generate_ed25519()
    assert len(priv) == 32 and len(pub) == 32
    assert Ed25519PrivateKey.from_private_bytes(priv).public_key().public_bytes_raw() == pub
    msg = b"survivors: 0,1,2"
    sig = keys.sign(priv, msg)
    assert len(sig) == keys.SIGNATURE_BYTES
    assert keys.verify(pub, sig, msg) is True
    assert keys.verify(pub, keys.sign(priv, b""), b"") is True


def test_tampered_message_rejected() -> None:
    priv, pub = keys.generate_ed25519()
    msg = b"survivors: 0,1,2"
    sig = keys.sign(priv, msg)
    assert keys.verify(pub, sig, b"survivors: 0,1,3") is False
    assert keys.verify(pub, sig, msg + b"\x00") is False
    assert keys.verify(pub, sig, msg[:-1]) is False


@pytest.mark.parametrize("position", [0, 17, 31, 32, 50, 63])
def test_tampered_signature_rejected(position: int) -> None:
    priv, pub = keys.generate_ed25519()
    msg = b"message"
    sig = bytearray(keys.sign(priv, msg))
    sig[position] ^= 0x01
    assert keys.verify(pub, bytes(sig), msg) is False


@pytest.mark.parametrize("sig_len", [0, 63, 65])
def test_wrong_length_signature_rejected(sig_len: int) -> None:
    priv, pub = keys.generate_ed25519()
    sig = keys.sign(priv, b"m")
    bad = (sig + b"\x00")[:sig_len] if sig_len else b""
    assert keys.verify(pub, bad, b"m") is False


def test_wrong_key_rejected() -> None:
    priv, _ = keys.generate_ed25519()
    _, other_pub = keys.generate_ed25519()
    assert keys.verify(other_pub, keys.sign(priv, b"m"), b"m") is False


@pytest.mark.parametrize("bad_pub", [b"", bytes(31), bytes(33)])
def test_malformed_verify_key_returns_false(bad_pub: bytes) -> None:
    priv, _ = keys.generate_ed25519()
    assert keys.verify(bad_pub, keys.sign(priv, b"m"), b"m") is False


def test_signature_deterministic() -> None:
    # Ed25519 (RFC 8032) is deterministic.
    priv, _ = keys.generate_ed25519()
    assert keys.sign(priv, b"m") == keys.sign(priv, b"m")

"""Tests for secagg.crypto.aead: AES-256-GCM with (session, round, sender, receiver) binding."""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.crypto import aead
from secagg.errors import RemoteProtocolError

KEY = bytes(range(32))
SESSION = bytes(range(16))
AD = aead.share_associated_data(SESSION, 5, 2, 7)
PLAINTEXT = b"a pair of shamir shares" * 3


def test_round_trip() -> None:
    sealed = aead.encrypt(KEY, PLAINTEXT, AD)
    assert len(sealed) == len(PLAINTEXT) + aead.OVERHEAD
    assert PLAINTEXT not in sealed
    assert aead.decrypt(KEY, sealed, AD) == PLAINTEXT


def test_empty_plaintext_round_trip() -> None:
    sealed = aead.encrypt(KEY, b"", AD)
    assert len(sealed) == aead.OVERHEAD
    assert aead.decrypt(KEY, sealed, AD) == b""


@settings(max_examples=50, deadline=None)
@given(
    key=st.binary(min_size=32, max_size=32),
    plaintext=st.binary(max_size=300),
    ad=st.binary(max_size=64),
)
def test_round_trip_property(key: bytes, plaintext: bytes, ad: bytes) -> None:
    assert aead.decrypt(key, aead.encrypt(key, plaintext, ad), ad) == plaintext


def test_wire_format_is_nonce_then_gcm() -> None:
    sealed = aead.encrypt(KEY, PLAINTEXT, AD)
    nonce = sealed[: aead.NONCE_BYTES]
    assert AESGCM(KEY).decrypt(nonce, sealed[aead.NONCE_BYTES :], AD) == PLAINTEXT


def test_associated_data_layout() -> None:
    expected = b"secagg/v1/share" + SESSION + struct.pack(">QII", 5, 2, 7)
    assert expected == AD


def test_wrong_key() -> None:
    sealed = aead.encrypt(KEY, PLAINTEXT, AD)
    with pytest.raises(RemoteProtocolError):
        aead.decrypt(bytes(32), sealed, AD)


@pytest.mark.parametrize(
    "field_args",
    [
        (bytes(16), 5, 2, 7),  # other session
        (SESSION, 6, 2, 7),  # other round
        (SESSION, 5, 3, 7),  # other sender
        (SESSION, 5, 2, 8),  # other receiver
        (SESSION, 5, 7, 2),  # sender and receiver swapped
    ],
    ids=["session", "round", "sender", "receiver", "swapped"],
)
def test_wrong_associated_data(field_args: tuple[bytes, int, int, int]) -> None:
    sealed = aead.encrypt(KEY, PLAINTEXT, AD)
    other = aead.share_associated_data(*field_args)
    assert other != AD
    with pytest.raises(RemoteProtocolError):
        aead.decrypt(KEY, sealed, other)


def test_associated_data_distinct_per_field() -> None:
    variants = {
        aead.share_associated_data(s, r, a, b)
        for s in (SESSION, bytes(16))
        for r in (0, 1)
        for a in (0, 1)
        for b in (0, 1)
    }
    assert len(variants) == 16


def test_every_bit_flip_rejected() -> None:
    sealed = aead.encrypt(KEY, b"0123456789", AD)
    for i in range(len(sealed) * 8):
        mutated = bytearray(sealed)
        mutated[i // 8] ^= 1 << (i % 8)
        with pytest.raises(RemoteProtocolError):
            aead.decrypt(KEY, bytes(mutated), AD)


@pytest.mark.parametrize("keep", [0, 1, aead.NONCE_BYTES, aead.OVERHEAD - 1, aead.OVERHEAD, -1])
def test_truncated(keep: int) -> None:
    sealed = aead.encrypt(KEY, PLAINTEXT, AD)
    short = sealed[:keep] if keep >= 0 else sealed[:-1]
    with pytest.raises(RemoteProtocolError):
        aead.decrypt(KEY, short, AD)


def test_appended_byte_rejected() -> None:
    sealed = aead.encrypt(KEY, PLAINTEXT, AD)
    with pytest.raises(RemoteProtocolError):
        aead.decrypt(KEY, sealed + b"\x00", AD)


def test_nonces_differ() -> None:
    sealed = [aead.encrypt(KEY, PLAINTEXT, AD) for _ in range(64)]
    assert len({s[: aead.NONCE_BYTES] for s in sealed}) == 64
    assert len(set(sealed)) == 64
    assert all(aead.decrypt(KEY, s, AD) == PLAINTEXT for s in sealed)

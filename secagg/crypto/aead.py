"""AES-256-GCM for Shamir shares routed through the server.

The key is directional (derived with (sender, receiver) in order) and the associated data binds
session, round, sender and receiver, so the server can neither read a share, nor redirect it to
another party, nor replay it into another round or session (Bonawitz et al. 2017, section 4,
"ShareKeys": the server only routes ciphertexts).
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secagg.errors import RemoteProtocolError

NONCE_BYTES = 12
TAG_BYTES = 16
OVERHEAD = NONCE_BYTES + TAG_BYTES


def share_associated_data(binding: bytes, round_index: int, sender: int, receiver: int) -> bytes:
    """The associated data of one share ciphertext. ``binding`` identifies the session: the
    engine passes the round configuration's digest, which covers the session id."""
    return b"secagg/v1/share" + binding + struct.pack(">QII", round_index, sender, receiver)


def encrypt(key: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """``nonce || ciphertext || tag`` with a fresh random 96-bit nonce."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated_data)


def decrypt(key: bytes, sealed: bytes, associated_data: bytes) -> bytes:
    """Open ``nonce || ciphertext || tag``.

    Raises:
        RemoteProtocolError: the ciphertext is truncated or fails authentication.
    """
    if len(sealed) < OVERHEAD:
        raise RemoteProtocolError("share ciphertext is truncated")
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated_data)
    except InvalidTag:
        raise RemoteProtocolError("share ciphertext failed authentication") from None

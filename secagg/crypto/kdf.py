"""Domain-separated key derivation (HKDF-SHA256, RFC 5869).

Every derived key has its own purpose label and binds the session id (as HKDF salt), the round
and the party ids in ``info``. Flower's SecAgg+ derives every key from an unsalted HKDF without a
purpose label; here a pairwise mask seed can never collide with a share-encryption key or with
another round's or session's keys.
"""

from __future__ import annotations

import enum
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_PREFIX = b"secagg/v1/"


class Purpose(enum.Enum):
    """What a derived key is for. The value is the HKDF label."""

    PAIRWISE_MASK = b"pairwise-mask"
    SHARE_ENCRYPTION = b"share-encryption"
    SELF_MASK_STREAM = b"self-mask-stream"
    GRAPH_SEED = b"graph-seed"


def derive_key(
    input_key: bytes,
    purpose: Purpose,
    *,
    session_id: bytes,
    round_index: int,
    parties: tuple[int, ...] = (),
    length: int = 32,
) -> bytes:
    """Derive ``length`` bytes from ``input_key`` for one purpose.

    Args:
        input_key: the input keying material (an X25519 shared secret or a random seed).
        purpose: the label that separates this key from every other use.
        session_id: what identifies the session, used as HKDF salt. The engine passes the round
            configuration's digest (``RoundConfig.digest``), which covers the random session id
            and every other setting, so parties given different configurations derive
            unrelated keys.
        round_index: the training round (so keys never repeat across rounds).
        parties: party ids bound into ``info``. The caller orders them: sorted for a symmetric key
            (pairwise masks), (sender, receiver) for a directional one (share encryption).
        length: output length in bytes.
    """
    info = _PREFIX + purpose.value + struct.pack(">QI", round_index, len(parties))
    info += b"".join(struct.pack(">I", p) for p in parties)
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=session_id, info=info).derive(
        input_key
    )

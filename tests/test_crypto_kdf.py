"""Tests for secagg.crypto.kdf: HKDF-SHA256 with purpose labels and session/round/party binding."""

from __future__ import annotations

import itertools
import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.crypto.kdf import Purpose, derive_key

IKM = bytes(range(32))
SESSION = b"S" * 16
OTHER_SESSION = b"T" * 16


def _derive(**overrides: object) -> bytes:
    kwargs: dict[str, object] = {
        "input_key": IKM,
        "purpose": Purpose.PAIRWISE_MASK,
        "session_id": SESSION,
        "round_index": 3,
        "parties": (1, 2),
    }
    kwargs.update(overrides)
    return derive_key(**kwargs)  # type: ignore[arg-type]


def test_deterministic() -> None:
    assert _derive() == _derive()


def test_matches_independent_hkdf() -> None:
    """The documented construction: salt = session id, info = prefix | label | round | parties."""
    info = b"secagg/v1/" + b"share-encryption" + struct.pack(">QI", 7, 2) + struct.pack(">II", 4, 9)
    expected = HKDF(algorithm=hashes.SHA256(), length=32, salt=SESSION, info=info).derive(IKM)
    got = derive_key(
        IKM, Purpose.SHARE_ENCRYPTION, session_id=SESSION, round_index=7, parties=(4, 9)
    )
    assert got == expected


def test_labels_separate_purposes() -> None:
    outputs = {p: _derive(purpose=p) for p in Purpose}
    assert len(set(outputs.values())) == len(Purpose)


def test_purpose_labels_are_distinct_and_prefix_free() -> None:
    labels = [p.value for p in Purpose]
    assert len(set(labels)) == len(labels)
    for a, b in itertools.permutations(labels, 2):
        assert not b.startswith(a), (a, b)


def test_session_binding() -> None:
    assert _derive(session_id=SESSION) != _derive(session_id=OTHER_SESSION)


def test_round_binding() -> None:
    outs = {_derive(round_index=r) for r in (0, 1, 2, 2**32, 2**63)}
    assert len(outs) == 5


def test_party_binding() -> None:
    outs = {
        _derive(parties=p) for p in [(), (1,), (2,), (1, 2), (1, 3), (0, 2), (1, 2, 3), (0, 1, 2)]
    }
    assert len(outs) == 8


def test_party_list_length_is_bound() -> None:
    # (0,) vs (): without the length prefix a trailing zero id could collide with nothing.
    assert _derive(parties=()) != _derive(parties=(0,))
    assert _derive(parties=(0,)) != _derive(parties=(0, 0))


def test_input_key_binding() -> None:
    assert _derive(input_key=IKM) != _derive(input_key=bytes(32))


def test_pair_order_matters() -> None:
    """Directional keys: (sender, receiver) and (receiver, sender) must differ; callers sort for a
    symmetric key, which then is the same from both ends."""
    forward = _derive(purpose=Purpose.SHARE_ENCRYPTION, parties=(3, 8))
    backward = _derive(purpose=Purpose.SHARE_ENCRYPTION, parties=(8, 3))
    assert forward != backward
    u, v = 8, 3
    assert _derive(parties=tuple(sorted((u, v)))) == _derive(parties=tuple(sorted((v, u))))


@pytest.mark.parametrize("length", [1, 16, 32, 33, 64, 255 * 32])
def test_length(length: int) -> None:
    out = _derive(length=length)
    assert len(out) == length


def test_shorter_output_is_prefix_of_longer() -> None:
    # HKDF-Expand property: the length only truncates the same stream.
    assert _derive(length=64)[:16] == _derive(length=16)


def test_length_above_hkdf_limit_raises() -> None:
    with pytest.raises(ValueError):
        _derive(length=255 * 32 + 1)


@settings(max_examples=60, deadline=None)
@given(
    a=st.tuples(
        st.binary(min_size=16, max_size=16),
        st.integers(0, 2**63 - 1),
        st.lists(st.integers(0, 2**20), max_size=3).map(tuple),
    ),
    b=st.tuples(
        st.binary(min_size=16, max_size=16),
        st.integers(0, 2**63 - 1),
        st.lists(st.integers(0, 2**20), max_size=3).map(tuple),
    ),
)
def test_distinct_context_distinct_key(
    a: tuple[bytes, int, tuple[int, ...]], b: tuple[bytes, int, tuple[int, ...]]
) -> None:
    ka = _derive(session_id=a[0], round_index=a[1], parties=a[2])
    kb = _derive(session_id=b[0], round_index=b[1], parties=b[2])
    assert (ka == kb) == (a == b)

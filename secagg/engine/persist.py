"""Engine state that a host can store and trust: a canonical codec and optional sealing.

An engine's ``state_dict()`` holds its round secrets in the clear (a party's X25519 private keys,
self-mask seed, the neighbours' Shamir shares it holds, its raw input vector; the server's
revealed shares during unmasking). This module turns such a dict into bytes and back:

* **Codec** (:func:`encode_value` / :func:`decode_value`): a canonical, strict, bounded binary
  encoding of ``None``, ``bool``, ``int`` (any sign, up to :data:`MAX_INT_BYTES` bytes), ``bytes``,
  ``str``, ``list`` and ``dict`` with ``int`` or ``str`` keys. Canonical: every value has exactly
  one encoding (minimal integers, dict keys sorted by their encoding, no duplicates), so
  ``encode_value(decode_value(b)) == b`` whenever decoding succeeds. Strict: trailing bytes,
  unknown tags, non-minimal integers, unsorted keys, invalid UTF-8, nesting deeper than
  :data:`MAX_DEPTH` or input larger than ``max_bytes`` raise :class:`~secagg.errors.StateError`,
  never another exception. Generic over the dict: engines may add fields without touching this
  module.
* **Envelope** (:func:`dump_state` / :func:`load_state`): a magic prefix, a format version, a mode
  (plaintext or sealed), the engine role and the round configuration's digest. Sealed blobs are
  AES-256-GCM under a key derived with HKDF-SHA256 from the caller's 32-byte key (label
  ``secagg/v1/state-encryption``, salt = configuration digest, info = role, round and party, the
  convention of :mod:`secagg.crypto.kdf`), a fresh 96-bit nonce from the OS CSPRNG, and
  associated data binding the domain label, the role, the configuration digest, the session id,
  the round, the party and a caller-provided monotonic counter.

Why a counter: the engines refuse contradicting requests only because they remember what they
already did. A host that restores an older state (or the same state twice) lets a party answer
the server a second time, e.g. reveal b_v to one unmask request and s_v to another, which
unmasks y_v (``tests/test_lying_server.py::test_state_dict_rollback_hazard``). AEAD alone cannot
see that: an old blob is authentic. The counter, checked against the caller's memory of the
newest state (:class:`RollbackGuard`), can. See docs/persistence.md for the host's rules.
"""

from __future__ import annotations

import enum
import itertools
import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secagg.config import RoundConfig
from secagg.crypto.aead import NONCE_BYTES, TAG_BYTES
from secagg.errors import SecAggError, StateError

# -- the canonical value codec -------------------------------------------------------------------

#: Largest encoded integer magnitude, in bytes of two's complement (2040-bit integers).
MAX_INT_BYTES = 255
#: Deepest nesting of lists and dicts (engine states nest 4 levels).
MAX_DEPTH = 32
#: Default ceiling on an encoded state. A server state holds every sealed share of the round
#: (about n * k * 100 bytes) and a few dim-long vectors; 1 GiB matches the wire's ceiling.
MAX_STATE_BYTES = 1 << 30

_NONE, _FALSE, _TRUE, _INT, _BYTES, _STR, _LIST, _DICT = range(8)
_U32 = struct.Struct(">I")
_MAX_LEN = (1 << 32) - 1


def _int_body(value: int) -> bytes:
    """Minimal big-endian two's complement (empty for 0)."""
    if value == 0:
        return b""
    length = (value + (value < 0)).bit_length() // 8 + 1
    return value.to_bytes(length, "big", signed=True)


_EMPTY_INT = bytes((_INT, 0))
_SMALL_INTS = [bytes((_INT, 1, v)) for v in range(128)]


class _EncodeError(Exception):
    """Raised deep inside the encoder; containers add their index on the way out, so the path
    is only built when something fails (never on the hot path)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.path: list[str] = []


def _encode_int(value: int) -> bytes:
    if 0 <= value < 128:
        return _SMALL_INTS[value] if value else _EMPTY_INT
    body = _int_body(value)
    if len(body) > MAX_INT_BYTES:
        raise _EncodeError(f"integer of {len(body)} bytes > MAX_INT_BYTES={MAX_INT_BYTES}")
    return bytes((_INT, len(body))) + body


def _encode_str(value: str) -> bytes:
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        raise _EncodeError("string is not valid UTF-8 (lone surrogate)") from None
    return bytes((_STR,)) + _length(len(raw)) + raw


def _encode_key(key: object) -> bytes:
    if type(key) is int:
        return _encode_int(key)
    if type(key) is str:
        return _encode_str(key)
    if isinstance(key, (bool, np.bool_)) or not isinstance(key, (int, np.integer, str)):
        raise _EncodeError(f"dict key {key!r:.40} of type {type(key).__name__} is not int or str")
    return _encode_int(int(key)) if isinstance(key, (int, np.integer)) else _encode_str(str(key))


def _length(n: int) -> bytes:
    if n > _MAX_LEN:
        raise _EncodeError(f"length {n} exceeds the codec's 2^32 - 1")
    return _U32.pack(n)


def _first(item: tuple[bytes, object]) -> bytes:
    return item[0]


def _encode_into(out: list[bytes], v: Any, depth: int) -> None:
    kind = type(v)
    if kind is int:
        out.append(_encode_int(v))
    elif kind is bytes:
        out.append(bytes((_BYTES,)) + _length(len(v)))
        out.append(v)
    elif v is None:
        out.append(b"\x00")
    elif kind is bool or isinstance(v, np.bool_):
        out.append(b"\x02" if v else b"\x01")
    elif kind is str:
        out.append(_encode_str(v))
    elif kind is list or kind is tuple:
        if depth >= MAX_DEPTH:
            raise _EncodeError(f"nesting deeper than MAX_DEPTH={MAX_DEPTH}")
        out.append(bytes((_LIST,)) + _length(len(v)))
        for i, item in enumerate(v):
            try:
                _encode_into(out, item, depth + 1)
            except _EncodeError as exc:
                exc.path.append(f"[{i}]")
                raise
    elif kind is dict:
        if depth >= MAX_DEPTH:
            raise _EncodeError(f"nesting deeper than MAX_DEPTH={MAX_DEPTH}")
        # Canonical order: by the keys' encodings (a total order over int and str keys).
        items = sorted(((_encode_key(k), k) for k in v), key=_first)
        if any(a[0] == b[0] for a, b in itertools.pairwise(items)):
            raise _EncodeError("dict has two keys with the same encoding")
        out.append(bytes((_DICT,)) + _length(len(items)))
        for key_bytes, k in items:
            out.append(key_bytes)
            try:
                _encode_into(out, v[k], depth + 1)
            except _EncodeError as exc:
                exc.path.append(f"[{k!r:.40}]")
                raise
    elif isinstance(v, (int, np.integer)):
        out.append(_encode_int(int(v)))
    elif isinstance(v, (bytes, bytearray, memoryview)):
        raw = bytes(v)
        out.append(bytes((_BYTES,)) + _length(len(raw)))
        out.append(raw)
    elif isinstance(v, str):
        out.append(_encode_str(str(v)))
    elif isinstance(v, (list, tuple, dict)):
        _encode_into(out, list(v) if not isinstance(v, dict) else dict(v), depth)
    else:
        raise _EncodeError(f"values of type {type(v).__name__} cannot be persisted")


def encode_value(value: Any, *, max_bytes: int = MAX_STATE_BYTES) -> bytes:
    """The canonical encoding of ``value``.

    Accepted: ``None``, ``bool``, ``int`` (and numpy integers), ``bytes`` (``bytearray`` and
    ``memoryview`` are encoded as bytes), ``str``, ``list`` (``tuple`` is encoded as a list), and
    ``dict`` whose keys are ``int`` or ``str`` (not ``bool``). Decoding gives back ``bytes``,
    ``list`` and plain ``int``.

    Raises:
        StateError: an unsupported type (named with its path), an integer wider than
            :data:`MAX_INT_BYTES`, nesting deeper than :data:`MAX_DEPTH`, a string that is not
            valid UTF-8, or an encoding larger than ``max_bytes``.
    """
    out: list[bytes] = []
    try:
        _encode_into(out, value, 0)
    except _EncodeError as exc:
        where = "state" + "".join(reversed(exc.path))
        raise StateError(f"{where}: {exc.message}") from None
    except RecursionError:  # only reachable through a custom container subclass
        raise StateError(f"state: nesting deeper than MAX_DEPTH={MAX_DEPTH}") from None
    data = b"".join(out)
    if len(data) > max_bytes:
        raise StateError(f"encoded state of {len(data)} bytes exceeds max_bytes={max_bytes}")
    return data


def _decode(data: bytes) -> Any:
    """Decode one value filling ``data`` (bytes indexing: ints, no per-item memoryviews)."""
    end = len(data)
    unpack_u32 = _U32.unpack_from

    def truncated(what: str, pos: int, need: int) -> StateError:
        return StateError(
            f"truncated state: {what} needs {need} bytes at offset {pos}, {end - pos} left"
        )

    def length(pos: int, what: str, min_item_bytes: int) -> int:
        if pos + 4 > end:
            raise truncated(f"{what} length", pos, 4)
        n: int = unpack_u32(data, pos)[0]
        # Bound counts by the bytes left, so a forged count cannot make us loop or allocate.
        if n * min_item_bytes > end - pos - 4:
            raise StateError(
                f"truncated state: {what} of {n} items at offset {pos} exceeds the input"
            )
        return n

    def value(pos: int, depth: int) -> tuple[Any, int]:
        if pos >= end:
            raise truncated("tag", pos, 1)
        tag = data[pos]
        if tag == _INT:
            if pos + 2 > end:
                raise truncated("integer length", pos + 1, 1)
            n = data[pos + 1]
            stop = pos + 2 + n
            if stop > end:
                raise truncated("integer", pos + 2, n)
            body = data[pos + 2 : stop]
            result = int.from_bytes(body, "big", signed=True)
            if n and (n > 1 or result == 0) and _int_body(result) != body:
                raise StateError(f"non-canonical integer at offset {pos} (not minimal)")
            return result, stop
        if tag == _NONE:
            return None, pos + 1
        if tag == _FALSE:
            return False, pos + 1
        if tag == _TRUE:
            return True, pos + 1
        if tag in (_BYTES, _STR):
            n = length(pos + 1, "bytes" if tag == _BYTES else "string", 1)
            stop = pos + 5 + n
            raw = data[pos + 5 : stop]
            if tag == _BYTES:
                return raw, stop
            try:
                return raw.decode("utf-8", errors="strict"), stop
            except UnicodeDecodeError:
                raise StateError(f"string at offset {pos} is not valid UTF-8") from None
        if tag in (_LIST, _DICT):
            if depth >= MAX_DEPTH:
                raise StateError(f"nesting deeper than MAX_DEPTH={MAX_DEPTH} at offset {pos}")
            if tag == _LIST:
                count = length(pos + 1, "list", 1)
                pos += 5
                items: list[Any] = []
                for _ in range(count):
                    item, pos = value(pos, depth + 1)
                    items.append(item)
                return items, pos
            count = length(pos + 1, "dict", 3)
            pos += 5
            out: dict[int | str, Any] = {}
            previous = b""
            for _ in range(count):
                if pos < end and data[pos] not in (_INT, _STR):
                    raise StateError(f"dict key at offset {pos} is not an int or a string")
                key, stop = value(pos, depth + 1)
                key_bytes = data[pos:stop]
                if key_bytes <= previous:
                    raise StateError(
                        f"dict keys at offset {pos} are not strictly sorted (duplicate or out of"
                        " canonical order)"
                    )
                previous = key_bytes
                out[key], pos = value(stop, depth + 1)
            return out, pos
        raise StateError(f"unknown tag 0x{tag:02x} at offset {pos}")

    result, pos = value(0, 0)
    if pos != end:
        raise StateError(f"{end - pos} trailing bytes after the state")
    return result


def decode_value(data: bytes | bytearray | memoryview, *, max_bytes: int = MAX_STATE_BYTES) -> Any:
    """Decode exactly one value that fills ``data``.

    Raises:
        StateError: ``data`` is larger than ``max_bytes``, truncated, has trailing bytes, or is
            not the canonical encoding of a value. Never any other exception.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise StateError(f"state must be bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise StateError(f"state of {len(data)} bytes exceeds max_bytes={max_bytes}")
    return _decode(data if isinstance(data, bytes) else bytes(data))


# -- the envelope --------------------------------------------------------------------------------

MAGIC = b"SECAGGst"
FORMAT_VERSION = 1
_PLAIN, _SEALED = 0, 1
#: Domain label bound into the associated data of every sealed state.
STATE_DOMAIN = b"secagg/v1/engine-state"
#: HKDF label of the state-encryption key (``secagg/v1/<purpose>``, as in secagg.crypto.kdf).
STATE_KEY_LABEL = b"secagg/v1/state-encryption"
KEY_BYTES = 32
#: The party field of a server's state (the wire's SERVER id).
SERVER_PARTY = 0xFFFFFFFF
_MAX_COUNTER = (1 << 64) - 1
DIGEST_BYTES = 32
_ROLE_AT = len(MAGIC) + 2
_PREFIX_BYTES = len(MAGIC) + 3 + DIGEST_BYTES  # magic, version, mode, role, config digest
_HEADER = struct.Struct(">16sQIQ")  # session id, round, party, counter


class Role(enum.Enum):
    """Which engine a state belongs to (bound into every blob)."""

    CLIENT = 1
    SERVER = 2


@dataclass(frozen=True)
class EngineIdentity:
    """What a persisted state is bound to: the role, session, round and party of one engine,
    and the digest of its round configuration (``RoundConfig.digest``: every setting, so a state
    saved under one configuration never resumes under a weaker one with the same session id).
    """

    role: Role
    session_id: bytes
    round_index: int
    party: int
    config_digest: bytes

    def prefix(self, mode: int) -> bytes:
        """Magic, format version, mode, role and configuration digest."""
        return MAGIC + bytes((FORMAT_VERSION, mode, self.role.value)) + self.config_digest

    def header(self, counter: int) -> bytes:
        """The sealed blob's header (in the clear, and authenticated as associated data)."""
        return self.prefix(_SEALED) + _HEADER.pack(
            self.session_id, self.round_index, self.party, counter
        )

    def check_state(self, state: Mapping[str, Any]) -> None:
        """The decoded dict names this engine (defence in depth; engines check it too)."""
        expected: dict[str, Any] = {
            "session_id": self.session_id,
            "round_index": self.round_index,
        }
        if self.role is Role.CLIENT:
            expected["party"] = self.party
        for name, want in expected.items():
            got = state.get(name)
            if type(got) is not type(want) or got != want:
                raise StateError(f"state belongs to another engine: {name}={got!r}, want {want!r}")


def client_identity(config: RoundConfig, party: int) -> EngineIdentity:
    """The identity of party ``party``'s engine in the round ``config``."""
    return EngineIdentity(Role.CLIENT, config.session_id, config.round_index, party, config.digest)


def server_identity(config: RoundConfig) -> EngineIdentity:
    """The identity of the server's engine in the round ``config``."""
    return EngineIdentity(
        Role.SERVER, config.session_id, config.round_index, SERVER_PARTY, config.digest
    )


def _state_key(key: bytes, identity: EngineIdentity) -> bytes:
    """One AES-256 key per engine (configuration, role, round, party) from the caller's key.

    Salt = the configuration digest (it covers the session id), as for every key of the round
    (secagg.crypto.kdf); info = the purpose label, role, round and party.
    """
    info = STATE_KEY_LABEL + struct.pack(
        ">BQI", identity.role.value, identity.round_index, identity.party
    )
    return HKDF(
        algorithm=hashes.SHA256(), length=KEY_BYTES, salt=identity.config_digest, info=info
    ).derive(key)


def _check_key(key: object) -> bytes:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        size = len(key) if isinstance(key, (bytes, bytearray)) else type(key).__name__
        raise StateError(f"key must be {KEY_BYTES} bytes, got {size}")
    return key


def _check_counter(counter: object, name: str) -> int:
    if isinstance(counter, bool) or not isinstance(counter, int):
        raise StateError(f"{name} must be an int, got {type(counter).__name__}")
    if not 0 <= counter <= _MAX_COUNTER:
        raise StateError(f"{name} must be in [0, 2^64), got {counter}")
    return counter


class RollbackGuard:
    """The host's memory of one engine's persisted states: a monotonic counter store.

    Sealing takes :meth:`next_counter`, strictly greater than every counter sealed or opened
    before. Opening (pass the guard as ``min_counter``) accepts only a counter strictly greater
    than every counter opened before, and records it once the engine is restored: a blob opens
    at most once, so neither an older state nor a second copy of the newest one can bring an
    engine back to a point where it would answer the server again. Restore the guard from
    storage that the attacker cannot roll back (a TPM counter, a replicated database row);
    keeping it only in the same directory as the blobs defeats it.

    Args:
        last_sealed: the highest counter sealed so far (-1: none).
        last_opened: the highest counter opened so far (-1: none).
    """

    def __init__(self, *, last_sealed: int = -1, last_opened: int = -1) -> None:
        for name, value in (("last_sealed", last_sealed), ("last_opened", last_opened)):
            if isinstance(value, bool) or not isinstance(value, int) or value < -1:
                raise StateError(f"{name} must be an int >= -1, got {value!r}")
        self.last_sealed = last_sealed
        self.last_opened = last_opened

    def next_counter(self) -> int:
        """A counter for the next sealed state (recorded as sealed)."""
        counter = max(self.last_sealed, self.last_opened) + 1
        _check_counter(counter, "counter")
        self.last_sealed = counter
        return counter

    @property
    def min_counter(self) -> int:
        """The lowest counter :meth:`check` accepts."""
        return self.last_opened + 1

    def check(self, counter: int) -> None:
        """Refuse ``counter`` unless it is strictly greater than every counter opened before.

        Raises:
            StateError: the blob is stale (rolled back) or was already opened.
        """
        if counter <= self.last_opened:
            raise StateError(
                f"state counter {counter} is below the lowest accepted counter"
                f" {self.min_counter}: a rolled back or replayed state"
            )

    def record(self, counter: int) -> None:
        """Remember that the state sealed with ``counter`` was opened."""
        self.check(counter)
        self.last_opened = counter


def dump_state(
    state: Mapping[str, Any],
    identity: EngineIdentity,
    *,
    key: bytes | None = None,
    counter: int = 0,
) -> bytes:
    """Serialise an engine's ``state_dict()``: plaintext without ``key``, sealed with it.

    Raises:
        StateError: an unencodable value, a bad key, a counter outside [0, 2^64), or a nonzero
            counter without a key (a plaintext blob has no counter: it would be ignored).
    """
    body = encode_value(dict(state))
    if key is None:
        if counter != 0:
            raise StateError(f"counter={counter} needs a key: a plaintext state carries no counter")
        return identity.prefix(_PLAIN) + body
    counter = _check_counter(counter, "counter")
    header = identity.header(counter)
    nonce = os.urandom(NONCE_BYTES)  # 96 random bits per blob: never reused under one key
    sealed = AESGCM(_state_key(_check_key(key), identity)).encrypt(
        nonce, body, STATE_DOMAIN + header
    )
    return header + nonce + sealed


def _open(
    blob: bytes | bytearray | memoryview,
    identity: EngineIdentity,
    key: bytes | None,
    guard: RollbackGuard,
) -> tuple[dict[str, Any], int | None]:
    """Authenticate and decode a blob for ``identity``; returns (state dict, counter)."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise StateError(f"blob must be bytes, got {type(blob).__name__}")
    data = bytes(blob)
    if len(data) < _PREFIX_BYTES or data[: len(MAGIC)] != MAGIC:
        raise StateError("not a secagg engine state (bad magic or truncated)")
    version, mode, role = data[len(MAGIC) : _ROLE_AT + 1]
    digest = data[_ROLE_AT + 1 : _PREFIX_BYTES]
    if version != FORMAT_VERSION:
        raise StateError(f"state format version {version} is not supported ({FORMAT_VERSION})")
    if mode not in (_PLAIN, _SEALED):
        raise StateError(f"unknown state mode {mode}")
    if role != identity.role.value:
        got = Role(role).name if role in (r.value for r in Role) else str(role)
        raise StateError(f"state belongs to a {got} engine, not a {identity.role.name} engine")
    counter: int | None = None
    if mode == _PLAIN:
        if key is not None:
            # Downgrade protection: a host that seals never accepts an unsealed blob.
            raise StateError("a key was given but the state is not sealed: refused")
        if guard.min_counter != 0:
            raise StateError("a plaintext state has no counter: min_counter needs a key")
        body = data[_PREFIX_BYTES:]
    else:
        if key is None:
            raise StateError("the state is sealed: load it with its key")
        if len(data) < _HEADER.size + _PREFIX_BYTES + NONCE_BYTES + TAG_BYTES:
            raise StateError(f"sealed state is truncated ({len(data)} bytes)")
        session_id, round_index, party, counter = _HEADER.unpack_from(data, _PREFIX_BYTES)
        for name, got, want in (
            ("session", session_id, identity.session_id),
            ("round", round_index, identity.round_index),
            ("party", party, identity.party),
        ):
            if got != want:
                raise StateError(f"state belongs to another engine: {name} {got!r}, want {want!r}")
        _check_digest(digest, identity)
        guard.check(counter)
        header = identity.header(counter)
        nonce = data[len(header) : len(header) + NONCE_BYTES]
        try:
            body = AESGCM(_state_key(_check_key(key), identity)).decrypt(
                nonce, data[len(header) + NONCE_BYTES :], STATE_DOMAIN + header
            )
        except InvalidTag:
            raise StateError(
                "sealed state failed authentication (wrong key, tampered or truncated)"
            ) from None
    state = decode_value(body)
    if not isinstance(state, dict):
        raise StateError(f"state must decode to a dict, got {type(state).__name__}")
    identity.check_state(state)
    _check_digest(digest, identity)
    return state, counter


def _check_digest(digest: bytes, identity: EngineIdentity) -> None:
    if digest != identity.config_digest:
        raise StateError(
            "state was saved under another round configuration (configuration digest"
            f" {digest.hex()[:16]}..., this engine's {identity.config_digest.hex()[:16]}...)"
        )


class Restorable(Protocol):
    """An engine: ``load_state_dict`` restores a fresh engine from a ``state_dict``."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def load_state(
    engine: Restorable,
    identity: EngineIdentity,
    blob: bytes | bytearray | memoryview,
    *,
    key: bytes | None = None,
    min_counter: int | RollbackGuard = 0,
) -> None:
    """Restore ``engine`` from a blob of :func:`dump_state`, all or nothing.

    On any failure the engine is left exactly as it was (fresh, loadable with the right blob).

    Args:
        engine: a fresh engine whose identity is ``identity``.
        blob: the bytes to restore.
        key: the caller's 32-byte key if the blob was sealed (a plaintext blob is refused when a
            key is given: no downgrade).
        min_counter: the lowest counter accepted, or a :class:`RollbackGuard` (accepts only a
            counter above every one it saw opened, and records this one on success).

    Raises:
        StateError: bad magic, version or mode; another role, session, round or party; a stale
            counter; failed authentication (wrong key, tampering, truncation); a malformed
            encoding; or a state the engine cannot load.
        LocalProtocolError: the engine is not fresh (raised by ``load_state_dict``).
    """
    if isinstance(min_counter, RollbackGuard):
        guard = min_counter
    else:
        _check_counter(min_counter, "min_counter")
        guard = RollbackGuard(last_opened=min_counter - 1)
    state, counter = _open(blob, identity, key, guard)
    _restore_atomically(engine, lambda: engine.load_state_dict(state))
    if counter is not None:
        guard.record(counter)


def _restore_atomically(engine: object, action: Callable[[], None]) -> None:
    """Run ``action``; on any failure put every attribute of ``engine`` back as it was.

    ``load_state_dict`` assigns attributes one by one, so a state that fails half-way (an
    authentic blob of an older layout, or a forged plaintext one) would leave a half-restored
    engine. Attributes are reassigned, never mutated in place, so a shallow copy suffices.
    """
    snapshot = dict(vars(engine))
    try:
        action()
    except BaseException as exc:
        attrs = vars(engine)
        attrs.clear()
        attrs.update(snapshot)
        if isinstance(exc, SecAggError) or not isinstance(exc, Exception):
            raise
        raise StateError(f"state cannot be loaded into this engine: {exc!r}") from exc

"""Typed protocol messages and their versioned, bounded, strictly decoded wire format.

Every message is a small frozen dataclass, validated when built. On the wire a message is::

    magic "SAGG" | version u8 | type u8 | session_id 16B | round u64 | sender u32 | recipient u32
    | body_length u32 | body

all integers big-endian. The decoder accepts exactly one encoding of each message: the body must
be consumed to its last byte, counts are bounded by the bytes that remain, party lists are strictly
increasing (no duplicates), and fixed-size fields have their exact size. Anything else raises
:class:`MessageDecodeError`, a :class:`~secagg.errors.RemoteProtocolError`: arbitrary bytes give a
valid message or that error, never another exception (the fuzz invariant in the tests).

The server is party id :data:`SERVER` (``0xFFFFFFFF``); parties are ``0..n-1``.
"""

from __future__ import annotations

import enum
import functools
import operator
import struct
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from secagg.errors import RemoteProtocolError

MAGIC = b"SAGG"
VERSION = 2
SERVER = 0xFFFFFFFF
MAX_PARTIES = 1 << 20
MAX_WIRE_BYTES = 1 << 30
#: Longest fixed-size record (a sealed share pair, a revealed share) in a list message.
MAX_RECORD_BYTES = 4096
_HEADER = struct.Struct(">4sBB16sQIII")
HEADER_BYTES = _HEADER.size
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
COMMITMENT_BYTES = 32


class MessageDecodeError(RemoteProtocolError):
    """Bytes that are not exactly one valid message."""


class MessageType(enum.IntEnum):
    """Wire type codes, one per message class."""

    ADVERTISE_KEYS = 1
    KEY_DIRECTORY = 2
    ENCRYPTED_SHARES = 3
    SHARE_DELIVERY = 4
    MASKED_INPUT = 5
    SURVIVOR_LIST = 6
    SURVIVOR_SIGNATURE = 7
    UNMASK_REQUEST = 8
    UNMASK_RESPONSE = 9
    ABORT = 10


def _check_party(p: int, *, allow_server: bool = False) -> None:
    if not (0 <= p < MAX_PARTIES or (allow_server and p == SERVER)):
        raise ValueError(f"party id {p} out of range")


#: Long party lists (tuples: immutable) that passed :func:`_check_sorted_unique`, held so that
#: their ids cannot be reused. The server puts one survivor list in the message to every
#: survivor; checking it again per message made building a phase quadratic in n (issue 12).
_CHECKED_LISTS: dict[int, tuple[int, ...]] = {}
_CHECKED_MIN_LENGTH = 256


def _check_sorted_unique(ids: Sequence[int], what: str) -> None:
    # One C-level pass (map over operator.lt) at every size: converting a list of ~50 ids to a
    # numpy array cost ~6x more, on every message of a big cohort (issue 12).
    remember = type(ids) is tuple and len(ids) >= _CHECKED_MIN_LENGTH
    if remember and _CHECKED_LISTS.get(id(ids)) is ids:
        return
    if not all(map(operator.lt, ids, ids[1:])):
        raise ValueError(f"{what} must be strictly increasing party ids")
    if ids:  # sorted: the ends bound every id
        _check_party(ids[0])
        _check_party(ids[-1])
    if remember:
        if len(_CHECKED_LISTS) >= 8:
            _CHECKED_LISTS.clear()
        _CHECKED_LISTS[id(ids)] = ids  # type: ignore[assignment]


@dataclass(frozen=True)
class Message:
    """Fields every message carries (the header)."""

    TYPE: ClassVar[MessageType]
    session_id: bytes
    round_index: int
    sender: int
    recipient: int

    def __post_init__(self) -> None:
        if len(self.session_id) != 16:
            raise ValueError("session_id must be 16 bytes")
        if not 0 <= self.round_index < 2**64:
            raise ValueError("round_index out of range")
        _check_party(self.sender, allow_server=True)
        _check_party(self.recipient, allow_server=True)


@dataclass(frozen=True)
class KeyEntry:
    """One party's advertised public keys (and, in active mode, its signature over them)."""

    party: int
    mask_public: bytes
    encryption_public: bytes
    signature: bytes = b""

    def __post_init__(self) -> None:
        _check_party(self.party)
        if len(self.mask_public) != PUBLIC_KEY_BYTES or len(self.encryption_public) != 32:
            raise ValueError("public keys must be 32 bytes")
        if len(self.signature) not in (0, SIGNATURE_BYTES):
            raise ValueError("signature must be empty or 64 bytes")


@dataclass(frozen=True)
class AdvertiseKeys(Message):
    """Party -> server: its two X25519 public keys (phase AdvertiseKeys)."""

    TYPE: ClassVar[MessageType] = MessageType.ADVERTISE_KEYS
    keys: KeyEntry = field(kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.keys.party != self.sender:
            raise ValueError("advertised keys must be the sender's")


@dataclass(frozen=True)
class KeyDirectory(Message):
    """Server -> party: the advertised keys of the recipient's neighbours (sorted by party)."""

    TYPE: ClassVar[MessageType] = MessageType.KEY_DIRECTORY
    entries: tuple[KeyEntry, ...] = field(kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_sorted_unique([e.party for e in self.entries], "key directory")


def _check_records(parties: Sequence[int], records: Sequence[bytes], what: str) -> None:
    _check_sorted_unique(parties, what)
    if len(parties) != len(records):
        raise ValueError(f"{what}: one record per party")
    if records and len(set(map(len, records))) != 1:
        raise ValueError(f"{what}: records must all have the same length")
    if records and not 1 <= len(records[0]) <= MAX_RECORD_BYTES:
        raise ValueError(f"{what}: record length out of range")


@dataclass(frozen=True)
class EncryptedShares(Message):
    """Party -> server: one sealed pair of shares per neighbour (phase ShareKeys).

    ``ciphertexts[i]`` is for ``receivers[i]``; all ciphertexts have the same length.
    """

    TYPE: ClassVar[MessageType] = MessageType.ENCRYPTED_SHARES
    receivers: tuple[int, ...] = field(kw_only=True)
    ciphertexts: tuple[bytes, ...] = field(kw_only=True, repr=False)
    #: SHA-256 commitment to the self-mask seed: lets the server detect a forged share of b_u.
    self_mask_commitment: bytes = field(kw_only=True, default=bytes(32))

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_records(self.receivers, self.ciphertexts, "encrypted shares")
        if len(self.self_mask_commitment) != COMMITMENT_BYTES:
            raise ValueError("self-mask commitment must be 32 bytes")


@dataclass(frozen=True)
class ShareDelivery(Message):
    """Server -> party: the sealed shares its neighbours addressed to it (``ciphertexts[i]`` is
    from ``senders[i]``)."""

    TYPE: ClassVar[MessageType] = MessageType.SHARE_DELIVERY
    senders: tuple[int, ...] = field(kw_only=True)
    ciphertexts: tuple[bytes, ...] = field(kw_only=True, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_records(self.senders, self.ciphertexts, "share delivery")


@dataclass(frozen=True)
class MaskedInput(Message):
    """Party -> server: y = x + PRG(b_u) + sum of +-PRG(s_uv), packed at B bits per value."""

    TYPE: ClassVar[MessageType] = MessageType.MASKED_INPUT
    modulus_bits: int = field(kw_only=True)
    count: int = field(kw_only=True)
    payload: bytes = field(kw_only=True, repr=False)
    #: (Active mode) the neighbours the sender actually masked with, and its Ed25519 signature
    #: over them: parties revealing its self-mask share check its blocks against this set.
    peers: tuple[int, ...] = field(kw_only=True, default=())
    peers_signature: bytes = field(kw_only=True, default=b"")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 2 <= self.modulus_bits <= 64 or self.count < 0:
            raise ValueError("bad modulus_bits or count")
        _check_sorted_unique(self.peers, "peers")
        if len(self.peers_signature) not in (0, SIGNATURE_BYTES):
            raise ValueError("peers signature must be empty or 64 bytes")
        if len(self.payload) != (self.count * self.modulus_bits + 7) // 8:
            raise ValueError("payload length does not match count x modulus_bits")


@dataclass(frozen=True)
class SurvivorList(Message):
    """Server -> party (active mode): the parties whose masked input arrived (U3) and the dropped
    parties whose mask keys will be asked for (D'), to be signed as one list."""

    TYPE: ClassVar[MessageType] = MessageType.SURVIVOR_LIST
    survivors: tuple[int, ...] = field(kw_only=True)
    dropped: tuple[int, ...] = field(kw_only=True, default=())

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_sorted_unique(self.survivors, "survivors")
        _check_sorted_unique(self.dropped, "dropped")


@dataclass(frozen=True)
class SurvivorSignature(Message):
    """Party -> server (active mode): Ed25519 signature over (session, round, survivors)."""

    TYPE: ClassVar[MessageType] = MessageType.SURVIVOR_SIGNATURE
    signature: bytes = field(kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.signature) != SIGNATURE_BYTES:
            raise ValueError("signature must be 64 bytes")


@dataclass(frozen=True)
class PartySignature:
    party: int
    signature: bytes

    def __post_init__(self) -> None:
        _check_party(self.party)
        if len(self.signature) != SIGNATURE_BYTES:
            raise ValueError("signature must be 64 bytes")


@dataclass(frozen=True)
class PartnerSet:
    """A party's signed set of masking partners (copied from its MaskedInput)."""

    party: int
    peers: tuple[int, ...]
    signature: bytes

    def __post_init__(self) -> None:
        _check_party(self.party)
        _check_sorted_unique(self.peers, "peers")
        if len(self.signature) != SIGNATURE_BYTES:
            raise ValueError("signature must be 64 bytes")


@dataclass(frozen=True)
class UnmaskRequest(Message):
    """Server -> party: who survived and who dropped (phase Unmasking).

    In semi-honest whole-vector rounds the lists name only the recipient and its own partners
    (``unmask.neighbourhood_view``); otherwise they are the whole U3 and D'. In active mode it
    carries the survivors' signatures over the survivor list (ConsistencyCheck).
    """

    TYPE: ClassVar[MessageType] = MessageType.UNMASK_REQUEST
    survivors: tuple[int, ...] = field(kw_only=True)
    dropped: tuple[int, ...] = field(kw_only=True)
    signatures: tuple[PartySignature, ...] = field(kw_only=True, default=())
    #: (Active mode) the signed partner sets of the recipient's surviving neighbours.
    partner_sets: tuple[PartnerSet, ...] = field(kw_only=True, default=())

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_sorted_unique(self.survivors, "survivors")
        _check_sorted_unique(self.dropped, "dropped")
        _check_sorted_unique([s.party for s in self.signatures], "signatures")
        _check_sorted_unique([s.party for s in self.partner_sets], "partner sets")


@dataclass(frozen=True)
class UnmaskResponse(Message):
    """Party -> server: shares of the self-mask seeds of surviving neighbours and of the mask
    keys of dropped neighbours; never both for the same owner (Bonawitz et al. 2017, section 4,
    round 4). ``self_mask_shares[i]`` is the share of ``self_mask_owners[i]``'s seed, etc.
    """

    TYPE: ClassVar[MessageType] = MessageType.UNMASK_RESPONSE
    self_mask_owners: tuple[int, ...] = field(kw_only=True)
    self_mask_shares: tuple[bytes, ...] = field(kw_only=True, repr=False)
    mask_key_owners: tuple[int, ...] = field(kw_only=True)
    mask_key_shares: tuple[bytes, ...] = field(kw_only=True, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_records(self.self_mask_owners, self.self_mask_shares, "self-mask shares")
        _check_records(self.mask_key_owners, self.mask_key_shares, "mask-key shares")
        if set(self.self_mask_owners) & set(self.mask_key_owners):
            raise ValueError("a party's self-mask and mask-key shares must never be revealed both")


@dataclass(frozen=True)
class Abort(Message):
    """Either direction: the sender stops this round, with a short reason."""

    TYPE: ClassVar[MessageType] = MessageType.ABORT
    reason: str = field(kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.reason.encode()) > 1024:
            raise ValueError("abort reason too long")


AnyMessage = (
    AdvertiseKeys
    | KeyDirectory
    | EncryptedShares
    | ShareDelivery
    | MaskedInput
    | SurvivorList
    | SurvivorSignature
    | UnmaskRequest
    | UnmaskResponse
    | Abort
)


_M = TypeVar("_M")


_FIELDS: dict[type, tuple[tuple[str, ...], dict[str, object]]] = {}


def _defaults(cls: type[Any]) -> tuple[tuple[str, ...], dict[str, object]]:
    known = _FIELDS.get(cls)
    if known is None:
        names = tuple(f.name for f in fields(cls))
        defaults = {f.name: f.default for f in fields(cls) if f.default is not MISSING}
        known = _FIELDS[cls] = (names, defaults)
    return known


_SET_DICT = object.__setattr__


def trusted(cls: type[_M], *header: object, **values: object) -> _M:
    """Build a message without re-running its field checks.

    For messages whose fields are already known to be valid: those an engine assembles from
    parts it checked (a directory of accepted key entries, the ciphertexts it routes, lists
    from its own state), and those :func:`decode` builds after checking exactly what the
    field checks would (the wire layout guarantees the rest: fixed-size keys, one record per
    id, records of one length). At n = 10^4 the repeated checks cost as much as the routing
    itself (issue 12). ``tests/test_messages.py`` re-validates every decoded message.
    """
    names, defaults = _defaults(cls)
    if len(header) == 4:  # the usual call: the header positionally, the body by keyword
        first, second, third, fourth = names[:4]
        values[first], values[second], values[third], values[fourth] = header
    elif len(header) <= len(names):
        values.update(zip(names, header))  # noqa: B905 - fewer header values than names
    else:
        raise TypeError(f"{cls.__name__} takes {len(names)} fields, got {len(header)}")
    if len(values) != len(names):
        values = {**defaults, **values}
        if len(values) != len(names):
            raise TypeError(
                f"{cls.__name__} fields missing or unknown: {sorted(set(values) ^ set(names))}"
            )
    elif defaults and not defaults.keys() <= values.keys():
        raise TypeError(f"{cls.__name__} fields missing or unknown: {sorted(values)}")
    obj = object.__new__(cls)
    _SET_DICT(obj, "__dict__", values)  # a frozen dataclass: bypass its __setattr__ guard
    return obj


def _ids_ok(ids: Sequence[int]) -> bool:
    """Strictly increasing party ids (what :func:`_check_sorted_unique` checks), as a test."""
    return not ids or (
        all(map(operator.lt, ids, ids[1:])) and ids[0] >= 0 and ids[-1] < MAX_PARTIES
    )


# ---------------------------------------------------------------------------------------------
# Codec


class _Writer:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def u8(self, v: int) -> None:
        self.parts.append(struct.pack(">B", v))

    def u16(self, v: int) -> None:
        self.parts.append(struct.pack(">H", v))

    def u32(self, v: int) -> None:
        self.parts.append(struct.pack(">I", v))

    def raw(self, b: bytes) -> None:
        self.parts.append(b)

    def blob(self, b: bytes) -> None:
        self.u32(len(b))
        self.raw(b)

    def ids(self, ids: Sequence[int]) -> None:
        self.u32(len(ids))
        self.raw(struct.pack(f">{len(ids)}I", *ids))

    def records(self, ids: Sequence[int], records: Sequence[bytes]) -> None:
        """count u32 | record length u16 | ids | records (all of one length)."""
        self.u32(len(ids))
        self.u16(len(records[0]) if records else 0)
        self.raw(struct.pack(f">{len(ids)}I", *ids))
        self.raw(b"".join(records))


@functools.lru_cache(maxsize=256)
def _records_struct(count: int, size: int) -> struct.Struct:
    return struct.Struct(f"{size}s" * count)


_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


class _Reader:
    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data)
        self.end = len(self.data)
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise MessageDecodeError("message is truncated")
        out = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return out

    def _number(self, kind: struct.Struct) -> int:
        # Read in place (no intermediate bytes object per field).
        if self.pos + kind.size > self.end:
            raise MessageDecodeError("message is truncated")
        value = int(kind.unpack_from(self.data, self.pos)[0])
        self.pos += kind.size
        return value

    def u8(self) -> int:
        return self._number(_U8)

    def u16(self) -> int:
        return self._number(_U16)

    def u32(self) -> int:
        return self._number(_U32)

    def count(self, item_bytes: int) -> int:
        n = self.u32()
        if n > MAX_PARTIES or n * item_bytes > len(self.data) - self.pos:
            raise MessageDecodeError("list count exceeds message size")
        return n

    def blob(self) -> bytes:
        n = self.u32()
        return self.take(n)

    def ids(self) -> tuple[int, ...]:
        n = self.count(4)  # bounded by the bytes that remain
        ids = struct.unpack_from(f">{n}I", self.data, self.pos)
        self.pos += 4 * n
        return ids

    def records(self) -> tuple[tuple[int, ...], tuple[bytes, ...]]:
        n = self.u32()
        size = self.u16()
        if n > MAX_PARTIES or n * (4 + size) > len(self.data) - self.pos:
            raise MessageDecodeError("list count exceeds message size")
        if n == 0:
            if size:
                raise MessageDecodeError("record length given for an empty list")
            return (), ()
        if size == 0:
            raise MessageDecodeError("empty records")
        if size > MAX_RECORD_BYTES:
            raise MessageDecodeError("record length out of range")
        ids = struct.unpack_from(f">{n}I", self.data, self.pos)  # n (4 + size) bytes remain
        self.pos += 4 * n
        blob = self.take(n * size)
        if n <= 4096:  # split by one precompiled struct: ~6x faster than slicing in Python
            return ids, _records_struct(n, size).unpack(blob)
        return ids, tuple(blob[i : i + size] for i in range(0, n * size, size))

    def done(self) -> None:
        if self.pos != len(self.data):
            raise MessageDecodeError("trailing bytes after message body")


_KEY_HEAD = struct.Struct(">I32s32sB")  # party, mask key, encryption key, signature length


def _key_bytes(e: KeyEntry) -> bytes:
    # One struct call per entry: clients persist their neighbours' entries at every step.
    return _KEY_HEAD.pack(e.party, e.mask_public, e.encryption_public, len(e.signature)) + (
        e.signature
    )


def _write_key(w: _Writer, e: KeyEntry) -> None:
    w.raw(_key_bytes(e))


def _read_key(r: _Reader) -> KeyEntry:
    if r.pos + _KEY_HEAD.size > r.end:
        raise MessageDecodeError("message is truncated")
    party, mask, enc, sig_len = _KEY_HEAD.unpack_from(r.data, r.pos)  # one call per entry
    r.pos += _KEY_HEAD.size
    if sig_len not in (0, SIGNATURE_BYTES):
        raise MessageDecodeError("bad signature length")
    if party >= MAX_PARTIES:  # the keys are fixed-size fields: the party is all to check
        raise MessageDecodeError(f"party id {party} out of range")
    return trusted(KeyEntry, party, mask, enc, r.take(sig_len))


def encode_key_entry(entry: KeyEntry) -> bytes:
    """A key entry alone (for engine state persistence)."""
    return _key_bytes(entry)


def decode_key_entry(data: bytes) -> KeyEntry:
    """Inverse of :func:`encode_key_entry`.

    Raises:
        MessageDecodeError: truncated, trailing bytes, a bad signature length or party id.
    """
    if len(data) < _KEY_HEAD.size:
        raise MessageDecodeError("key entry is truncated")
    party, mask, enc, sig_len = _KEY_HEAD.unpack_from(data)
    if sig_len not in (0, SIGNATURE_BYTES):
        raise MessageDecodeError("bad signature length")
    if len(data) != _KEY_HEAD.size + sig_len:
        raise MessageDecodeError("key entry is truncated or has trailing bytes")
    if party >= MAX_PARTIES:
        raise MessageDecodeError(f"party id {party} out of range")
    return trusted(KeyEntry, party, mask, enc, bytes(data[_KEY_HEAD.size :]))


def _write_body(w: _Writer, m: Message) -> None:
    if isinstance(m, AdvertiseKeys):
        _write_key(w, m.keys)
    elif isinstance(m, KeyDirectory):
        w.u32(len(m.entries))
        for e in m.entries:
            _write_key(w, e)
    elif isinstance(m, EncryptedShares):
        w.raw(m.self_mask_commitment)
        w.records(m.receivers, m.ciphertexts)
    elif isinstance(m, ShareDelivery):
        w.records(m.senders, m.ciphertexts)
    elif isinstance(m, MaskedInput):
        w.u8(m.modulus_bits)
        w.u32(m.count)
        w.ids(m.peers)
        w.u8(len(m.peers_signature))
        w.raw(m.peers_signature)
        w.raw(m.payload)
    elif isinstance(m, SurvivorList):
        w.ids(m.survivors)
        w.ids(m.dropped)
    elif isinstance(m, SurvivorSignature):
        w.raw(m.signature)
    elif isinstance(m, UnmaskRequest):
        w.ids(m.survivors)
        w.ids(m.dropped)
        w.u32(len(m.signatures))
        for s in m.signatures:
            w.u32(s.party)
            w.raw(s.signature)
        w.u32(len(m.partner_sets))
        for p in m.partner_sets:
            w.u32(p.party)
            w.ids(p.peers)
            w.raw(p.signature)
    elif isinstance(m, UnmaskResponse):
        w.records(m.self_mask_owners, m.self_mask_shares)
        w.records(m.mask_key_owners, m.mask_key_shares)
    elif isinstance(m, Abort):
        reason = m.reason.encode()
        w.u16(len(reason))
        w.raw(reason)
    else:  # pragma: no cover
        raise TypeError(f"not a message: {type(m).__name__}")


def encode(message: Message) -> bytes:
    """The wire bytes of ``message``."""
    w = _Writer()
    _write_body(w, message)
    body = b"".join(w.parts)
    header = _HEADER.pack(
        MAGIC,
        VERSION,
        int(message.TYPE),
        message.session_id,
        message.round_index,
        message.sender,
        message.recipient,
        len(body),
    )
    return header + body


def peek_type(data: bytes) -> MessageType | None:
    """The type code in a wire header, without decoding (None if absent or unknown)."""
    if len(data) < HEADER_BYTES or data[:4] != MAGIC:
        return None
    try:
        return MessageType(data[5])
    except ValueError:
        return None


def decode(data: bytes | bytearray | memoryview, *, max_bytes: int = MAX_WIRE_BYTES) -> AnyMessage:
    """Decode exactly one message.

    Raises:
        MessageDecodeError: ``data`` is not exactly one valid message, or is over ``max_bytes``.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MessageDecodeError("wire data must be bytes")
    if len(data) > max_bytes:
        raise MessageDecodeError(f"message of {len(data)} bytes exceeds the limit {max_bytes}")
    if len(data) < HEADER_BYTES:
        raise MessageDecodeError("message is shorter than its header")
    magic, version, mtype, session, rnd, sender, recipient, length = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise MessageDecodeError("bad magic")
    if version != VERSION:
        raise MessageDecodeError(f"unsupported wire version {version}")
    if length != len(data) - HEADER_BYTES:
        raise MessageDecodeError("body length does not match the header")
    kind = _TYPES.get(mtype)
    if kind is None:
        raise MessageDecodeError(f"unknown message type {mtype}")
    # The header checks of Message.__post_init__ (session id and round are fixed-size fields).
    if not (sender < MAX_PARTIES or sender == SERVER) or not (
        recipient < MAX_PARTIES or recipient == SERVER
    ):
        raise MessageDecodeError(f"invalid {kind.name}: party id out of range")
    r = _Reader(memoryview(data)[HEADER_BYTES:])
    head = (session, rnd, sender, recipient)
    try:
        message = _read_body(kind, r, head)
    except ValueError as exc:  # a field failed validation in a dataclass
        raise MessageDecodeError(f"invalid {kind.name}: {exc}") from None
    r.done()
    return message


_TYPES = {int(t): t for t in MessageType}


def _invalid(kind: MessageType, why: str) -> MessageDecodeError:
    return MessageDecodeError(f"invalid {kind.name}: {why}")


def _read_body(kind: MessageType, r: _Reader, head: tuple[bytes, int, int, int]) -> AnyMessage:
    # The hot message types are built with ``trusted`` after checking here exactly what their
    # __post_init__ would check beyond what the layout guarantees (issue 12: the field checks
    # ran twice per message). The others keep their checked constructors.
    if kind is MessageType.ADVERTISE_KEYS:
        entry = _read_key(r)
        if entry.party != head[2]:
            raise _invalid(kind, "advertised keys must be the sender's")
        return trusted(AdvertiseKeys, *head, keys=entry)
    if kind is MessageType.KEY_DIRECTORY:
        n = r.count(69)
        entries = tuple(_read_key(r) for _ in range(n))
        if not _ids_ok([e.party for e in entries]):
            raise _invalid(kind, "key directory must be strictly increasing party ids")
        return trusted(KeyDirectory, *head, entries=entries)
    if kind is MessageType.ENCRYPTED_SHARES:
        commitment = r.take(COMMITMENT_BYTES)
        ids, records = r.records()
        if not _ids_ok(ids):
            raise _invalid(kind, "encrypted shares must be strictly increasing party ids")
        return trusted(
            EncryptedShares,
            *head,
            receivers=ids,
            ciphertexts=records,
            self_mask_commitment=commitment,
        )
    if kind is MessageType.SHARE_DELIVERY:
        ids, records = r.records()
        if not _ids_ok(ids):
            raise _invalid(kind, "share delivery must be strictly increasing party ids")
        return trusted(ShareDelivery, *head, senders=ids, ciphertexts=records)
    if kind is MessageType.MASKED_INPUT:
        bits, count = r.u8(), r.u32()
        peers = r.ids()
        sig_len = r.u8()
        if sig_len not in (0, SIGNATURE_BYTES):
            raise MessageDecodeError("bad signature length")
        peers_signature = r.take(sig_len)
        if not 2 <= bits <= 64:
            raise _invalid(kind, "bad modulus_bits or count")
        if not _ids_ok(peers):
            raise _invalid(kind, "peers must be strictly increasing party ids")
        size = (count * bits + 7) // 8
        return trusted(
            MaskedInput,
            *head,
            modulus_bits=bits,
            count=count,
            payload=r.take(size),
            peers=peers,
            peers_signature=peers_signature,
        )
    if kind is MessageType.SURVIVOR_LIST:
        return SurvivorList(*head, survivors=r.ids(), dropped=r.ids())
    if kind is MessageType.SURVIVOR_SIGNATURE:
        return SurvivorSignature(*head, signature=r.take(SIGNATURE_BYTES))
    if kind is MessageType.UNMASK_REQUEST:
        survivors, dropped = r.ids(), r.ids()
        n = r.count(68)
        sigs = tuple(PartySignature(r.u32(), r.take(SIGNATURE_BYTES)) for _ in range(n))
        m = r.count(72)
        partner_sets = tuple(
            PartnerSet(r.u32(), r.ids(), r.take(SIGNATURE_BYTES)) for _ in range(m)
        )
        return UnmaskRequest(
            *head,
            survivors=survivors,
            dropped=dropped,
            signatures=sigs,
            partner_sets=partner_sets,
        )
    if kind is MessageType.UNMASK_RESPONSE:
        self_owners, self_shares = r.records()
        key_owners, key_shares = r.records()
        if not (_ids_ok(self_owners) and _ids_ok(key_owners)):
            raise _invalid(kind, "share owners must be strictly increasing party ids")
        if key_owners and self_owners and not set(self_owners).isdisjoint(key_owners):
            raise _invalid(
                kind, "a party's self-mask and mask-key shares must never be revealed both"
            )
        return trusted(
            UnmaskResponse,
            *head,
            self_mask_owners=self_owners,
            self_mask_shares=self_shares,
            mask_key_owners=key_owners,
            mask_key_shares=key_shares,
        )
    if kind is MessageType.ABORT:
        raw = r.take(r.u16())
        try:
            reason = raw.decode()
        except UnicodeDecodeError:
            raise MessageDecodeError("abort reason is not UTF-8") from None
        return Abort(*head, reason=reason)
    raise MessageDecodeError(f"unknown message type {kind}")  # pragma: no cover

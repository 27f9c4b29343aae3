"""A small canonical, bounded codec for plain values (the adapter's persistence format).

Flower keeps a node's state between messages in ``context.state`` (a RecordDict of flat
records), so the adapter stores the engine's state and the round configuration as one byte
string each. ``encode`` gives exactly one encoding per value (dict items sorted by their encoded
key), and ``decode`` accepts exactly that encoding and nothing else, within explicit bounds:
arbitrary bytes give a value or :class:`StateDecodeError`, never another exception.

Values: None, bool, int (any size), float, str, bytes, list/tuple (decoded as list) and dict
with int or str keys.
"""

from __future__ import annotations

import struct
from typing import Any

from secagg.errors import RemoteProtocolError

MAX_DEPTH = 16
MAX_ITEMS = 1 << 24
_FLOAT = struct.Struct(">d")
_LEN = struct.Struct(">I")


class StateDecodeError(RemoteProtocolError):
    """Bytes that are not exactly one canonical encoding of a plain value."""


def encode(value: Any) -> bytes:
    """The canonical bytes of ``value``.

    Raises:
        TypeError: ``value`` holds something that is not a plain value.
    """
    out: list[bytes] = []
    _write(out, value, 0)
    return b"".join(out)


def _write(out: list[bytes], value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise TypeError("value nests too deeply")
    if value is None:
        out.append(b"N")
    elif value is True:
        out.append(b"T")
    elif value is False:
        out.append(b"F")
    elif isinstance(value, int):
        raw = value.to_bytes((value.bit_length() + 8) // 8 or 1, "big", signed=True)
        out += [b"i", _LEN.pack(len(raw)), raw]
    elif isinstance(value, float):
        out += [b"f", _FLOAT.pack(value)]
    elif isinstance(value, str):
        raw = value.encode()
        out += [b"s", _LEN.pack(len(raw)), raw]
    elif isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        out += [b"b", _LEN.pack(len(raw)), raw]
    elif isinstance(value, (list, tuple)):
        out += [b"l", _LEN.pack(len(value))]
        for item in value:
            _write(out, item, depth + 1)
    elif isinstance(value, dict):
        items = []
        for k, v in value.items():
            if isinstance(k, bool) or not isinstance(k, (int, str)):
                raise TypeError(f"dict keys must be int or str, got {type(k).__name__}")
            key: list[bytes] = []
            _write(key, k, depth + 1)
            items.append((b"".join(key), v))
        items.sort(key=lambda kv: kv[0])
        out += [b"d", _LEN.pack(len(items))]
        for raw_key, v in items:
            out.append(raw_key)
            _write(out, v, depth + 1)
    else:
        raise TypeError(f"cannot encode a {type(value).__name__}")


def decode(data: bytes, *, max_bytes: int = 1 << 30) -> Any:
    """Inverse of :func:`encode`.

    Raises:
        StateDecodeError: ``data`` is not exactly one canonical encoding, or is too large.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise StateDecodeError("encoded state must be bytes")
    if len(data) > max_bytes:
        raise StateDecodeError(f"encoded state of {len(data)} bytes exceeds {max_bytes}")
    reader = _Reader(bytes(data))
    value = reader.value(0)
    if reader.pos != len(reader.data):
        raise StateDecodeError("trailing bytes after the encoded value")
    return value


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise StateDecodeError("encoded state is truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def length(self) -> int:
        n = int(_LEN.unpack(self.take(4))[0])
        if n > MAX_ITEMS or n > len(self.data) - self.pos:
            raise StateDecodeError("length exceeds the encoded state")
        return n

    def value(self, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise StateDecodeError("encoded state nests too deeply")
        tag = self.take(1)
        if tag == b"N":
            return None
        if tag == b"T":
            return True
        if tag == b"F":
            return False
        if tag == b"i":
            raw = self.take(self.length())
            if not raw:
                raise StateDecodeError("empty integer")
            value = int.from_bytes(raw, "big", signed=True)
            if len(raw) != ((value.bit_length() + 8) // 8 or 1):
                raise StateDecodeError("non-canonical integer")
            return value
        if tag == b"f":
            return float(_FLOAT.unpack(self.take(8))[0])
        if tag == b"s":
            try:
                return self.take(self.length()).decode()
            except UnicodeDecodeError:
                raise StateDecodeError("string is not UTF-8") from None
        if tag == b"b":
            return self.take(self.length())
        if tag == b"l":
            return [self.value(depth + 1) for _ in range(self.length())]
        if tag == b"d":
            out: dict[Any, Any] = {}
            last = b""
            for i in range(self.length()):
                start = self.pos
                key = self.value(depth + 1)
                raw_key = self.data[start : self.pos]
                if isinstance(key, bool) or not isinstance(key, (int, str)):
                    raise StateDecodeError("dict key is not an int or str")
                if i and raw_key <= last:
                    raise StateDecodeError("dict keys are not in canonical order")
                last = raw_key
                out[key] = self.value(depth + 1)
            return out
        raise StateDecodeError(f"unknown tag {tag!r}")

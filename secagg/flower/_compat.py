"""What the adapter needs from the engine, in one place: the configuration as bytes (it travels
in a Flower record), the party engine's state as bytes (it lives in the node's
``context.state`` between messages) and the node's policy.

All of it is the engine's public API (``RoundConfig.to_fields`` / ``from_fields``,
``ClientEngine.to_bytes`` / ``load_bytes``, ``ClientPolicy``); this module only fixes the byte
format the adapter uses on top of it.
"""

from __future__ import annotations

import functools
import json

from secagg.config import ClientPolicy, RoundConfig
from secagg.engine import ClientEngine
from secagg.errors import ConfigError, PolicyError

__all__ = [
    "ClientPolicy",
    "PolicyError",
    "config_from_bytes",
    "config_to_bytes",
    "engine_load_bytes",
    "engine_to_bytes",
]


def config_to_bytes(config: RoundConfig) -> bytes:
    """The round configuration as canonical JSON bytes (sent to every node at setup)."""
    return json.dumps(config.to_fields(), sort_keys=True, separators=(",", ":")).encode()


@functools.lru_cache(maxsize=16)
def config_from_bytes(data: bytes) -> RoundConfig:
    """Inverse of :func:`config_to_bytes`; ``RoundConfig.from_fields`` validates everything.

    Cached: a node rebuilds its engine from the same configuration at every stage, and
    validating a sparse graph costs O(n k log k); ``RoundConfig`` is frozen, so sharing is safe.

    Raises:
        ConfigError: the bytes do not describe a valid configuration.
    """
    try:
        fields = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config bytes are not JSON: {exc}") from None
    return RoundConfig.from_fields(fields)


def engine_to_bytes(engine: ClientEngine, *, key: bytes | None, counter: int) -> bytes:
    """The party engine's state; sealed with AES-GCM under the node's state key when it has one
    (without one the bytes hold the node's round secrets in the clear: they stay on the node,
    in its own Flower context)."""
    return engine.to_bytes(key=key, counter=counter if key is not None else 0)


def engine_load_bytes(
    engine: ClientEngine, blob: bytes, *, key: bytes | None, min_counter: int
) -> None:
    """Restore a fresh ``engine`` from :func:`engine_to_bytes` (no older state accepted)."""
    engine.load_bytes(blob, key=key, min_counter=min_counter if key is not None else 0)

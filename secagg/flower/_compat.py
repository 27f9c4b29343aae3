"""What the adapter needs from the engine, behind one seam.

The engine is gaining public API for hosts like this adapter (``RoundConfig.to_fields`` /
``from_fields``, ``ClientEngine.to_bytes`` / ``load_bytes``, ``ClientPolicy``). Until each piece
lands, this module provides a private equivalent built only on the engine's current public API
(``state_dict`` / ``load_state_dict``, the graph's canonical bytes), and switches to the engine's
own version as soon as it exists. Nothing else in :mod:`secagg.flower` touches these details.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any

from secagg import config as _config_module
from secagg.config import RoundConfig
from secagg.engine import ClientEngine
from secagg.errors import ConfigError
from secagg.flower import _codec
from secagg.graph import NeighborGraph
from secagg.layout import BlockLayout

# -- RoundConfig <-> bytes -------------------------------------------------------------------


def config_to_bytes(config: RoundConfig) -> bytes:
    """The round configuration as one canonical byte string (sent to every node at setup)."""
    to_fields = getattr(config, "to_fields", None)
    if callable(to_fields):
        return _codec.encode({"engine_fields": to_fields()})
    layout = config.layout
    return _codec.encode(
        {
            "session_id": config.session_id,
            "round_index": config.round_index,
            "graph": config.graph.to_bytes(),
            "threshold": config.threshold,
            "dim": config.dim,
            "modulus_bits": config.modulus_bits,
            "active": config.active,
            "verify_keys": None if config.verify_keys is None else list(config.verify_keys),
            "layout": None
            if layout is None
            else [list(layout.block_sizes), [list(h) for h in layout.holdings], layout.min_holders],
            "tolerated_colluders": config.tolerated_colluders,
        }
    )


@functools.lru_cache(maxsize=16)
def config_from_bytes(data: bytes) -> RoundConfig:
    """Inverse of :func:`config_to_bytes`; the result is validated by ``RoundConfig`` itself.

    Cached: a node rebuilds its engine from the same configuration at every stage, and
    validating a sparse graph costs O(n k log k); ``RoundConfig`` is frozen, so sharing is safe.

    Raises:
        ConfigError: the bytes do not describe a valid configuration.
    """
    try:
        fields = _codec.decode(data)
        if not isinstance(fields, dict):
            raise TypeError("not a field dict")
        if "engine_fields" in fields:
            from_fields = getattr(RoundConfig, "from_fields", None)
            if not callable(from_fields):
                raise TypeError("this secagg version cannot read engine fields")
            config = from_fields(fields["engine_fields"])
            assert isinstance(config, RoundConfig)
            return config
        raw_layout = fields["layout"]
        layout = (
            None
            if raw_layout is None
            else BlockLayout(
                tuple(raw_layout[0]), tuple(tuple(h) for h in raw_layout[1]), raw_layout[2]
            )
        )
        keys = fields["verify_keys"]
        return RoundConfig(
            session_id=fields["session_id"],
            round_index=fields["round_index"],
            graph=NeighborGraph.from_bytes(fields["graph"]),
            threshold=fields["threshold"],
            dim=fields["dim"],
            modulus_bits=fields["modulus_bits"],
            active=fields["active"],
            verify_keys=None if keys is None else tuple(keys),
            layout=layout,
            tolerated_colluders=fields["tolerated_colluders"],
        )
    except ConfigError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AssertionError) as exc:
        raise ConfigError(f"config bytes do not describe a round configuration: {exc}") from None


# -- ClientEngine <-> bytes ------------------------------------------------------------------


def engine_to_bytes(engine: ClientEngine) -> bytes:
    """The party engine's complete state (it holds secrets: it stays on the node)."""
    to_bytes = getattr(engine, "to_bytes", None)
    if callable(to_bytes):
        blob = to_bytes()
        assert isinstance(blob, bytes)
        return blob
    return _codec.encode(engine.state_dict())


def engine_load_bytes(engine: ClientEngine, blob: bytes) -> None:
    """Restore ``engine`` (fresh, same config and party) from :func:`engine_to_bytes`."""
    load_bytes = getattr(engine, "load_bytes", None)
    if callable(load_bytes):
        load_bytes(blob)
        return
    engine.load_state_dict(_codec.decode(blob))


# -- Client policy ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _ClientPolicyShim:
    """The least a party accepts from a server's configuration (see ``check_policy``)."""

    min_threshold: int = 2
    min_neighbors: int = 2
    min_holders: int = 2
    require_active: bool = False


ClientPolicy: Any = getattr(_config_module, "ClientPolicy", _ClientPolicyShim)

#: Whether ``ClientEngine`` checks a policy itself (``ClientEngine(config, party, policy=...)``).
ENGINE_TAKES_POLICY = "policy" in inspect.signature(ClientEngine.__init__).parameters


class PolicyError(ConfigError):
    """The server's configuration is weaker than the node's own policy: the node refuses it."""


def check_policy(policy: Any, config: RoundConfig, party: int) -> None:
    """Refuse a configuration below ``policy`` (checked by the node before it sends anything).

    Raises:
        PolicyError: naming the field, the server's value and the node's minimum.
    """
    degree = len(config.neighbors(party))
    checks = (
        ("threshold", config.threshold, int(policy.min_threshold)),
        ("neighbours", degree, int(policy.min_neighbors)),
        ("min_holders", config.blocks.min_holders, int(policy.min_holders)),
    )
    for name, have, need in checks:
        if have < need:
            raise PolicyError(
                f"server's configuration has {name}={have}, below this node's policy minimum"
                f" {need}: refusing the round"
            )
    if bool(policy.require_active) and not config.active:
        raise PolicyError(
            "server's configuration has active=False, but this node's policy requires the"
            " active mode (signed keys and the consistency check): refusing the round"
        )

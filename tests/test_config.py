"""Tests for secagg.config.RoundConfig validation."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from secagg.config import MAX_MESSAGE_BYTES, SESSION_ID_BYTES, RoundConfig
from secagg.crypto import keys
from secagg.errors import ConfigError, SecAggError
from secagg.graph import NeighborGraph, complete_graph, harary_graph

SID = bytes(range(SESSION_ID_BYTES))
GRAPH_SEED = bytes(range(32))


def _config(**overrides: Any) -> RoundConfig:
    base: dict[str, Any] = {
        "session_id": SID,
        "round_index": 0,
        "graph": complete_graph(5),
        "threshold": 3,
        "dim": 100,
        "modulus_bits": 32,
    }
    base.update(overrides)
    return RoundConfig(**base)


def _verify_keys(n: int) -> tuple[bytes, ...]:
    return tuple(keys.generate_ed25519()[1] for _ in range(n))


def test_valid_complete_graph() -> None:
    cfg = _config()
    assert cfg.num_parties == 5
    assert cfg.neighbors(0) == (1, 2, 3, 4)
    assert cfg.neighbors(4) == (0, 1, 2, 3)
    assert cfg.active is False and cfg.verify_keys is None


def test_valid_harary_graph() -> None:
    graph = harary_graph(20, 6, GRAPH_SEED)
    assert graph.kind == "harary"
    cfg = _config(graph=graph, threshold=6, dim=1, modulus_bits=2)
    assert cfg.num_parties == 20
    assert all(len(cfg.neighbors(u)) == 6 for u in range(20))
    assert cfg.neighbors(3) == graph.neighbors[3]


def test_valid_active_mode() -> None:
    vks = _verify_keys(5)
    cfg = _config(active=True, verify_keys=vks)
    assert cfg.verify_keys == vks
    assert "verify_keys" not in repr(cfg)


def test_valid_boundaries() -> None:
    _config(threshold=2)
    _config(threshold=4)  # = n - 1, the smallest neighbourhood of K_5
    _config(modulus_bits=2)
    _config(modulus_bits=64)
    _config(dim=1)
    _config(round_index=2**63 - 1)
    _config(graph=complete_graph(3), threshold=2)


def test_threshold_one_is_refused() -> None:
    """t = 1 makes every share the secret itself: a single neighbour could unmask a party."""
    with pytest.raises(ConfigError, match="threshold"):
        _config(threshold=1)
    with pytest.raises(ConfigError, match="threshold"):
        _config(graph=complete_graph(2), threshold=1)


def test_active_mode_needs_a_majority_threshold() -> None:
    """Active mode: 2t must exceed the neighbourhood, or a lying server collects both shares."""
    vks = tuple(bytes([i]) * 32 for i in range(5))
    _config(active=True, verify_keys=vks, threshold=3)
    with pytest.raises(ConfigError, match="active"):
        _config(active=True, verify_keys=vks, threshold=2)


def test_frozen() -> None:
    cfg = _config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.threshold = 1  # type: ignore[misc]


def test_config_error_is_value_error() -> None:
    assert issubclass(ConfigError, ValueError)
    assert issubclass(ConfigError, SecAggError)


@pytest.mark.parametrize(
    "overrides",
    [
        {"session_id": b""},
        {"session_id": bytes(15)},
        {"session_id": bytes(17)},
        {"session_id": bytes(32)},
        {"session_id": bytearray(16)},
        {"session_id": "0123456789abcdef"},
        {"round_index": -1},
        {"round_index": 2**63},
        {"threshold": 0},
        {"threshold": -1},
        {"threshold": 5},  # > smallest neighbourhood (4) of K_5
        {"graph": complete_graph(1), "threshold": 1},  # fewer than 2 parties
        {"dim": 0},
        {"dim": -5},
        {"modulus_bits": 0},
        {"modulus_bits": 1},
        {"modulus_bits": 65},
        {"dim": MAX_MESSAGE_BYTES, "modulus_bits": 64},  # 8 GiB masked vector
        {"dim": (MAX_MESSAGE_BYTES // 2) * 8 // 32 + 1, "modulus_bits": 32},
        {"active": True},
        {"active": True, "verify_keys": ()},
        {"active": True, "verify_keys": (bytes(32),) * 4},
        {"active": True, "verify_keys": (bytes(32),) * 6},
        {"active": True, "verify_keys": (bytes(32),) * 4 + (bytes(31),)},
        {"active": True, "verify_keys": (bytes(33),) * 5},
    ],
    ids=lambda o: ",".join(f"{k}={str(v)[:20]}" for k, v in o.items()),
)
def test_invalid(overrides: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        _config(**overrides)


def test_message_size_boundary() -> None:
    # ceil(dim * B / 8) <= MAX_MESSAGE_BYTES / 2 is accepted, one more word is not.
    limit_words = (MAX_MESSAGE_BYTES // 2) * 8 // 32
    _config(dim=limit_words, modulus_bits=32)
    with pytest.raises(ConfigError):
        _config(dim=limit_words + 1, modulus_bits=32)


def test_threshold_bound_uses_smallest_neighbourhood() -> None:
    graph = harary_graph(30, 4, GRAPH_SEED)
    _config(graph=graph, threshold=4)
    with pytest.raises(ConfigError, match="threshold"):
        _config(graph=graph, threshold=5)
    # A hand-made irregular graph: party 0 has only 2 neighbours, the others more.
    star = NeighborGraph(
        n=5, kind="harary", neighbors=((1, 2), (0, 2, 3, 4), (0, 1, 3, 4), (1, 2, 4), (1, 2, 3))
    )
    star.validate()
    _config(graph=star, threshold=2)
    with pytest.raises(ConfigError):
        _config(graph=star, threshold=3)


def test_harary_degree_n_minus_1_is_complete() -> None:
    graph = harary_graph(5, 4, GRAPH_SEED)
    assert graph.kind == "complete"
    _config(graph=graph, threshold=4)
    with pytest.raises(ConfigError):
        _config(graph=graph, threshold=5)


def test_active_threshold_accounts_for_tolerated_colluders() -> None:
    """Review finding: colluding neighbours count towards both survivor lists of a split view,
    so active mode needs 2t > neighbours + tolerated colluders."""
    vks = tuple(bytes([i]) * 32 for i in range(5))
    _config(active=True, verify_keys=vks, threshold=3)  # 6 > 4 + 0
    with pytest.raises(ConfigError, match="tolerated colluders"):
        _config(active=True, verify_keys=vks, threshold=3, tolerated_colluders=2)
    _config(active=True, verify_keys=vks, threshold=4, tolerated_colluders=2)  # 8 > 4 + 2


def test_asymmetric_graph_is_refused() -> None:
    one_sided = NeighborGraph(n=4, kind="harary", neighbors=((1, 2), (0, 2), (0, 1, 3), (1, 2)))
    with pytest.raises(ConfigError, match="graph"):
        _config(graph=one_sided, threshold=2)

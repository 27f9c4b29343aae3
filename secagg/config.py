"""Frozen, validated configuration of one secure aggregation round.

Every party and the server build the same :class:`RoundConfig` (the host distributes it, for
example with the round's task). Validation happens once, here, so the engines can rely on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from secagg.encoding import MAX_MODULUS_BITS
from secagg.errors import ConfigError
from secagg.graph import NeighborGraph
from secagg.layout import BlockLayout

SESSION_ID_BYTES = 16
#: Hard ceiling on any wire message (a masked vector of 2^27 64-bit words).
MAX_MESSAGE_BYTES = 1 << 30


@dataclass(frozen=True)
class RoundConfig:
    """Everything the parties and the server must agree on before a round starts.

    Attributes:
        session_id: 16 random bytes naming this round's session; bound into every key and message.
        round_index: the training round (keys and masks never repeat across rounds).
        graph: who masks with whom and who holds whose shares (parties are ``0..n-1``).
        threshold: t, the number of neighbour shares that reconstruct a secret; also the fewest
            survivors for which the server may learn a sum.
        dim: the length of every input vector.
        modulus_bits: B; inputs, masks and sums live in Z_(2^B).
        active: the active-adversary mode (Ed25519-signed keys and a consistency check).
        verify_keys: parties' long-term Ed25519 public keys, required in active mode
            (the PKI of Bonawitz et al. 2017, section 4, "active security").
        layout: part-wise aggregation (see :mod:`secagg.layout`): which blocks of the
            ``dim``-long model vector each party holds. ``None``: every party holds the whole
            vector (plain secure aggregation).
        tolerated_colluders: in active mode, how many parties may collude with a malicious
            server; enforced as 2t > neighbours + tolerated_colluders.
    """

    session_id: bytes
    round_index: int
    graph: NeighborGraph
    threshold: int
    dim: int
    modulus_bits: int
    active: bool = False
    verify_keys: tuple[bytes, ...] | None = field(default=None, repr=False)
    layout: BlockLayout | None = field(default=None, repr=False)
    tolerated_colluders: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.session_id, bytes) or len(self.session_id) != SESSION_ID_BYTES:
            raise ConfigError(f"session_id must be {SESSION_ID_BYTES} bytes")
        if not 0 <= self.round_index < 2**63:
            raise ConfigError("round_index must be in [0, 2^63)")
        n = self.graph.n
        if n < 2:
            raise ConfigError("need at least 2 parties")
        _validate_graph(self.graph)
        min_degree = min(len(nb) for nb in self.graph.neighbors)
        if not 2 <= self.threshold <= min_degree:
            # t = 1 would make every share the secret itself: one neighbour could unmask.
            raise ConfigError(
                f"threshold must be in [2, {min_degree}] (the smallest neighbourhood), got"
                f" {self.threshold}"
            )
        if self.tolerated_colluders < 0:
            raise ConfigError("tolerated_colluders must be non-negative")
        if self.active and 2 * self.threshold <= self.graph.degree + self.tolerated_colluders:
            # A malicious server that tells some neighbours of v "v dropped" and others "v
            # survived" gets t shares of both of v's secrets unless 2t > |N(v)| + c, with c
            # colluding neighbours counting towards both (Bonawitz et al. 2017, section 4; the
            # consistency check alone only helps when t > |U3| / 2).
            raise ConfigError(
                f"active mode needs 2 t > neighbours ({self.graph.degree}) + tolerated colluders"
                f" ({self.tolerated_colluders}), got t={self.threshold}"
            )
        if self.dim < 1:
            raise ConfigError("dim must be positive")
        if not 2 <= self.modulus_bits <= MAX_MODULUS_BITS:
            raise ConfigError(f"modulus_bits must be in [2, {MAX_MODULUS_BITS}]")
        if math.ceil(self.dim * self.modulus_bits / 8) > MAX_MESSAGE_BYTES // 2:
            raise ConfigError("dim x modulus_bits exceeds the maximum message size")
        if self.layout is not None:
            if self.layout.dim != self.dim:
                raise ConfigError(f"layout covers {self.layout.dim} coordinates, dim is {self.dim}")
            if len(self.layout.holdings) != n:
                raise ConfigError("layout must list the blocks of every party")
        if self.active:
            if self.verify_keys is None or len(self.verify_keys) != n:
                raise ConfigError("active mode needs one Ed25519 verify key per party")
            if any(len(k) != 32 for k in self.verify_keys):
                raise ConfigError("verify keys must be 32-byte Ed25519 public keys")

    @property
    def num_parties(self) -> int:
        return self.graph.n

    def neighbors(self, party: int) -> tuple[int, ...]:
        return self.graph.neighbors[party]

    @cached_property
    def blocks(self) -> BlockLayout:
        """The layout in force (one whole block held by everyone when ``layout`` is None)."""
        return self.layout if self.layout is not None else BlockLayout.whole(self.dim, self.graph.n)

    @property
    def part_wise(self) -> bool:
        return self.layout is not None and not self.layout.is_whole()

    def input_length(self, party: int) -> int:
        """Length of ``party``'s input vector: ``dim``, or its blocks' total in part-wise mode."""
        return self.dim if not self.part_wise else self.blocks.input_length(party)


def _validate_graph(graph: NeighborGraph) -> None:
    """A hand-built graph must still be symmetric, loop-free and in range (a one-sided edge
    would make one party refuse the other's shares and abort the round)."""
    try:
        if graph.kind == "complete":
            rows = np.asarray(graph.neighbors, dtype=np.int64)
            n = graph.n
            expected = np.arange(n - 1)[None, :] + (
                np.arange(n - 1)[None, :] >= np.arange(n)[:, None]
            )
            if rows.shape != (n, n - 1) or not np.array_equal(rows, expected):
                raise ValueError("a complete graph must connect every pair of parties")
        else:
            graph.validate()
    except ValueError as exc:
        raise ConfigError(f"invalid neighbour graph: {exc}") from None

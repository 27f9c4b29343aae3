"""Frozen, validated configuration of one secure aggregation round.

Every party and the server build the same :class:`RoundConfig` (the host distributes it, for
example with the round's task). Validation happens once, here, so the engines can rely on it.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import struct
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from secagg.encoding import MAX_MODULUS_BITS
from secagg.errors import ConfigError, PolicyError
from secagg.graph import KIND_COMPLETE, NeighborGraph, complete_graph
from secagg.layout import BlockLayout

SESSION_ID_BYTES = 16
#: Version of the configuration's canonical encoding (and of the digest bound into every key).
CONFIG_VERSION = 1
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
        tolerated_colluders: c, how many parties may collude with the server. Active mode needs
            2t > neighbours + c (and t >= k/2 + 1 + c on a Harary ring); in either mode c > 0
            turns on the degree checks of docs/protocol.md ("Active security on sparse
            graphs"), which count a colluder's masks as known, and part-wise layouts need
            min_holders >= c + 2. With c = 0 the guarantee against colluders on a sparse graph
            is the probabilistic one of Bell et al. 2020 for the corruption rate the graph
            parameters were chosen for.

    Every field is bound into the round's keys and signatures through :attr:`digest`: parties
    handed different configurations derive unrelated keys and reject each other's signatures,
    so a server cannot quietly downgrade some of them (issue 8, item 3).
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
            raise ConfigError(
                f"session_id must be {SESSION_ID_BYTES} bytes, got {self.session_id!r:.60}"
            )
        for name in ("round_index", "threshold", "dim", "modulus_bits", "tolerated_colluders"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ConfigError(f"{name} must be an integer, got {value!r:.60}")
            object.__setattr__(self, name, int(value))
        if not isinstance(self.active, bool):
            raise ConfigError(f"active must be a bool, got {self.active!r:.60}")
        if not isinstance(self.graph, NeighborGraph):
            raise ConfigError(f"graph must be a NeighborGraph, got {type(self.graph).__name__}")
        if self.layout is not None and not isinstance(self.layout, BlockLayout):
            raise ConfigError(f"layout must be a BlockLayout, got {type(self.layout).__name__}")
        if not 0 <= self.round_index < 2**63:
            raise ConfigError(f"round_index must be in [0, 2^63), got {self.round_index}")
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
        if not 0 <= self.tolerated_colluders < self.threshold:
            # c >= t colluders hold t shares of a neighbour's secrets between them.
            raise ConfigError(
                f"tolerated_colluders must be in [0, t-1] = [0, {self.threshold - 1}], got"
                f" {self.tolerated_colluders}"
            )
        if self.active and 2 * self.threshold <= self.graph.degree + self.tolerated_colluders:
            # A malicious server that tells some neighbours of v "v dropped" and others "v
            # survived" gets t shares of both of v's secrets unless 2t > |N(v)| + c, with c
            # colluding neighbours counting towards both (Bonawitz et al. 2017, section 4; the
            # consistency check alone only helps when t > |U3| / 2).
            raise ConfigError(
                f"active mode needs 2 t > neighbours ({self.graph.degree}) + tolerated colluders"
                f" ({self.tolerated_colluders}), got t={self.threshold}"
            )
        if self.active or self.tolerated_colluders > 0:
            _check_active_graph(self.graph, self.active)
            h = self.graph.ring_half_width
            if h is not None and self.threshold < h + 1 + self.tolerated_colluders:
                # Lemma 3 of docs/protocol.md ("Active security on sparse graphs"): with c
                # colluders, survivors need h + 1 + c partners for at most one group of honest
                # parties to be unmaskable; every survivor keeps t of them.
                raise ConfigError(
                    f"a Harary ring with {self.tolerated_colluders} tolerated"
                    " colluders needs t >= k/2 + 1 + colluders ="
                    f" {h + 1 + self.tolerated_colluders}, got t={self.threshold}"
                )
        if self.dim < 1:
            raise ConfigError(f"dim must be positive, got {self.dim}")
        if not 2 <= self.modulus_bits <= MAX_MODULUS_BITS:
            raise ConfigError(
                f"modulus_bits must be in [2, {MAX_MODULUS_BITS}], got {self.modulus_bits}"
            )
        if math.ceil(self.dim * self.modulus_bits / 8) > MAX_MESSAGE_BYTES // 2:
            raise ConfigError("dim x modulus_bits exceeds the maximum message size")
        if self.layout is not None:
            if self.layout.dim != self.dim:
                raise ConfigError(f"layout covers {self.layout.dim} coordinates, dim is {self.dim}")
            if len(self.layout.holdings) != n:
                raise ConfigError("layout must list the blocks of every party")
            if (
                not self.layout.is_whole()
                and self.layout.min_holders < self.tolerated_colluders + 2
            ):
                # A block sum over c colluders and one honest holder is that holder's value.
                raise ConfigError(
                    f"with {self.tolerated_colluders} tolerated colluders a layout needs"
                    f" min_holders >= {self.tolerated_colluders + 2}, got"
                    f" {self.layout.min_holders}"
                )
        if self.active:
            if self.verify_keys is None or len(self.verify_keys) != n:
                raise ConfigError("active mode needs one Ed25519 verify key per party")
            if any(len(k) != 32 for k in self.verify_keys):
                raise ConfigError("verify keys must be 32-byte Ed25519 public keys")

    @property
    def num_parties(self) -> int:
        return self.graph.n

    @cached_property
    def digest(self) -> bytes:
        """SHA-256 of the canonical encoding of every field: bound into every derived key (as
        HKDF salt), every share's associated data, every commitment and every signed payload."""
        h = hashlib.sha256(b"secagg/v1/round-config")
        h.update(
            struct.pack(
                ">HQIIIBI",
                CONFIG_VERSION,
                self.round_index,
                self.threshold,
                self.dim,
                self.modulus_bits,
                self.active,
                self.tolerated_colluders,
            )
        )
        h.update(self.session_id)
        graph = self.graph.to_bytes()
        h.update(struct.pack(">Q", len(graph)) + graph)
        keys = self.verify_keys or ()
        h.update(struct.pack(">BI", self.verify_keys is not None, len(keys)) + b"".join(keys))
        layout = self.layout
        if layout is None:
            h.update(b"\x00")
        else:
            h.update(struct.pack(">BII", 1, layout.min_holders, layout.num_blocks))
            h.update(np.asarray(layout.block_sizes, dtype=">u8").tobytes())
            for blocks in layout.holdings:
                h.update(np.asarray((len(blocks), *blocks), dtype=">u4").tobytes())
        return h.digest()

    def to_fields(self) -> dict[str, Any]:
        """Plain JSON-able fields (ints, strings, lists) that :meth:`from_fields` turns back into
        an identical configuration, e.g. to ship it inside a framework's message."""
        graph = self.graph
        graph_fields: dict[str, Any] = {"kind": graph.kind, "n": graph.n}
        if graph.ring is not None:
            graph_fields.update(degree=graph.degree, ring=list(graph.ring))
        elif graph.kind != KIND_COMPLETE:
            graph_fields["neighbors"] = [list(row) for row in graph.neighbors]
        layout = self.layout
        return {
            "version": CONFIG_VERSION,
            "session_id": self.session_id.hex(),
            "round_index": self.round_index,
            "graph": graph_fields,
            "threshold": self.threshold,
            "dim": self.dim,
            "modulus_bits": self.modulus_bits,
            "active": self.active,
            "verify_keys": None
            if self.verify_keys is None
            else [k.hex() for k in self.verify_keys],
            "layout": None
            if layout is None
            else {
                "block_sizes": list(layout.block_sizes),
                "holdings": [list(h) for h in layout.holdings],
                "min_holders": layout.min_holders,
            },
            "tolerated_colluders": self.tolerated_colluders,
        }

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> RoundConfig:
        """Inverse of :meth:`to_fields`; validates everything.

        Raises:
            ConfigError: a missing, unknown or invalid field.
        """
        expected = {
            "version", "session_id", "round_index", "graph", "threshold", "dim",
            "modulus_bits", "active", "verify_keys", "layout", "tolerated_colluders",
        }  # fmt: skip
        if not isinstance(fields, dict) or set(fields) != expected:
            got = sorted(fields) if isinstance(fields, dict) else type(fields).__name__
            raise ConfigError(f"config fields must be exactly {sorted(expected)}, got {got}")
        if fields["version"] != CONFIG_VERSION:
            raise ConfigError(f"unsupported config version {fields['version']!r}")
        try:
            session_id = bytes.fromhex(fields["session_id"])
            graph = _graph_from_fields(fields["graph"])
            keys = fields["verify_keys"]
            layout = fields["layout"]
            return cls(
                session_id=session_id,
                round_index=fields["round_index"],
                graph=graph,
                threshold=fields["threshold"],
                dim=fields["dim"],
                modulus_bits=fields["modulus_bits"],
                active=fields["active"],
                verify_keys=None if keys is None else tuple(bytes.fromhex(k) for k in keys),
                layout=None
                if layout is None
                else BlockLayout(
                    tuple(layout["block_sizes"]),
                    tuple(tuple(h) for h in layout["holdings"]),
                    layout["min_holders"],
                ),
                tolerated_colluders=fields["tolerated_colluders"],
            )
        except ConfigError:
            raise
        except (TypeError, ValueError, KeyError) as exc:
            raise ConfigError(f"invalid config fields: {exc}") from None

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


def _graph_from_fields(fields: dict[str, Any]) -> NeighborGraph:
    from secagg.graph import KIND_HARARY, _ring_graph

    kind, n = fields["kind"], int(fields["n"])
    if kind == KIND_COMPLETE:
        return complete_graph(n)
    if kind != KIND_HARARY:
        raise ConfigError(f"unknown graph kind {kind!r}")
    if "ring" in fields:
        ring = np.asarray(fields["ring"], dtype=np.int64)
        if ring.shape != (n,) or not np.array_equal(np.sort(ring), np.arange(n)):
            raise ConfigError("graph ring must be a permutation of the parties")
        return _ring_graph(ring, int(fields["degree"]))
    return NeighborGraph(
        n, KIND_HARARY, tuple(tuple(int(v) for v in r) for r in fields["neighbors"])
    )


def _check_active_graph(graph: NeighborGraph, active: bool) -> None:
    """Active mode's guarantee, and the deterministic one against tolerated colluders
    (docs/protocol.md, "Active security on sparse graphs"), are argued for the complete graph and
    for Harary rings with n >= 3h + 1: there, at most one group of honest parties can ever be
    unmasked. Anything else is refused rather than run."""
    what = "active mode" if active else "tolerated_colluders > 0"
    if graph.kind == KIND_COMPLETE:
        return
    h = graph.ring_half_width
    if h is None:
        raise ConfigError(
            f"{what} needs the complete graph or a Harary graph built by harary_graph (with"
            " its ring order): no security argument covers other sparse graphs"
        )
    if graph.n < 3 * h + 1:
        raise ConfigError(
            f"{what} on a Harary graph needs n >= 3k/2 + 1 = {3 * h + 1} parties, got"
            f" n={graph.n}; use the complete graph"
        )


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


@dataclass(frozen=True)
class ClientPolicy:
    """The least a party accepts, whatever configuration the server distributes.

    The configuration usually comes from the server; a party that checks it against its own
    policy cannot be downgraded (active mode switched off, a lower threshold, thinner blocks).
    The defaults accept every valid configuration; set them to what your deployment promises.

    Attributes:
        min_threshold: the smallest Shamir threshold t accepted.
        min_neighbors: the fewest neighbours this party may have in the graph.
        min_holders: the smallest part-wise ``min_holders`` accepted.
        require_active: refuse semi-honest rounds.
        min_tolerated_colluders: in active mode, the fewest colluders the round must tolerate.
        max_dim: the longest input vector accepted (bounds memory and traffic).
    """

    min_threshold: int = 2
    min_neighbors: int = 1
    min_holders: int = 2
    require_active: bool = False
    min_tolerated_colluders: int = 0
    max_dim: int = 1 << 27

    def check(self, config: RoundConfig, party: int) -> None:
        """Raise :class:`PolicyError` naming the first setting below this policy."""
        problems = []
        if config.threshold < self.min_threshold:
            problems.append(f"threshold {config.threshold} < policy minimum {self.min_threshold}")
        degree = len(config.neighbors(party))
        if degree < self.min_neighbors:
            problems.append(f"{degree} neighbours < policy minimum {self.min_neighbors}")
        if config.part_wise and config.blocks.min_holders < self.min_holders:
            problems.append(
                f"min_holders {config.blocks.min_holders} < policy minimum {self.min_holders}"
            )
        if self.require_active and not config.active:
            problems.append("the round is semi-honest but the policy requires active mode")
        if config.active and config.tolerated_colluders < self.min_tolerated_colluders:
            problems.append(
                f"tolerated_colluders {config.tolerated_colluders} < policy minimum"
                f" {self.min_tolerated_colluders}"
            )
        if config.dim > self.max_dim:
            problems.append(f"dim {config.dim} > policy maximum {self.max_dim}")
        if problems:
            raise PolicyError(
                "configuration refused by this party's policy: " + "; ".join(problems)
            )

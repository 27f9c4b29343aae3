"""Part-wise aggregation: how the model vector is cut into blocks and who holds which block.

In the random parameter-part protocol every party holds a different random part of the model.
Pairwise masks cancel only on coordinates that both parties of a pair mask, so each block is
masked only between its holders: the mask of block b for the pair (u, v) is PRG(s_uv, round, b),
and the server learns, per block, only the sum over that block's surviving holders.

A party's input vector is the concatenation of its blocks in increasing block order; its length
(and its traffic) is proportional to its part, not to the model.

Security condition (checked by the server before unmasking and by every honest party before it
answers): every block a party holds keeps at least ``min_holders`` surviving holders, and each
surviving holder keeps at least ``min_holders - 1`` surviving neighbours that hold the block, so
no block sum is the value of one party (and with ``min_holders >= c + 2``, of one honest party
among c colluders).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt

from secagg.errors import ConfigError

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class BlockLayout:
    """Blocks of the model vector and the parties holding each of them this round.

    Attributes:
        block_sizes: coordinates per block; the model vector is their concatenation.
        holdings: for every party, the sorted ids of the blocks it holds (may be empty).
        min_holders: the fewest surviving holders any held block may be revealed for (>= 2).
    """

    block_sizes: tuple[int, ...]
    holdings: tuple[tuple[int, ...], ...]
    min_holders: int = 2

    def __post_init__(self) -> None:
        nb = len(self.block_sizes)
        if nb == 0 or any(s < 1 for s in self.block_sizes):
            raise ConfigError("a layout needs at least one block, each of positive size")
        if self.min_holders < 2:
            raise ConfigError("min_holders must be at least 2 (a sum of one is that party's value)")
        counts = np.zeros(nb, dtype=np.int64)
        for party, blocks in enumerate(self.holdings):
            if any(b < 0 or b >= nb for b in blocks):
                raise ConfigError(f"party {party} holds a block id out of range")
            if any(a >= b for a, b in itertools.pairwise(blocks)):
                raise ConfigError(f"party {party}'s blocks must be strictly increasing")
            counts[list(blocks)] += 1
        thin = np.flatnonzero((counts > 0) & (counts < self.min_holders))
        if thin.size:
            raise ConfigError(
                f"blocks {thin[:5].tolist()} have fewer than min_holders={self.min_holders} holders"
            )

    @classmethod
    def whole(cls, dim: int, parties: int) -> BlockLayout:
        """One block of ``dim`` coordinates held by every party (plain secure aggregation)."""
        return cls((dim,), tuple((0,) for _ in range(parties)), min_holders=2)

    @property
    def num_blocks(self) -> int:
        return len(self.block_sizes)

    @property
    def dim(self) -> int:
        """The model vector's length."""
        return int(sum(self.block_sizes))

    @cached_property
    def offsets(self) -> IntArray:
        """Start coordinate of every block in the model vector (plus the end)."""
        return np.concatenate([[0], np.cumsum(self.block_sizes, dtype=np.int64)])

    @cached_property
    def holders(self) -> tuple[tuple[int, ...], ...]:
        """For every block, the sorted parties holding it."""
        out: list[list[int]] = [[] for _ in self.block_sizes]
        for party, blocks in enumerate(self.holdings):
            for b in blocks:
                out[b].append(party)
        return tuple(tuple(h) for h in out)

    @cached_property
    def holding_sets(self) -> tuple[frozenset[int], ...]:
        """``holdings`` as sets, for membership tests."""
        return tuple(frozenset(blocks) for blocks in self.holdings)

    def input_length(self, party: int) -> int:
        """Length of ``party``'s input vector (its blocks, concatenated)."""
        return int(sum(self.block_sizes[b] for b in self.holdings[party]))

    def positions(self, blocks: tuple[int, ...] | list[int]) -> IntArray:
        """Model coordinates of ``blocks``, concatenated in the given order."""
        if not blocks:
            return np.zeros(0, dtype=np.int64)
        starts = self.offsets[list(blocks)]
        sizes = np.asarray([self.block_sizes[b] for b in blocks], dtype=np.int64)
        return concat_ranges(starts, sizes)

    def local_positions(self, party: int, blocks: tuple[int, ...] | list[int]) -> IntArray:
        """Where ``blocks`` (a sorted subset of the party's blocks) sit in its input vector."""
        mine = self.holdings[party]
        sizes = np.asarray([self.block_sizes[b] for b in mine], dtype=np.int64)
        local_start = np.concatenate([[0], np.cumsum(sizes)])[:-1]
        index = {b: i for i, b in enumerate(mine)}
        try:
            rows = [index[b] for b in blocks]
        except KeyError:
            raise ConfigError(f"party {party} does not hold all of {list(blocks)[:5]}") from None
        return concat_ranges(local_start[rows], sizes[rows])

    def common_blocks(self, u: int, v: int) -> tuple[int, ...]:
        """Blocks held by both u and v (where their pairwise mask lives)."""
        return tuple(sorted(set(self.holdings[u]) & set(self.holdings[v])))

    def is_whole(self) -> bool:
        """One block held by everyone: the plain secure aggregation fast path."""
        return self.num_blocks == 1 and all(h == (0,) for h in self.holdings)


def concat_ranges(starts: IntArray, sizes: IntArray) -> IntArray:
    """Concatenation of ``arange(s, s + n)`` for every (s, n > 0), without a Python loop."""
    total = int(sizes.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    out = np.ones(total, dtype=np.int64)
    out[0] = starts[0]
    # At every range boundary, jump from the previous range's last value to the next start.
    out[np.cumsum(sizes)[:-1]] = starts[1:] - (starts[:-1] + sizes[:-1] - 1)
    return np.cumsum(out)

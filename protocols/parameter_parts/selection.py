"""Step 1 of a round: the server draws a different random part of the model for every party.

The flat parameter vector is cut into blocks (``element``: one coordinate each; ``block``:
consecutive chunks of ``block_size``; ``layer``: one parameter tensor each) and every party gets
a uniformly random subset of about ``download_fraction`` of the blocks.

Security requirements, and how they are met:

* the selection must not be predictable (a party that could predict who else holds a block could
  plan collusion, and a predictable server choice is a choice an adversary can steer), so every
  draw comes from :mod:`secagg.crypto.rng`, the project's CSPRNG, never numpy's or Python's RNG;
* the server learns per-block sums over holders, and a sum over one holder is that holder's
  value, so every block ends with 0 or at least ``min_holders`` holders. Blocks left with
  1..min_holders-1 holders after the draw are repaired by adding uniformly random extra holders.
  Adding rather than removing keeps every party's part non-empty and never silently drops a
  block from training; the price is a realized download fraction somewhat above the requested
  one when ``parties * download_fraction`` is close to ``min_holders``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from secagg.crypto import rng
from secagg.layout import BlockLayout, concat_ranges

IntArray = npt.NDArray[np.int64]
UNITS = ("element", "block", "layer")
# Bound on the random-key matrix the repair step builds at once (rows x parties words).
_REPAIR_CHUNK_WORDS = 1 << 21


def block_offsets(block_sizes: Sequence[int]) -> IntArray:
    """Start of every block in the flat vector, plus the end (length ``num_blocks + 1``)."""
    return np.concatenate([[0], np.cumsum(np.asarray(block_sizes, dtype=np.int64))]).astype(
        np.int64
    )


@dataclass(frozen=True)
class PartSelection:
    """Which blocks of the flat parameter vector each party holds this round.

    Attributes:
        block_sizes: coordinates per block; the flat vector is their concatenation.
        holdings: for every party, the sorted ids of the blocks it holds.
        unit: the granularity the blocks were cut at (informational).
        min_holders: every block has 0 or at least this many holders (checked on creation).
    """

    block_sizes: tuple[int, ...]
    holdings: tuple[tuple[int, ...], ...]
    unit: str = "block"
    min_holders: int = 1

    def __post_init__(self) -> None:
        nb = len(self.block_sizes)
        if nb == 0 or any(s < 1 for s in self.block_sizes):
            raise ValueError("a selection needs at least one block, each of positive size")
        if self.min_holders < 1:
            raise ValueError(f"min_holders must be at least 1, got {self.min_holders}")
        for party, blocks in enumerate(self.holdings):
            if blocks and (blocks[0] < 0 or blocks[-1] >= nb):
                raise ValueError(f"party {party} holds a block id out of range")
            if any(a >= b for a, b in itertools.pairwise(blocks)):
                raise ValueError(f"party {party}'s block ids must be strictly increasing")
        counts = self.holder_counts()
        thin = np.flatnonzero((counts > 0) & (counts < self.min_holders))
        if thin.size:
            raise ValueError(
                f"blocks {thin[:5].tolist()} have 1..{self.min_holders - 1} holders; "
                f"need 0 or at least min_holders={self.min_holders}"
            )

    @property
    def num_blocks(self) -> int:
        return len(self.block_sizes)

    @property
    def num_params(self) -> int:
        return int(sum(self.block_sizes))

    @property
    def parties(self) -> int:
        return len(self.holdings)

    def block_offsets(self) -> IntArray:
        """Start of every block in the flat vector, plus the end."""
        return block_offsets(self.block_sizes)

    def holder_counts(self) -> IntArray:
        """Number of holders of every block."""
        held = [np.asarray(h, dtype=np.int64) for h in self.holdings]
        flat = np.concatenate(held) if held else np.zeros(0, dtype=np.int64)
        return np.bincount(flat, minlength=self.num_blocks).astype(np.int64)

    def holders(self) -> tuple[tuple[int, ...], ...]:
        """For every block, the sorted parties holding it."""
        out: list[list[int]] = [[] for _ in self.block_sizes]
        for party, blocks in enumerate(self.holdings):
            for b in blocks:
                out[b].append(party)
        return tuple(tuple(h) for h in out)

    def party_indices(self, party: int) -> IntArray:
        """Flat-vector coordinates of ``party``'s part, in block order (ascending)."""
        blocks = np.asarray(self.holdings[party], dtype=np.int64)
        if blocks.size == 0:
            return np.zeros(0, dtype=np.int64)
        sizes = np.asarray(self.block_sizes, dtype=np.int64)[blocks]
        return concat_ranges(self.block_offsets()[blocks], sizes)

    def party_mask(self, party: int) -> npt.NDArray[np.bool_]:
        """Boolean mask over the flat vector: True on ``party``'s part."""
        mask = np.zeros(self.num_params, dtype=bool)
        mask[self.party_indices(party)] = True
        return mask

    def param_fractions(self) -> npt.NDArray[np.float64]:
        """Share of the parameters (coordinates, not blocks) each party holds."""
        sizes = np.asarray(self.block_sizes, dtype=np.int64)
        held = [int(sizes[list(h)].sum()) if h else 0 for h in self.holdings]
        return np.asarray(held, dtype=np.float64) / self.num_params

    def to_layout(self, min_holders: int | None = None) -> BlockLayout:
        """The engine's :class:`secagg.layout.BlockLayout` for part-wise secure aggregation."""
        need = self.min_holders if min_holders is None else min_holders
        return BlockLayout(self.block_sizes, self.holdings, min_holders=max(2, need))


def make_blocks(
    num_params: int, layers: Sequence[tuple[str, int, int]], unit: str, block_size: int = 16
) -> tuple[int, ...]:
    """Block sizes of the flat vector at granularity ``unit`` (see module docstring)."""
    if num_params < 1:
        raise ValueError(f"num_params must be positive, got {num_params}")
    if layers:
        _check_layers(num_params, layers)
    if unit == "element":
        return (1,) * num_params
    if unit == "block":
        if block_size < 1:
            raise ValueError(f"block_size must be positive, got {block_size}")
        full, rest = divmod(num_params, block_size)
        return (block_size,) * full + ((rest,) if rest else ())
    if unit == "layer":
        if not layers:
            raise ValueError("unit='layer' needs the model's parameter layers")
        return tuple(stop - start for _, start, stop in layers)
    raise ValueError(f"unknown part unit {unit!r}; use one of {UNITS}")


def select_parts(
    num_params: int,
    layers: Sequence[tuple[str, int, int]],
    parties: int,
    download_fraction: float,
    unit: str = "block",
    block_size: int = 16,
    min_holders: int = 3,
) -> PartSelection:
    """Draw every party's random part (CSPRNG) with the 0-or->=``min_holders`` guarantee.

    Each party first gets ``max(1, round(download_fraction * num_blocks))`` distinct blocks,
    uniformly at random and independently of the other parties; then thin blocks are repaired
    by adding random extra holders (module docstring). With ``download_fraction=1`` every party
    holds every block.
    """
    if parties < 1:
        raise ValueError(f"parties must be at least 1, got {parties}")
    if min_holders < 1:
        raise ValueError(f"min_holders must be at least 1, got {min_holders}")
    if parties < min_holders:
        raise ValueError(
            f"{parties} parties cannot give every selected block min_holders={min_holders} holders"
        )
    if not (0.0 < download_fraction <= 1.0):
        raise ValueError(f"download_fraction must be in (0, 1], got {download_fraction}")
    sizes = make_blocks(num_params, layers, unit, block_size)
    nb = len(sizes)
    per_party = min(nb, max(1, round(download_fraction * nb)))
    held = [_random_subset(nb, per_party) for _ in range(parties)]
    _repair(held, nb, min_holders)
    return PartSelection(
        block_sizes=sizes,
        holdings=tuple(tuple(h.tolist()) for h in held),
        unit=unit,
        min_holders=min_holders,
    )


def _random_subset(n: int, k: int) -> IntArray:
    """A uniformly random k-subset of range(n), sorted, from the CSPRNG.

    Sorting by independent uniform 64-bit keys is a uniform random permutation up to key
    collisions (probability below n^2 / 2^65, negligible), and argpartition makes it O(n).
    """
    if k >= n:
        return np.arange(n, dtype=np.int64)
    keys = rng.random_words(n, np.uint64)
    return np.sort(np.argpartition(keys, k - 1)[:k]).astype(np.int64)


def _repair(held: list[IntArray], nb: int, min_holders: int) -> None:
    """Give every block with 1..min_holders-1 holders random extra holders, in place."""
    parties = len(held)
    counts = np.bincount(np.concatenate(held), minlength=nb)
    thin = np.flatnonzero((counts > 0) & (counts < min_holders))
    if thin.size == 0:
        return
    need = min_holders - counts[thin]
    added: list[list[IntArray]] = [[] for _ in range(parties)]
    chunk = max(1, _REPAIR_CHUNK_WORDS // parties)
    for lo in range(0, thin.size, chunk):
        blocks, want = thin[lo : lo + chunk], need[lo : lo + chunk]
        member = np.stack([np.isin(blocks, h, assume_unique=True) for h in held], axis=1)
        # Random keys; current holders get keys above every non-holder's, so the `want`
        # smallest keys of a row are `want` uniformly random non-holders of that block.
        keys = rng.random_words(blocks.size * parties, np.uint64).reshape(blocks.size, parties)
        keys >>= np.uint64(1)
        keys[member] = np.iinfo(np.uint64).max
        ranked = np.argsort(keys, axis=1, kind="stable")
        take = np.arange(parties)[None, :] < want[:, None]
        rows, cols = np.nonzero(take)
        new_party = ranked[rows, cols]
        for p in np.unique(new_party):
            added[p].append(blocks[rows[new_party == p]])
    for p in range(parties):
        if added[p]:
            held[p] = np.union1d(held[p], np.concatenate(added[p])).astype(np.int64)


def _check_layers(num_params: int, layers: Sequence[tuple[str, int, int]]) -> None:
    """The layers must tile the flat vector in order: [0, a), [a, b), ..., [y, num_params)."""
    position = 0
    for name, start, stop in layers:
        if start != position or stop <= start:
            raise ValueError(
                f"layer {name!r} spans [{start}, {stop}); expected a non-empty span from {position}"
            )
        position = stop
    if position != num_params:
        raise ValueError(f"layers cover {position} parameters, the model has {num_params}")


def expected_fraction(parties: int, download_fraction: float, min_holders: int) -> float:
    """Approximate realized block fraction per party after repair (for reports and tests).

    A block's holder count is Binomial(parties, f); counts 1..m-1 are raised to m.
    """
    f = download_fraction
    mean = parties * f
    for c in range(1, min_holders):
        mean += (min_holders - c) * math.comb(parties, c) * f**c * (1 - f) ** (parties - c)
    return mean / parties

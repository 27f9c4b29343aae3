"""Aggregating the parties' part updates: in the clear, or with part-wise secure aggregation.

Both paths compute the same thing, per model coordinate i: the sum of the surviving holders'
(clipped) changes, how many surviving holders i's block has, and, with a count channel, how many
of them actually uploaded i. Secure aggregation changes only the encoding (fixed point in
Z_(2^B)) and what the server sees (sums per block, never a party's values).

The count channel rides in the same masked vector: every value block b has a twin block
``num_blocks + b`` with the same holders, carrying 0/1 "uploaded" flags (ARCHITECTURE.md: the
``mean_over_uploaders`` rule needs the counts aggregated securely alongside the values).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from protocols.parameter_parts.selection import PartSelection
from secagg import encoding, graph
from secagg.config import RoundConfig
from secagg.crypto import rng
from secagg.layout import BlockLayout
from secagg.sim import DropoutScript, aggregate_in_memory

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class PartUpdate:
    """One party's upload: its change on its part (zeros where not uploaded).

    Attributes:
        values: the change, concatenated over the party's blocks in block order.
        uploaded: which of those coordinates the upload policy kept.
    """

    values: FloatArray
    uploaded: npt.NDArray[np.bool_]


@dataclass
class AggregateOutcome:
    """What the server learns from one round (per model coordinate)."""

    sums: FloatArray
    holders: IntArray
    uploaders: IntArray | None
    survivors: tuple[int, ...]
    upload_bytes: dict[int, int] = field(default_factory=dict)
    download_bytes: dict[int, int] = field(default_factory=dict)
    aborted: str | None = None
    #: Bytes of the update itself (the masked vector, or the plaintext values): these scale
    #: with the party's part; the rest of ``upload_bytes`` is per-neighbour key exchange.
    payload_bytes: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SecureSettings:
    """Encoding and protocol settings of the secure path."""

    clip: float = 1.0
    value_bits: int = 20
    corruption_rate: float = 0.05
    active: bool = False


def _coordinate_holders(selection: PartSelection, survivors: set[int]) -> IntArray:
    counts = np.zeros(len(selection.block_sizes), dtype=np.int64)
    for u in survivors:
        counts[list(selection.holdings[u])] += 1
    return np.repeat(counts, selection.block_sizes)


def model_download_bytes(selection: PartSelection, party: int) -> int:
    """The server sends the party its part: float32 values plus the block ids."""
    blocks = selection.holdings[party]
    return 4 * sum(selection.block_sizes[b] for b in blocks) + 4 * len(blocks)


def plain_upload_bytes(update: PartUpdate) -> int:
    """A plaintext upload: all values as float32, or (bitmap or indices) + the kept values."""
    kept = int(update.uploaded.sum())
    if kept == update.values.size:
        return 4 * kept
    return min(8 * kept, (update.values.size + 7) // 8 + 4 * kept)


def aggregate_plain(
    selection: PartSelection,
    updates: dict[int, PartUpdate],
    dropped: set[int],
    count_channel: bool,
) -> AggregateOutcome:
    """The server sums what the surviving parties sent in the clear (the no-privacy baseline)."""
    dim = int(sum(selection.block_sizes))
    sums = np.zeros(dim, dtype=np.float64)
    uploaders = np.zeros(dim, dtype=np.int64)
    survivors = {u for u in updates if u not in dropped}
    for u in survivors:
        where = selection.party_indices(u)
        sums[where] += np.where(updates[u].uploaded, updates[u].values, 0.0)
        uploaders[where] += updates[u].uploaded
    uploads = {u: plain_upload_bytes(updates[u]) if u in survivors else 0 for u in updates}
    return AggregateOutcome(
        sums,
        _coordinate_holders(selection, survivors),
        uploaders if count_channel else None,
        tuple(sorted(survivors)),
        uploads,
        {u: model_download_bytes(selection, u) for u in updates},
        payload_bytes=dict(uploads),
    )


def aggregate_secure(
    selection: PartSelection,
    updates: dict[int, PartUpdate],
    dropped: set[int],
    count_channel: bool,
    settings: SecureSettings,
    round_index: int,
    min_holders: int,
) -> AggregateOutcome:
    """Part-wise secure aggregation among the parties in ``updates`` (complete graph: the
    cross-silo case; ``dropped`` parties vanish after ShareKeys, before their masked input)."""
    n = len(selection.holdings)
    nb = len(selection.block_sizes)
    sizes = tuple(selection.block_sizes)
    holdings = selection.holdings
    if count_channel:
        sizes = sizes + sizes
        holdings = tuple(h + tuple(nb + b for b in h) for h in holdings)
    layout = BlockLayout(sizes, holdings, min_holders=min_holders)
    bits = encoding.choose_modulus_bits(settings.value_bits, n)
    encoder = encoding.FixedPointEncoder(settings.clip, settings.value_bits, bits, n)
    expected_dropout = max(0.05, len(dropped) / max(n, 1))
    params = graph.complete_parameters(n, min(expected_dropout, 0.3), settings.corruption_rate)
    config = RoundConfig(
        session_id=rng.token_bytes(16),
        round_index=round_index,
        graph=graph.complete_graph(n),
        threshold=params.t,
        dim=layout.dim,
        modulus_bits=bits,
        layout=layout,
    )
    inputs = {}
    for u, update in updates.items():
        words = encoder.encode(np.where(update.uploaded, update.values, 0.0))
        if count_channel:
            flags = update.uploaded.astype(words.dtype)
            words = np.concatenate([words, flags])
        inputs[u] = words
    script = DropoutScript({u: "masked_input" for u in dropped})
    outcome = aggregate_in_memory(config, inputs, script)
    result = outcome.result
    dim = int(sum(selection.block_sizes))
    total = encoding.from_ring(result.total, bits)
    sums = total[:dim].astype(np.float64) / encoder.scale
    uploaders = total[dim:].astype(np.int64) if count_channel else None
    holders = np.repeat(
        np.asarray(result.block_survivors[:nb], dtype=np.int64), selection.block_sizes
    )
    downloads = {
        u: outcome.download_bytes.get(u, 0) + model_download_bytes(selection, u) for u in updates
    }
    return AggregateOutcome(
        sums,
        holders,
        uploaders,
        result.survivors,
        dict(outcome.upload_bytes),
        downloads,
        payload_bytes=dict(outcome.masked_input_bytes),
    )

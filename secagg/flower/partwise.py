"""Part-wise secure aggregation over Flower's Grid (the random parameter-part protocol).

Each node holds its own random part of the model this round (a set of blocks) and gets its own
message with that part: Flower's message API sends per-node content. The node trains, and its
ClientApp replies with its change on the part in the ArrayRecord ``"secagg.update"``
(``values``, and ``uploaded`` flags with a count channel); :func:`secaggplus_mod
<secagg.flower.secaggplus_mod>` encodes and masks it. The server learns, per block, only the sum
over that block's surviving holders (ARCHITECTURE.md, "Part-wise secure aggregation"), and the
engine refuses to reveal any block with fewer than ``min_holders`` surviving holders.

The graph is complete among the round's nodes (the cross-silo case; the simple safe choice for
part-wise masking, where a sparse graph could leave a block's holder without a masked neighbour
that also holds the block).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from secagg import encoding
from secagg import graph as graphs
from secagg.config import RoundConfig
from secagg.crypto import rng
from secagg.errors import ConfigError
from secagg.flower.driver import EngineRound, RoundReport
from secagg.flower.mod import FIXED_POINT, UPDATE_RECORD
from secagg.layout import BlockLayout

try:
    from flwr.app import RecordDict
    from flwr.serverapp.grid import Grid
except ImportError as exc:  # pragma: no cover
    raise ImportError("secagg.flower needs the 'flower' extra") from exc

__all__ = ["UPDATE_RECORD", "PartwiseResult", "partwise_aggregate"]


@dataclass
class PartwiseResult:
    """What the server learns from one part-wise round, per model coordinate.

    Attributes:
        sums: sum of the surviving holders' (clipped) changes.
        holders: surviving holders of the coordinate's block.
        uploaders: with a count channel, how many of them uploaded the coordinate.
        report: survivors, drops, refusals and stage times, by node id.
    """

    sums: npt.NDArray[np.float64]
    holders: npt.NDArray[np.int64]
    uploaders: npt.NDArray[np.int64] | None
    report: RoundReport


def partwise_aggregate(
    grid: Grid,
    block_sizes: Sequence[int],
    holdings: Mapping[int, Sequence[int]],
    contents: Mapping[int, RecordDict],
    *,
    round_index: int,
    clip: float,
    value_bits: int = 20,
    min_holders: int = 3,
    count_channel: bool = False,
    threshold: int | None = None,
    dropout_rate: float = 0.1,
    corruption_rate: float = 0.05,
    timeout: float | None = None,
    hide_metrics: bool = False,
) -> PartwiseResult:
    """One round of part-wise secure aggregation among the nodes of ``holdings``.

    Args:
        grid: Flower's Grid.
        block_sizes: coordinates per block of the flat model vector.
        holdings: node id -> the sorted blocks it holds this round.
        contents: node id -> the content of its training message (its part, its settings).
        round_index: the training round (bound into every key and mask).
        clip: values are clipped to [-clip, clip] and encoded with ``value_bits`` bits.
        min_holders: no block sum over fewer surviving holders is ever revealed.
        count_channel: also sum 0/1 "uploaded" flags securely (``mean_over_uploaders``).
        threshold: Shamir threshold; default from (dropout_rate, corruption_rate).
        timeout: seconds per stage (None: the default stage timeout).
        hide_metrics: nodes drop their MetricRecords from the masked-vector reply.

    Raises:
        ConfigError: invalid layout or no secure threshold for this cohort.
        AbortedError: too few survivors (nothing is revealed).
    """
    node_ids = sorted(holdings)
    n = len(node_ids)
    if n < 3:
        raise ConfigError(f"part-wise aggregation needs at least 3 nodes, got {n}")
    nb = len(block_sizes)
    sizes = tuple(int(s) for s in block_sizes)
    held = tuple(tuple(int(b) for b in holdings[nid]) for nid in node_ids)
    if count_channel:
        # Each value block b has a twin block nb + b with the same holders carrying the flags.
        sizes = sizes + sizes
        held = tuple(h + tuple(nb + b for b in h) for h in held)
    layout = BlockLayout(sizes, held, min_holders=min_holders)
    if threshold is None:
        try:
            threshold = graphs.complete_parameters(n, dropout_rate, corruption_rate).t
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    bits = encoding.choose_modulus_bits(value_bits, n)
    config = RoundConfig(
        session_id=rng.token_bytes(16),
        round_index=round_index,
        graph=graphs.complete_graph(n),
        threshold=threshold,
        dim=layout.dim,
        modulus_bits=bits,
        layout=layout,
    )
    meta = {
        "encoding": FIXED_POINT,
        "clip": float(clip),
        "value_bits": int(value_bits),
        "count_channel": bool(count_channel),
        "hide_metrics": bool(hide_metrics),
    }
    report = RoundReport(round=round_index)
    result = EngineRound(
        grid,
        config,
        node_ids,
        meta,
        timeout=timeout,
        group_id=str(round_index),
        collect_content=lambda nid: contents[nid],
        report=report,
    ).run()
    encoder = encoding.FixedPointEncoder(clip, value_bits, bits, n)
    dim = int(sum(block_sizes))
    total = encoding.from_ring(result.total, bits)
    sums = total[:dim].astype(np.float64) / encoder.scale
    uploaders = total[dim:].astype(np.int64) if count_channel else None
    holders = np.repeat(
        np.asarray(result.block_survivors[:nb], dtype=np.int64), np.asarray(block_sizes)
    )
    return PartwiseResult(sums, holders, uploaders, report)

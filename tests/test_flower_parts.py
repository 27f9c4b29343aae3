"""Part-wise secure aggregation over Flower's Grid: each node its own part, its own message."""

from __future__ import annotations

import logging

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from secagg.errors import AbortedError
from secagg.flower import secaggplus_mod
from secagg.flower.inprocess import InProcessGrid
from secagg.flower.partwise import UPDATE_RECORD, partwise_aggregate

logging.getLogger("flwr").setLevel(logging.ERROR)

BLOCKS = (4, 4, 3, 5, 2)
CLIP = 1.0


def setup(n: int, seed: int) -> tuple[list[int], dict[int, tuple[int, ...]], dict[int, np.ndarray]]:
    gen = np.random.default_rng(seed)
    ids = [10 + 3 * i for i in range(n)]
    holdings = {}
    for i, nid in enumerate(ids):
        # Every block gets >= 3 holders: node i holds blocks i, i+1, i+2 (mod 5).
        holdings[nid] = tuple(sorted({i % 5, (i + 1) % 5, (i + 2) % 5}))
    updates = {
        nid: gen.uniform(-1.5, 1.5, sum(BLOCKS[b] for b in holdings[nid])) for nid in ids
    }
    return ids, holdings, updates


def app_for(updates: dict[int, np.ndarray], seen_parts: dict[int, np.ndarray]) -> ClientApp:
    app = ClientApp(mods=[secaggplus_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        nid = context.node_id
        seen_parts[nid] = msg.content.array_records["part"]["values"].numpy()
        values = updates[nid]
        flags = (np.abs(values) > 0.5).astype(np.uint8)
        record = ArrayRecord({"values": Array(values), "uploaded": Array(flags)})
        return Message(RecordDict({UPDATE_RECORD: record}), reply_to=msg)

    return app


def contents_for(holdings: dict[int, tuple[int, ...]]) -> dict[int, RecordDict]:
    offsets = np.concatenate([[0], np.cumsum(BLOCKS)])
    model = np.arange(offsets[-1], dtype=np.float64)
    out = {}
    for nid, blocks in holdings.items():
        part = np.concatenate([model[offsets[b] : offsets[b + 1]] for b in blocks])
        out[nid] = RecordDict(
            {
                "part": ArrayRecord({"values": Array(part)}),
                "train": ConfigRecord({"blocks": list(blocks)}),
            }
        )
    return out


def plain(
    holdings: dict[int, tuple[int, ...]], updates: dict[int, np.ndarray], survivors: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    offsets = np.concatenate([[0], np.cumsum(BLOCKS)])
    sums = np.zeros(offsets[-1])
    holders = np.zeros(offsets[-1], dtype=np.int64)
    uploaders = np.zeros(offsets[-1], dtype=np.int64)
    for nid in survivors:
        pos = np.concatenate([np.arange(offsets[b], offsets[b + 1]) for b in holdings[nid]])
        clipped = np.clip(updates[nid], -CLIP, CLIP)
        sums[pos] += clipped
        holders[pos] += 1
        uploaders[pos] += np.abs(updates[nid]) > 0.5
    return sums, holders, uploaders


@pytest.mark.parametrize("drop_stage", [None, "share_keys", "collect_masked_vectors"])
def test_each_node_gets_its_own_part_and_the_server_only_block_sums(drop_stage: str | None) -> None:
    ids, holdings, updates = setup(10, seed=1)
    seen: dict[int, np.ndarray] = {}
    drops = {ids[4]: drop_stage} if drop_stage else {}
    grid = InProcessGrid(app_for(updates, seen), ids, drops=drops)
    result = partwise_aggregate(
        grid,
        BLOCKS,
        holdings,
        contents_for(holdings),
        round_index=3,
        clip=CLIP,
        min_holders=3,
        count_channel=True,
        threshold=4,
    )
    contents = contents_for(holdings)
    for nid in seen:  # every node saw exactly its own part
        sent = contents[nid].array_records["part"]["values"].numpy()
        np.testing.assert_array_equal(seen[nid], sent)
    survivors = result.report.survivors
    assert result.dp is None  # DP off: the fixed-point path, nothing noised
    assert set(result.report.dropped) == set(drops)
    sums, holders, uploaders = plain(holdings, updates, survivors)
    np.testing.assert_array_equal(result.holders, holders)
    assert result.uploaders is not None
    np.testing.assert_array_equal(result.uploaders, uploaders)
    # Fixed point with 20 bits: one rounding step 1/(2^19 - 1) per summand.
    assert np.max(np.abs(result.sums - sums)) <= len(survivors) / (2**19 - 1) + 1e-12


def test_a_block_left_with_too_few_holders_is_never_revealed() -> None:
    ids, holdings, updates = setup(6, seed=2)
    # Block 0 is held by nodes 0, 3, 4 (i, i+1, i+2 mod 5 with i = 0, 3, 4): drop two of them.
    drops = {ids[0]: "collect_masked_vectors", ids[3]: "collect_masked_vectors"}
    grid = InProcessGrid(app_for(updates, {}), ids, drops=drops)
    with pytest.raises(AbortedError, match="min_holders"):
        partwise_aggregate(
            grid, BLOCKS, holdings, contents_for(holdings), round_index=1, clip=CLIP, threshold=2
        )

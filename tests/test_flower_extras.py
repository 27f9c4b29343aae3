"""The drop-in's keyword extras of issue 10: part-wise layouts, securely aggregated metrics, and
a DP accountant across rounds, through Flower's real types.

Every round runs Flower's own ``DefaultWorkflow`` and ``ClientApp`` over ``InProcessGrid``
(protobuf on every message and node context), as tests/test_flower_dropin.py does. Expected
values are computed independently from the inputs: weighted means over the surviving nodes
(part-wise: over the surviving holders of each block), within Flower's quantisation bound.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")

import flwr.compat.common.recorddict_compat as compat
from flwr.app import Context, Message
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays, serde
from flwr.server.strategy import FedAvg

from secagg import messages as wire
from secagg.config import RoundConfig
from secagg.dp.mechanisms import DDGaussParams
from secagg.errors import AbortedError, ConfigError, RemoteProtocolError
from secagg.flower import (
    ClientPolicy,
    FlowerQuantizer,
    PartwiseOptions,
    PrivacyBudgetError,
    SecAggPlusWorkflow,
    UpdateLayout,
    _codec,
    _compat,
    make_secaggplus_mod,
    records,
    secaggplus_mod,
)
from secagg.flower.inprocess import InProcessGrid, run_default_workflow, stage_of

SHAPES = [(6, 5), (7,)]
NUM_PARAMS = 37
CLIP = 8.0
Q = 4194304
MAX_WEIGHT = 1000.0


class Nodes:
    """n nodes with float parameters, example counts and two private fit metrics."""

    def __init__(self, n: int, seed: int, scale: float = 1.0) -> None:
        gen = np.random.default_rng(seed)
        self.ids = sorted({int(x) for x in gen.integers(1, 2**62, size=n)})
        self.inputs = {
            nid: [gen.uniform(-scale, scale, s) for s in SHAPES] for nid in self.ids
        }
        self.weights = {nid: int(gen.integers(5, 200)) for nid in self.ids}
        self.metrics = {
            nid: {
                "accuracy": float(gen.uniform(0.5, 0.95)),
                "loss": float(gen.uniform(0.2, 3.0)),
                "epochs": 2,
            }
            for nid in self.ids
        }

    def app(self, mod: Any = secaggplus_mod) -> ClientApp:
        inputs, weights, metrics = self.inputs, self.weights, self.metrics

        def client_fn(context: Context) -> Any:
            class Node(NumPyClient):  # type: ignore[misc]
                def fit(self, parameters: Any, config: Any) -> Any:
                    nid = context.node_id
                    return inputs[nid], weights[nid], dict(metrics[nid])

            return Node().to_client()

        return ClientApp(client_fn=client_fn, mods=[mod])

    def flat(self, nid: int) -> np.ndarray:
        return np.concatenate([a.ravel() for a in self.inputs[nid]])

    def q_weight(self, nid: int) -> int:
        """Flower's quantised weight: the mean Flower (and we) compute is weighted by it."""
        return round(self.weights[nid] / MAX_WEIGHT * Q)


def run(
    nodes: Nodes,
    workflow: Any,
    *,
    initial: list[np.ndarray] | None = None,
    rounds: int = 1,
    app: Any = None,
    drops: Mapping[int, str] | None = None,
    to_node: Callable[[Message], Message | None] | None = None,
    to_server: Callable[[Message], Message | None] | None = None,
    strategy: Any = None,
) -> tuple[list[np.ndarray], Any, InProcessGrid]:
    grid = InProcessGrid(
        app if app is not None else nodes.app(),
        nodes.ids,
        drops=drops,
        to_node=to_node,
        to_server=to_server,
    )
    start = initial if initial is not None else [np.zeros(s) for s in SHAPES]
    context = run_default_workflow(
        grid, workflow, initial=start, num_rounds=rounds, strategy=strategy
    )
    params = compat.arrayrecord_to_parameters(
        context.state.array_records["parameters"], keep_input=True
    )
    return [np.asarray(a) for a in parameters_to_ndarrays(params)], context, grid


def flat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])


def setup_of(message: Message) -> tuple[RoundConfig, list[int]] | None:
    """The round configuration and node list a setup message carries (what every node sees)."""
    if stage_of(message) != records.SETUP:
        return None
    record = message.content.config_records[records.RECORD_KEY]
    meta = _codec.decode(record["round"])
    return _compat.config_from_bytes(record["config"]), meta["node_ids"]


# -- part-wise layouts --------------------------------------------------------------------------


def test_partwise_result_is_the_weighted_mean_over_each_blocks_surviving_holders() -> None:
    nodes = Nodes(12, seed=1)
    dropped = {nodes.ids[3]: "collect_masked_vectors", nodes.ids[8]: "collect_masked_vectors"}
    uploaded: dict[int, int] = {}

    def watch(message: Message) -> Message:
        record = message.content.config_records.get(records.RECORD_KEY)
        if not message.has_error() and record is not None and "payload" in record:
            msg = wire.decode(record["payload"])
            if isinstance(msg, wire.MaskedInput):
                uploaded[message.metadata.src_node_id] = msg.count
        return message

    opts = PartwiseOptions(block_size=2, upload_fraction=0.4, min_holders=3, margin=2)
    wf = SecAggPlusWorkflow(5, 3, partwise=opts)
    initial = [np.full(s, 0.25) for s in SHAPES]
    got, _, _ = run(nodes, wf, initial=initial, drops=dropped, to_server=watch)
    report = wf.last_report
    assert report is not None and report.error is None, report
    layout, holders = report.layout, report.holders
    assert layout is not None and holders is not None
    assert report.neighbors == len(nodes.ids) - 1  # part-wise rounds use the complete graph
    assert set(report.dropped) == set(dropped)
    party = {nid: i for i, nid in enumerate(report.sampled)}
    survivors = set(report.survivors)
    # Each node masked only its own blocks (plus one weight word per block).
    assert len(uploaded) == len(survivors)
    for nid, count in uploaded.items():
        assert count == layout.input_length(party[nid])
    assert sum(uploaded.values()) < len(uploaded) * layout.dim
    out = flat(got)
    offsets = np.concatenate([[0], np.cumsum([s - 1 for s in layout.block_sizes])])
    for b, block_holders in enumerate(layout.holders):
        lo, hi = int(offsets[b]), int(offsets[b + 1])
        alive = [report.sampled[p] for p in block_holders if report.sampled[p] in survivors]
        assert len(block_holders) == 0 or len(block_holders) >= opts.min_holders + opts.margin
        if not alive:  # nobody left to average: the global value stays
            np.testing.assert_array_equal(out[lo:hi], 0.25)
            assert np.all(holders[lo:hi] == 0)
            continue
        q = np.array([nodes.q_weight(v) for v in alive], dtype=np.float64)
        expected = sum(qv * nodes.flat(v)[lo:hi] for qv, v in zip(q, alive, strict=True))
        expected = expected / q.sum()
        bound = FlowerQuantizer().error_bound(len(alive), int(q.sum())) * 1.01 + 1e-12
        assert np.max(np.abs(out[lo:hi] - expected)) <= bound
        assert np.all(holders[lo:hi] == len(alive))
    # Why hide_num_examples needs weighted=False here: the per-block total weights over holder
    # sets the server drew are a linear system in the nodes' weights.
    assert report.total is not None
    starts = np.concatenate([[0], np.cumsum(layout.block_sizes)])[:-1]
    alive_parties = [p for p, nid in enumerate(report.sampled) if nid in survivors]
    incidence = np.array(
        [[b in layout.holding_sets[p] for p in alive_parties] for b in range(layout.num_blocks)],
        dtype=np.float64,
    )
    # 19 random blocks over 10 survivors: full rank (0 failures in 2,000 draws of this layout).
    assert np.linalg.matrix_rank(incidence) == len(alive_parties)
    solved, *_ = np.linalg.lstsq(incidence, report.total[starts].astype(np.float64))
    recovered = {report.sampled[p]: round(w) for p, w in zip(alive_parties, solved, strict=True)}
    assert recovered == {v: nodes.q_weight(v) for v in recovered}


def test_partwise_plain_mean_hides_the_example_counts() -> None:
    with pytest.raises(ConfigError, match="weighted=False"):
        SecAggPlusWorkflow(5, 3, partwise=PartwiseOptions(), hide_num_examples=True)
    nodes = Nodes(10, seed=11)
    opts = PartwiseOptions(block_size=5, upload_fraction=0.5, margin=2, weighted=False)
    wf = SecAggPlusWorkflow(5, 3, partwise=opts, hide_num_examples=True)
    got, _, _ = run(nodes, wf, drops={nodes.ids[4]: "collect_masked_vectors"})
    report = wf.last_report
    assert report is not None and report.error is None and report.layout is not None
    assert report.total is not None and report.holders is not None
    layout, survivors = report.layout, set(report.survivors)
    starts = np.concatenate([[0], np.cumsum(layout.block_sizes)])
    offsets = np.concatenate([[0], np.cumsum([s - 1 for s in layout.block_sizes])])
    out = flat(got)
    for b, block_holders in enumerate(layout.holders):
        alive = [report.sampled[p] for p in block_holders if report.sampled[p] in survivors]
        # Every weight word is Q: the server learns how many holders survived, nothing more.
        assert int(report.total[starts[b]]) == len(alive) * Q
        if alive:
            lo, hi = int(offsets[b]), int(offsets[b + 1])
            expected = np.mean([nodes.flat(v)[lo:hi] for v in alive], axis=0)
            bound = FlowerQuantizer().error_bound(len(alive), len(alive) * Q) * 1.01
            assert np.max(np.abs(out[lo:hi] - expected)) <= bound


def test_a_block_below_min_holders_is_never_revealed() -> None:
    nodes = Nodes(8, seed=2)
    opts = PartwiseOptions(block_size=5, upload_fraction=0.5, min_holders=3, margin=0)
    wf = SecAggPlusWorkflow(5, 3, partwise=opts)
    grids: list[InProcessGrid] = []
    unmask_requests: list[int] = []

    def drop_a_blocks_holders(message: Message) -> Message:
        seen = setup_of(message)
        if seen is not None and not grids[0].drops:
            config, node_ids = seen
            layout = config.layout
            assert layout is not None
            # The thinnest held block: its holders drop until min_holders - 1 remain.
            held = [b for b, h in enumerate(layout.holders) if h]
            b = min(held, key=lambda x: len(layout.holders[x]))
            for p in layout.holders[b][: len(layout.holders[b]) - (opts.min_holders - 1)]:
                grids[0].drops[node_ids[p]] = records.COLLECT_MASKED_VECTORS
        if stage_of(message) == records.UNMASK:
            unmask_requests.append(message.metadata.dst_node_id)
        return message

    grids.append(InProcessGrid(nodes.app(), nodes.ids, to_node=drop_a_blocks_holders))
    initial = [np.full(s, -0.5) for s in SHAPES]
    context = run_default_workflow(grids[0], wf, initial=initial)
    report = wf.last_report
    assert report is not None and isinstance(report.exception, AbortedError)
    assert "min_holders" in str(report.exception) and report.total is None
    assert 1 <= len(grids[0].drops) <= 4  # enough survivors for the threshold: the block decides
    assert not unmask_requests  # nothing was asked, so nothing was revealed
    params = compat.arrayrecord_to_parameters(
        context.state.array_records["parameters"], keep_input=True
    )
    assert all(np.all(a == -0.5) for a in parameters_to_ndarrays(params))  # model untouched


def test_partwise_honours_the_engines_rules() -> None:
    with pytest.raises(ConfigError, match="min_holders"):
        PartwiseOptions(min_holders=1)
    with pytest.raises(ConfigError, match="upload_fraction"):
        PartwiseOptions(upload_fraction=0.0)
    with pytest.raises(ConfigError, match="block_size"):
        PartwiseOptions(block_size=0)
    # A sum of c colluders and one honest holder is that holder's value: min_holders >= c + 2.
    with pytest.raises(ConfigError, match="tolerated_colluders"):
        SecAggPlusWorkflow(
            5, 3, partwise=PartwiseOptions(min_holders=3), tolerated_colluders=2
        )
    with pytest.raises(ConfigError, match="dp_epsilon"):
        SecAggPlusWorkflow(5, 3, partwise=PartwiseOptions(), dp_epsilon=1.0)
    # More min_holders than sampled nodes: the round is refused before anything is sent.
    nodes = Nodes(4, seed=4)
    wf = SecAggPlusWorkflow(3, 2, partwise=PartwiseOptions(min_holders=5))
    got, _, grid = run(nodes, wf)
    assert wf.last_report is not None and isinstance(wf.last_report.exception, ConfigError)
    assert grid.bytes_to_nodes == 0 and all(np.all(a == 0) for a in got)


def test_node_refuses_part_wise_rounds_below_its_min_holders_policy() -> None:
    nodes = Nodes(8, seed=5)
    strict = make_secaggplus_mod(policy=ClientPolicy(min_holders=4))
    wf = SecAggPlusWorkflow(5, 3, partwise=PartwiseOptions(block_size=8, min_holders=3))
    got, _, _ = run(nodes, wf, app=nodes.app(strict))
    report = wf.last_report
    assert report is not None and report.error is not None
    assert report.refused
    assert all("min_holders 3 < policy minimum 4" in r for r in report.refused.values())
    assert all(np.all(a == 0) for a in got)


def test_update_layout_decode_keeps_blocks_without_survivors_and_checks_the_config() -> None:
    quant = FlowerQuantizer()
    layout = UpdateLayout(10, ("loss",), 10.0, block_size=4)  # model blocks 4, 4, 2 + metrics
    assert layout.engine_block_sizes == (5, 5, 3, 2)
    x = [np.linspace(-1, 1, 10)]
    words = [
        layout.encode(quant, x, 100, {"loss": 1.5}, (0, 2, 3), 40),
        layout.encode(quant, x, 300, {"loss": 2.5}, (0, 2, 3), 40),
    ]
    # Engine vector: blocks 0, 2 and 3 summed over both nodes, block 1 held by nobody.
    total = np.zeros(layout.dim, dtype=np.uint64)
    starts = np.concatenate([[0], np.cumsum(layout.engine_block_sizes)])
    for w in words:
        pos = 0
        for b in (0, 2, 3):
            size = layout.engine_block_sizes[b]
            total[starts[b] : starts[b] + size] += w[pos : pos + size].astype(np.uint64)
            pos += size
    current = np.full(10, 7.0)
    out, metrics, holders = layout.decode(quant, total, 2, (2, 0, 2, 2), current)
    np.testing.assert_array_equal(out[4:8], 7.0)  # no surviving holder: global value kept
    assert holders.tolist() == [2] * 4 + [0] * 4 + [2] * 2
    bound = quant.error_bound(2, 2 * round(0.2 * Q))
    assert np.max(np.abs(out[[0, 1, 2, 3, 8, 9]] - x[0][[0, 1, 2, 3, 8, 9]])) <= bound
    assert abs(metrics["loss"] - (1.5 * 100 + 2.5 * 300) / 400) <= bound * 10.0 / CLIP
    # A node checks the configuration against the layout before it sends anything.
    from secagg.graph import complete_graph
    from secagg.layout import BlockLayout

    good = BlockLayout(layout.engine_block_sizes, ((0, 3), (0, 3), (3,)), min_holders=2)
    bad = BlockLayout(layout.engine_block_sizes, ((0, 3), (0, 3), ()), min_holders=2)
    for blocks, ok in ((good, True), (bad, False)):
        config = RoundConfig(
            session_id=bytes(16),
            round_index=1,
            graph=complete_graph(3),
            threshold=2,
            dim=layout.dim,
            modulus_bits=40,
            layout=blocks,
        )
        if ok:
            layout.check(config)
        else:
            with pytest.raises(RemoteProtocolError, match="metric block"):
                layout.check(config)


# -- metrics aggregated securely --------------------------------------------------------------


def float_patterns(value: float) -> list[bytes]:
    return [struct.pack("<d", value), struct.pack(">d", value), struct.pack("<f", value)]


def test_secure_metrics_give_the_weighted_mean_and_never_travel_in_the_clear() -> None:
    nodes = Nodes(10, seed=6)
    dropped = nodes.ids[2]
    secret = [
        p
        for nid in nodes.ids
        for k in ("accuracy", "loss")
        for p in float_patterns(nodes.metrics[nid][k])
    ]
    leaks: list[str] = []
    clear_metrics: list[dict[str, Any]] = []

    def scan(message: Message) -> Message:
        data = serde.message_to_proto(message).SerializeToString()
        leaks.extend(p.hex() for p in secret if p in data)
        return message

    def scan_reply(message: Message) -> Message:
        if stage_of(message) == records.COLLECT_MASKED_VECTORS and not message.has_error():
            fitres = compat.recorddict_to_fitres(message.content, keep_input=True)
            clear_metrics.append(dict(fitres.metrics))
        return scan(message)

    aggregated_inputs: list[list[tuple[int, dict[str, Any]]]] = []

    def weighted(fit_metrics: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        aggregated_inputs.append(fit_metrics)
        total = sum(n for n, _ in fit_metrics)
        return {
            k: sum(n * m[k] for n, m in fit_metrics) / total
            for k in ("accuracy", "loss")
        }

    strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=10,
        min_available_clients=10,
        initial_parameters=ndarrays_to_parameters([np.zeros(s) for s in SHAPES]),
        fit_metrics_aggregation_fn=weighted,
    )
    wf = SecAggPlusWorkflow(5, 3, secure_metrics=("accuracy", "loss"), metric_range=10.0)
    got, context, _ = run(
        nodes,
        wf,
        drops={dropped: "collect_masked_vectors"},
        to_node=scan,
        to_server=scan_reply,
        strategy=strategy,
    )
    report = wf.last_report
    assert report is not None and report.error is None, report
    survivors = report.survivors
    assert dropped not in survivors and len(survivors) == 9
    q = {v: nodes.q_weight(v) for v in survivors}
    q_total = sum(q.values())
    bound = FlowerQuantizer().error_bound(len(survivors), q_total) * 10.0 / CLIP * 1.01
    for name in ("accuracy", "loss"):
        expected = sum(q[v] * nodes.metrics[v][name] for v in survivors) / q_total
        assert abs(report.metrics[name] - expected) <= bound, (name, report.metrics, expected)
        # aggregate_fit got only the mean (on every survivor), and the history records it.
        assert {m[name] for _, m in aggregated_inputs[0]} == {report.metrics[name]}
        (recorded,) = context.history.metrics_distributed_fit[name]
        assert abs(recorded[1] - report.metrics[name]) < 1e-12
    assert not leaks  # no node's metric value, in any byte order, in any message
    assert len(clear_metrics) == 9 and all(m == {"epochs": 2} for m in clear_metrics)
    # The parameters are still the weighted mean (the metrics ride after them).
    expected_params = sum(q[v] * nodes.flat(v) for v in survivors) / q_total
    bound = FlowerQuantizer().error_bound(9, q_total) * 1.01
    assert np.max(np.abs(flat(got) - expected_params)) <= bound


def test_secure_metrics_in_part_wise_rounds_cover_every_survivor() -> None:
    nodes = Nodes(9, seed=7)
    opts = PartwiseOptions(block_size=6, upload_fraction=0.5, min_holders=3, margin=1)
    wf = SecAggPlusWorkflow(5, 3, partwise=opts, secure_metrics=("loss",), metric_range=5.0)
    run(nodes, wf, drops={nodes.ids[0]: "collect_masked_vectors"})
    report = wf.last_report
    assert report is not None and report.error is None and report.layout is not None
    metric_block = report.layout.num_blocks - 1
    assert all(metric_block in h for h in report.layout.holdings)
    q = {v: nodes.q_weight(v) for v in report.survivors}
    expected = sum(q[v] * nodes.metrics[v]["loss"] for v in q) / sum(q.values())
    bound = FlowerQuantizer().error_bound(len(q), sum(q.values())) * 5.0 / CLIP * 1.01
    assert abs(report.metrics["loss"] - expected) <= bound


def test_a_node_without_a_secure_metric_drops_without_revealing_it() -> None:
    nodes = Nodes(8, seed=8)
    lacking = nodes.ids[5]
    del nodes.metrics[lacking]["loss"]
    wf = SecAggPlusWorkflow(5, 3, secure_metrics=("loss",))
    run(nodes, wf)
    report = wf.last_report
    assert report is not None and report.error is None
    assert set(report.refused) == {lacking} and "'loss'" in report.refused[lacking]
    assert lacking not in report.survivors
    with pytest.raises(ConfigError, match="sequence of metric names"):
        SecAggPlusWorkflow(5, 3, secure_metrics="loss")


# -- DP across rounds ---------------------------------------------------------------------------


def test_dp_accountant_composes_rounds_and_refuses_the_round_past_the_budget() -> None:
    nodes = Nodes(8, seed=9, scale=0.05)
    wf = SecAggPlusWorkflow(5, 3, dp_epsilon=8.0, dp_delta=1e-5, dp_rounds=2)
    per_round: list[tuple[Any, list[np.ndarray], int]] = []
    sends: list[int] = []

    class Counting(InProcessGrid):
        def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> Any:
            sends.append(1)
            return super().send_and_receive(messages, timeout=timeout)

    def recording(grid: Any, context: Any) -> None:
        before = len(sends)
        wf(grid, context)
        params = compat.arrayrecord_to_parameters(
            context.state.array_records["parameters"], keep_input=True
        )
        per_round.append((wf.last_report, parameters_to_ndarrays(params), len(sends) - before))

    grid = Counting(nodes.app(), nodes.ids)
    run_default_workflow(grid, recording, initial=[np.zeros(s) for s in SHAPES], num_rounds=3)
    (r1, _, s1), (r2, p2, s2), (r3, p3, s3) = per_round
    assert r1.error is None and r2.error is None and s1 > 0 and s2 > 0
    assert r1.dp_spent is not None and r2.dp_spent is not None
    # Same cohort, same calibration: two rounds compose to what the calibration targeted.
    params = DDGaussParams.calibrate(8.0, 1e-5, 2, 1.0, 1.0, NUM_PARAMS, 4, 24, max_parties=8)
    assert r1.dp_spent[0] == pytest.approx(params.epsilon(1e-5, steps=1), rel=1e-9)
    assert r2.dp_spent[0] == pytest.approx(params.epsilon(1e-5, steps=2), rel=1e-9)
    assert 0 < r1.dp_spent[0] < r2.dp_spent[0] <= 8.0 * (1 + 1e-9) and r2.dp_spent[1] == 1e-5
    # Round 3 would exceed (8, 1e-5): refused before any message, the model untouched.
    assert isinstance(r3.exception, PrivacyBudgetError) and s3 == 0
    assert "dp_epsilon=8" in str(r3.exception)
    assert r3.dp_spent == r2.dp_spent and wf.accountant.steps == 2
    for a, b in zip(p2, p3, strict=True):
        np.testing.assert_array_equal(a, b)


def test_draw_holdings_gives_every_block_zero_or_min_holders_uniformly() -> None:
    from secagg.flower.workflow import draw_holdings

    counts = np.zeros((6, 10))
    for _ in range(400):
        holdings = draw_holdings(10, 6, 0.3, 4)
        per_block = np.bincount([b for h in holdings for b in h], minlength=10)
        assert np.all((per_block == 0) | (per_block >= 4))
        assert all(len(h) >= 3 and list(h) == sorted(set(h)) for h in holdings)
        for p, h in enumerate(holdings):
            counts[p, list(h)] += 1
    # No party and no block is favoured (repair adds holders uniformly among non-holders):
    # every (party, block) frequency is within 6 standard deviations of their common mean.
    freq = counts / 400
    assert np.max(np.abs(freq - freq.mean())) < 6 * np.sqrt(freq.mean() * (1 - freq.mean()) / 400)
    with pytest.raises(ConfigError, match="min_holders=7"):
        draw_holdings(10, 6, 0.3, 7)

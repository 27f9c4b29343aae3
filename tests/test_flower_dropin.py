"""secagg.flower as a drop-in for Flower 1.42's SecAgg+, through Flower's real types.

Every round runs Flower's own ``DefaultWorkflow`` and ``ClientApp`` (NumPyClient, mods) over
``InProcessGrid``, where every message and every node context crosses Flower's protobuf
serialisation. Results are compared with the plaintext weighted mean of the survivors, within
Flower's quantisation bound.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")

import flwr.compat.common.recorddict_compat as compat
from flwr.app import ConfigRecord, Context, Message
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod as flower_mod
from flwr.clientapp import ClientApp
from flwr.common import parameters_to_ndarrays
from flwr.server.workflow import SecAggPlusWorkflow as FlowerWorkflow

from secagg import messages as wire
from secagg.crypto import keys
from secagg.flower import (
    DEFAULT_STAGE_TIMEOUT,
    ClientPolicy,
    SecAggPlusWorkflow,
    SecAggWorkflow,
    _compat,
    make_secaggplus_mod,
    records,
    secaggplus_mod,
)
from secagg.flower.inprocess import InProcessGrid, run_default_workflow

logging.getLogger("flwr").setLevel(logging.ERROR)

SHAPES = [(6, 5), (7,)]
CLIP = 8.0
Q = 4194304


class Cohort:
    """n nodes with float inputs (several arrays) and example counts, reproducible."""

    def __init__(self, n: int, seed: int = 0, scale: float = 1.0) -> None:
        gen = np.random.default_rng(seed)
        self.ids = sorted({int(x) for x in gen.integers(1, 2**62, size=n)})
        self.inputs = {
            nid: [gen.uniform(-scale, scale, s).astype(np.float32) for s in SHAPES]
            for nid in self.ids
        }
        self.weights = {nid: int(gen.integers(5, 200)) for nid in self.ids}

    def client_fn(self, context: Context) -> Any:
        inputs, weights = self.inputs, self.weights

        class Node(NumPyClient):  # type: ignore[misc]
            def fit(self, parameters: Any, config: Any) -> Any:
                nid = context.node_id
                return inputs[nid], weights[nid], {"loss": 0.5}

        return Node().to_client()

    def app(self, mod: Any = secaggplus_mod) -> ClientApp:
        return ClientApp(client_fn=self.client_fn, mods=[mod])

    def expected(self, survivors: tuple[int, ...] | list[int]) -> list[np.ndarray]:
        total = sum(self.weights[v] for v in survivors)
        return [
            sum(self.weights[v] * self.inputs[v][i].astype(np.float64) for v in survivors) / total
            for i in range(len(SHAPES))
        ]

    def bound(self, survivors: tuple[int, ...] | list[int], max_weight: float = 1000.0) -> float:
        """Flower's quantisation error: one step 2c/Q per summand, over the total weight."""
        q_total = sum(round(self.weights[v] / max_weight * Q) for v in survivors)
        return len(survivors) * 2 * CLIP / q_total * 1.01 + 1e-9


def run(
    cohort: Cohort,
    workflow: Any,
    *,
    app: Any = None,
    drops: Mapping[int, str] | None = None,
    to_node: Callable[[Message], Message | None] | None = None,
    to_server: Callable[[Message], Message | None] | None = None,
    rounds: int = 1,
) -> tuple[list[np.ndarray], InProcessGrid]:
    grid = InProcessGrid(
        app if app is not None else cohort.app(),
        cohort.ids,
        drops=drops,
        to_node=to_node,
        to_server=to_server,
    )
    initial = [np.zeros(s, dtype=np.float32) for s in SHAPES]
    context = run_default_workflow(grid, workflow, initial=initial, num_rounds=rounds)
    params = compat.arrayrecord_to_parameters(
        context.state.array_records["parameters"], keep_input=True
    )
    return parameters_to_ndarrays(params), grid


def assert_mean(cohort: Cohort, got: list[np.ndarray], survivors: tuple[int, ...]) -> None:
    expected = cohort.expected(survivors)
    bound = cohort.bound(survivors)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        assert np.max(np.abs(g - e)) <= bound, (np.max(np.abs(g - e)), bound)


def payload_of(message: Message) -> wire.AnyMessage | None:
    record = message.content.config_records.get(records.RECORD_KEY)
    if record is None or not isinstance(record.get("payload"), bytes):
        return None
    return wire.decode(record["payload"])


def with_payload(message: Message, payload: bytes) -> Message:
    record = message.content.config_records[records.RECORD_KEY]
    message.content.config_records[records.RECORD_KEY] = ConfigRecord(
        {"stage": record["stage"], "payload": payload}
    )
    return message


# -- the API is Flower's -----------------------------------------------------------------------


def test_constructor_signatures_extend_flowers_exactly() -> None:
    ours = list(inspect.signature(SecAggPlusWorkflow.__init__).parameters.values())
    theirs = list(inspect.signature(FlowerWorkflow.__init__).parameters.values())
    for a, b in zip(ours, theirs, strict=False):
        assert (a.name, a.kind, a.default) == (b.name, b.kind, b.default)
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in ours[len(theirs) :])
    from flwr.server.workflow import SecAggWorkflow as FlowerSecAgg

    ours2 = list(inspect.signature(SecAggWorkflow.__init__).parameters.values())
    theirs2 = list(inspect.signature(FlowerSecAgg.__init__).parameters.values())
    for a, b in zip(ours2, theirs2, strict=False):
        assert (a.name, a.kind, a.default) == (b.name, b.kind, b.default)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_shares": 2, "reconstruction_threshold": 2}, "greater than 2"),
        ({"num_shares": 5, "reconstruction_threshold": 5}, "less than num_shares"),
        ({"num_shares": 5, "reconstruction_threshold": 1.5}, r"\(0, 1\]"),
        ({"num_shares": 5, "reconstruction_threshold": 3, "modulus_range": 3 << 30}, "power"),
        ({"num_shares": 5, "reconstruction_threshold": 3, "max_weight": 0.0}, "max_weight"),
        ({"num_shares": 5, "reconstruction_threshold": 3, "timeout": -1.0}, "timeout"),
        ({"num_shares": 5, "reconstruction_threshold": 3, "active": True}, "verify_keys"),
    ],
)
def test_bad_parameters_are_refused_like_flower(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SecAggPlusWorkflow(**kwargs)


def test_threshold_mapping_keeps_t_and_adds_the_own_share_as_a_neighbour() -> None:
    g, t = SecAggPlusWorkflow(7, 4).resolve(40)
    # Flower: the node + 6 neighbours, t counts the node's own share. Ours: 8 neighbours, t=4
    # neighbour shares: colluders need as many shares as in Flower, and any 3 drops (Flower's
    # tolerance, num_shares - t) still leave every secret recoverable.
    assert (g.degree, t) == (8, 4)
    assert g.degree - 3 >= t + 1
    g, t = SecAggPlusWorkflow(0.5, 0.5).resolve(20)  # Flower: 10 -> 11 shares, t = round(5.5)
    assert (g.degree, t) == (12, 6)
    g, t = SecAggWorkflow(0.6).resolve(12)
    assert g.kind == "complete" and t == 7


def test_default_timeout_is_finite() -> None:
    seen: list[float | None] = []

    class Recording(InProcessGrid):
        def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> Any:
            seen.append(timeout)
            return super().send_and_receive(messages, timeout=timeout)

    cohort = Cohort(6, seed=3)
    grid = Recording(cohort.app(), cohort.ids)
    run_default_workflow(grid, SecAggPlusWorkflow(3, 2), initial=[np.zeros(s) for s in SHAPES])
    assert seen and all(t == DEFAULT_STAGE_TIMEOUT for t in seen)


# -- correctness and dropouts -----------------------------------------------------------------


def test_weighted_mean_within_quantisation_bound() -> None:
    cohort = Cohort(12, seed=1)
    wf = SecAggPlusWorkflow(5, 3)
    got, grid = run(cohort, wf, rounds=2)
    report = wf.last_report
    assert report is not None and report.error is None
    assert report.survivors == tuple(cohort.ids) and not report.refused
    assert_mean(cohort, got, report.survivors)
    assert grid.bytes_to_server > 0


@pytest.mark.parametrize("stage", ["setup", "share_keys", "collect_masked_vectors", "unmask"])
def test_drops_at_every_stage(stage: str) -> None:
    cohort = Cohort(14, seed=2)
    dropped = {cohort.ids[1]: stage, cohort.ids[6]: stage}
    wf = SecAggPlusWorkflow(7, 4)
    got, _ = run(cohort, wf, drops=dropped)
    report = wf.last_report
    assert report is not None and report.error is None, report
    if stage == "unmask":  # their masked vectors arrived: they are in the sum
        assert report.survivors == tuple(cohort.ids)
    else:
        assert set(report.dropped) == set(dropped)
    assert_mean(cohort, got, report.survivors)


def test_mixed_drops_across_stages_on_the_complete_graph() -> None:
    cohort = Cohort(9, seed=4)
    drops = {cohort.ids[0]: "share_keys", cohort.ids[3]: "collect_masked_vectors"}
    wf = SecAggWorkflow(0.5)
    got, _ = run(cohort, wf, drops=drops)
    report = wf.last_report
    assert report is not None and report.error is None and report.neighbors == 8
    assert set(report.dropped) == set(drops)
    assert_mean(cohort, got, report.survivors)


def test_too_many_drops_halt_the_round_and_keep_the_model() -> None:
    cohort = Cohort(8, seed=5)
    drops = {nid: "collect_masked_vectors" for nid in cohort.ids[:6]}
    wf = SecAggPlusWorkflow(5, 3)
    got, _ = run(cohort, wf, drops=drops)
    report = wf.last_report
    assert report is not None and report.error is not None and "Aborted" in report.error
    assert all(np.all(g == 0) for g in got)  # the global model did not move


def test_same_inputs_through_flowers_secaggplus_give_the_same_result() -> None:
    cohort = Cohort(12, seed=6)
    drops = {cohort.ids[4]: "collect_masked_vectors"}
    ours, _ = run(cohort, SecAggPlusWorkflow(5, 3), drops=drops)
    theirs, _ = run(cohort, FlowerWorkflow(5, 3), app=cohort.app(flower_mod), drops=drops)
    survivors = [v for v in cohort.ids if v not in drops]
    bound = cohort.bound(survivors)
    for a, b in zip(ours, theirs, strict=True):
        assert np.max(np.abs(a - b)) <= 2 * bound
    assert_mean(cohort, theirs, tuple(survivors))  # Flower's own result, same bound


def test_drop_right_after_setup_halts_flower_but_not_us() -> None:
    cohort = Cohort(10, seed=7)
    drops = {cohort.ids[2]: "share_keys"}
    theirs, _ = run(cohort, FlowerWorkflow(5, 3), app=cohort.app(flower_mod), drops=drops)
    assert all(np.all(g == 0) for g in theirs)  # Flower halted: the model never moved
    wf = SecAggPlusWorkflow(5, 3)
    ours, _ = run(cohort, wf, drops=drops)
    assert wf.last_report is not None and wf.last_report.error is None
    assert_mean(cohort, ours, wf.last_report.survivors)


def test_num_shares_auto_and_hidden_metadata() -> None:
    cohort = Cohort(16, seed=8)
    seen: list[tuple[int, dict[str, Any]]] = []

    def spy(message: Message) -> Message:
        record = message.content.config_records.get(records.RECORD_KEY)
        if record is not None and record.get("stage") == records.COLLECT_MASKED_VECTORS:
            fitres = compat.recorddict_to_fitres(message.content, keep_input=True)
            seen.append((fitres.num_examples, dict(fitres.metrics)))
            assert not fitres.parameters.tensors  # only the masked vector leaves the node
        return message

    wf = SecAggPlusWorkflow("auto", 0, dropout_rate=0.1, hide_num_examples=True, hide_metrics=True)
    got, _ = run(cohort, wf, to_server=spy)
    report = wf.last_report
    assert report is not None and report.error is None
    assert len(seen) == 16 and all(s == (1, {}) for s in seen)
    # The weights still count: inside the masked vector, not in the clear.
    assert_mean(cohort, got, report.survivors)


def test_active_mode_with_verify_keys_and_a_drop_before_the_consistency_check() -> None:
    cohort = Cohort(10, seed=9)
    pairs = {nid: keys.generate_ed25519() for nid in cohort.ids}
    apps = {nid: cohort.app(make_secaggplus_mod(signing_key=pairs[nid][0])) for nid in cohort.ids}
    wf = SecAggWorkflow(7, active=True, verify_keys={nid: p[1] for nid, p in pairs.items()})
    drops = {cohort.ids[5]: "consistency"}
    got, _ = run(cohort, wf, app=apps, drops=drops)
    report = wf.last_report
    assert report is not None and report.error is None, report
    assert "consistency" in report.stage_seconds
    assert_mean(cohort, got, report.survivors)


def test_active_mode_threshold_below_the_bound_is_refused() -> None:
    wf = SecAggWorkflow(3, active=True, verify_keys={})
    with pytest.raises(ValueError, match="active mode needs 2 t"):
        wf.resolve(10)


# -- a lying server, misbehaving nodes --------------------------------------------------------


def test_lying_server_overlapping_lists_are_refused_by_honest_nodes() -> None:
    cohort = Cohort(8, seed=10)
    target_party = 2
    revealed: list[wire.UnmaskResponse] = []
    partners: list[frozenset[int]] = []

    def lie(message: Message) -> Message:
        record = message.content.config_records.get(records.RECORD_KEY)
        if record is not None and record.get("stage") == records.SETUP and not partners:
            config = _compat.config_from_bytes(record["config"])
            partners.append(frozenset(config.graph.neighbors[target_party]))
        msg = payload_of(message)
        if isinstance(msg, wire.UnmaskRequest):
            # Report the surviving target as dropped too: both its shares would come back.
            dropped = tuple(sorted({*msg.dropped, target_party}))
            forged = dataclasses.replace(msg, dropped=dropped)
            return with_payload(message, wire.encode(forged))
        return message

    def watch(message: Message) -> Message:
        if not message.has_error():
            msg = payload_of(message)
            if isinstance(msg, wire.UnmaskResponse):
                revealed.append(msg)
        return message

    wf = SecAggPlusWorkflow(5, 3)
    got, _ = run(cohort, wf, to_node=lie, to_server=watch)
    report = wf.last_report
    assert report is not None and report.error is not None  # the round could not complete
    # Every node holding shares of the target refused the overlapping lists; the others hold
    # nothing of the target (unmask requests name only the recipient's partners, so a
    # non-partner's answer is its ordinary one). No share of the target ever left a node.
    party = {nid: i for i, nid in enumerate(report.sampled)}
    refusers = {party[nid] for nid in report.refused}
    assert partners and partners[0] <= refusers
    assert all("lists overlap" in why for why in report.refused.values())
    assert all(m.sender not in partners[0] for m in revealed)
    assert all(
        target_party not in m.self_mask_owners and target_party not in m.mask_key_owners
        for m in revealed
    )
    assert all(np.all(g == 0) for g in got)


def test_spoofed_sender_is_that_node_dropping() -> None:
    cohort = Cohort(10, seed=11)
    liar = cohort.ids[3]

    def spoof(message: Message) -> Message:
        if message.metadata.src_node_id == liar and not message.has_error():
            msg = payload_of(message)
            if isinstance(msg, wire.EncryptedShares):
                forged = dataclasses.replace(msg, sender=msg.sender + 1)
                return with_payload(message, wire.encode(forged))
        return message

    wf = SecAggPlusWorkflow(5, 3)
    got, _ = run(cohort, wf, to_server=spoof)
    report = wf.last_report
    assert report is not None and report.error is None
    assert "spoofed sender" in report.refused[liar]
    assert liar in report.dropped
    assert_mean(cohort, got, report.survivors)


@pytest.mark.parametrize("kind", ["garbage", "oversized", "wrong-shape", "no-record"])
def test_malformed_or_oversized_record_is_that_node_dropping(kind: str) -> None:
    cohort = Cohort(10, seed=12)
    bad = cohort.ids[7]

    def corrupt(message: Message) -> Message:
        if message.metadata.src_node_id != bad or message.has_error():
            return message
        msg = payload_of(message)
        if not isinstance(msg, wire.MaskedInput):
            return message
        if kind == "garbage":
            return with_payload(message, b"SAGG" + bytes(100))
        if kind == "oversized":
            return with_payload(message, bytes(50_000_000))
        if kind == "no-record":
            message.content.config_records.pop(records.RECORD_KEY)
            return message
        # A well-formed message the engine must reject: one word short.
        short = dataclasses.replace(
            msg,
            count=msg.count - 1,
            payload=msg.payload[: (msg.count - 1) * msg.modulus_bits // 8],
        )
        return with_payload(message, wire.encode(short))

    wf = SecAggPlusWorkflow(5, 3)
    got, _ = run(cohort, wf, to_server=corrupt)
    report = wf.last_report
    assert report is not None and report.error is None, report
    assert bad in report.refused and bad in report.dropped
    assert_mean(cohort, got, report.survivors)


def test_node_refuses_a_configuration_below_its_policy() -> None:
    cohort = Cohort(10, seed=13)
    strict = set(cohort.ids[:3])
    policy = ClientPolicy(min_threshold=5, min_neighbors=6)
    apps = {
        nid: cohort.app(make_secaggplus_mod(policy=policy) if nid in strict else secaggplus_mod)
        for nid in cohort.ids
    }
    wf = SecAggPlusWorkflow(5, 3)
    got, _ = run(cohort, wf, app=apps)
    report = wf.last_report
    assert report is not None and report.error is None
    assert set(report.refused) == strict
    assert all("refused by this party's policy" in why for why in report.refused.values())
    assert_mean(cohort, got, report.survivors)


def test_node_requiring_active_mode_refuses_a_semi_honest_round() -> None:
    cohort = Cohort(6, seed=14)
    app = cohort.app(make_secaggplus_mod(policy=ClientPolicy(require_active=True)))
    wf = SecAggPlusWorkflow(3, 2)
    run(cohort, wf, app=app)
    report = wf.last_report
    assert report is not None and report.error is not None
    assert all("requires active mode" in why for why in report.refused.values())


# -- mixing with Flower's own halves fails loudly ---------------------------------------------


def test_flowers_server_with_our_mod_fails_loudly() -> None:
    cohort = Cohort(6, seed=15)
    reasons: list[str] = []

    def watch(message: Message) -> Message:
        if message.has_error():
            reasons.append(message.error.reason)
        return message

    got, _ = run(cohort, FlowerWorkflow(3, 2), to_server=watch)
    assert reasons and all("from secagg.flower import SecAggPlusWorkflow" in r for r in reasons)
    assert all(np.all(g == 0) for g in got)


def test_our_server_with_flowers_mod_fails_loudly() -> None:
    cohort = Cohort(6, seed=16)
    wf = SecAggPlusWorkflow(3, 2)
    run(cohort, wf, app=cohort.app(flower_mod))
    report = wf.last_report
    assert report is not None and report.error is not None
    assert len(report.refused) == 6
    assert all("from secagg.flower import secaggplus_mod" in r for r in report.refused.values())


def test_node_state_is_sealed_with_the_nodes_state_key() -> None:
    from flwr.common import serde
    from flwr.proto.message_pb2 import Context as ProtoContext

    from secagg.engine import ClientEngine
    from secagg.errors import SecAggError
    from secagg.flower import _codec
    from secagg.flower._compat import config_from_bytes, engine_load_bytes

    cohort = Cohort(8, seed=17)
    key = bytes(range(32))
    app = cohort.app(make_secaggplus_mod(state_key=key))
    late = cohort.ids[2]
    wf = SecAggPlusWorkflow(5, 3)
    got, grid = run(cohort, wf, app=app, drops={late: "unmask"})
    report = wf.last_report
    assert report is not None and report.error is None
    assert_mean(cohort, got, report.survivors)
    # The late node kept its state after the masked-vector stage: sealed, not readable without
    # the key, and an older counter is refused.
    proto = ProtoContext()
    proto.ParseFromString(grid.contexts[late])
    ctx = serde.context_from_proto(proto)
    state = _codec.decode(ctx.state.config_records[records.STATE_KEY]["blob"])
    config = config_from_bytes(state["config"])
    with pytest.raises(SecAggError):
        engine_load_bytes(
            ClientEngine(config, state["party"]), state["engine"], key=None, min_counter=0
        )
    with pytest.raises(SecAggError):
        engine_load_bytes(
            ClientEngine(config, state["party"]), state["engine"], key=key, min_counter=99
        )
    engine = ClientEngine(config, state["party"])
    engine_load_bytes(engine, state["engine"], key=key, min_counter=state["counter"])
    assert not engine.failed


def test_distributed_dp_round_releases_a_noisy_mean_calibrated_to_the_noise_floor() -> None:
    from secagg.dp.mechanisms import DDGaussParams

    cohort = Cohort(10, seed=18, scale=0.05)
    wf = SecAggPlusWorkflow(5, 3, dp_epsilon=20.0, dp_delta=1e-5, dp_clip=1.0, dp_rounds=1)
    drops = {cohort.ids[0]: "collect_masked_vectors"}
    got, _ = run(cohort, wf, drops=drops)
    report = wf.last_report
    assert report is not None and report.error is None, report
    survivors = report.survivors
    assert len(survivors) == 9
    # Unweighted mean of the (unclipped: norms < 1) inputs, plus noise from the survivors.
    flat = {v: np.concatenate([a.ravel() for a in cohort.inputs[v]]) for v in survivors}
    assert all(np.linalg.norm(x) < 1.0 for x in flat.values())
    expected = np.mean([flat[v].astype(np.float64) for v in survivors], axis=0)
    out = np.concatenate([g.ravel() for g in got])
    params = DDGaussParams.calibrate(20.0, 1e-5, 1, 1.0, 1.0, out.size, 4, 24, max_parties=10)
    # Each survivor's noise (and rounding) in the float domain, summed and averaged.
    std = params.gamma * np.sqrt(len(survivors) * (float(params.sigma2_party) + 0.25))
    err = np.abs(out - expected)
    assert np.max(err) < 7 * std / len(survivors) + 1e-9
    assert np.max(err) > 0  # the release is noisy
    assert params.epsilon(1e-5) <= 20.0 * 1.001


def test_node_requiring_dp_refuses_a_round_without_noise_and_joins_a_dp_round() -> None:
    """make_secaggplus_mod(require_dp=True): a server cannot switch a node's noise off by
    sending a plain round; the same node takes part in a distributed-DP round."""
    cohort = Cohort(6, seed=19, scale=0.05)
    strict = set(cohort.ids[:2])
    apps = {
        nid: cohort.app(make_secaggplus_mod(require_dp=True) if nid in strict else secaggplus_mod)
        for nid in cohort.ids
    }
    plain = SecAggPlusWorkflow(3, 2)
    run(cohort, plain, app=apps)
    report = plain.last_report
    assert report is not None and set(report.refused) == strict
    assert all("distributed DP required" in why for why in report.refused.values())
    noisy = SecAggPlusWorkflow(3, 2, dp_epsilon=20.0, dp_delta=1e-5, dp_clip=1.0, dp_rounds=1)
    run(cohort, noisy, app=apps)
    report = noisy.last_report
    assert report is not None and report.error is None and not report.refused, report
    assert strict <= set(report.survivors)

"""Benchmark Flower's own SecAgg+ implementation (``flwr==1.42.0``), in one process.

Path taken: Flower's real code on both sides, unmodified; only the transport is ours.

* Server: an instance of ``flwr.server.workflow.SecAggPlusWorkflow`` is called as a
  whole (``workflow(grid, context)``), so its own ``setup_stage``,
  ``share_keys_stage``, ``collect_masked_vectors_stage`` and ``unmask_stage`` run,
  with a ``flwr.server.compat.LegacyContext`` holding a real ``FedAvg`` strategy and
  a real ``SimpleClientManager`` (``FedAvg.configure_fit`` samples all ``n`` nodes).
  The only substitute is the ``Grid``: ``_InMemoryGrid.send_and_receive`` hands each
  instruction ``Message`` to the addressed client and returns the replies.
* Client: every party runs Flower's client mod
  ``flwr.client.mod.secaggplus_mod(msg, context, call_next)`` (which itself calls
  ``check_stage``/``check_configs``, then ``_setup`` / ``_share_keys`` /
  ``_collect_masked_vectors`` / ``_unmask`` and (de)serialises its
  ``SecAggPlusState`` into the node's ``Context.state`` every stage, as in
  deployment). ``call_next`` stands in for the user's ClientApp: it returns a
  ``FitRes`` (via ``flwr.compat`` ``fitres_to_recorddict``) carrying that party's
  float32 input vector of length ``dim`` with ``num_examples == max_weight``.
* Dropout: after the share-keys stage, ``round(dropout * n)`` parties (chosen with
  ``seed``) never answer the collect-masked-vectors instruction (they are not run and
  no reply is returned), so the server reconstructs their ``sk1`` and regenerates
  their pairwise masks with each of their neighbours, exactly as its code does.

Timing (``time.perf_counter``, wall clock, single process, nothing else in parallel
except the small ``ThreadPoolExecutor`` Flower's own Shamir code starts):

* ``server_seconds``: wall time of ``workflow(grid, context)`` minus the time spent
  inside ``send_and_receive`` (routing plus the clients' own work), minus the time of
  ``strategy.aggregate_fit`` (FedAvg's legacy averaging of the already-unmasked
  vector, which is not secure-aggregation work; reported apart as
  ``server_strategy_aggregate_seconds``). It does include the workflow's own message
  building, Flower record conversions, and summing/unmasking. Per-stage split in
  ``server_stage_seconds``.
* ``client_seconds``: per party, the sum over its four ``secaggplus_mod`` calls, minus
  the time inside ``call_next`` (the stand-in "training" that builds the FitRes).
  Reported over surviving parties (all four stages); dropped parties (two stages) are
  reported apart. With ``timed_clients=k`` all parties still run but only ``k``
  surviving parties (chosen with ``seed``) are counted.
* Routing: each message's ``RecordDict`` is deep-copied on the way to and from a
  party (standing in for serialisation over the wire, and needed because the
  workflow reuses one content object for all setup messages while the mod pops keys
  from it); this is done outside both timers.

The global model passed to the strategy (and hence in every FitIns) is a single
float, so the server's FitIns construction does not add ``n * dim`` of model
broadcast work that is not part of secure aggregation.

Correctness: the workflow's output (captured at ``aggregate_fit``, before FedAvg)
is the dequantised weighted mean; with equal weights, ``mean * survivors`` is compared
with the float64 sum of the survivors' inputs; the bound is ``survivors`` quantisation
steps (``2 * clipping_range / quantization_range`` each) plus float slack.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import random
import resource
import statistics
import sys
import time
from typing import Any

import numpy as np

MAX_WEIGHT = 1000.0


def _import_flower() -> dict[str, Any]:
    """Import the Flower pieces lazily, so this module imports without flwr."""
    import flwr.compat.common.recorddict_compat as compat
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.client.mod import secaggplus_mod
    from flwr.common import (
        Code,
        FitRes,
        Status,
        ndarrays_to_parameters,
        parameters_to_ndarrays,
    )
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.client_proxy import ClientProxy
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
    from flwr.server.workflow.constant import Key as WorkflowKey
    from flwr.serverapp.grid import Grid
    from flwr.supercore.task_identity import TaskIdentity

    return {
        "compat": compat,
        "ConfigRecord": ConfigRecord,
        "Context": Context,
        "Message": Message,
        "RecordDict": RecordDict,
        "secaggplus_mod": secaggplus_mod,
        "Code": Code,
        "FitRes": FitRes,
        "Status": Status,
        "ndarrays_to_parameters": ndarrays_to_parameters,
        "parameters_to_ndarrays": parameters_to_ndarrays,
        "SUPERLINK_NODE_ID": SUPERLINK_NODE_ID,
        "SimpleClientManager": SimpleClientManager,
        "ClientProxy": ClientProxy,
        "LegacyContext": LegacyContext,
        "FedAvg": FedAvg,
        "SecAggPlusWorkflow": SecAggPlusWorkflow,
        "MAIN_CONFIGS_RECORD": MAIN_CONFIGS_RECORD,
        "MAIN_PARAMS_RECORD": MAIN_PARAMS_RECORD,
        "WorkflowKey": WorkflowKey,
        "Grid": Grid,
        "TaskIdentity": TaskIdentity,
    }


def run_flower_secaggplus(
    n: int,
    dim: int,
    num_shares: int,
    reconstruction_threshold: int,
    dropout: float,
    seed: int = 0,
    clipping_range: float = 8.0,
    quantization_range: int = 4194304,
    modulus_range: int = 4294967296,
    timed_clients: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run one SecAgg+ round of Flower's own code in-process and time it."""
    F = _import_flower()
    compat = F["compat"]
    Message, RecordDict, Context = F["Message"], F["RecordDict"], F["Context"]
    ConfigRecord = F["ConfigRecord"]
    secaggplus_mod = F["secaggplus_mod"]
    FitRes, Status, Code = F["FitRes"], F["Status"], F["Code"]

    # Flower's console handler prints at INFO to stderr; keep it quiet unless asked.
    flwr_logger = logging.getLogger("flwr")
    old_level = flwr_logger.level
    if not progress:
        flwr_logger.setLevel(logging.WARNING)

    def say(msg: str) -> None:
        if progress:
            print(f"[flower-secagg+] {msg}", file=sys.stderr, flush=True)

    # Process-wide task identity Flower's Message() reads (what its legacy start_grid
    # sets for a ServerApp): this process acts as the SuperLink-side ServerApp task.
    F["TaskIdentity"].task_id = 1
    F["TaskIdentity"].run_id = 1
    F["TaskIdentity"].node_id = F["SUPERLINK_NODE_ID"]

    random.seed(seed)  # Flower's workflow shuffles neighbours with `random`
    np.random.seed(seed)  # Flower's stochastic rounding uses np.random
    rng = np.random.default_rng(seed)

    # Node IDs: random 63-bit ints, as Flower's SuperLink assigns random uint64 IDs.
    node_ids: list[int] = []
    seen: set[int] = set()
    while len(node_ids) < n:
        nid = int(rng.integers(1, 2**63 - 1))
        if nid not in seen:
            seen.add(nid)
            node_ids.append(nid)

    n_drop = round(dropout * n)
    dropped = set(rng.choice(node_ids, size=n_drop, replace=False).tolist()) if n_drop else set()
    survivors = [nid for nid in node_ids if nid not in dropped]
    if timed_clients is None or timed_clients >= len(survivors):
        timed = set(node_ids)
    else:
        timed = set(rng.choice(survivors, size=timed_clients, replace=False).tolist())

    input_seed = {nid: int(rng.integers(0, 2**32)) for nid in node_ids}

    def client_input(nid: int) -> np.ndarray:
        g = np.random.default_rng(input_seed[nid])
        return g.uniform(-1.0, 1.0, dim).astype(np.float32)

    # ---- client side ------------------------------------------------------------
    contexts = {
        nid: Context(run_id=1, node_id=nid, node_config={}, state=RecordDict(), run_config={})
        for nid in node_ids
    }
    client_time: dict[int, float] = {nid: 0.0 for nid in node_ids}
    client_stage_time: dict[str, list[float]] = {}

    def call_next(msg: Any, ctxt: Any) -> Any:
        # The user's ClientApp "train" function: returns the party's input as FitRes.
        nid = ctxt.node_id
        fitres = FitRes(
            status=Status(code=Code.OK, message="ok"),
            parameters=F["ndarrays_to_parameters"]([client_input(nid)]),
            num_examples=int(MAX_WEIGHT),
            metrics={},
        )
        return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)

    def run_client(msg: Any) -> Any:
        nid = msg.metadata.dst_node_id
        ctxt = contexts[nid]
        stage = msg.content.config_records["secaggplus_configs"]["stage"]
        next_time = 0.0

        def timed_next(m: Any, c: Any) -> Any:
            nonlocal next_time
            t = time.perf_counter()
            out = call_next(m, c)
            next_time += time.perf_counter() - t
            return out

        t0 = time.perf_counter()
        reply = secaggplus_mod(msg, ctxt, timed_next)
        dt = time.perf_counter() - t0 - next_time
        if nid in timed:
            client_time[nid] += dt
            client_stage_time.setdefault(str(stage), []).append(dt)
        return reply

    # ---- transport (ours) ---------------------------------------------------------
    grid_seconds = 0.0
    stage_counter = {"i": 0}

    class _InMemoryGrid(F["Grid"]):  # type: ignore[misc]
        def set_run(self, run: Any) -> None:
            self._run = run

        @property
        def run(self) -> Any:
            return getattr(self, "_run", None)

        def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # type: ignore[no-untyped-def]
            return Message(content, dst_node_id, message_type, group_id=group_id, ttl=ttl)

        def get_node_ids(self) -> list[int]:
            return list(node_ids)

        def push_messages(self, messages: Any) -> Any:
            raise NotImplementedError

        def pull_messages(self, message_ids: Any) -> Any:
            raise NotImplementedError

        def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> Any:
            nonlocal grid_seconds
            t0 = time.perf_counter()
            messages = list(messages)
            stage_counter["i"] += 1
            replies = []
            for k, msg in enumerate(messages):
                nid = msg.metadata.dst_node_id
                stage = msg.content.config_records["secaggplus_configs"]["stage"]
                if stage == "collect_masked_vectors" and nid in dropped:
                    continue  # drops out after share-keys: never sends masked input
                wire_in = Message(
                    copy.deepcopy(msg.content),
                    nid,
                    msg.metadata.message_type,
                    group_id=msg.metadata.group_id,
                )
                reply = run_client(wire_in)
                wire_out = Message(copy.deepcopy(reply.content), reply_to=msg)
                replies.append(wire_out)
                if progress and (k + 1) % max(1, len(messages) // 5) == 0:
                    say(f"  stage {stage}: {k + 1}/{len(messages)} parties done")
            grid_seconds += time.perf_counter() - t0
            return replies

    # ---- server side --------------------------------------------------------------
    class _Proxy(F["ClientProxy"]):  # type: ignore[misc]
        def __init__(self, nid: int) -> None:
            super().__init__(str(nid))
            self.node_id = nid

        def get_properties(self, *a: Any, **k: Any) -> Any:
            raise NotImplementedError

        def get_parameters(self, *a: Any, **k: Any) -> Any:
            raise NotImplementedError

        def fit(self, *a: Any, **k: Any) -> Any:
            raise NotImplementedError

        def evaluate(self, *a: Any, **k: Any) -> Any:
            raise NotImplementedError

        def reconnect(self, *a: Any, **k: Any) -> Any:
            raise NotImplementedError

    captured: dict[str, Any] = {}

    class _TimedFedAvg(F["FedAvg"]):  # type: ignore[misc]
        def aggregate_fit(self, server_round, results, failures):  # type: ignore[no-untyped-def]
            captured["aggregate"] = F["parameters_to_ndarrays"](results[0][1].parameters)
            captured["num_results"] = len(results)
            t = time.perf_counter()
            out = super().aggregate_fit(server_round, results, failures)
            captured["aggregate_fit_seconds"] = time.perf_counter() - t
            return out

    stage_seconds: dict[str, float] = {}

    class _StageTimedWorkflow(F["SecAggPlusWorkflow"]):  # type: ignore[misc]
        def _timed(self, name: str, fn: Any, *args: Any) -> bool:
            nonlocal grid_seconds
            g0 = grid_seconds
            say(f"server stage {name} ...")
            t0 = time.perf_counter()
            ok = fn(*args)
            dt = time.perf_counter() - t0 - (grid_seconds - g0)
            if name == "unmask":
                dt -= captured.get("aggregate_fit_seconds", 0.0)
            stage_seconds[name] = dt
            say(
                f"server stage {name} done: server {dt:.3f}s (routing+clients "
                f"{grid_seconds - g0:.3f}s)"
            )
            return bool(ok)

        def setup_stage(self, grid, context, state):  # type: ignore[no-untyped-def]
            return self._timed("setup", super().setup_stage, grid, context, state)

        def share_keys_stage(self, grid, context, state):  # type: ignore[no-untyped-def]
            return self._timed("share_keys", super().share_keys_stage, grid, context, state)

        def collect_masked_vectors_stage(self, grid, context, state):  # type: ignore[no-untyped-def]
            return self._timed(
                "collect_masked_vectors", super().collect_masked_vectors_stage, grid, context, state
            )

        def unmask_stage(self, grid, context, state):  # type: ignore[no-untyped-def]
            return self._timed("unmask", super().unmask_stage, grid, context, state)

    client_manager = F["SimpleClientManager"]()
    for nid in node_ids:
        client_manager.register(_Proxy(nid))
    strategy = _TimedFedAvg(
        fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n, min_available_clients=n
    )
    base_ctx = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    context = F["LegacyContext"](base_ctx, strategy=strategy, client_manager=client_manager)
    context.state.config_records[F["MAIN_CONFIGS_RECORD"]] = ConfigRecord(
        {F["WorkflowKey"].CURRENT_ROUND: 1}
    )
    context.state.array_records[F["MAIN_PARAMS_RECORD"]] = compat.parameters_to_arrayrecord(
        F["ndarrays_to_parameters"]([np.zeros(1, dtype=np.float32)]), keep_input=True
    )

    workflow = _StageTimedWorkflow(
        num_shares=num_shares,
        reconstruction_threshold=reconstruction_threshold,
        max_weight=MAX_WEIGHT,
        clipping_range=clipping_range,
        quantization_range=quantization_range,
        modulus_range=modulus_range,
    )
    grid = _InMemoryGrid()

    say(f"n={n} dim={dim} shares={num_shares} t={reconstruction_threshold} dropped={len(dropped)}")
    t0 = time.perf_counter()
    workflow(grid, context)
    total = time.perf_counter() - t0
    flwr_logger.setLevel(old_level)

    if "aggregate" not in captured:
        raise RuntimeError("Flower's SecAgg+ workflow halted before aggregation")
    agg_fit_s = captured["aggregate_fit_seconds"]
    server_seconds = total - grid_seconds - agg_fit_s

    # ---- correctness ---------------------------------------------------------------
    n_surv = len(survivors)
    expected = np.zeros(dim, dtype=np.float64)
    for nid in survivors:
        expected += client_input(nid).astype(np.float64)
    got_mean = np.asarray(captured["aggregate"][0], dtype=np.float64)
    got_sum = got_mean * n_surv
    max_err = float(np.max(np.abs(got_sum - expected))) if dim else 0.0
    tol = n_surv * (2 * clipping_range / quantization_range) + 1e-6 * n_surv
    correct = bool(
        got_mean.shape == (dim,) and max_err <= tol and captured["num_results"] == n_surv
    )

    def summary(xs: list[float]) -> dict[str, float]:
        if not xs:
            return {"mean": 0.0, "max": 0.0, "min": 0.0, "count": 0}
        return {
            "mean": statistics.fmean(xs),
            "max": max(xs),
            "min": min(xs),
            "median": statistics.median(xs),
            "count": len(xs),
        }

    surv_times = [client_time[nid] for nid in survivors if nid in timed]
    drop_times = [client_time[nid] for nid in dropped if nid in timed]
    import flwr

    return {
        "engine": "flwr-secaggplus",
        "flwr_version": flwr.__version__,
        "n": n,
        "dim": dim,
        "num_shares": num_shares,
        "reconstruction_threshold": reconstruction_threshold,
        "dropout": dropout,
        "dropped": len(dropped),
        "survivors": n_surv,
        "server_seconds": server_seconds,
        "server_stage_seconds": stage_seconds,
        "server_strategy_aggregate_seconds": agg_fit_s,
        "routing_and_clients_seconds": grid_seconds,
        "wall_seconds": total,
        "client_seconds": summary(surv_times),
        "client_seconds_dropped": summary(drop_times),
        "client_stage_seconds_mean": {k: statistics.fmean(v) for k, v in client_stage_time.items()},
        "correct": correct,
        "max_abs_error_sum": max_err,
        "error_tolerance": tol,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "seed": seed,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--clients", type=int, default=500)
    p.add_argument("--dim", type=int, default=100_000)
    p.add_argument("--num-shares", type=int, default=21)
    p.add_argument("--threshold", type=int, default=11)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clipping-range", type=float, default=8.0)
    p.add_argument("--quantization-range", type=int, default=4194304)
    p.add_argument("--modulus-range", type=int, default=4294967296)
    p.add_argument("--timed-clients", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    a = p.parse_args(argv)
    res = run_flower_secaggplus(
        a.clients,
        a.dim,
        a.num_shares,
        a.threshold,
        a.dropout,
        seed=a.seed,
        clipping_range=a.clipping_range,
        quantization_range=a.quantization_range,
        modulus_range=a.modulus_range,
        timed_clients=a.timed_clients,
        progress=not a.quiet,
    )
    if a.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k}: {v}")
    return 0 if res["correct"] else 1


if __name__ == "__main__":
    sys.exit(main())

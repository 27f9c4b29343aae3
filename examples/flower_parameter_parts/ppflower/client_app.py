"""ClientApp: a data party of the random parameter-part protocol.

Its mods include ``secagg.flower.secaggplus_mod``: every secure aggregation message is handled
there, and only the masked-vector stage reaches :func:`train`, which receives this node's own
random part of the global model, trains on the node's rows and replies with its change on the
part (the mod encodes and masks it; the plaintext change never leaves the node). The node's
local model copy persists in ``context.state`` between rounds.

The ClientApp mods include secagg's: setup, share_keys and unmask never reach ``train``.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from secagg.flower import secaggplus_mod
from secagg.flower.partwise import UPDATE_RECORD

app = ClientApp(mods=[secaggplus_mod])

LOCAL_MODEL = "ppflower.local-model"


def _partition_of(context: Context) -> tuple[int, int]:
    cfg = context.node_config
    return int(cfg["partition-id"]), int(cfg["num-partitions"])


@app.train()
def train(msg: Message, context: Context) -> Message:
    # Imported here: in deployment every message starts a fresh ClientApp process, and only
    # this stage (the masked-vector one) needs torch and the data; the others are secagg only.
    from ppflower import task

    cfg = dict(msg.content.config_records["ppflower.train"])
    seed = int(cfg["seed"])
    pid, parts = _partition_of(context)
    x, y = task.partition(pid, parts, seed)
    held = context.state.array_records.get(LOCAL_MODEL)
    if held is None:
        local = task.global_vector(task.initial_model(seed))
    else:
        local = np.asarray(held["flat"].numpy(), dtype=np.float64)
    part_record = msg.content.array_records["ppflower.part"]
    positions = np.asarray(part_record["positions"].numpy(), dtype=np.int64)
    part = np.asarray(part_record["values"].numpy(), dtype=np.float64)
    round_index = int(cfg["round"])
    trained, change, kept = task.local_step(
        local, positions, part, x, y, cfg, seed=seed * 100003 + round_index * 101 + pid
    )
    context.state.array_records[LOCAL_MODEL] = ArrayRecord({"flat": Array(trained)})
    update = ArrayRecord({"values": Array(change), "uploaded": Array(kept.astype(np.uint8))})
    return Message(
        RecordDict(
            {
                UPDATE_RECORD: update,
                "ppflower.metrics": MetricRecord({"rows": len(y)}),
            }
        ),
        reply_to=msg,
    )

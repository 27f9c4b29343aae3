"""Record names and stages of the adapter's messages (its own namespace).

Every message of a secagg round carries one ConfigRecord named :data:`RECORD_KEY` with the
stage and the engine's wire message for that node (``payload``: bytes of
:func:`secagg.messages.encode`). Flower's SecAgg+ uses ``"secaggplus_configs"``; the names never
collide, so Flower's server with this library's mod (or the reverse) cannot half-work:

* our mod receiving Flower's record raises :class:`NamespaceError` naming the fix;
* Flower's mod receiving our messages finds a decoy ``"secaggplus_configs"`` record whose stage
  is a sentence naming the fix, and Flower's own ``check_stage`` refuses it with that sentence.
"""

from __future__ import annotations

from secagg.errors import ConfigError

#: The ConfigRecord carrying the stage and the engine message (server <-> node).
RECORD_KEY = "secagg.flower"
#: The node's persisted state inside ``context.state.config_records``.
STATE_KEY = "secagg.flower.state"
#: Flower 1.42's own record names (flwr.common.secure_aggregation.secaggplus_constants).
FLOWER_RECORD_KEY = "secaggplus_configs"
FLOWER_STATE_KEY = "secaggplus_state"

SETUP = "setup"
SHARE_KEYS = "share_keys"
COLLECT_MASKED_VECTORS = "collect_masked_vectors"
CONSISTENCY = "consistency"
UNMASK = "unmask"
STAGES = (SETUP, SHARE_KEYS, COLLECT_MASKED_VECTORS, CONSISTENCY, UNMASK)

#: What Flower's own ``secaggplus_mod`` reads as the stage when it receives our messages: its
#: ``check_stage`` raises "expect setup stage, but receive <this> stage".
DECOY_STAGE = (
    "secagg.flower round: this ServerApp runs secagg.flower's workflow; put"
    " `from secagg.flower import secaggplus_mod` in the ClientApp's mods instead of Flower's"
)

#: Upper bound on one engine message inside a record (the engine's own wire bound is larger;
#: a node's message can never legitimately exceed a masked vector of 2^27 64-bit words).
MAX_PAYLOAD_BYTES = 1 << 30


class NamespaceError(ConfigError):
    """The two ends of a round run different secure aggregation stacks (ours and Flower's)."""


FLOWER_SERVER_WITH_OUR_MOD = (
    "this ClientApp runs secagg.flower.secaggplus_mod but the ServerApp runs Flower's own"
    " SecAggPlusWorkflow/SecAggWorkflow (record 'secaggplus_configs'): use"
    " `from secagg.flower import SecAggPlusWorkflow` on the ServerApp, or Flower's mod here"
)
NO_SECAGG_RECORD = (
    "a train message without the 'secagg.flower' record reached secagg.flower's mod: the"
    " ServerApp does not run secagg.flower's workflow (use"
    " `from secagg.flower import SecAggPlusWorkflow` in DefaultWorkflow(fit_workflow=...))"
)

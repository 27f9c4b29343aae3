"""secagg inside Flower 1.42: drop-ins for Flower's SecAgg+ and SecAgg.

Switching an existing Flower app is an import change::

    # from flwr.client.mod import secaggplus_mod
    # from flwr.server.workflow import SecAggPlusWorkflow
    from secagg.flower import secaggplus_mod, SecAggPlusWorkflow

Needs the ``flower`` extra (``pip install 'secagg[flower]'``); the engine itself never imports
Flower. See docs/flower.md for what differs from Flower's implementation and why.
"""

from secagg.config import ClientPolicy
from secagg.errors import PolicyError, PrivacyBudgetError
from secagg.flower.driver import DEFAULT_STAGE_TIMEOUT, EngineRound, RoundReport
from secagg.flower.mod import make_secaggplus_mod, secagg_mod, secaggplus_mod
from secagg.flower.quantization import FlowerQuantizer, UpdateLayout
from secagg.flower.records import NamespaceError
from secagg.flower.workflow import (
    DropinReport,
    PartwiseOptions,
    SecAggPlusWorkflow,
    SecAggWorkflow,
)

__all__ = [
    "DEFAULT_STAGE_TIMEOUT",
    "ClientPolicy",
    "DropinReport",
    "EngineRound",
    "FlowerQuantizer",
    "NamespaceError",
    "PartwiseOptions",
    "PolicyError",
    "PrivacyBudgetError",
    "RoundReport",
    "SecAggPlusWorkflow",
    "SecAggWorkflow",
    "UpdateLayout",
    "make_secaggplus_mod",
    "secagg_mod",
    "secaggplus_mod",
]

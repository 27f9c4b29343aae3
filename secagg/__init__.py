"""secagg: privacy-hardened secure aggregation for federated learning.

A sans-I/O implementation of pairwise-mask secure aggregation (Bonawitz et al., CCS 2017) with
the sparse neighbour graphs of SecAgg+ (Bell et al., CCS 2020): the server learns only the sum of
the surviving parties' vectors, even when parties drop out mid-round.

Quick use (one round in memory; README.md has the deployment loop)::

    import secagg
    plan = secagg.plan_round(10, model.state_dict(), dropout_rate=0.1, clip=1.0)
    out = secagg.aggregate(plan, [m.state_dict() for m in models], dropouts=[3])
    out.mean                      # the survivors' mean, as a state_dict

``plan.config`` (a :class:`RoundConfig`) and ``plan.encoder`` (a :class:`FixedPointEncoder`) are
what a deployment hands to :class:`ClientEngine` and :class:`ServerEngine`. See docs/ for the
protocol and threat model.
"""

from secagg.arrays import ArraySpec
from secagg.config import ClientPolicy, RoundConfig
from secagg.encoding import FixedPointEncoder, choose_modulus_bits
from secagg.engine import AggregationResult, ClientEngine, RollbackGuard, ServerEngine
from secagg.errors import (
    AbortedError,
    ConfigError,
    EncodingError,
    LocalProtocolError,
    PolicyError,
    ProtocolError,
    RemoteProtocolError,
    SecAggError,
    StateError,
)
from secagg.graph import (
    GraphParameters,
    NeighborGraph,
    complete_graph,
    complete_parameters,
    count_at_rate,
    find_harary_parameters,
    harary_graph,
)
from secagg.messages import decode, encode
from secagg.rounds import RoundOutcome, RoundPlan, aggregate, plan_round
from secagg.sim import DropoutScript

__version__ = "0.1.0"

__all__ = [
    "AbortedError",
    "AggregationResult",
    "ArraySpec",
    "ClientEngine",
    "ClientPolicy",
    "ConfigError",
    "DropoutScript",
    "EncodingError",
    "FixedPointEncoder",
    "GraphParameters",
    "LocalProtocolError",
    "NeighborGraph",
    "PolicyError",
    "ProtocolError",
    "RemoteProtocolError",
    "RollbackGuard",
    "RoundConfig",
    "RoundOutcome",
    "RoundPlan",
    "SecAggError",
    "ServerEngine",
    "StateError",
    "aggregate",
    "choose_modulus_bits",
    "complete_graph",
    "complete_parameters",
    "count_at_rate",
    "decode",
    "encode",
    "find_harary_parameters",
    "harary_graph",
    "plan_round",
]

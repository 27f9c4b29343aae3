"""secagg: privacy-hardened secure aggregation for federated learning.

A sans-I/O implementation of pairwise-mask secure aggregation (Bonawitz et al., CCS 2017) with
the sparse neighbour graphs of SecAgg+ (Bell et al., CCS 2020): the server learns only the sum of
the surviving parties' vectors, even when parties drop out mid-round.

Quick use::

    from secagg import RoundConfig, ClientEngine, ServerEngine, harary_graph
    config = RoundConfig(session_id=..., round_index=0, graph=harary_graph(n, k, seed),
                         threshold=t, dim=d, modulus_bits=B)
    server = ServerEngine(config)
    client = ClientEngine(config, party=0)

See ``secagg.sim`` for a complete in-process round, and docs/ for the protocol and threat model.
"""

from secagg.config import RoundConfig
from secagg.encoding import FixedPointEncoder, choose_modulus_bits
from secagg.engine import AggregationResult, ClientEngine, ServerEngine
from secagg.errors import (
    AbortedError,
    ConfigError,
    EncodingError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    SecAggError,
)
from secagg.graph import (
    GraphParameters,
    NeighborGraph,
    complete_graph,
    complete_parameters,
    find_harary_parameters,
    harary_graph,
)
from secagg.messages import decode, encode

__version__ = "0.1.0"

__all__ = [
    "AbortedError",
    "AggregationResult",
    "ClientEngine",
    "ConfigError",
    "EncodingError",
    "FixedPointEncoder",
    "GraphParameters",
    "LocalProtocolError",
    "NeighborGraph",
    "ProtocolError",
    "RemoteProtocolError",
    "RoundConfig",
    "SecAggError",
    "ServerEngine",
    "choose_modulus_bits",
    "complete_graph",
    "complete_parameters",
    "decode",
    "encode",
    "find_harary_parameters",
    "harary_graph",
]

"""The sans-I/O secure aggregation engine: client and server state machines, one module per
phase."""

from secagg.engine.client import ClientEngine
from secagg.engine.persist import RollbackGuard
from secagg.engine.server import AggregationResult, ServerEngine

__all__ = ["AggregationResult", "ClientEngine", "RollbackGuard", "ServerEngine"]

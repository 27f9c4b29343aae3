"""Typed errors of the secagg engine.

Two kinds of protocol error share one base, as in h11/wsproto: the local caller misused the API
(``LocalProtocolError``), or a remote peer (a party or the server) misbehaved
(``RemoteProtocolError``). After either, an engine enters its terminal ``FAILED`` state, wipes its
secrets and refuses every further call: for secure aggregation that is a security property (never
go on unmasking after a violation).
"""

from __future__ import annotations


class SecAggError(Exception):
    """Base class of every error raised by secagg."""


class ConfigError(SecAggError, ValueError):
    """A configuration is invalid (raised when it is built, before any protocol step)."""


class PolicyError(ConfigError):
    """A valid configuration is below what this party's :class:`~secagg.config.ClientPolicy`
    accepts (for example a lower threshold, or semi-honest mode where active is required)."""


class PrivacyBudgetError(ConfigError):
    """A differentially private round would spend more than the declared (epsilon, delta):
    it is refused before anything is sent, and the model stays as it is."""


class EncodingError(SecAggError, ValueError):
    """Values cannot be encoded into the chosen modulus without wrap-around, or a payload is bad."""


class ProtocolError(SecAggError):
    """A protocol violation. The engine that raised it is now in its terminal error state."""


class LocalProtocolError(ProtocolError):
    """The local caller misused the engine (wrong phase, wrong input shape, reuse after failure)."""


class RemoteProtocolError(ProtocolError):
    """A peer misbehaved: malformed, oversized, replayed, out-of-phase or unauthenticated message,
    or a server request that would reveal more than the sum (overlapping lists, too few survivors).
    """


class AbortedError(ProtocolError):
    """The round cannot complete safely (for example fewer than ``threshold`` survivors)."""


class StateError(SecAggError):
    """A persisted engine state is refused: malformed or non-canonical encoding, another engine's
    (role, session, round, party), a rolled back counter, or a sealed blob that fails
    authentication (wrong key, tampering, truncation). The engine is left unchanged."""

"""Plan a round from what you know, and run one in memory: the short path into the library.

:func:`plan_round` turns (parties, dimension or an example update, expected dropout,
corruption, value range) into a :class:`RoundPlan`: the :class:`~secagg.config.RoundConfig`
every party and the server build, and the :class:`~secagg.encoding.FixedPointEncoder` that
turns floats into its ring. Both come from one modulus B, so they cannot disagree.

:func:`aggregate` runs one whole round in this process (every party's engine and the server's,
every message crossing as bytes, scripted dropouts) and returns the decoded mean: for tests,
notebooks and experiments. A deployment runs the same engines over its own transport (README,
"Using the engine").

The dropout and corruption rates are read as :func:`secagg.graph.count_at_rate` reads them
(floor(rate * parties)): the parameters tolerate exactly that many, which is also what the
simulator drops.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from secagg import encoding, graph
from secagg.arrays import ArraySpec
from secagg.config import RoundConfig
from secagg.crypto import keys, rng
from secagg.encoding import FixedPointEncoder, Words
from secagg.engine.server import AggregationResult
from secagg.errors import ConfigError
from secagg.sim import DROP_PHASES, DropoutScript, InMemoryOutcome, aggregate_in_memory

GRAPHS = ("auto", "harary", "complete")


@dataclass(frozen=True)
class RoundPlan:
    """A round's configuration and its encoder, built together (see :func:`plan_round`).

    Attributes:
        config: the :class:`RoundConfig` (session, graph, threshold t, dim, modulus B).
        encoder: floats to words of the same B, for up to ``config.num_parties`` summands.
        spec: the structure of an update (arrays, a state_dict), or ``None`` for flat vectors.
        dropout_rate, corruption_rate: what the graph and threshold were chosen for.
        signing_keys: in active mode when :func:`plan_round` generated the parties' Ed25519
            keys (simulation only: in a deployment each party keeps its own).
    """

    config: RoundConfig
    encoder: FixedPointEncoder
    spec: ArraySpec | None
    dropout_rate: float
    corruption_rate: float
    signing_keys: tuple[bytes, ...] | None = field(default=None, repr=False)

    @property
    def parties(self) -> int:
        return self.config.num_parties

    @property
    def threshold(self) -> int:
        return self.config.threshold

    @property
    def modulus_bits(self) -> int:
        return self.config.modulus_bits

    def for_round(self, round_index: int) -> RoundPlan:
        """The same plan for another training round (keys and masks never repeat)."""
        return dataclasses.replace(
            self, config=dataclasses.replace(self.config, round_index=round_index)
        )

    def encode(self, update: Any, *, weight: float | None = None) -> Words:
        """One party's update as words (``ClientEngine.set_input``): arrays through the spec, or
        a flat float vector of length ``config.dim`` when the plan has no spec."""
        if self.spec is not None:
            return self.spec.encode(update, self.encoder, weight=weight)
        if weight is not None:
            raise ConfigError("weight given, but the plan was made without weighted=True")
        vector = np.asarray(update)
        if vector.shape != (self.config.dim,):
            raise ConfigError(
                f"expected a vector of shape ({self.config.dim},), got shape {vector.shape}"
            )
        return self.encoder.encode(vector)

    def decode_mean(self, result: AggregationResult) -> Any:
        """The (weighted) mean of the survivors' updates, in the update's structure."""
        survivors = len(result.survivors)
        if self.spec is not None:
            return self.spec.decode_mean(result.total, self.encoder, survivors)
        return self.encoder.decode_sum(result.total, survivors) / survivors


def _spec_for(shape: Any, weighted: bool) -> tuple[int, ArraySpec | None]:
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        if weighted:
            raise ConfigError("weighted=True needs an example update (its arrays), not a length")
        return int(shape), None
    if isinstance(shape, ArraySpec):
        spec = dataclasses.replace(shape, weighted=shape.weighted or weighted)
        return spec.size, spec
    spec = ArraySpec.of(shape, weighted=weighted)
    return spec.size, spec


def plan_round(
    parties: int,
    shape: Any,
    *,
    dropout_rate: float = 0.1,
    corruption_rate: float = 0.05,
    clip: float = 1.0,
    value_bits: int = 16,
    graph_kind: str = "auto",
    weighted: bool = False,
    active: bool = False,
    verify_keys: Sequence[bytes] | None = None,
    round_index: int = 0,
    session_id: bytes | None = None,
    graph_seed: bytes | None = None,
) -> RoundPlan:
    """Choose graph, threshold and modulus for a round, and build its config and encoder.

    Args:
        parties: n, the parties invited to the round (ids ``0..n-1``).
        shape: the vector length, or an example update (a numpy array, a list of arrays, a torch
            ``state_dict``) or its :class:`ArraySpec`; the round's ``dim`` follows from it.
        dropout_rate: the fraction of parties that may drop mid-round; floor(rate * n) drops
            are tolerated (correctness 2^-20 on a Harary graph, always on the complete graph).
        corruption_rate: the fraction that may collude with the server (security 2^-40).
        clip: values are clipped to [-clip, clip] (the value range).
        value_bits: precision of one value, sign included (the grid is clip / 2^(v-1)).
        graph_kind: ``"auto"`` (a Harary graph of SecAgg+ when it is smaller than the complete
            graph, from :func:`~secagg.graph.find_harary_parameters`), ``"harary"`` (the same),
            or ``"complete"`` (SecAgg).
        weighted: aggregate a weighted mean (each party passes ``weight`` to ``encode``).
        active: the active-adversary mode (signed keys and a consistency check).
        verify_keys: in active mode, the parties' Ed25519 public keys; ``None`` generates key
            pairs and keeps the signing keys in the plan (simulation only).
        round_index, session_id, graph_seed: ``None`` draws the session and the graph seed from
            the CSPRNG.

    Raises:
        ConfigError: no secure and correct threshold for these rates, or a bad argument.
        EncodingError: B would exceed 64 bits, or a bad value range.
    """
    if graph_kind not in GRAPHS:
        raise ConfigError(f"graph_kind must be one of {GRAPHS}, got {graph_kind!r}")
    if isinstance(parties, bool) or not isinstance(parties, numbers.Integral):
        raise ConfigError(f"parties must be an integer, got {parties!r}")
    dim, spec = _spec_for(shape, weighted)
    if graph_kind == "complete":
        params = graph.complete_parameters(parties, dropout_rate, corruption_rate, active=active)
    else:
        params = graph.find_harary_parameters(
            parties, dropout_rate, corruption_rate, semi_honest=not active
        )
    # One B for the config and the encoder: the sum of n values of v bits cannot wrap around.
    bits = encoding.choose_modulus_bits(value_bits, parties)
    encoder = FixedPointEncoder(
        clip=clip, value_bits=value_bits, modulus_bits=bits, max_summands=parties
    )
    signing: tuple[bytes, ...] | None = None
    verify: tuple[bytes, ...] | None = None
    if active:
        if verify_keys is None:
            pairs = [keys.generate_ed25519() for _ in range(parties)]
            signing = tuple(p[0] for p in pairs)
            verify = tuple(p[1] for p in pairs)
        else:
            verify = tuple(verify_keys)
    elif verify_keys is not None:
        raise ConfigError("verify_keys are for active=True (semi-honest rounds sign nothing)")
    config = RoundConfig(
        session_id=session_id if session_id is not None else rng.token_bytes(16),
        round_index=round_index,
        graph=params.graph(parties, graph_seed),
        threshold=params.t,
        dim=dim,
        modulus_bits=bits,
        active=active,
        verify_keys=verify,
    )
    return RoundPlan(config, encoder, spec, float(dropout_rate), float(corruption_rate), signing)


@dataclass(frozen=True)
class RoundOutcome:
    """What :func:`aggregate` returns.

    Attributes:
        mean: the (weighted) mean of the survivors' updates, in the updates' structure.
        survivors: the parties whose updates are in the mean.
        dropped: the parties that dropped before sending their masked input.
        result: the server's :class:`AggregationResult` (the sum in Z_(2^B)).
        traffic: per party, bytes up and down, and refusals (:class:`~secagg.sim.InMemoryOutcome`).
    """

    mean: Any
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    result: AggregationResult
    traffic: InMemoryOutcome = field(repr=False)


def _script(dropouts: Mapping[int, str] | Iterable[int], parties: Iterable[int]) -> DropoutScript:
    present = set(parties)
    drops = (
        dict(dropouts.items())
        if isinstance(dropouts, Mapping)
        else dict.fromkeys((int(u) for u in dropouts), "masked_input")
    )
    for u, phase in drops.items():
        if u not in present:
            raise ConfigError(f"dropouts: party {u} has no update in this round")
        if phase not in DROP_PHASES:
            raise ConfigError(f"dropouts: party {u} drops at {phase!r}; use one of {DROP_PHASES}")
    return DropoutScript(drops)


def aggregate(
    plan: RoundPlan,
    updates: Mapping[int, Any] | Sequence[Any],
    *,
    dropouts: Mapping[int, str] | Iterable[int] = (),
    weights: Mapping[int, float] | Sequence[float] | None = None,
) -> RoundOutcome:
    """Run one secure aggregation round in memory and return the decoded mean.

    Every party's engine and the server's run here, every message crosses as bytes, and keys,
    masks and shares come from the CSPRNG, exactly as in a deployment; only the transport is
    missing. For tests, notebooks and experiments.

    Args:
        plan: from :func:`plan_round`.
        updates: party -> update (or a sequence: party i is ``updates[i]``); invited parties
            without an update are absent from the start (they drop before sending keys).
        dropouts: parties that drop mid-round, before sending their masked input (an iterable),
            or party -> phase of :data:`~secagg.sim.DROP_PHASES` (the first message not sent).
        weights: with a weighted plan, party -> weight in [0, 1].

    Raises:
        AbortedError: too many parties dropped for the threshold (the round is lost, nothing is
            revealed).
        EncodingError, ConfigError: an update or an argument that does not fit the plan.
    """
    items = dict(updates.items()) if isinstance(updates, Mapping) else dict(enumerate(updates))
    for u in items:
        if not (isinstance(u, numbers.Integral) and 0 <= u < plan.parties):
            raise ConfigError(f"updates: party ids are 0..{plan.parties - 1}, got {u!r}")
    if weights is not None:
        w = dict(weights.items()) if isinstance(weights, Mapping) else dict(enumerate(weights))
        missing = sorted(set(items) - set(w))
        if missing:
            raise ConfigError(f"weights: no weight for parties {missing}")
        inputs = {u: plan.encode(x, weight=w[u]) for u, x in items.items()}
    else:
        inputs = {u: plan.encode(x) for u, x in items.items()}
    traffic = aggregate_in_memory(
        plan.config,
        inputs,
        _script(dropouts, items),
        signing=plan.signing_keys,
    )
    result = traffic.result
    return RoundOutcome(
        mean=plan.decode_mean(result),
        survivors=result.survivors,
        dropped=result.dropped,
        result=result,
        traffic=traffic,
    )

"""The random parameter-part protocol (Alipay CN111325417A; close to DSSGD, Shokri & Shmatikov
CCS 2015), with optional part-wise secure aggregation.

One round:
1. The server draws, for every party, a different random part of the model (CSPRNG; every
   selected block has at least ``min_holders`` holders plus a margin for expected dropouts).
2. Each party overwrites that part of its local model copy with the server's values, trains on
   its own data, and computes its change on the part.
3. It keeps part of the change by the upload policy (all / topk / threshold / random), clips each
   value to [-gamma, gamma], and uploads: in the clear, or masked so the server only learns the
   per-block sums over surviving holders.
4. The server updates each coordinate: ``mean`` over the surviving holders of its block
   (non-uploaded coordinates count as zero change), ``mean_over_uploaders`` (a securely summed
   count channel), or DSSGD's ``add``.

``fedavg`` is the same loop with the whole model both ways (download fraction 1, upload all).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from protocols.aggregation import (
    AggregateOutcome,
    PartUpdate,
    SecureSettings,
    aggregate_plain,
    aggregate_secure,
)
from protocols.datasets import TabularData
from protocols.models import flat_parameters, make_model, parameter_layers, set_flat_parameters
from protocols.parameter_parts.selection import select_parts
from protocols.parameter_parts.upload import clip_values, upload_mask
from protocols.training import evaluate, local_train, local_train_dp_sgd
from secagg.dp.accounting import (
    DEFAULT_ORDERS,
    RDPAccountant,
    calibrate_noise_multiplier,
    rdp_sampled_gaussian,
)
from secagg.errors import AbortedError

RULES = ("mean", "mean_over_uploaders", "add")


@dataclass(frozen=True)
class ProtocolSettings:
    """Everything that defines a training run (documented defaults: docs/parameter_parts.md)."""

    model: str = "logreg"
    download_fraction: float = 0.5
    upload_policy: str = "all"
    upload_fraction: float = 0.1
    threshold_tau: float = 0.001
    part_unit: str = "block"
    block_size: int = 8
    min_holders: int = 3
    rule: str = "mean"
    gamma: float = 1.0
    local_epochs: int = 1
    batch_size: int = 64
    lr: float = 0.1
    secure: bool = True
    dropout: float = 0.0
    value_bits: int = 20
    seed: int = 0
    #: Local DP-SGD (Opacus): the target (epsilon, delta) of each party's records over the run.
    local_dp_epsilon: float | None = None
    local_dp_delta: float = 1e-5
    local_dp_clip: float = 1.0
    rounds_planned: int = 20

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}")
        if not 0 < self.download_fraction <= 1:
            raise ValueError("download_fraction must be in (0, 1]")
        if not 0 <= self.dropout < 1:
            raise ValueError("dropout must be in [0, 1)")


@dataclass
class Party:
    """A data party: its rows and its local copy of the model (kept across rounds)."""

    index: int
    x: np.ndarray
    y: np.ndarray
    model: torch.nn.Module


@dataclass
class RoundReport:
    round: int
    accuracy: float
    auc: float
    loss: float
    survivors: int
    upload_bytes_mean: float
    download_bytes_mean: float
    part_fraction_mean: float
    seconds: float
    aborted: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "extra"}
        out.update(self.extra)
        return out


class ParameterPartsTrainer:
    """Runs the protocol round by round on parties that each hold a slice of ``data``."""

    def __init__(
        self, data: TabularData, party_rows: list[np.ndarray], settings: ProtocolSettings
    ) -> None:
        self.data = data
        self.settings = settings
        n_features = data.x_train.shape[1]
        self.global_model = make_model(settings.model, n_features, seed=settings.seed)
        self.layers = parameter_layers(self.global_model)
        self.parties = [
            Party(
                i,
                data.x_train[rows],
                data.y_train[rows],
                make_model(settings.model, n_features, seed=settings.seed),
            )
            for i, rows in enumerate(party_rows)
        ]
        for p in self.parties:
            p.model.load_state_dict(self.global_model.state_dict())
        self.round_index = 0
        self._local_accountants = {p.index: RDPAccountant() for p in self.parties}
        self._local_noise_cache: dict[int, float] = {}

    def _local_noise(self, party: Party) -> float:
        """Noise multiplier for the party's DP-SGD: calibrated once so that its records reach
        (local_dp_epsilon, local_dp_delta) after all planned rounds (Poisson rate batch/rows)."""
        s = self.settings
        if party.index not in self._local_noise_cache:
            assert s.local_dp_epsilon is not None
            rows = len(party.y)
            rate = min(1.0, s.batch_size / rows)
            steps = s.rounds_planned * s.local_epochs * math.ceil(rows / s.batch_size)
            self._local_noise_cache[party.index] = calibrate_noise_multiplier(
                s.local_dp_epsilon, s.local_dp_delta, steps, q=rate
            )
        return self._local_noise_cache[party.index]

    def local_epsilon(self) -> float | None:
        """The largest epsilon any party's records have spent so far (local DP-SGD)."""
        if self.settings.local_dp_epsilon is None:
            return None
        delta = self.settings.local_dp_delta
        return max(a.get_epsilon(delta) for a in self._local_accountants.values())

    @property
    def num_params(self) -> int:
        return int(flat_parameters(self.global_model).size)

    def _dropouts(self) -> set[int]:
        """Parties that vanish mid-protocol this round (after key exchange, before uploading).

        A simulation choice, so it follows ``seed`` (the protocol's own randomness does not)."""
        n = len(self.parties)
        count = round(self.settings.dropout * n)
        gen = np.random.default_rng([self.settings.seed, self.round_index, 7])
        return {int(u) for u in gen.permutation(n)[:count]}

    def run_round(self) -> RoundReport:
        s = self.settings
        start = time.perf_counter()
        self.round_index += 1
        n = len(self.parties)
        dropped = self._dropouts()
        margin = math.ceil(s.dropout * n)
        selection = select_parts(
            self.num_params,
            self.layers,
            n,
            s.download_fraction,
            unit=s.part_unit,
            block_size=s.block_size,
            min_holders=min(n, s.min_holders + margin),
        )
        global_vec = flat_parameters(self.global_model).astype(np.float64)
        updates: dict[int, PartUpdate] = {}
        for party in self.parties:
            where = selection.party_indices(party.index)
            local = flat_parameters(party.model).astype(np.float64)
            local[where] = global_vec[where]  # step 2: overwrite the part with server values
            set_flat_parameters(party.model, local.astype(np.float32))
            if s.local_dp_epsilon is not None:
                steps, rate = local_train_dp_sgd(
                    party.model,
                    party.x,
                    party.y,
                    epochs=s.local_epochs,
                    batch_size=s.batch_size,
                    lr=s.lr,
                    noise_multiplier=self._local_noise(party),
                    max_grad_norm=s.local_dp_clip,
                    trainable=selection.party_mask(party.index),  # only the party's part
                )
                self._local_accountants[party.index].step(
                    rdp_sampled_gaussian(rate, self._local_noise(party), DEFAULT_ORDERS),
                    count=steps,
                )
            else:
                local_train(
                    party.model,
                    party.x,
                    party.y,
                    epochs=s.local_epochs,
                    batch_size=s.batch_size,
                    lr=s.lr,
                    seed=s.seed * 100003 + self.round_index * 101 + party.index,
                )
            change = flat_parameters(party.model).astype(np.float64)[where] - local[where]
            change = clip_values(change, s.gamma)
            kept = upload_mask(change, s.upload_policy, s.upload_fraction, s.threshold_tau)
            updates[party.index] = PartUpdate(np.where(kept, change, 0.0), kept)
        count_channel = s.rule == "mean_over_uploaders"
        aborted = None
        try:
            if s.secure:
                outcome = aggregate_secure(
                    selection,
                    updates,
                    dropped,
                    count_channel,
                    SecureSettings(clip=s.gamma, value_bits=s.value_bits),
                    self.round_index,
                    min_holders=min(n, s.min_holders),
                )
            else:
                outcome = aggregate_plain(selection, updates, dropped, count_channel)
            self._apply(outcome, global_vec)
        except AbortedError as exc:  # too few survivors: the model stays as it was
            aborted = str(exc)
            outcome = AggregateOutcome(
                np.zeros(0), np.zeros(0, dtype=np.int64), None, (), {}, {}, aborted
            )
        metrics = evaluate(self.global_model, self.data.x_test, self.data.y_test)
        part_sizes = [selection.party_indices(u).size for u in range(n)]
        ups = [outcome.upload_bytes.get(u, 0) for u in range(n) if u not in dropped]
        payloads = [outcome.payload_bytes.get(u, 0) for u in range(n) if u not in dropped]
        downs = [outcome.download_bytes.get(u, 0) for u in range(n)]
        return RoundReport(
            round=self.round_index,
            accuracy=float(metrics["accuracy"]),
            auc=float(metrics["auc"]),
            loss=float(metrics["loss"]),
            survivors=len(outcome.survivors),
            upload_bytes_mean=float(np.mean(ups)) if ups else 0.0,
            download_bytes_mean=float(np.mean(downs)) if downs else 0.0,
            part_fraction_mean=float(np.mean(part_sizes)) / self.num_params,
            seconds=time.perf_counter() - start,
            aborted=aborted,
            extra={"payload_bytes_mean": float(np.mean(payloads)) if payloads else 0.0}
            | ({"epsilon": eps} if (eps := self.local_epsilon()) is not None else {}),
        )

    def _apply(self, outcome: AggregateOutcome, global_vec: np.ndarray) -> None:
        rule = self.settings.rule
        if rule == "add":
            step = outcome.sums
        elif rule == "mean":
            step = np.divide(
                outcome.sums,
                outcome.holders,
                out=np.zeros_like(outcome.sums),
                where=outcome.holders > 0,
            )
        else:
            assert outcome.uploaders is not None
            step = np.divide(
                outcome.sums,
                outcome.uploaders,
                out=np.zeros_like(outcome.sums),
                where=outcome.uploaders > 0,
            )
        set_flat_parameters(self.global_model, (global_vec + step).astype(np.float32))

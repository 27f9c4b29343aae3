"""Differentially private training: the privacy unit is one training record of one party.

Whatever the server, or anyone holding the final model, learns, the presence or absence of any
single record changes its probability by at most a factor e^epsilon (plus delta).

``distributed`` (Kairouz, Liu, Steinke 2021, "The Distributed Discrete Gaussian Mechanism")
    Each round runs ``steps_per_round`` noisy full-batch gradient steps. In a step every party
    computes the per-example gradients of the current model on all its rows, clips each to L2
    norm ``clip``, rotates them with a public randomized Hadamard transform (flattening, so the
    modular sum rarely wraps), scales by 1/gamma, rounds each example conditionally (its L2 norm
    stays below a known bound Delta_2: one record moves the sum by at most that), sums, adds
    **integer** discrete Gaussian noise of variance sigma^2_total / (t + 1), and submits the
    result, modulo 2^B, to secure aggregation. t + 1 is the fewest survivors for which the server
    may learn a sum (each survivor needs t surviving neighbours), so the decoded sum always
    carries at least sigma^2_total: dropouts can never silently weaken the guarantee, and nobody,
    not even the server, sees an un-noised sum.
``central``
    The reference: the same clipped, rounded sums go to the server in the clear and the server
    adds the whole noise once.
``local`` (Opacus DP-SGD, Abadi et al. 2016)
    Each party trains its part locally with DP-SGD through Opacus; its records are protected by
    its own sampled-Gaussian noise whatever happens to its updates.
``both``
    ``local`` training and ``distributed`` noise; both guarantees hold (the aggregate is
    post-processing of each party's DP-SGD output), so the reported epsilon is the smaller one.

Steps use all of a party's rows (no record subsampling), so the distributed accounting is the
plain composition of the DDGauss bound over steps, without an amplification argument.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from secagg import encoding, graph
from secagg.config import RoundConfig
from secagg.crypto import rng
from secagg.dp.mechanisms import check_noise_floor
from secagg.sim import DropoutScript, aggregate_in_memory

DP_MODES = ("none", "distributed", "central", "local", "both")
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class DPOptions:
    """What the user asks for (``secagg train --dp MODE --epsilon E --delta D``)."""

    mode: str = "none"
    epsilon: float | None = None
    delta: float = 1e-5
    clip: float = 1.0
    steps_per_round: int = 2
    server_lr: float = 4.0
    bits: int = 20
    beta: float = math.exp(-0.5)

    def __post_init__(self) -> None:
        if self.mode not in DP_MODES:
            raise ValueError(f"--dp must be one of {DP_MODES}")
        if self.mode != "none":
            if self.epsilon is None or not (self.epsilon > 0 and math.isfinite(self.epsilon)):
                raise ValueError("--dp needs a finite --epsilon > 0")
            if not 0 < self.delta < 1:
                raise ValueError("--delta must be in (0, 1)")
        if self.clip <= 0 or self.steps_per_round < 1:
            raise ValueError("clip must be positive and steps_per_round at least 1")

    @property
    def noisy_steps(self) -> bool:
        return self.mode in ("distributed", "central", "both")


def per_example_gradients(
    model: nn.Module, x: npt.NDArray[np.float32], y: npt.NDArray[np.float32]
) -> FloatArray:
    """Gradients of the BCE loss of every row, flattened in ``model.parameters()`` order."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, p, (xi.unsqueeze(0),))
        return nn.functional.binary_cross_entropy_with_logits(out, yi.unsqueeze(0))

    xt = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.as_tensor(np.ascontiguousarray(y, dtype=np.float32)).reshape(-1)
    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, xt, yt)
    flat = torch.cat([grads[k].reshape(xt.shape[0], -1) for k in params], dim=1)
    return flat.double().numpy()


def clip_rows(g: FloatArray, clip: float) -> FloatArray:
    """Scale every row to L2 norm at most ``clip`` (per-example clipping)."""
    norms = np.linalg.norm(g, axis=1)
    return g / np.maximum(1.0, norms / clip)[:, None]


def round_rows_conditionally(
    scaled: FloatArray, norm_bound: float, max_tries: int = 200
) -> npt.NDArray[np.int64]:
    """Conditional randomized rounding (Kairouz et al. 2021, section 4) of all rows at once:
    each coordinate rounds up with probability equal to its fractional part, decided by comparing
    53-bit CSPRNG integers with the fraction scaled to 2^53; rows whose rounded L2 norm exceeds
    ``norm_bound`` are redrawn, so every record's contribution is bounded by ``norm_bound``."""
    floor = np.floor(scaled)
    threshold = np.ceil((scaled - floor) * 2.0**53).astype(np.uint64)
    out = np.empty(scaled.shape, dtype=np.int64)
    todo = np.arange(scaled.shape[0])
    width = scaled.shape[1]
    for _ in range(max_tries):
        if todo.size == 0:
            return out
        u = rng.random_words(todo.size * width, np.uint64).reshape(todo.size, width)
        rounded = floor[todo] + ((u >> np.uint64(11)) < threshold[todo])
        ok = np.linalg.norm(rounded, axis=1) <= norm_bound
        out[todo[ok]] = rounded[ok].astype(np.int64)
        todo = todo[~ok]
    raise RuntimeError("conditional rounding kept exceeding its norm bound")


@dataclass(frozen=True)
class StepNoise:
    """The calibrated discrete Gaussian step (integer units: coordinates scaled by 1/gamma)."""

    scale: float  # clip / gamma: a clipped example's L2 norm in integer units
    l2_bound: float  # Delta_2 after conditional rounding
    sigma2_total: Fraction  # variance of the summed noise
    parties: int  # the fewest noise contributions in any released sum (t, or 1 when central)
    bits: int
    padded_dim: int

    @property
    def sigma2_party(self) -> Fraction:
        return self.sigma2_total / self.parties


def calibrate_step_noise(
    options: DPOptions, total_steps: int, rows: int, dim: int, parties: int
) -> tuple[StepNoise, float]:
    """Choose the scale (from the bit width) and the noise (from epsilon, delta and the number
    of steps) of the distributed or central mechanism.

    The modulus must hold the rotated noisy sum: after rotation each coordinate of the sum of
    ``rows`` clipped examples is about ||sum|| / sqrt(d) <= rows * scale / sqrt(d), and the noise
    adds a few sigma; 4x headroom on both keeps wrap-around improbable (modular clipping,
    Kairouz et al. 2021, section 4.4). The scale is walked down from fine resolution until that
    holds; the noise is recalibrated for each candidate (Delta_2 grows with the scale).

    Returns:
        (the calibration, the epsilon it achieves after ``total_steps``).
    """
    from secagg.dp.accounting import DEFAULT_ORDERS, calibrate_ddgauss, eps_from_rdp, rdp_ddgauss
    from secagg.dp.mechanisms import rounding_norm_bound

    assert options.epsilon is not None
    padded = 1 << max(0, (dim - 1).bit_length())
    half = 2.0 ** (options.bits - 1)
    scale = 4096.0
    while True:
        l2 = rounding_norm_bound(scale, padded, options.beta)
        total = calibrate_ddgauss(
            options.epsilon, options.delta, total_steps, 1.0, l2, None, parties, padded
        )
        if 4 * rows * scale / math.sqrt(padded) + 4 * math.sqrt(total) <= half:
            break
        scale *= 0.9
        if scale < 0.25:
            raise ValueError(
                f"{options.bits} bits cannot hold a noisy sum of {rows} records: use more bits"
            )
    # Round the per-party variance up to a multiple of 1/1024 (exact rational for the sampler).
    per_party = Fraction(math.ceil(total / parties * 1024), 1024)
    noise = StepNoise(scale, l2, per_party * parties, parties, options.bits, padded)
    rdp = rdp_ddgauss(l2, None, float(per_party), parties, padded, DEFAULT_ORDERS)
    return noise, float(
        eps_from_rdp(total_steps * np.asarray(rdp), DEFAULT_ORDERS, options.delta)[0]
    )


@dataclass
class StepReport:
    upload_bytes_mean: float
    download_bytes_mean: float
    survivors: int


class NoisyGradientTrainer:
    """Distributed (or central) DP training: full-batch noisy gradient steps on the whole model.

    Each party holds its rows; every step is one secure aggregation round (distributed) or one
    plaintext sum plus server-side noise (central). Parts of the model are not used here: record-
    level sensitivity is per example over the whole gradient (see ``docs/dp.md``).
    """

    def __init__(
        self,
        model: nn.Module,
        parties: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]],
        options: DPOptions,
        rounds: int,
        *,
        secure: bool,
        dropout: float = 0.0,
        seed: int = 0,
    ) -> None:
        from secagg.dp.mechanisms import RandomizedHadamard

        if options.mode not in ("distributed", "central", "both"):
            raise ValueError("NoisyGradientTrainer runs --dp distributed, central or both")
        self.model = model
        self.parties = parties
        self.options = options
        self.secure = options.mode in ("distributed", "both")
        if self.secure and not secure:
            raise ValueError(f"--dp {options.mode} needs secure aggregation (drop --no-secure)")
        self.dropout = dropout
        self.seed = seed
        n = len(parties)
        self.dim = sum(p.numel() for p in model.parameters())
        self.total_steps = rounds * options.steps_per_round
        if self.secure:
            # The fewest survivors whose sum the server may learn is t + 1 (every survivor needs
            # t surviving neighbours holding its shares): calibrate the per-party noise so that
            # exactly that many contributions carry the target noise.
            expected = min(max(0.05, dropout), 0.3)
            self.threshold = graph.complete_parameters(n, expected, 0.05).t
            # "both": every party's own contribution carries the whole noise, so it is DP by
            # itself (against a server that sees it unmasked, or colludes with all others).
            noise_parties = 1 if options.mode == "both" else self.threshold + 1
        else:
            self.threshold = 0
            noise_parties = 1
        rows = sum(len(y) for _, y in parties)
        self.noise, self.epsilon_total = calibrate_step_noise(
            options, self.total_steps, rows, self.dim, noise_parties
        )
        self.rotation = RandomizedHadamard(rng.token_bytes(16), self.dim)
        self.steps_done = 0

    def epsilon(self) -> float:
        """Epsilon spent so far (at ``options.delta``)."""
        from secagg.dp.accounting import DEFAULT_ORDERS, eps_from_rdp, rdp_ddgauss

        if self.steps_done == 0:
            return 0.0
        nz = self.noise
        rdp = rdp_ddgauss(
            nz.l2_bound, None, float(nz.sigma2_party), nz.parties, nz.padded_dim, DEFAULT_ORDERS
        )
        return float(
            eps_from_rdp(np.asarray(rdp) * self.steps_done, DEFAULT_ORDERS, self.options.delta)[0]
        )

    def _contribution(self, x: npt.NDArray[np.float32], y: npt.NDArray[np.float32]) -> Any:
        g = clip_rows(per_example_gradients(self.model, x, y), self.options.clip)
        rotated = self.rotation.rotate(g) * (self.noise.scale / self.options.clip)
        return round_rows_conditionally(rotated, self.noise.l2_bound).sum(axis=0)

    def step(self, round_index: int, dropped: set[int]) -> StepReport:
        from secagg.dp.samplers import discrete_gaussian

        n = len(self.parties)
        bits = self.noise.bits
        contributions = {u: self._contribution(x, y) for u, (x, y) in enumerate(self.parties)}
        survivors = [u for u in range(n) if u not in dropped]
        up = down = 0.0
        if self.secure:
            config = RoundConfig(
                session_id=rng.token_bytes(16),
                round_index=round_index,
                graph=graph.complete_graph(n),
                threshold=self.threshold,
                dim=self.noise.padded_dim,
                modulus_bits=bits,
            )
            check_noise_floor(config, self.noise.parties)
            inputs = {
                u: encoding.to_ring(c + discrete_gaussian(self.noise.sigma2_party, c.size), bits)
                for u, c in contributions.items()
            }
            outcome = aggregate_in_memory(
                config, inputs, DropoutScript({u: "masked_input" for u in dropped})
            )
            total = encoding.from_ring(outcome.result.total, bits).astype(np.float64)
            up = float(np.mean([outcome.upload_bytes[u] for u in survivors]))
            down = float(np.mean(list(outcome.download_bytes.values())))
        else:
            total_int = sum(contributions[u] for u in survivors)
            total_int = total_int + discrete_gaussian(self.noise.sigma2_total, total_int.size)
            # The server sees the plaintext sum: model the wrap-around of a B-bit channel too.
            total = encoding.from_ring(encoding.to_ring(total_int, bits), bits).astype(np.float64)
            up = 4.0 * self.noise.padded_dim
        rows = sum(len(self.parties[u][1]) for u in survivors)
        gradient = self.rotation.unrotate(total * (self.options.clip / self.noise.scale)) / rows
        with torch.no_grad():
            flat = torch.cat([p.reshape(-1) for p in self.model.parameters()])
            flat -= self.options.server_lr * torch.as_tensor(gradient[: self.dim], dtype=flat.dtype)
            offset = 0
            for p in self.model.parameters():
                p.copy_(flat[offset : offset + p.numel()].reshape(p.shape))
                offset += p.numel()
        self.steps_done += 1
        return StepReport(up, down + 4.0 * self.dim, len(survivors))

"""Differentially private training, on the random parameter parts or on the whole model.

**Privacy unit** (stated once, used everywhere: docs/dp.md): one training record of one party,
add/remove adjacency. Whatever the server, or anyone holding the final model, learns, the
presence or absence of any single record changes its probability by at most a factor e^epsilon
(plus delta). Who holds which part, who survives a round and how many parties there are are
public; per-party row counts are not (the server never uses them, see "Normaliser").

``distributed`` (Kairouz, Liu, Steinke 2021, "The Distributed Discrete Gaussian Mechanism")
    Every round the server draws a fresh random part for every party (``--protocol
    parameter-parts``; ``fedavg`` is one block held by everyone), and runs ``steps_per_round``
    noisy full-batch gradient steps on it. In a step every party computes the per-example
    gradients of its local model (its part overwritten with the server's values) on all its rows,
    **restricted to its part**, clips each to L2 norm ``clip`` over the part, rotates every block
    with a public randomized Hadamard transform of that block (block-diagonal, so holders of a
    block share the rotation and the per-block sums stay sums), scales by 1/gamma, rounds each
    example conditionally (its L2 norm stays below a known bound Delta_2: one record moves the
    release by at most that, over all blocks together), sums, adds **integer** discrete Gaussian
    noise to each block and submits its blocks, modulo 2^B, to part-wise secure aggregation.
    The noise of block b is calibrated to ``floor_b``, the number of b's holders guaranteed to
    survive any round the engine completes (:func:`block_noise_floors`): each holder adds
    ``ceil(T / floor_b)``, so every released block sum carries at least the target variance T;
    a thinner block gets more noise per holder, never less noise in total.
``central``
    The reference: the same clipped, rounded per-block sums go to the server in the clear and the
    server adds N_Z(0, T) to each block once.
``both``
    ``distributed`` with every party adding the whole T to each of its blocks (floor 1): each
    party's own contribution is then DP by itself, against a server that would see it unmasked or
    collude with every other party; the reported epsilon is that per-contribution guarantee (the
    sum carries more noise and is post-processing). Not Opacus: ``local`` is the DP-SGD mode.
``local`` (Opacus DP-SGD, Abadi et al. 2016)
    Runs in :class:`protocols.parameter_parts.protocol.ParameterPartsTrainer`: each party trains
    only its part with DP-SGD (per-sample gradients masked to the part before clipping).

Accounting. Steps use all of a party's rows (no record subsampling) and the random parts are
chosen by the server, which knows them: **no amplification** is claimed from either. Per step the
release is a product over blocks of sums of discrete Gaussians; every block's summed variance over
its guaranteed holders is at least T and its per-holder variance at least T / p, where p is the
largest floor possible (``max(min_holders, t + 1)``). Each of the three terms of the KLS bound is a
sum over coordinates of terms increasing in tau and decreasing in the summed variance, so the bound
for (T / p per party, p parties) on all d released coordinates holds for every block at once. The
epsilon is that per-step RDP composed over the steps.

Normaliser. The server divides a block sum by ``survivors holding the block x records / parties``
where ``records`` is a public, data-independent figure (:attr:`DPOptions.records`): nothing the
server computes depends on exact row counts, so the add/remove-one guarantee is not undone by a
count the server would otherwise need. The modulus scale is sized from the same public figure.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from protocols.models import flat_parameters, parameter_layers, set_flat_parameters
from protocols.parameter_parts.selection import PartSelection, select_parts
from secagg import encoding, graph
from secagg.config import RoundConfig
from secagg.crypto import prg, rng
from secagg.dp.accounting import DEFAULT_ORDERS, calibrate_ddgauss, eps_from_rdp, rdp_ddgauss
from secagg.dp.mechanisms import (  # block_noise_floors: re-exported, it lived here first
    block_noise_floors,
    check_noise_floor,
    rounding_norm_bound,
)
from secagg.errors import AbortedError, ConfigError, EncodingError
from secagg.layout import BlockLayout, concat_ranges
from secagg.sim import DropoutScript, aggregate_in_memory

DP_MODES = ("none", "distributed", "central", "local", "both")
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class DPOptions:
    """What the user asks for (``secagg train --dp MODE --epsilon E --delta D``).

    Attributes:
        records: the public, data-independent number of training records (all parties) that
            normalises the noisy sums and sizes the modulus; ``None`` lets the runner take it from
            the data set's public metadata (refused when there is none).
    """

    mode: str = "none"
    epsilon: float | None = None
    delta: float = 1e-5
    clip: float = 1.0
    steps_per_round: int = 2
    server_lr: float = 4.0
    bits: int = 20
    beta: float = math.exp(-0.5)
    records: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in DP_MODES:
            raise ConfigError(f"--dp must be one of {DP_MODES}, got {self.mode!r}")
        if self.mode != "none":
            if self.epsilon is None or not (self.epsilon > 0 and math.isfinite(self.epsilon)):
                raise ConfigError(f"--dp needs a finite --epsilon > 0, got {self.epsilon}")
            if not 0 < self.delta < 1:
                raise ConfigError(f"--delta must be in (0, 1), got {self.delta}")
        if not (self.clip > 0 and math.isfinite(self.clip)):
            raise ConfigError(f"--dp-clip must be positive, got {self.clip}")
        if self.steps_per_round < 1:
            raise ConfigError(f"--dp-steps must be at least 1, got {self.steps_per_round}")
        if self.records is not None and self.records < 1:
            raise ConfigError(f"--dp-records must be at least 1, got {self.records}")

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
    out: FloatArray = g / np.maximum(1.0, norms / clip)[:, None]
    return out


def round_rows_conditionally(
    scaled: FloatArray, norm_bound: float, max_tries: int = 200
) -> IntArray:
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
    raise EncodingError(
        f"conditional rounding kept exceeding its norm bound {norm_bound:.6g} in {max_tries} tries"
    )


# --------------------------------------------------------------------------------------------
# Block-diagonal rotation
# --------------------------------------------------------------------------------------------


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _fwht_last(v: FloatArray) -> FloatArray:
    """Normalized Walsh-Hadamard transform along the last axis (a power of two): orthonormal and
    its own inverse."""
    n = v.shape[-1]
    lead = v.shape[:-1]
    out = np.array(v, dtype=np.float64)
    h = 1
    while h < n:
        blocks = out.reshape(*lead, n // (2 * h), 2, h)
        out = np.stack(
            (blocks[..., 0, :] + blocks[..., 1, :], blocks[..., 0, :] - blocks[..., 1, :]), axis=-2
        ).reshape(*lead, n)
        h *= 2
    result: FloatArray = out / math.sqrt(n)
    return result


class BlockRotation:
    """``R = diag(H_b D_b / sqrt(p_b))``: each block b of the model, zero-padded to ``p_b`` (a
    power of two), gets its own randomized Hadamard rotation (random signs from the AES-CTR
    keystream of a public 16-byte seed, fresh per round). All holders of b rotate it the same
    way, so the secure per-block sum of rotated vectors is the rotated per-block sum; the
    rotation is orthonormal, so an example's L2 norm over its part is unchanged (Kairouz et al.
    2021 rotate to spread a vector over coordinates so the modular sum rarely wraps)."""

    def __init__(self, seed: bytes, block_sizes: tuple[int, ...]) -> None:
        self.block_sizes = block_sizes
        self.padded_sizes = tuple(_pow2(s) for s in block_sizes)
        self.padded_offsets = np.concatenate([[0], np.cumsum(self.padded_sizes)]).astype(np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(block_sizes)]).astype(np.int64)
        self.padded_dim = int(self.padded_offsets[-1])
        keystream = prg.expand(seed, (self.padded_dim + 7) // 8, np.uint8)
        bits = np.unpackbits(keystream.astype(np.uint8), bitorder="little")[: self.padded_dim]
        self.signs: FloatArray = 1.0 - 2.0 * bits.astype(np.float64)

    def padded_positions(self, blocks: IntArray) -> IntArray:
        return concat_ranges(
            self.padded_offsets[blocks], np.asarray(self.padded_sizes, dtype=np.int64)[blocks]
        )

    def _transform(self, padded: FloatArray, blocks: IntArray) -> None:
        """Apply the per-block Hadamard in place on columns laid out as ``blocks`` padded."""
        sizes = np.asarray(self.padded_sizes, dtype=np.int64)[blocks]
        starts = np.concatenate([[0], np.cumsum(sizes)])[:-1]
        for size in np.unique(sizes):
            chosen = np.flatnonzero(sizes == size)
            cols = concat_ranges(starts[chosen], np.full(chosen.size, size, dtype=np.int64))
            sub = padded[:, cols].reshape(padded.shape[0], chosen.size, int(size))
            padded[:, cols] = _fwht_last(sub).reshape(padded.shape[0], -1)

    def rotate(self, x: FloatArray, blocks: IntArray) -> FloatArray:
        """Rows of a party's vector (its ``blocks`` concatenated, unpadded) -> rotated, padded."""
        sizes = np.asarray(self.block_sizes, dtype=np.int64)[blocks]
        psizes = np.asarray(self.padded_sizes, dtype=np.int64)[blocks]
        pstarts = np.concatenate([[0], np.cumsum(psizes)])[:-1]
        out = np.zeros((x.shape[0], int(psizes.sum())), dtype=np.float64)
        out[:, concat_ranges(pstarts, sizes)] = x
        out *= self.signs[self.padded_positions(blocks)]
        self._transform(out, blocks)
        return out

    def unrotate_rows(self, y: FloatArray, blocks: IntArray) -> FloatArray:
        """Rows laid out as ``blocks`` padded and rotated -> rows of the unpadded blocks (the
        inverse of :meth:`rotate`)."""
        out = np.array(y, dtype=np.float64)
        self._transform(out, blocks)
        out *= self.signs[self.padded_positions(blocks)]
        sizes = np.asarray(self.block_sizes, dtype=np.int64)[blocks]
        psizes = np.asarray(self.padded_sizes, dtype=np.int64)[blocks]
        pstarts = np.concatenate([[0], np.cumsum(psizes)])[:-1]
        result: FloatArray = out[:, concat_ranges(pstarts, sizes)]
        return result

    def unrotate(self, y: FloatArray) -> FloatArray:
        """A full padded vector (every block) -> the model-length vector."""
        blocks = np.arange(len(self.block_sizes), dtype=np.int64)
        out = np.array(y, dtype=np.float64).reshape(1, -1)
        self._transform(out, blocks)
        out *= self.signs
        keep = concat_ranges(self.padded_offsets[:-1], np.asarray(self.block_sizes, np.int64))
        result: FloatArray = out[0, keep]
        return result


# --------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------


def _ceil_1024(value: Fraction) -> Fraction:
    return Fraction(math.ceil(value * 1024), 1024)


@dataclass(frozen=True)
class StepNoise:
    """The calibrated discrete Gaussian step (integer units: coordinates scaled by 1/gamma).

    ``sigma2_total`` (T) is the variance every released block sum carries at least; a holder of a
    block whose guaranteed survivors are ``floor`` adds :meth:`sigma2_for` of it. ``parties`` is
    the largest floor any block can have (the accounting's worst case, see module docstring).
    """

    scale: float  # clip / gamma: a clipped example's L2 norm in integer units
    l2_bound: float  # Delta_2 after conditional rounding
    sigma2_total: Fraction  # T, variance of a released block sum over its guaranteed holders
    parties: int  # the largest guaranteed-holder count of any block (1 when central / both)
    bits: int
    padded_dim: int

    def sigma2_for(self, floor: int) -> Fraction:
        """Per-holder variance of a block with ``floor`` guaranteed holders (rounded up)."""
        if floor < 1:
            raise ConfigError(f"a noised block needs at least 1 guaranteed holder, got {floor}")
        return _ceil_1024(self.sigma2_total / floor)

    @property
    def sigma2_party(self) -> Fraction:
        """Per-holder variance of a block with the largest floor (the smallest share)."""
        return self.sigma2_for(self.parties)

    def rdp_per_step(self) -> FloatArray:
        """Per-step RDP, valid for every block (T / p per holder, p holders: worst tau)."""
        return rdp_ddgauss(
            self.l2_bound,
            None,
            float(self.sigma2_total / self.parties),
            self.parties,
            self.padded_dim,
            DEFAULT_ORDERS,
        )


def calibrate_step_noise(
    options: DPOptions,
    total_steps: int,
    rows: int,
    dim: int,
    parties: int,
    *,
    max_noise_factor: float = 1.0,
    spread_dim: int | None = None,
) -> tuple[StepNoise, float]:
    """Choose the scale (from the bit width) and the noise (from epsilon, delta and the number
    of steps) of the distributed or central mechanism.

    Args:
        rows: the PUBLIC record count (never the data's exact count: the scale is part of the
            mechanism, so it must not depend on the data).
        dim: the released dimension (padded blocks), for Delta_2 and the tau term.
        parties: the largest guaranteed-holder count of a block (calibration's worst tau).
        max_noise_factor: how far above T a released sum's noise can be (all holders surviving
            with the per-holder share of the thinnest block), for the modulus headroom.
        spread_dim: coordinates an example spreads over after rotation (its part), default dim.

    The modulus must hold the rotated noisy sum: each coordinate of the sum of ``rows`` clipped
    examples is about rows * scale / sqrt(spread_dim), and the noise adds a few sigma; 4x
    headroom on both keeps wrap-around improbable (modular clipping, Kairouz et al. 2021, section
    4.4: it can hurt accuracy, never privacy). The scale is walked down from fine resolution
    until that holds; the noise is recalibrated for each candidate (Delta_2 grows with it).

    Returns:
        (the calibration, the epsilon it achieves after ``total_steps``).
    """
    if options.epsilon is None:
        raise ConfigError("calibration needs --epsilon")
    padded = _pow2(dim)
    spread = _pow2(spread_dim if spread_dim is not None else dim)
    half = 2.0 ** (options.bits - 1)
    scale = 4096.0
    while True:
        l2 = rounding_norm_bound(scale, padded, options.beta)
        total = calibrate_ddgauss(
            options.epsilon, options.delta, total_steps, 1.0, l2, None, parties, padded
        )
        noise = 4 * math.sqrt(total * max_noise_factor)
        if 4 * rows * scale / math.sqrt(spread) + noise <= half:
            break
        scale *= 0.9
        if scale < 0.25:
            raise ConfigError(
                f"--dp-bits {options.bits} cannot hold a noisy sum of {rows} records: use more bits"
            )
    sigma2_total = _ceil_1024(Fraction(total))
    noise_cal = StepNoise(scale, l2, sigma2_total, parties, options.bits, padded)
    rdp = noise_cal.rdp_per_step()
    return noise_cal, float(
        eps_from_rdp(total_steps * np.asarray(rdp), DEFAULT_ORDERS, options.delta)[0]
    )


# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartsSpec:
    """How the server draws parts (the parameter-part protocol's step 1); ``download_fraction``
    1 with ``unit="whole"`` is one block of the whole model held by every party (FedAvg)."""

    download_fraction: float = 1.0
    unit: str = "whole"
    block_size: int = 8
    min_holders: int = 3
    selection_margin: int = 0  # extra holders drawn per block for expected dropouts


@dataclass
class RoundStats:
    """What one DP round reports (the ``secagg train --json`` round object adds metrics)."""

    survivors: int
    upload_bytes_mean: float
    download_bytes_mean: float
    part_fraction_mean: float
    noise_floor: dict[str, Any]
    aborted: str | None = None
    steps: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class NoisyGradientTrainer:
    """Distributed (or central) DP training: noisy full-batch gradient steps on random parts.

    Each party holds its rows and a local copy of the model; every step is one part-wise secure
    aggregation round (distributed, both) or one plaintext sum per block plus server-side noise
    (central). See the module docstring for the mechanism and its accounting.
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
        parts: PartsSpec | None = None,
    ) -> None:
        if options.mode not in ("distributed", "central", "both"):
            raise ConfigError(
                f"NoisyGradientTrainer runs --dp distributed, central or both, not {options.mode}"
            )
        if options.records is None:
            raise ConfigError(
                "DP training needs a public record count (--dp-records N): the normaliser must"
                " not depend on the data"
            )
        self.model = model
        self.parties = parties
        self.options = options
        self.parts = parts if parts is not None else PartsSpec()
        self.secure = options.mode in ("distributed", "both")
        if self.secure and not secure:
            raise ConfigError(f"--dp {options.mode} needs secure aggregation (drop --no-secure)")
        self.dropout = dropout
        self.seed = seed
        n = len(parties)
        self.dim = sum(p.numel() for p in model.parameters())
        self.layers = parameter_layers(model)
        self.total_steps = rounds * options.steps_per_round
        if self.parts.unit == "whole":
            self.block_sizes: tuple[int, ...] = (self.dim,)
        else:
            probe = select_parts(
                self.dim,
                self.layers,
                n,
                1.0,
                unit=self.parts.unit,
                block_size=self.parts.block_size,
                min_holders=1,
            )
            self.block_sizes = probe.block_sizes
        self.padded_dim = sum(_pow2(s) for s in self.block_sizes)
        if self.secure:
            expected = min(max(0.05, dropout), 0.3)
            self.threshold = graph.complete_parameters(n, expected, 0.05).t
            self.min_holders = 2 if self.parts.unit == "whole" else self.parts.min_holders
            if self.min_holders < 2:
                raise ConfigError(
                    f"--min-holders {self.min_holders}: DP on parts needs at least 2 (a block sum"
                    " of one holder is that holder's value)"
                )
            # "both": every party's own share carries the whole noise (floor 1 per block).
            worst = 1 if options.mode == "both" else max(self.min_holders, self.threshold + 1)
            thinnest = 1 if options.mode == "both" else self.min_holders
        else:
            self.threshold = 0
            self.min_holders = 1
            worst = thinnest = 1
        spread = self.padded_dim
        if self.parts.unit != "whole":
            spread = max(1, round(self.padded_dim * self.parts.download_fraction))
        self.records = options.records
        self.noise, self.epsilon_total = calibrate_step_noise(
            options,
            self.total_steps,
            self.records,
            self.padded_dim,
            worst,
            max_noise_factor=n / thinnest if self.secure else 1.0,
            spread_dim=spread,
        )
        self._rdp_step = self.noise.rdp_per_step()
        self.steps_done = 0
        self.global_vec = flat_parameters(model).astype(np.float64)
        self.local_vecs = [self.global_vec.copy() for _ in parties]
        self._scratch = copy.deepcopy(model)  # evaluates a party's local copy

    # ---- accounting -----------------------------------------------------------------------

    def epsilon(self) -> float:
        """Epsilon spent so far (at ``options.delta``): the per-step bound composed."""
        if self.steps_done == 0:
            return 0.0
        return float(
            eps_from_rdp(self._rdp_step * self.steps_done, DEFAULT_ORDERS, self.options.delta)[0]
        )

    # ---- one round ------------------------------------------------------------------------

    def draw_parts(self) -> PartSelection:
        n = len(self.parties)
        if self.parts.unit == "whole":
            return PartSelection((self.dim,), tuple((0,) for _ in range(n)), "whole", 1)
        return select_parts(
            self.dim,
            self.layers,
            n,
            self.parts.download_fraction,
            unit=self.parts.unit,
            block_size=self.parts.block_size,
            min_holders=min(n, self.parts.min_holders + self.parts.selection_margin),
        )

    def floors(self, selection: PartSelection) -> IntArray:
        """Guaranteed holders per block (1 per held block when each share carries all noise)."""
        counts = selection.holder_counts()
        if not self.secure or self.options.mode == "both":
            return np.where(counts > 0, 1, 0).astype(np.int64)
        return block_noise_floors(counts, len(self.parties), self.threshold, self.min_holders)

    def run_round(self, round_index: int, dropped: set[int]) -> RoundStats:
        """Draw fresh parts, then ``steps_per_round`` noisy steps on them."""
        selection = self.draw_parts()
        floors = self.floors(selection)
        held = floors > 0
        if self.noise.parties < int(floors.max()):
            raise ConfigError(  # never account for less than the noise floor actually used
                f"a block has {int(floors.max())} guaranteed holders, more than the calibrated"
                f" {self.noise.parties}"
            )
        sigma2 = {int(f): self.noise.sigma2_for(int(f)) for f in np.unique(floors[held])}
        block_total = np.array(
            [float(sigma2[int(f)] * int(f)) if f > 0 else math.inf for f in floors]
        )
        ups: list[float] = []
        downs: list[float] = []
        survivors = 0
        aborted = None
        for _ in range(self.options.steps_per_round):
            try:
                up, down, survivors = self._step(round_index, selection, floors, sigma2, dropped)
                ups.append(up)
                downs.append(down)
            except AbortedError as exc:  # nothing released; the model stays as it was
                aborted = str(exc)
            # Counted even when aborted: conservative (an aborted step releases nothing).
            self.steps_done += 1
        n = len(self.parties)
        fractions = [selection.party_indices(u).size / self.dim for u in range(n)]
        floor_info = {
            "guaranteed_holders_min": int(floors[held].min()),
            "guaranteed_holders_max": int(floors[held].max()),
            "sigma2_party_max": float(max(sigma2.values())),
            "sigma2_party_min": float(min(sigma2.values())),
            # The least noise in any released block sum (over its guaranteed holders).
            "sigma2_block_min": float(block_total[held].min()),
            "noise_std_min": math.sqrt(float(block_total[held].min()))
            * self.options.clip
            / self.noise.scale,
            "blocks": int(held.sum()),
        }
        return RoundStats(
            survivors=survivors,
            upload_bytes_mean=float(np.mean(ups)) if ups else 0.0,
            download_bytes_mean=float(np.mean(downs)) if downs else 0.0,
            part_fraction_mean=float(np.mean(fractions)),
            noise_floor=floor_info,
            aborted=aborted,
            steps=self.options.steps_per_round,
        )

    def _contribution(self, u: int, selection: PartSelection, rotation: BlockRotation) -> IntArray:
        """Party u's clipped, rotated, scaled, conditionally rounded sum over its rows, on its
        blocks (padded, concatenated in block order)."""
        x, y = self.parties[u]
        where = selection.party_indices(u)
        local = self.local_vecs[u]
        local[where] = self.global_vec[where]  # step 2: the part comes from the server
        scratch = self._scratch
        set_flat_parameters(scratch, local.astype(np.float32))
        g = clip_rows(per_example_gradients(scratch, x, y)[:, where], self.options.clip)
        blocks = np.asarray(selection.holdings[u], dtype=np.int64)
        rotated = rotation.rotate(g, blocks) * (self.noise.scale / self.options.clip)
        summed: IntArray = round_rows_conditionally(rotated, self.noise.l2_bound).sum(axis=0)
        return summed

    def _noise(
        self, blocks: IntArray, floors: IntArray, sigma2: dict[int, Fraction], sizes: IntArray
    ) -> IntArray:
        """Integer noise for ``blocks`` (padded, concatenated): one exact sampler call per
        distinct per-holder variance."""
        from secagg.dp.samplers import discrete_gaussian

        lengths = sizes[blocks]
        starts = np.concatenate([[0], np.cumsum(lengths)])[:-1]
        out = np.zeros(int(lengths.sum()), dtype=np.int64)
        block_floor = floors[blocks]
        for f in np.unique(block_floor):
            chosen = np.flatnonzero(block_floor == f)
            cols = concat_ranges(starts[chosen], lengths[chosen])
            out[cols] = discrete_gaussian(sigma2[int(f)], cols.size)
        return out

    def _step(
        self,
        round_index: int,
        selection: PartSelection,
        floors: IntArray,
        sigma2: dict[int, Fraction],
        dropped: set[int],
    ) -> tuple[float, float, int]:
        from secagg.dp.samplers import discrete_gaussian

        n = len(self.parties)
        bits = self.noise.bits
        rotation = BlockRotation(rng.token_bytes(16), selection.block_sizes)
        psizes = np.asarray(rotation.padded_sizes, dtype=np.int64)
        contributions = {u: self._contribution(u, selection, rotation) for u in range(n)}
        alive = [u for u in range(n) if u not in dropped]
        part_bytes = {u: 4 * selection.party_indices(u).size for u in range(n)}
        if self.secure:
            layout = BlockLayout(
                tuple(int(s) for s in psizes), selection.holdings, min_holders=self.min_holders
            )
            config = RoundConfig(
                session_id=rng.token_bytes(16),
                round_index=round_index,
                graph=graph.complete_graph(n),
                threshold=self.threshold,
                dim=layout.dim,
                modulus_bits=bits,
                layout=layout,
            )
            if self.options.mode != "both":
                check_noise_floor(config, self.min_holders)
            inputs = {}
            for u, c in contributions.items():
                blocks = np.asarray(selection.holdings[u], dtype=np.int64)
                inputs[u] = encoding.to_ring(c + self._noise(blocks, floors, sigma2, psizes), bits)
            outcome = aggregate_in_memory(
                config, inputs, DropoutScript({u: "masked_input" for u in dropped})
            )
            total = encoding.from_ring(outcome.result.total, bits).astype(np.float64)
            block_alive = np.asarray(outcome.result.block_survivors, dtype=np.int64)
            survivors = len(outcome.result.survivors)
            up = float(np.mean([outcome.upload_bytes[u] for u in outcome.result.survivors]))
            down = float(np.mean([outcome.download_bytes[u] + part_bytes[u] for u in range(n)]))
        else:
            total_int = np.zeros(rotation.padded_dim, dtype=np.int64)
            block_alive = np.zeros(len(selection.block_sizes), dtype=np.int64)
            for u in alive:
                blocks = np.asarray(selection.holdings[u], dtype=np.int64)
                total_int[rotation.padded_positions(blocks)] += contributions[u]
                block_alive[blocks] += 1
            released = np.flatnonzero(block_alive > 0)
            cols = rotation.padded_positions(released)
            total_int[cols] += discrete_gaussian(self.noise.sigma2_total, cols.size)
            # The server sees the plaintext sum: model the wrap-around of a B-bit channel too.
            total = encoding.from_ring(encoding.to_ring(total_int, bits), bits).astype(np.float64)
            survivors = len(alive)
            up = float(np.mean([4.0 * selection.party_indices(u).size for u in alive]))
            down = float(np.mean(list(part_bytes.values())))
        gradient_sum = rotation.unrotate(total * (self.options.clip / self.noise.scale))
        # Public normaliser: surviving holders of the block times the public records per party.
        per_party = self.records / n
        norm = np.repeat(block_alive.astype(np.float64) * per_party, selection.block_sizes)
        step = np.divide(gradient_sum, norm, out=np.zeros_like(gradient_sum), where=norm > 0)
        self.global_vec = self.global_vec - self.options.server_lr * step
        set_flat_parameters(self.model, self.global_vec.astype(np.float32))
        return up, down, survivors

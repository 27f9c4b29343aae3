"""Audit "inversion": can the server reconstruct a party's training record from what it receives?

Setting: UCI Adult (107 standardized / one-hot features), the ``mlp`` model (Linear(107, 32) -
ReLU - Linear(32, 1)) at its shared initialization, one local SGD step (lr 0.1) per party, the
change clipped to [-1, 1] per value as in the protocols. The adversary is the server.

1. Exact attack on the first fully connected layer with bias (Phong et al. 2017; Geiping et al.
   2020): for one record, dW_i = -lr g_i x and db_i = -lr g_i, so ``x = dW_i / db_i`` for every
   hidden unit i with db_i != 0. Shown on the plaintext FedAvg upload of a party holding one
   record; it must reach a relative error below 1e-4 (the attack is real).
2. Optimisation attack (DLG, Zhu et al. 2019, with iDLG-style label inference): Adam on dummy
   records so that their gradient matches the upload, for a batch of several records. Errors are
   per record after the best one-to-one matching (the attacker does not know the order). The
   same attack on the single-record upload must beat the mean-record guess by a factor 2 (the
   attack is real: it is the variant run on the secure targets, which hold one record each).
   The batch result is reported, not gated: it depends on the batch (a check over 8 random
   mixed-label batches of 4 at 300 steps gave mean best-match errors from 0.08 to 0.75 against
   ~0.8 for the mean-record guess; the quick run's fixed batch happens to be recovered almost
   exactly).
3. Parameter parts without secure aggregation: the party holds a random part (blocks of 16
   coordinates, :func:`select_parts`) and uploads all / topk / random coordinates of its change.
   A coordinate x_j is recovered when some dW_ij and db_i (!= 0) are both uploaded ("bias ratio",
   as in the brief) or, a stronger variant, when row i holds an uploaded non-zero entry at a
   one-hot column (that entry is -lr g_i * 1, which fixes the scale without the bias:
   "one-hot scale"). Reported: coverage and the record error with unrecovered coordinates filled
   by the training mean. Informational, no pass criterion.
4. Secure transcript: every party's update is encoded (:class:`FixedPointEncoder`, 20 value bits)
   and aggregated for real (:func:`aggregate_in_memory`, complete graph, ``transcript=``). Each
   target's MaskedInput is taken from the wire bytes, decoded as if it were the update and
   attacked with 1. and 2.; the outputs are also projected onto the data domain (numeric columns
   clipped to the training range, one 1 per one-hot group), which can only help the attacker.

Criterion for 4. The masked vector is the encoded update plus a uniform mask over Z_(2^B), so
it is independent of the record; anything computed from it is a data-independent guess. Among
those, the training mean minimises the expected squared error, so the mean record is the best
"guess without information"; a random training record (expected error over many draws) is
reported too, it is worse by about sqrt(2). The audit requires, for every attack variant, the mean
relative error over the targets to be at least ``BASELINE_FACTOR`` (0.9) x the mean-record error
on the same targets: the 10 % slack covers the finite number of targets and the fact that
relative (not squared) error is measured. An attack that learned anything usable would land far
below (the plaintext attacks reach 1e-7 and ~0.1 against ~0.9).

Outside the criterion, the audit also reports what the server learns legitimately: the round's
*sum*. With few parties and a ReLU layer, a hidden unit activated by only one record turns the
sum into that record's update on that unit, and ``dW_i / db_i`` recovers it (Fowl et al. 2022
exploit this on purpose); the attacker can recognise such candidates because their one-hot groups
come out as exact 0/1. Secure aggregation hides each input, not what the sum itself reveals.

``weaken="no-secure-aggregation"``: the "transcript" is the plaintext uploads (as with
:func:`protocols.aggregation.aggregate_plain`); attack 4 then recovers the records and the audit
fails.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from protocols.datasets import TabularData, load_adult
from protocols.models import flat_parameters, make_model, parameter_layers
from protocols.parameter_parts.selection import select_parts
from protocols.parameter_parts.upload import clip_values, upload_mask
from protocols.training import local_train
from secagg import encoding, graph
from secagg import messages as wire
from secagg.config import RoundConfig
from secagg.crypto import rng
from secagg.sim import aggregate_in_memory

NAME = "inversion"
WEAKENINGS = ("no-secure-aggregation",)
HIDDEN = 32
LR = 0.1  # the parties' local SGD step (protocols' default lr)
GAMMA = 1.0  # per-value clip of the change (protocols' default gamma)
VALUE_BITS = 20  # fixed-point bits of one value (protocols' default)
EXACT_LIMIT = 1e-4  # plaintext exact attack must reach this relative error
DLG_FACTOR = 0.5  # plaintext single-record DLG must beat the mean-record error by this factor
BASELINE_FACTOR = 0.9  # secure attacks must stay above this fraction of the mean-record error
RECOVERED = 0.05  # a candidate within this relative error counts as the record recovered
SEED = 7

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class _Sizes:
    dlg_steps: int
    dlg_batch: int
    parties: int
    secure_rounds: int
    dlg_secure_targets: int
    parts_records: int
    downloads: tuple[float, ...]
    uploads: tuple[tuple[str, float], ...]
    random_records: int


def _sizes(quick: bool) -> _Sizes:
    if quick:
        return _Sizes(
            300,
            4,
            5,
            2,
            2,
            2,
            (1.0, 0.5, 0.25),
            (("all", 1.0), ("topk", 0.1), ("random", 0.1)),
            500,
        )
    return _Sizes(
        1500,
        4,
        5,
        8,
        6,
        10,
        (1.0, 0.5, 0.25, 0.1),
        (("all", 1.0), ("topk", 0.1), ("random", 0.1), ("topk", 0.02), ("random", 0.02)),
        5000,
    )


# -- data, model and the parties' updates --------------------------------------------------------


@dataclass(frozen=True)
class _Domain:
    """What the attacker may assume about records: feature layout and public ranges."""

    mean: FloatArray
    lo: FloatArray
    hi: FloatArray
    groups: tuple[tuple[int, ...], ...]  # one-hot groups (column indices)
    numeric: tuple[int, ...]

    @classmethod
    def of(cls, data: TabularData) -> _Domain:
        x = data.x_train.astype(np.float64)
        by_prefix: dict[str, list[int]] = {}
        numeric = []
        for j, name in enumerate(data.feature_names):
            if "=" in name:
                by_prefix.setdefault(name.split("=", 1)[0], []).append(j)
            else:
                numeric.append(j)
        return cls(
            x.mean(0),
            x.min(0),
            x.max(0),
            tuple(tuple(g) for g in by_prefix.values()),
            tuple(numeric),
        )

    @property
    def onehot(self) -> npt.NDArray[np.int64]:
        return np.asarray(sorted(itertools.chain.from_iterable(self.groups)), dtype=np.int64)

    def project(self, x: FloatArray) -> FloatArray:
        """The closest-looking valid record: numeric clipped to range, argmax per one-hot group."""
        x = np.where(np.isfinite(x), x, 0.0).astype(np.float64)
        out = np.clip(x, self.lo, self.hi)
        for g in self.groups:
            cols = np.asarray(g)
            out[cols] = 0.0
            out[cols[np.argmax(x[cols])]] = 1.0
        return out

    def looks_valid(self, x: FloatArray, tol: float = 1e-2) -> bool:
        """Attacker-side check of a candidate: one-hot groups are 0/1 with at most one 1."""
        if not np.all(np.isfinite(x)):
            return False
        for g in self.groups:
            v = x[list(g)]
            if not np.all((np.abs(v) < tol) | (np.abs(v - 1) < tol)) or (v > 0.5).sum() > 1:
                return False
        return True


def rel_error(guess: npt.ArrayLike, truth: npt.ArrayLike) -> float:
    """||guess - truth|| / ||truth|| (inf when the guess is not finite)."""
    g = np.asarray(guess, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    if not np.all(np.isfinite(g)):
        return math.inf
    return float(np.linalg.norm(g - t) / np.linalg.norm(t))


def one_step_update(model: nn.Module, x: FloatArray, y: FloatArray) -> FloatArray:
    """A party's plaintext upload: the change of one full-batch SGD step, clipped per value."""
    local = copy.deepcopy(model)
    local_train(local, x, y, epochs=1, batch_size=len(x), lr=LR)
    change = flat_parameters(local).astype(np.float64) - flat_parameters(model).astype(np.float64)
    return clip_values(change, GAMMA)


def _first_layer(vec: FloatArray, model: nn.Module) -> tuple[FloatArray, FloatArray]:
    spans = {name: (a, b) for name, a, b in parameter_layers(model)}
    w0, w1 = spans["hidden.weight"]
    b0, b1 = spans["hidden.bias"]
    hidden = b1 - b0
    return vec[w0:w1].reshape(hidden, -1), vec[b0:b1]


# -- attack 1: exact, first layer ----------------------------------------------------------------


def exact_attack(vec: FloatArray, model: nn.Module) -> tuple[FloatArray, FloatArray]:
    """``x = dW_i / db_i`` for the unit with the largest |db_i|; also every unit's candidate."""
    W, b = _first_layer(vec, model)
    with np.errstate(divide="ignore", invalid="ignore"):
        candidates = W / b[:, None]
    active = np.flatnonzero(b != 0)
    if active.size == 0:
        return np.zeros(W.shape[1]), candidates[:0]
    best = int(np.argmax(np.abs(b)))
    return candidates[best], candidates[active]


# -- attack 2: optimisation (DLG) ------------------------------------------------------------


def dlg_attack(model: nn.Module, vec: FloatArray, batch: int, steps: int, seed: int) -> FloatArray:
    """Gradient matching: dummy records whose one-step update matches ``vec``.

    The target gradient is ``-vec / lr`` (the server sets lr). Labels: the gradient of the output
    bias is mean(p - y), so the number of positives is ``round(batch * (p_bar - g_b))`` with p_bar
    the model's mean prediction on the dummies; which dummy gets which label does not matter
    (the dummies are interchangeable), so no search over assignments is needed.
    """
    params = list(model.parameters())
    target: list[torch.Tensor] = []
    flat = torch.as_tensor(-vec / LR, dtype=torch.float32)
    start = 0
    for p in params:
        target.append(flat[start : start + p.numel()].view_as(p))
        start += p.numel()
    norm = sum(float((t**2).sum()) for t in target) or 1.0
    gen = torch.Generator().manual_seed(seed)
    dummy = (0.5 * torch.randn(batch, params[0].shape[1], generator=gen)).requires_grad_()
    with torch.no_grad():
        p_bar = float(torch.sigmoid(model(dummy)).mean())
    g_bias = float(target[-1].reshape(-1)[0])
    positives = min(batch, max(0, round(batch * (p_bar - g_bias)))) if math.isfinite(g_bias) else 0
    labels = torch.zeros(batch)
    labels[:positives] = 1.0
    loss_fn = nn.BCEWithLogitsLoss()
    opt = torch.optim.Adam([dummy], lr=0.1)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        grads = torch.autograd.grad(loss_fn(model(dummy), labels), params, create_graph=True)
        terms = [((g - t) ** 2).sum() for g, t in zip(grads, target, strict=True)]
        loss = torch.stack(terms).sum() / norm
        loss.backward()
        opt.step()
        schedule.step()
    return dummy.detach().numpy().astype(np.float64)


def best_match(recon: FloatArray, truth: FloatArray) -> list[float]:
    """Per true record, its relative error after the best one-to-one matching (brute force)."""
    n = len(truth)
    cost = np.array([[rel_error(recon[i], truth[j]) for j in range(n)] for i in range(n)])
    perm = min(itertools.permutations(range(n)), key=lambda p: sum(cost[p[j], j] for j in range(n)))
    return [float(cost[perm[j], j]) for j in range(n)]


# -- attack 3: parameter parts ---------------------------------------------------------------


def parts_attack(
    seen: FloatArray, model: nn.Module, onehot: npt.NDArray[np.int64]
) -> tuple[FloatArray, npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """From a full-length vector with NaN where nothing was uploaded: the recovered record (NaN
    where not recovered), and the coordinates recovered by bias ratio / by either route."""
    W, b = _first_layer(seen, model)
    hidden, features = W.shape
    x = np.full(features, np.nan)
    by_bias = np.zeros(features, dtype=bool)
    # Route 1: dW_ij / db_i with both uploaded and db_i != 0; prefer the largest |db_i|.
    for i in np.argsort(-np.nan_to_num(np.abs(b), nan=0.0)):
        if not (np.isfinite(b[i]) and b[i] != 0):
            continue
        cols = np.flatnonzero(np.isfinite(W[i]) & ~by_bias)
        x[cols] = W[i, cols] / b[i]
        by_bias[cols] = True
    # Route 2: a non-zero uploaded one-hot entry of row i is -lr g_i * 1 (one-hot values are 0/1).
    recovered = by_bias.copy()
    for i in range(hidden):
        row = W[i]
        hot = onehot[np.isfinite(row[onehot]) & (np.nan_to_num(row[onehot]) != 0)]
        if hot.size == 0:
            continue
        scale = row[hot[np.argmax(np.abs(row[hot]))]]
        cols = np.flatnonzero(np.isfinite(row) & ~recovered)
        x[cols] = row[cols] / scale
        recovered[cols] = True
    return x, by_bias, recovered


# -- attack 4: the secure transcript ---------------------------------------------------------


def secure_round(
    updates: dict[int, FloatArray], round_index: int
) -> tuple[dict[int, FloatArray], FloatArray, dict[str, Any]]:
    """Aggregate for real; return each party's MaskedInput decoded as an update, and the sum."""
    n = len(updates)
    dim = len(next(iter(updates.values())))
    bits = encoding.choose_modulus_bits(VALUE_BITS, n)
    encoder = encoding.FixedPointEncoder(GAMMA, VALUE_BITS, bits, n)
    params = graph.complete_parameters(n, 0.05, 0.05)
    config = RoundConfig(
        session_id=rng.token_bytes(16),
        round_index=round_index,
        graph=graph.complete_graph(n),
        threshold=params.t,
        dim=dim,
        modulus_bits=bits,
    )
    inputs = {u: encoder.encode(v) for u, v in updates.items()}
    transcript: list[bytes] = []
    outcome = aggregate_in_memory(config, inputs, transcript=transcript)
    views: dict[int, FloatArray] = {}
    kinds: dict[str, int] = {}
    for data in transcript:
        message = wire.decode(data)
        kinds[type(message).__name__] = kinds.get(type(message).__name__, 0) + 1
        if isinstance(message, wire.MaskedInput):
            words = encoding.unpack(message.payload, message.modulus_bits, message.count)
            signed = encoding.from_ring(words, message.modulus_bits)
            views[message.sender] = signed.astype(np.float64) / encoder.scale
    total = encoder.decode_sum(outcome.result.total, n)
    plain = np.sum([np.asarray(v) for v in updates.values()], axis=0)
    info = {
        "modulus_bits": bits,
        "threshold": params.t,
        "messages": kinds,
        "sum_max_abs_error": float(np.max(np.abs(total - plain))),
    }
    return views, total, info


# -- the audit ---------------------------------------------------------------------------------


def _pick(
    data: TabularData, count: int, gen: np.random.Generator, mixed: bool = False
) -> npt.NDArray[np.int64]:
    if not mixed:
        return gen.choice(len(data.y_train), size=count, replace=False).astype(np.int64)
    pos = np.flatnonzero(data.y_train == 1)
    neg = np.flatnonzero(data.y_train == 0)
    half = count // 2
    rows = np.concatenate(
        [gen.choice(pos, half, replace=False), gen.choice(neg, count - half, replace=False)]
    )
    return gen.permutation(rows).astype(np.int64)


def _fmt(v: float) -> str:
    return "inf" if not math.isfinite(v) else f"{v:.3g}"


def run(quick: bool = False, out: Path | None = None, weaken: str | None = None) -> dict[str, Any]:
    """Run the audit; see the module docstring. ``weaken``: None or ``"no-secure-aggregation"``."""
    if weaken not in (None, *WEAKENINGS):
        raise ValueError(f"unknown weakening {weaken!r} for {NAME} (use one of {WEAKENINGS})")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only cost time (restored below)
    try:
        return _run(quick, out, weaken)
    finally:
        torch.set_num_threads(threads)


def _run(quick: bool, out: Path | None, weaken: str | None) -> dict[str, Any]:
    start = time.perf_counter()
    sizes = _sizes(quick)
    gen = np.random.default_rng(SEED)
    data = load_adult()
    dom = _Domain.of(data)
    X = data.x_train.astype(np.float64)
    model = make_model("mlp", data.n_features, hidden=HIDDEN, seed=0)

    def mean_error(x: FloatArray) -> float:
        return rel_error(dom.mean, x)

    def random_error(x: FloatArray) -> float:
        rows = gen.choice(len(X), size=sizes.random_records, replace=False)
        return float(np.mean([rel_error(X[r], x) for r in rows]))

    # 1. exact attack, plaintext, one record.
    target_row = int(_pick(data, 1, gen)[0])
    x_true = X[target_row]
    y_true = data.y_train[[target_row]].astype(np.float64)
    upload = one_step_update(model, x_true[None, :], y_true)
    exact_x, candidates = exact_attack(upload, model)
    exact_err = rel_error(exact_x, x_true)
    worst_unit_err = max(rel_error(c, x_true) for c in candidates)
    plain = {
        "record": target_row,
        "active_units": len(candidates),
        "exact_error": exact_err,
        "exact_worst_unit_error": worst_unit_err,
        "mean_record_error": mean_error(x_true),
        "random_record_error": random_error(x_true),
    }
    # 1b. DLG on the same single-record upload.
    dlg1 = dlg_attack(model, upload, 1, sizes.dlg_steps, seed=SEED)[0]
    plain["dlg_single_error"] = rel_error(dlg1, x_true)

    # 2. DLG on a batch.
    batch_rows = _pick(data, sizes.dlg_batch, gen, mixed=True)
    xb, yb = X[batch_rows], data.y_train[batch_rows].astype(np.float64)
    batch_update = one_step_update(model, xb, yb)
    dlg_b = dlg_attack(model, batch_update, sizes.dlg_batch, sizes.dlg_steps, seed=SEED + 1)
    dlg_errors = best_match(dlg_b, xb)
    dlg_baseline = [mean_error(x) for x in xb]
    dlg = {
        "records": batch_rows.tolist(),
        "labels": yb.tolist(),
        "steps": sizes.dlg_steps,
        "errors": dlg_errors,
        "mean_error": float(np.mean(dlg_errors)),
        "mean_record_errors": dlg_baseline,
        "mean_record_error": float(np.mean(dlg_baseline)),
    }

    # 3. parameter parts, plaintext.
    num = len(upload)
    layers = parameter_layers(model)
    parts: list[dict[str, Any]] = []
    for download in sizes.downloads:
        for policy, fraction in sizes.uploads:
            covered, covered_bias, errs, filled_errs, coord_errs = [], [], [], [], []
            for row in _pick(data, sizes.parts_records, gen):
                x = X[row]
                sel = select_parts(
                    num, layers, sizes.parties, download, unit="block", block_size=16, min_holders=3
                )
                where = sel.party_indices(0)
                full = one_step_update(model, x[None, :], data.y_train[[row]].astype(np.float64))
                change = full[where]
                kept = upload_mask(change, policy, fraction)
                seen = np.full(num, np.nan)
                seen[where[kept]] = change[kept]
                rec, by_bias, recovered = parts_attack(seen, model, dom.onehot)
                covered.append(float(recovered.mean()))
                covered_bias.append(float(by_bias.mean()))
                if recovered.any():
                    coord_errs.append(float(np.max(np.abs(rec[recovered] - x[recovered]))))
                filled = np.where(recovered, rec, dom.mean)
                filled_errs.append(rel_error(filled, x))
                errs.append(mean_error(x))
            parts.append(
                {
                    "download_fraction": download,
                    "policy": policy,
                    "upload_fraction": fraction,
                    "coverage_bias_ratio": float(np.mean(covered_bias)),
                    "coverage": float(np.mean(covered)),
                    "max_coordinate_error": max(coord_errs) if coord_errs else None,
                    "filled_error": float(np.mean(filled_errs)),
                    "mean_record_error": float(np.mean(errs)),
                }
            )

    # The figure's parts-only example: the target record of 1., download 0.5, topk 0.1.
    sel = select_parts(num, layers, sizes.parties, 0.5, unit="block", block_size=16, min_holders=3)
    where = sel.party_indices(0)
    kept = upload_mask(upload[where], "topk", 0.1)
    seen = np.full(num, np.nan)
    seen[where[kept]] = upload[where][kept]
    rec, _, recovered = parts_attack(seen, model, dom.onehot)
    parts_example = np.stack([np.where(recovered, rec, dom.mean), recovered.astype(np.float64)])

    # 4. the secure transcript (or, weakened, the plaintext uploads).
    targets: list[dict[str, Any]] = []
    rounds: list[dict[str, Any]] = []
    secure_example: FloatArray | None = None
    dlg_left = sizes.dlg_secure_targets
    for r in range(sizes.secure_rounds):
        rows = _pick(data, sizes.parties, gen)
        if r == 0:  # party 0 of the first round holds the record of 1. (for the figure)
            rows = np.asarray([target_row, *[v for v in rows if v != target_row][1:]])
        updates = {
            u: one_step_update(model, X[row][None, :], data.y_train[[row]].astype(np.float64))
            for u, row in enumerate(rows)
        }
        if weaken == "no-secure-aggregation":
            views = dict(updates)
            total = np.sum(list(updates.values()), axis=0)
            info: dict[str, Any] = {"transcript": "plaintext uploads"}
        else:
            views, total, info = secure_round(updates, round_index=r + 1)
        info["views"] = len(views)
        # What the legitimate sum reveals (outside the criterion).
        _, sum_candidates = exact_attack(total, model)
        valid = [c for c in sum_candidates if dom.looks_valid(c)]
        sum_recovered = sum(
            1
            for row in rows
            if sum_candidates.size and min(rel_error(c, X[row]) for c in sum_candidates) < RECOVERED
        )
        info.update(sum_valid_candidates=len(valid), sum_records_recovered=sum_recovered)
        rounds.append(info)
        for u, row in enumerate(rows):
            x = X[row]
            view = views[u]
            ex, _ = exact_attack(view, model)
            t: dict[str, Any] = {
                "round": r + 1,
                "party": u,
                "record": int(row),
                "exact": rel_error(ex, x),
                "exact_projected": rel_error(dom.project(ex), x),
                "mean_record": mean_error(x),
                "random_record": random_error(x),
            }
            if dlg_left > 0:
                dx = dlg_attack(model, view, 1, sizes.dlg_steps, seed=SEED + 10 + len(targets))[0]
                t["dlg"] = rel_error(dx, x)
                t["dlg_projected"] = rel_error(dom.project(dx), x)
                dlg_left -= 1
            if secure_example is None:
                secure_example = ex
            targets.append(t)

    attacks = ("exact", "exact_projected", "dlg", "dlg_projected")
    secure: dict[str, Any] = {"targets": len(targets), "rounds": rounds, "per_target": targets}
    secure_ok = True
    for name in attacks:
        subset = [t for t in targets if name in t]
        attack_mean = float(np.mean([t[name] for t in subset]))
        base = float(np.mean([t["mean_record"] for t in subset]))
        ok = attack_mean >= BASELINE_FACTOR * base
        secure_ok &= ok
        secure[name] = {
            "targets": len(subset),
            "mean_error": attack_mean,
            "mean_record_error": base,
            "no_better_than_guess": ok,
        }
    secure["mean_record_error"] = float(np.mean([t["mean_record"] for t in targets]))
    secure["random_record_error"] = float(np.mean([t["random_record"] for t in targets]))

    exact_ok = exact_err < EXACT_LIMIT
    dlg_ok = plain["dlg_single_error"] < DLG_FACTOR * plain["mean_record_error"]
    batch_beats_guess = dlg["mean_error"] < dlg["mean_record_error"]
    passed = bool(exact_ok and dlg_ok and secure_ok)
    view_name = (
        "plaintext uploads (weakened: no secure aggregation)"
        if weaken
        else "secure-aggregation transcript"
    )
    findings = [
        f"plaintext exact attack (x = dW_i/db_i, 1 record, 1 SGD step): relative error "
        f"{exact_err:.2e} (worst of {len(candidates)} active units {worst_unit_err:.2e}; limit "
        f"{EXACT_LIMIT:g}) - {'attack works' if exact_ok else 'ATTACK FAILED'}",
        f"plaintext DLG, batch of {sizes.dlg_batch} ({sizes.dlg_steps} Adam steps): per-record "
        f"best-match errors {', '.join(f'{e:.2g}' for e in dlg_errors)} (mean "
        f"{dlg['mean_error']:.2g} vs mean-record guess {dlg['mean_record_error']:.3f})"
        f" - {'beats' if batch_beats_guess else 'does not beat'} the guess (reported, not gated);"
        f" single record {plain['dlg_single_error']:.2g}"
        f" - {'attack works' if dlg_ok else 'ATTACK TOO WEAK to be evidence'}",
    ]
    for p in parts:
        if p["policy"] == "topk" and p["upload_fraction"] == 0.1:
            findings.append(
                f"parts only, download {p['download_fraction']:g} + topk 0.1: "
                f"{p['coverage']:.0%} of coordinates recovered ({p['coverage_bias_ratio']:.0%} "
                f"via bias ratio), record error {p['filled_error']:.3f} vs mean-record guess "
                f"{p['mean_record_error']:.3f}"
            )
    findings.append(
        f"{view_name}, {len(targets)} targets: mean error exact "
        f"{_fmt(secure['exact']['mean_error'])}"
        f", exact projected {secure['exact_projected']['mean_error']:.3f}, DLG "
        f"{_fmt(secure['dlg']['mean_error'])}, DLG projected "
        f"{secure['dlg_projected']['mean_error']:.3f}; guesses: mean record "
        f"{secure['mean_record_error']:.3f}, random record {secure['random_record_error']:.3f}"
        f" - {'no better than a guess' if secure_ok else 'RECORDS LEAK'} (need >= "
        f"{BASELINE_FACTOR:g} x mean-record error)"
    )
    recovered_sum = sum(r["sum_records_recovered"] for r in rounds)
    findings.append(
        f"not part of the criterion: the legitimate aggregate of {sizes.parties} one-record "
        f"updates gives {recovered_sum} of {len(targets)} records back exactly (units active for "
        "one record only); secure aggregation hides inputs, not what a small sum reveals"
    )
    summary: dict[str, Any] = {
        "audit": NAME,
        "passed": passed,
        "findings": findings,
        "weaken": weaken,
        "quick": quick,
        "command": "secagg audit inversion"
        + (" --quick" if quick else "")
        + (f" --weaken {weaken}" if weaken else "")
        + (f" --out {out}" if out is not None else ""),
        "setting": {
            "model": f"mlp 107-{HIDDEN}-1",
            "lr": LR,
            "gamma": GAMMA,
            "value_bits": VALUE_BITS,
            "parties": sizes.parties,
            "dataset": data.source,
        },
        "criteria": {
            "exact_limit": EXACT_LIMIT,
            "dlg_factor": DLG_FACTOR,
            "baseline_factor": BASELINE_FACTOR,
            "exact_ok": exact_ok,
            "dlg_ok": dlg_ok,
            "secure_ok": secure_ok,
        },
        "plaintext": plain,
        "dlg_batch": dlg,
        "parts": parts,
        "secure": secure,
        "seconds": time.perf_counter() - start,
    }
    if out is not None:
        from audits.report import write_report

        assert secure_example is not None
        fig = _figure(x_true, exact_x, dlg1, parts_example, secure_example, dom, data, weaken)
        write_report(out, summary, _body(summary, view_name), {"inversion_records.png": fig})
    return summary


def _body(s: dict[str, Any], view_name: str) -> str:
    p, d, sec = s["plaintext"], s["dlg_batch"], s["secure"]
    lines = [
        "## Method",
        "",
        "See the docstring of `audits/inversion.py`. Relative error = ||guess - x|| / ||x||; "
        "'mean record' = the training mean as the guess, 'random record' = a random training "
        "record (expected error). The secure criterion: every attack's mean error over the "
        f"targets >= {BASELINE_FACTOR:g} x the mean-record error (the masked input is "
        "independent of the record, so the best any attacker can do is the best "
        "data-independent guess, which is the mean record).",
        "",
        "## Errors per setting",
        "",
        "| setting | attack | relative error | mean-record guess | random-record guess |",
        "|---|---|---|---|---|",
        f"| plaintext, 1 record | exact dW/db | {p['exact_error']:.2e} | "
        f"{p['mean_record_error']:.3f} | {p['random_record_error']:.3f} |",
        f"| plaintext, 1 record | DLG | {p['dlg_single_error']:.3g} | "
        f"{p['mean_record_error']:.3f} | {p['random_record_error']:.3f} |",
        f"| plaintext, batch {len(d['errors'])} | DLG (best match, mean) | "
        f"{d['mean_error']:.3g} ({', '.join(f'{e:.2g}' for e in d['errors'])}) | "
        f"{d['mean_record_error']:.3f} | |",
    ]
    for name, label in (
        ("exact", "exact dW/db"),
        ("exact_projected", "exact, projected"),
        ("dlg", "DLG"),
        ("dlg_projected", "DLG, projected"),
    ):
        lines.append(
            f"| {view_name} ({sec[name]['targets']} targets) | {label} | "
            f"{_fmt(sec[name]['mean_error'])} | {sec[name]['mean_record_error']:.3f} | |"
        )
    lines += [
        "",
        "## Parameter parts without secure aggregation",
        "",
        "Party 0 of 5, blocks of 16, one record, one SGD step. Coverage: share of the 107 "
        "features recovered exactly (bias ratio: dW_ij and db_i both uploaded; either: also via "
        "the one-hot scale). Error: the record with unrecovered features set to the mean.",
        "",
        "| download | upload | coverage (bias ratio) | coverage (either) | max coord. error "
        "| record error | mean-record guess |",
        "|---|---|---|---|---|---|---|",
    ]
    for q in s["parts"]:
        mce = q["max_coordinate_error"]
        lines.append(
            f"| {q['download_fraction']:g} | {q['policy']} {q['upload_fraction']:g} | "
            f"{q['coverage_bias_ratio']:.0%} | {q['coverage']:.0%} | "
            f"{'-' if mce is None else f'{mce:.1e}'} | {q['filled_error']:.3f} | "
            f"{q['mean_record_error']:.3f} |"
        )
    lines += [
        "",
        "## What the sum reveals (not part of the criterion)",
        "",
        f"| round | valid-looking candidates from the sum | records recovered (< {RECOVERED:g}) |",
        "|---|---|---|",
    ]
    for i, r in enumerate(sec["rounds"], 1):
        lines.append(
            f"| {i} | {r['sum_valid_candidates']} | {r['sum_records_recovered']} of {r['views']} |"
        )
    lines += ["", "![records](inversion_records.png)", ""]
    return "\n".join(lines)


def _figure(
    x: FloatArray,
    exact: FloatArray,
    dlg1: FloatArray,
    parts: FloatArray,
    secure: FloatArray,
    dom: _Domain,
    data: TabularData,
    weaken: str | None,
) -> Any:
    """One true record against its reconstructions in every setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = np.arange(len(x))
    secure_title = (
        "weakened (no secure aggregation): exact attack on the plaintext upload"
        if weaken
        else "secure transcript: exact attack on the party's MaskedInput, decoded as an update"
    )
    panels = [
        (
            f"plaintext upload: exact attack (error {rel_error(exact, x):.1e}) and DLG "
            f"(error {rel_error(dlg1, x):.1e})",
            [("exact dW/db", exact, "C1"), ("DLG", dlg1, "C2")],
        ),
        (
            f"parts only (download 0.5, topk 0.1), unrecovered = mean (error "
            f"{rel_error(parts[0], x):.2f})",
            [("reconstruction", parts[0], "C1")],
        ),
        (
            f"{secure_title} (error {rel_error(secure, x):.2f}, projected "
            f"{rel_error(dom.project(secure), x):.2f})",
            [
                ("exact dW/db", secure, "C3"),
                ("projected onto the domain", dom.project(secure), "C4"),
            ],
        ),
        (
            f"guess without information: the mean record (error {rel_error(dom.mean, x):.2f})",
            [("mean record", dom.mean, "C7")],
        ),
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 10), sharex=True)
    for k, (ax, (title, recs)) in enumerate(zip(axes, panels, strict=True)):
        ax.plot(idx, x, "k.", ms=7, label="true record")
        for label, rec, color in recs:
            ax.plot(idx, rec, "x", color=color, ms=5, label=label)
        if k == 1:
            hit = parts[1] > 0
            ax.plot(
                idx[hit],
                parts[0][hit],
                "o",
                mfc="none",
                color="C2",
                ms=8,
                label="recovered exactly",
            )
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, loc="upper right")
        ax.set_ylabel("feature value")
    names = data.feature_names
    ticks = [0, *[g[0] for g in dom.groups]]
    axes[-1].set_xticks(ticks)
    axes[-1].set_xticklabels([names[t].split("=")[0] for t in ticks], rotation=60, fontsize=7)
    axes[-1].set_xlabel("feature (107 columns: numeric standardized, one-hot groups)")
    fig.tight_layout()
    return fig

"""Local training and evaluation of a binary classifier (one logit per row)."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

OPTIMIZERS = ("sgd", "adam")


def _as_tensors(x: npt.ArrayLike, y: npt.ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    xt = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.as_tensor(np.ascontiguousarray(y, dtype=np.float32)).reshape(-1)
    if xt.ndim != 2 or xt.shape[0] != yt.shape[0]:
        raise ValueError(
            f"x must be (n, f) and y (n,); got {tuple(xt.shape)} and {tuple(yt.shape)}"
        )
    return xt, yt


def local_train(
    model: nn.Module,
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    epochs: int = 1,
    batch_size: int = 64,
    lr: float = 0.1,
    optimizer: str = "sgd",
    seed: int = 0,
) -> None:
    """Train ``model`` in place with binary cross-entropy on logits.

    Mini-batches follow a permutation drawn from a private ``torch.Generator`` seeded with
    ``seed``, so a run is reproducible and does not touch torch's global RNG. A fresh optimizer
    is built per call: in federated rounds the local optimizer state does not carry over.
    """
    if epochs < 0 or batch_size < 1 or not (lr > 0 and math.isfinite(lr)):
        raise ValueError(
            f"need epochs >= 0, batch_size >= 1, lr > 0; got {epochs}, {batch_size}, {lr}"
        )
    xt, yt = _as_tensors(x, y)
    n = xt.shape[0]
    if n == 0 or epochs == 0:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    opt: torch.optim.Optimizer
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr)
    elif optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}; use one of {OPTIMIZERS}")
    loss_fn = nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xt[rows]), yt[rows])
            loss.backward()
            opt.step()
    model.train(was_training)


def predict_logits(model: nn.Module, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Logits of ``model`` on ``x`` as float64 (no gradient, eval mode)."""
    xt = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits: torch.Tensor = model(xt)
        return np.array(logits.reshape(-1).numpy(), dtype=np.float64)
    finally:
        model.train(was_training)


def roc_auc(scores: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """Area under the ROC curve by the Mann-Whitney rank statistic (ties count one half).

    NaN when ``y`` holds only one class (the AUC is undefined there).
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(y).reshape(-1) > 0.5
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    # Average 1-based rank of every group of tied scores.
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg_rank = first + (counts + 1) / 2.0
    ranks = np.empty(s.size, dtype=np.float64)
    ranks[order] = np.repeat(avg_rank, counts)
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def evaluate(model: nn.Module, x: npt.ArrayLike, y: npt.ArrayLike) -> dict[str, float]:
    """``accuracy`` (threshold 0.5), ``auc`` (ROC) and ``loss`` (mean BCE) on ``(x, y)``."""
    xt, yt = _as_tensors(x, y)
    if xt.shape[0] == 0:
        raise ValueError("cannot evaluate on zero rows")
    z = predict_logits(model, xt.numpy())
    labels = yt.numpy().astype(np.float64)
    # Stable BCE with logits: max(z, 0) - z*y + log(1 + exp(-|z|)).
    loss = np.maximum(z, 0.0) - z * labels + np.log1p(np.exp(-np.abs(z)))
    return {
        "accuracy": float(np.mean((z > 0) == (labels > 0.5))),
        "auc": roc_auc(z, labels),
        "loss": float(loss.mean()),
    }


def local_train_dp_sgd(
    model: nn.Module,
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    noise_multiplier: float,
    max_grad_norm: float,
    trainable: npt.NDArray[np.bool_] | None = None,
) -> tuple[int, float]:
    """Train ``model`` in place with DP-SGD through Opacus (Poisson sampling, per-example
    clipping to ``max_grad_norm``, Gaussian noise ``noise_multiplier * max_grad_norm``).

    ``trainable`` (a flat mask in ``model.parameters()`` order, the party's part): only those
    coordinates train. Every per-example gradient is zeroed outside the part BEFORE Opacus clips
    it, so the clipping budget is spent on the part alone, and the coordinates outside are reset
    after every step (Opacus adds its noise to every coordinate). The released change on the part
    is still DP-SGD output: masking a per-example gradient is a fixed function of that example.

    Opacus' noise comes from torch's generator: ``secure_mode`` needs torchcsprng, which does
    not build for this torch, so this path is NOT hardened against the floating-point noise
    attack (Mironov 2012) the way the distributed mode's integer noise is. Documented in
    docs/dp.md; the caller warns.

    Returns:
        (optimizer steps taken, sampling rate), for the party's privacy accountant.
    """
    import copy
    import warnings

    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    xt, yt = _as_tensors(x, y)
    n = xt.shape[0]
    if n == 0 or epochs == 0:
        return 0, 0.0
    work = copy.deepcopy(model)  # Opacus hooks the module: train a copy, copy weights back
    optimizer = torch.optim.SGD(work.parameters(), lr=lr)
    loader = DataLoader(TensorDataset(xt, yt), batch_size=min(batch_size, n))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # secure_mode=False warning: documented above
        engine = PrivacyEngine(accountant="rdp", secure_mode=False)
        private, optimizer, loader = engine.make_private(
            module=work,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            poisson_sampling=True,
        )
    loss_fn = nn.BCEWithLogitsLoss()
    params = list(private._module.parameters())
    masks: list[torch.Tensor] | None = None
    if trainable is not None:
        flat_mask = torch.as_tensor(np.asarray(trainable, dtype=bool))
        size = sum(p.numel() for p in params)
        if flat_mask.numel() != size:
            raise ValueError(f"trainable has {flat_mask.numel()} entries, the model {size}")
        masks, start = [], 0
        for p in params:
            masks.append(flat_mask[start : start + p.numel()].reshape(p.shape))
            start += p.numel()
    frozen = [p.detach().clone() for p in params]
    steps = 0
    private.train()
    with warnings.catch_warnings():
        # Opacus' backward hooks warn when inputs need no gradient (they never do here).
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(epochs):
            for xb, yb in loader:
                steps += 1  # an empty Poisson batch still counts as a step for the accountant
                if xb.shape[0] == 0:
                    continue
                optimizer.zero_grad()
                loss_fn(private(xb), yb).backward()
                if masks is not None:
                    for p, m in zip(params, masks, strict=True):
                        gs = p.grad_sample  # (batch, *p.shape): Opacus' per-example gradients
                        if gs is not None:
                            gs.mul_(m.to(gs.dtype))
                optimizer.step()
                if masks is not None:
                    with torch.no_grad():
                        for p, m, f in zip(params, masks, frozen, strict=True):
                            p.copy_(torch.where(m, p, f))
    with torch.no_grad():
        for dst, src in zip(model.parameters(), private._module.parameters(), strict=True):
            dst.copy_(src)
    return steps, batch_size / n

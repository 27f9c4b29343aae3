"""Small business prediction models and their view as one flat parameter vector.

The protocols exchange parameters as a flat float32 vector (in ``model.parameters()`` order):
the server's part selection, the parties' uploads and secure aggregation all index into it.
Models output one logit per row, shape ``(n,)``.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

MODEL_KINDS = ("logreg", "mlp")


def make_model(kind: str, n_features: int, hidden: int = 32, seed: int = 0) -> nn.Module:
    """A ``logreg`` (one Linear to a logit) or ``mlp`` (Linear-ReLU-Linear) model.

    Initialization is deterministic given ``seed`` and does not disturb torch's global RNG, so
    the server and every party can build the same starting model.
    """
    if n_features < 1:
        raise ValueError(f"n_features must be positive, got {n_features}")
    if hidden < 1:
        raise ValueError(f"hidden must be positive, got {hidden}")
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "logreg":
            layers["linear"] = nn.Linear(n_features, 1)
        elif kind == "mlp":
            layers["hidden"] = nn.Linear(n_features, hidden)
            layers["relu"] = nn.ReLU()
            layers["out"] = nn.Linear(hidden, 1)
        else:
            raise ValueError(f"unknown model kind {kind!r}; use one of {MODEL_KINDS}")
    # (n, 1) -> (n,): one logit per row, the shape BCEWithLogitsLoss wants for 0/1 labels.
    layers["flatten"] = nn.Flatten(start_dim=0)
    return nn.Sequential(layers)


def num_parameters(model: nn.Module) -> int:
    """Length of the flat parameter vector."""
    return sum(p.numel() for p in model.parameters())


def flat_parameters(model: nn.Module) -> npt.NDArray[np.float32]:
    """A float32 copy of all parameters, concatenated in ``model.parameters()`` order."""
    with torch.no_grad():
        parts = [p.detach().reshape(-1).to(torch.float32).cpu() for p in model.parameters()]
        if not parts:
            return np.zeros(0, dtype=np.float32)
        return torch.cat(parts).numpy().astype(np.float32, copy=True)


def set_flat_parameters(model: nn.Module, vec: npt.ArrayLike) -> None:
    """Overwrite all parameters from a flat vector laid out as :func:`flat_parameters`."""
    flat = np.asarray(vec)
    expected = num_parameters(model)
    if flat.ndim != 1 or flat.shape[0] != expected:
        raise ValueError(f"expected a flat vector of {expected} values, got shape {flat.shape}")
    if not np.all(np.isfinite(flat)):
        raise ValueError("parameter vector contains NaN or infinity")
    source = torch.from_numpy(np.ascontiguousarray(flat, dtype=np.float32))
    start = 0
    with torch.no_grad():
        for p in model.parameters():
            stop = start + p.numel()
            p.copy_(source[start:stop].view_as(p))
            start = stop


def parameter_layers(model: nn.Module) -> list[tuple[str, int, int]]:
    """``(name, start, stop)`` of every parameter tensor in the flat vector, in order."""
    out = []
    start = 0
    for name, p in model.named_parameters():
        out.append((name, start, start + p.numel()))
        start += p.numel()
    return out

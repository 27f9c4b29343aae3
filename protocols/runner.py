"""Training runs behind ``secagg train``: data, parties, protocol, metrics, report."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protocols.centralized import train_centralized
from protocols.datasets import (
    TabularData,
    load_adult,
    load_csv,
    split_by_feature,
    split_parties,
)
from protocols.dp_training import DPOptions, NoisyGradientTrainer, PartsSpec
from protocols.models import make_model
from protocols.parameter_parts.protocol import ParameterPartsTrainer, ProtocolSettings
from protocols.training import evaluate
from secagg.errors import ConfigError

PROTOCOLS = ("parameter-parts", "fedavg", "centralized")
Progress = Callable[[str], None]


@dataclass(frozen=True)
class TrainOptions:
    """The ``secagg train`` options (ARCHITECTURE.md section 4)."""

    dataset: str = "adult"
    target: str | None = None
    protocol: str = "parameter-parts"
    parties: int = 10
    rounds: int = 20
    split: str = "iid"
    #: ``public`` (Adult: published metadata only, inside the DP guarantee) or ``fitted``.
    preprocessing: str = "public"
    settings: ProtocolSettings = field(default_factory=ProtocolSettings)
    dp: DPOptions = field(default_factory=DPOptions)


def load_data(
    dataset: str, target: str | None, seed: int, preprocessing: str = "public"
) -> TabularData:
    """Adult (``preprocessing`` public or fitted) or a CSV (always fitted: no public metadata)."""
    if dataset == "adult":
        return load_adult(seed=seed, preprocessing=preprocessing)
    if target is None:
        raise ValueError("--target COLUMN is required with --dataset PATH.csv")
    return load_csv(dataset, target, seed=seed)


def fedavg_settings(settings: ProtocolSettings) -> ProtocolSettings:
    """FedAvg: the whole model both ways, plain mean over the surviving parties."""
    return replace(
        settings, download_fraction=1.0, upload_policy="all", part_unit="layer", rule="mean"
    )


def run(
    options: TrainOptions,
    progress: Progress | None = None,
    data: TabularData | None = None,
) -> dict[str, Any]:
    """One training run; returns the ``secagg train --json`` object."""
    s = options.settings
    if options.protocol == "centralized" and options.dp.mode != "none":
        # Never report a DP mode that was not applied.
        raise ValueError("--dp needs a federated protocol (parameter-parts or fedavg)")
    torch.manual_seed(s.seed)
    torch.set_num_threads(1)
    data = (
        data
        if data is not None
        else load_data(options.dataset, options.target, s.seed, options.preprocessing)
    )
    started = time.perf_counter()
    rounds: list[dict[str, Any]] = []
    if options.protocol == "centralized":
        history = train_centralized(
            data,
            model_kind=s.model,
            epochs=options.rounds,
            lr=s.lr,
            batch_size=s.batch_size,
            seed=s.seed,
        )
        for i, metrics in enumerate(history, start=1):
            rounds.append({"round": i, **{k: float(v) for k, v in metrics.items()}})
            if progress:
                progress(f"epoch {i}: accuracy {metrics['accuracy']:.4f}")
        secure = False
    elif options.dp.noisy_steps:
        secure = _run_noisy_steps(options, data, rounds, progress)
    else:
        settings = fedavg_settings(s) if options.protocol == "fedavg" else s
        if options.dp.mode == "local":
            settings = replace(
                settings,
                local_dp_epsilon=options.dp.epsilon,
                local_dp_delta=options.dp.delta,
                local_dp_clip=options.dp.clip,
                rounds_planned=options.rounds,
            )
        rows = _party_rows(options, data)
        trainer = ParameterPartsTrainer(data, rows, settings)
        for _ in range(options.rounds):
            report = trainer.run_round()
            rounds.append(report.as_dict())
            if progress:
                progress(
                    f"round {report.round}: accuracy {report.accuracy:.4f} auc {report.auc:.4f}"
                    f" upload {report.upload_bytes_mean / 1e3:.1f} kB"
                    + (f" epsilon {rounds[-1]['epsilon']:.3f}" if "epsilon" in rounds[-1] else "")
                    + (f" ABORTED: {report.aborted}" if report.aborted else "")
                )
        secure = settings.secure
    last = rounds[-1]
    return {
        "preprocessing": data.preprocessing,
        **({"privacy": privacy_claim(options, data, last)} if options.dp.mode != "none" else {}),
        "protocol": options.protocol,
        "dataset": data.source,
        "secure": secure,
        "dp": options.dp.mode,
        "delta": options.dp.delta if options.dp.mode != "none" else None,
        "parties": options.parties if options.protocol != "centralized" else 1,
        "split": options.split,
        "settings": {k: v for k, v in s.__dict__.items()},
        "features": int(data.x_train.shape[1]),
        "train_rows": int(data.x_train.shape[0]),
        "test_rows": int(data.x_test.shape[0]),
        "rounds": rounds,
        "final": {
            "accuracy": last["accuracy"],
            "auc": last["auc"],
            "loss": last["loss"],
            "epsilon": last.get("epsilon"),
        },
        "seconds": time.perf_counter() - started,
    }


PRIVACY_UNIT = "one training record of one party (add/remove-one adjacency)"


def privacy_claim(options: TrainOptions, data: TabularData, last: dict[str, Any]) -> dict[str, Any]:
    """What the reported epsilon means, in one object (printed by ``secagg train`` too)."""
    eps = last.get("epsilon")
    inside = data.preprocessing == "public"
    against = {
        "distributed": "the server (semi-honest) and anyone with the model",
        "central": "anyone with the model, not the server (it sees the plain sums)",
        "both": "the server even if it saw a party's contribution unmasked, and anyone with the"
        " model",
        "local": "everyone, the server and the other parties included",
    }[options.dp.mode]
    condition = (
        "preprocessing uses published metadata only, so it is inside the guarantee"
        if inside
        else "CONDITIONAL on fixed preprocessing: feature statistics and category sets were"
        " fitted on the pooled training rows and are treated as public constants; one record's"
        " influence on them is NOT covered"
    )
    eps_text = "n/a" if eps is None else f"{eps:.3f}"
    return {
        "unit": PRIVACY_UNIT,
        "epsilon": eps,
        "delta": options.dp.delta,
        "against": against,
        "preprocessing": data.preprocessing,
        "preprocessing_inside_guarantee": inside,
        "amplification": "none claimed",
        "claim": f"DP ({options.dp.mode}): epsilon {eps_text} at delta {options.dp.delta:g} for"
        f" {PRIVACY_UNIT}, against {against}; {condition}.",
    }


def _party_rows(options: TrainOptions, data: TabularData) -> list[np.ndarray]:
    seed = options.settings.seed
    if options.split.startswith("feature:"):
        # Non-IID by a categorical feature: each party gets whole groups (e.g. occupations).
        return split_by_feature(data, options.split.split(":", 1)[1], options.parties, seed)
    return split_parties(data.y_train, options.parties, scheme=options.split, seed=seed)


def _run_noisy_steps(
    options: TrainOptions,
    data: TabularData,
    rounds: list[dict[str, Any]],
    progress: Progress | None,
) -> bool:
    """--dp distributed / central / both: noisy full-batch gradient steps on random parts
    (parameter-parts) or on the whole model (fedavg), see protocols.dp_training."""
    s = options.settings
    if options.protocol == "centralized":
        raise ConfigError("--dp needs a federated protocol (parameter-parts or fedavg)")
    records = options.dp.records if options.dp.records is not None else data.public_records
    if records is None:
        raise ConfigError(
            f"--dp {options.dp.mode} on {data.source}: no public record count is known for this"
            " data set; pass --dp-records N (a public, data-independent estimate of the training"
            " records of all parties: it normalises the noisy sums and must not come from the data)"
        )
    dp = replace(options.dp, records=int(records))
    rows = _party_rows(options, data)
    parties = [(data.x_train[r], data.y_train[r]) for r in rows]
    n = len(parties)
    model = make_model(s.model, data.x_train.shape[1], seed=s.seed)
    parts = None
    if options.protocol == "parameter-parts" and s.download_fraction < 1.0:
        parts = PartsSpec(
            download_fraction=s.download_fraction,
            unit=s.part_unit,
            block_size=s.block_size,
            min_holders=s.min_holders,
            selection_margin=math.ceil(s.dropout * n),
        )
    trainer = NoisyGradientTrainer(
        model,
        parties,
        dp,
        options.rounds,
        secure=s.secure,
        dropout=s.dropout,
        seed=s.seed,
        parts=parts,
    )
    for r in range(1, options.rounds + 1):
        start = time.perf_counter()
        gen = np.random.default_rng([s.seed, r, 7])
        dropped = {int(u) for u in gen.permutation(n)[: round(s.dropout * n)]}
        stats = trainer.run_round(r, dropped)
        metrics = evaluate(model, data.x_test, data.y_test)
        eps = trainer.epsilon()
        rounds.append(
            {
                "round": r,
                "accuracy": float(metrics["accuracy"]),
                "auc": float(metrics["auc"]),
                "loss": float(metrics["loss"]),
                "epsilon": eps,
                "survivors": stats.survivors,
                "upload_bytes_mean": stats.upload_bytes_mean,
                "download_bytes_mean": stats.download_bytes_mean,
                "part_fraction_mean": stats.part_fraction_mean,
                "noise_floor": stats.noise_floor,
                "seconds": time.perf_counter() - start,
            }
            | ({"aborted": stats.aborted} if stats.aborted else {})
        )
        if progress:
            progress(
                f"round {r}: accuracy {metrics['accuracy']:.4f} auc {metrics['auc']:.4f}"
                f" epsilon {eps:.3f} part {stats.part_fraction_mean:.2f}"
                + (f" ABORTED: {stats.aborted}" if stats.aborted else "")
            )
    nz = trainer.noise
    rounds[-1]["noise"] = {
        "mode": options.dp.mode,
        "bits": nz.bits,
        "scale": nz.scale,
        "l2_sensitivity": nz.l2_bound,
        "sigma2_total": float(nz.sigma2_total),
        "noise_parties": nz.parties,
        "threshold": trainer.threshold,
        "min_holders": trainer.min_holders,
        "noise_multiplier": math.sqrt(float(nz.sigma2_total)) / nz.l2_bound,
        "steps": trainer.total_steps,
        "records_normaliser": dp.records,
        "amplification": "none claimed (parts are chosen and known by the server; full batches)",
    }
    return trainer.secure


def write_report(out: Path, runs: dict[str, dict[str, Any]]) -> list[Path]:
    """A short markdown report with accuracy and bytes per round for the protocols compared."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, result in runs.items():
        r = result["rounds"]
        axes[0].plot([x["round"] for x in r], [x["accuracy"] for x in r], marker=".", label=name)
        if "upload_bytes_mean" in r[0]:
            axes[1].plot(
                [x["round"] for x in r],
                [(x["upload_bytes_mean"] + x["download_bytes_mean"]) / 1e3 for x in r],
                marker=".",
                label=name,
            )
    axes[0].set_xlabel("round (epoch for centralized)")
    axes[0].set_ylabel("test accuracy")
    axes[0].grid(alpha=0.3)
    axes[0].legend()
    axes[1].set_xlabel("round")
    axes[1].set_ylabel("kB per party per round (up + down)")
    axes[1].set_ylim(bottom=0)
    axes[1].grid(alpha=0.3)
    axes[1].legend()
    fig.tight_layout()
    plot = out / "training.png"
    fig.savefig(plot, dpi=120)
    plt.close(fig)
    written.append(plot)
    lines = ["# Training report", "", "![accuracy and bytes per round](training.png)", ""]
    lines += ["| run | final accuracy | final AUC | kB up/party/round | kB down/party/round |"]
    lines += ["| --- | --- | --- | --- | --- |"]
    for name, result in runs.items():
        r = result["rounds"]
        up = np.mean([x.get("upload_bytes_mean", 0.0) for x in r]) / 1e3
        down = np.mean([x.get("download_bytes_mean", 0.0) for x in r]) / 1e3
        lines.append(
            f"| {name} | {result['final']['accuracy']:.4f} | {result['final']['auc']:.4f}"
            f" | {up:.2f} | {down:.2f} |"
        )
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(runs, indent=1, default=str))
    written += [report, out / "results.json"]
    return written

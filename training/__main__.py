"""``python -m training``: thin CLI over :mod:`training.pipeline`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from training.train import TrainConfig, paper_config


def build_config(args: argparse.Namespace) -> TrainConfig:
    if args.config:
        return TrainConfig.from_dict(json.loads(Path(args.config).read_text())["config"])
    base = paper_config() if args.arch == "paper" else TrainConfig()
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if getattr(args, f.name, None) is not None
    }
    return dataclasses.replace(base, **overrides)


def main(argv: list[str] | None = None) -> int:
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
    for f in dataclasses.fields(TrainConfig):
        if f.name == "architecture":
            continue
        kind = f.type if isinstance(f.type, type) else eval(str(f.type))
        if kind is bool:
            run.add_argument(
                f"--{f.name.replace('_', '-')}",
                dest=f.name,
                default=None,
                type=lambda v: v.lower() in {"1", "true", "yes"},
            )
        else:
            run.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=None)
    cmp = sub.add_parser("compare", help="write the paper-vs-improved comparison report")
    cmp.add_argument("--paper-run", type=Path, required=True)
    cmp.add_argument("--improved-run", type=Path, required=True)
    cmp.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    if args.command == "run":
        from training.pipeline import train_and_export

        config = build_config(args)
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
        )
        return 0
    from training.report import write_comparison

    write_comparison(args.paper_run, args.improved_run, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

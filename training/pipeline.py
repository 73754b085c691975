"""End-to-end recipe: cache data, cross-validate by subject, train the shipped model, export."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contract.card import CardData, CardMetrics, CardTraining, ModelCard
from training.data import LABELS, CachedImages, load_images
from training.evaluate import (
    choose_threshold,
    classification_metrics,
    mean_std,
    plot_confusion,
    plot_curves,
    plot_roc,
)
from training.explain import ExplainableCellClassifier, explain_section
from training.export import CITATION, DATASET, build_card, export_version
from training.models import MeanEnsemble, with_dihedral_average
from training.pretrain import PretrainData
from training.splits import Split, cv_splits, final_split, subject_table
from training.train import (
    ShipMode,
    TrainConfig,
    TrainResult,
    dump_json,
    predict_p_all,
    train_model,
)


@dataclass
class FoldOutcome:
    split: Split
    threshold: float
    validation: dict[str, Any]
    test: dict[str, Any] | None
    result: TrainResult
    y_val: np.ndarray
    p_val: np.ndarray
    y_test: np.ndarray = field(default_factory=lambda: np.zeros(0))
    p_test: np.ndarray = field(default_factory=lambda: np.zeros(0))


def split_counts(images: CachedImages, split: Split) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for role, mask in split.masks(images.subjects).items():
        labels = images.labels[mask]
        out[role] = {
            "subjects": list(getattr(split, role)),
            "n_images": {lab: int((labels == i).sum()) for i, lab in enumerate(LABELS)},
        }
    return out


def run_split(
    config: TrainConfig,
    images: CachedImages,
    split: Split,
    pretrain_data: PretrainData | None = None,
    pretrain_seed: int | None = None,
) -> FoldOutcome:
    masks = split.masks(images.subjects)
    train, val, test = (images.subset(masks[r]) for r in ("train", "validation", "test"))
    print(
        f"[{split.name}] train {len(train.labels)} / validation {len(val.labels)} / "
        f"test {len(test.labels)} images; test subjects: {', '.join(split.test) or '-'}",
        flush=True,
    )
    result = train_model(config, train, val, split.name, pretrain_data, pretrain_seed)
    if config.test_time_dihedral:
        result.model = with_dihedral_average(result.model, config.tta_views)
    p_val = predict_p_all(result.model, val)
    threshold = choose_threshold(val.labels, p_val)
    outcome = FoldOutcome(
        split,
        threshold,
        classification_metrics(val.labels, p_val, threshold),
        None,
        result,
        val.labels,
        p_val,
    )
    if len(test.labels):
        outcome.p_test = predict_p_all(result.model, test)
        outcome.y_test = test.labels
        outcome.test = classification_metrics(test.labels, outcome.p_test, threshold)
        print(
            f"[{split.name}] threshold {threshold:.3f} test balanced acc "
            f"{outcome.test['balanced_accuracy']:.3f} weighted F1 "
            f"{outcome.test['weighted_f1']:.3f} AUC {outcome.test['roc_auc']}",
            flush=True,
        )
    return outcome


def cross_validate(
    config: TrainConfig,
    images: CachedImages,
    run_dir: Path,
    outcomes_out: list[FoldOutcome] | None = None,
    pretrain_data: PretrainData | None = None,
) -> dict[str, Any]:
    """Leave-one-normal-donor-out CV; ``outcomes_out`` (if given) receives the fold models."""
    table = subject_table(images.subjects, images.labels)
    folds = []
    outcomes = []
    for split in cv_splits(
        table, fraction=config.validation_fraction, max_share=config.validation_max_share
    ):
        o = run_split(config, images, split, pretrain_data)
        outcomes.append(o)
        folds.append(
            {
                "fold": split.name,
                "threshold": o.threshold,
                "splits": split_counts(images, split),
                "validation": o.validation,
                "test": o.test,
                "selected_epoch": o.result.selected_epoch,
                "seconds": o.result.seconds,
                "history": o.result.history,
            }
        )
    if outcomes_out is not None:
        outcomes_out.extend(outcomes)
    fold_tests = [o.test for o in outcomes if o.test is not None]
    mean, std = mean_std(fold_tests)
    y = np.concatenate([o.y_test for o in outcomes])
    p = np.concatenate([o.p_test for o in outcomes])
    pred = np.concatenate([(o.p_test >= o.threshold).astype(float) for o in outcomes])
    # Pooled: every image scored by the fold model that never saw its subject, at that fold's
    # validation-chosen threshold (pred already thresholded, hence threshold 0.5 on 0/1).
    pooled = classification_metrics(y, pred, 0.5)
    pooled["roc_auc"] = classification_metrics(y, p, 0.5)["roc_auc"]
    pooled["threshold"] = "per fold, chosen on that fold's validation subjects"
    cv = {
        "scheme": "leave-one-normal-donor-out, subject-grouped (3 folds)",
        "folds": folds,
        "mean": mean,
        "std": std,
        "pooled_held_out": pooled,
    }
    dump_json(cv, run_dir / "cv.json")
    np.savez(run_dir / "cv_predictions.npz", y=y, p=p, pred=pred)
    plot_roc(
        {o.split.name: (o.y_test, o.p_test) for o in outcomes} | {"pooled": (y, p)},
        run_dir / "cv_roc.png",
        f"{config.architecture}: held-out subjects (CV)",
    )
    plot_confusion(
        pooled, run_dir / "cv_confusion.png", f"{config.architecture}: pooled CV held-out subjects"
    )
    return cv


def reuse_cross_validation(
    config: TrainConfig, images: CachedImages, earlier_run: Path, run_dir: Path
) -> dict[str, Any]:
    """Reuse the CV results of an earlier run of the *same* config and data."""
    earlier = json.loads((earlier_run / "config.json").read_text())
    if TrainConfig.from_dict(earlier["config"]) != config:
        raise ValueError(f"{earlier_run} used a different training config; cannot reuse its CV")
    manifest = (
        json.loads((earlier_run / "final.json").read_text())["manifest_sha256"]
        if (earlier_run / "final.json").exists()
        else None
    )
    if manifest not in (None, images.manifest_sha256):
        raise ValueError(f"{earlier_run} used different data; cannot reuse its CV")
    for name in ("cv.json", "cv_predictions.npz", "cv_roc.png", "cv_confusion.png"):
        if earlier_run.resolve() != run_dir.resolve():
            shutil.copyfile(earlier_run / name, run_dir / name)
    cv: dict[str, Any] = json.loads((run_dir / "cv.json").read_text())
    cv["reused_from"] = str(earlier_run)
    return cv


def train_and_export(
    config: TrainConfig,
    data_root: Path,
    cache_dir: Path | None,
    run_dir: Path,
    model_store: Path | None,
    name: str,
    do_cv: bool = True,
    description: str = "",
    cv_from: Path | None = None,
    pretrain_data: PretrainData | None = None,
) -> dict[str, Any]:
    """Load -> cross-validate -> shipped model -> plots and summary -> card -> export."""
    if config.ship == "cv_ensemble" and (cv_from is not None or not do_cv):
        raise ValueError("ship=cv_ensemble ships the CV fold models: it needs a fresh CV run")
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_json(
        {"config": config.to_dict(), "data_root": str(data_root), "name": name, "cv": do_cv},
        run_dir / "config.json",
    )
    t0 = time.monotonic()
    images, data_info = load_run_data(config, data_root, cache_dir, run_dir)
    cv: dict[str, Any] | None = None
    fold_outcomes: list[FoldOutcome] = []
    if cv_from is not None:
        cv = reuse_cross_validation(config, images, cv_from, run_dir)
    elif do_cv:
        cv = cross_validate(config, images, run_dir, fold_outcomes, pretrain_data)
    shipped = shipped_model(config, images, fold_outcomes, pretrain_data)
    plot_shipped(shipped, config.ship, name, run_dir)
    summary = run_summary(config, name, images, shipped, data_info, time.monotonic() - t0)
    dump_json(summary, run_dir / "final.json")
    if model_store is None:
        return summary

    out = export_shipped(
        config, name, description, shipped, images, cv, summary, run_dir, model_store
    )
    print(f"exported {out}", flush=True)
    summary["exported"] = str(out)
    dump_json(summary, run_dir / "final.json")
    return summary


def export_shipped(
    config: TrainConfig,
    name: str,
    description: str,
    shipped: FoldOutcome,
    images: CachedImages,
    cv: dict[str, Any] | None,
    summary: dict[str, Any],
    run_dir: Path,
    model_store: Path,
) -> Path:
    """Report, card and SavedModel of the shipped model as the next version in the store."""
    from training.report import write_model_report

    report = write_model_report(run_dir, name, summary, cv)
    extras = {p.name: p for p in [report, *sorted(run_dir.glob("*.png"))]}
    metrics, data, training = card_groups(config, images, shipped, cv)

    def make_card(version: int, files: dict[str, str]) -> ModelCard:
        return build_card(
            name=name,
            version=version,
            architecture=config.architecture,
            description=description,
            threshold=shipped.threshold,
            input_size=config.input_size,
            crop_fraction=config.crop_fraction,
            metrics=metrics,
            data=data,
            training=training,
            files=files,
        ).model_copy(update={"explain": explain_section()})

    model = shipped.result.model
    # The explain signature is written with the model, from the same weights (training/explain).
    module = ExplainableCellClassifier(model, config.input_size, config.crop_fraction)
    return export_version(
        model,
        model_store / name,
        config.input_size,
        config.crop_fraction,
        make_card,
        extras,
        module=module,
    )


def load_run_data(
    config: TrainConfig, data_root: Path, cache_dir: Path | None, run_dir: Path
) -> tuple[CachedImages, dict[str, Any]]:
    """The cached images at the config's geometry, and what was kept or dropped (data.json)."""
    images = load_images(data_root, config.input_size, config.crop_fraction, cache_dir)
    data_info = {
        "n_images_kept": len(images.labels),
        "duplicates_dropped": len(images.duplicates),
        "duplicates": [list(d) for d in images.duplicates],
        "problems": [{"path": p.path, "reason": p.reason} for p in images.problems],
    }
    print(
        f"data: {len(images.labels)} images kept, {len(images.duplicates)} duplicates dropped, "
        f"{len(images.problems)} problem files",
        flush=True,
    )
    for p in images.problems:
        print(f"  problem: {p.path}: {p.reason}", flush=True)
    dump_json(data_info, run_dir / "data.json")
    return images, data_info


def shipped_model(
    config: TrainConfig,
    images: CachedImages,
    fold_outcomes: list[FoldOutcome],
    pretrain_data: PretrainData | None = None,
) -> FoldOutcome:
    """The model the run ships: the CV fold models averaged, or one fit on the final split."""
    table = subject_table(images.subjects, images.labels)
    if config.ship == "single":
        split = final_split(table, config.validation_fraction, config.validation_max_share)
        return run_split(config, images, split, pretrain_data)
    shipped = ensemble_outcome(fold_outcomes, Split("cv_ensemble", tuple(sorted(table)), ()))
    check = shipped.validation["threshold_transfer"]
    print(
        f"[cv_ensemble] threshold {shipped.threshold:.3f} (pooled out-of-fold); transfer "
        f"check: balanced acc {check['mean']['balanced_accuracy']:.3f} with thresholds "
        f"from the other folds"
        + ("" if check["consistent"] else " -- members' scales DISAGREE, do not ship"),
        flush=True,
    )
    return shipped


def plot_shipped(shipped: FoldOutcome, ship: ShipMode, name: str, run_dir: Path) -> None:
    plot_curves(
        shipped.result.history,
        run_dir / "curves.png",
        f"{name}: shipped model (validation = held-out subjects)",
    )
    val_what = "out-of-fold" if ship == "cv_ensemble" else "validation subjects"
    plot_roc(
        {val_what: (shipped.y_val, shipped.p_val)},
        run_dir / "roc_validation.png",
        f"{name}: {val_what}",
    )
    plot_confusion(
        shipped.validation,
        run_dir / "confusion_validation.png",
        f"{name}: {val_what} @ {shipped.threshold:.3f}",
    )


def run_summary(
    config: TrainConfig,
    name: str,
    images: CachedImages,
    shipped: FoldOutcome,
    data_info: dict[str, Any],
    seconds_total: float,
) -> dict[str, Any]:
    """The run's ``final.json``: the shipped model's threshold, validation and timings."""
    return {
        "name": name,
        "ship": config.ship,
        "config": config.to_dict(),
        "threshold": shipped.threshold,
        "validation": shipped.validation,
        "selected_epoch": shipped.result.selected_epoch,
        "epochs_run": shipped.result.epochs_run,
        "seconds_final": shipped.result.seconds,
        "seconds_per_epoch": shipped.result.seconds_per_epoch,
        "images_per_second": shipped.result.images_per_second,
        "seconds_total": seconds_total,
        "manifest_sha256": images.manifest_sha256,
        "splits": split_counts(images, shipped.split),
        "history": shipped.result.history,
        "data": data_info,
    }


TEST_METRICS_WHAT = (
    "NOT this model's own test set: held-out-subject metrics of the same recipe "
    "under leave-one-normal-donor-out cross-validation (3 fold models, each "
    "scored on subjects it never saw, threshold from its own validation "
    "subjects), pooled over folds"
)
OUT_OF_FOLD_WHAT = (
    "out-of-fold predictions: every image scored by the one fold model that never "
    "trained on its subject; the ensemble's threshold was chosen on them, so these "
    "numbers are optimistic for the threshold (use metrics.cross_validation)"
)


def card_groups(
    config: TrainConfig, images: CachedImages, shipped: FoldOutcome, cv: dict[str, Any] | None
) -> tuple[CardMetrics, CardData, CardTraining]:
    """The run-specific parts of the model card: metrics, data and training."""
    split = shipped.split
    test: dict[str, Any] = {"what": "no cross-validation run; no held-out test metrics"}
    cross_validation = None
    if cv is not None:
        test_subjects = sorted({s for f in cv["folds"] for s in f["splits"]["test"]["subjects"]})
        test = {"what": TEST_METRICS_WHAT, "subjects": test_subjects, **cv["pooled_held_out"]}
        cross_validation = {k: cv[k] for k in ("scheme", "mean", "std")} | {
            "folds": [
                {k: f[k] for k in ("fold", "threshold", "test", "selected_epoch")}
                | {"test_subjects": f["splits"]["test"]["subjects"]}
                for f in cv["folds"]
            ]
        }
    validation: dict[str, Any] = {"subjects": list(split.validation), **shipped.validation}
    if config.ship == "cv_ensemble":
        validation = {"what": OUT_OF_FOLD_WHAT, "subjects": list(split.train), **shipped.validation}
    result = shipped.result
    return (
        CardMetrics(validation=validation, test=test, cross_validation=cross_validation),
        CardData(
            dataset=DATASET,
            citation=CITATION,
            manifest_sha256=images.manifest_sha256,
            duplicates_dropped=len(images.duplicates),
            splits=split_counts(images, split) | {"test": "see metrics.test"},
        ),
        CardTraining(
            config=config.to_dict(),
            seed=config.seed,
            epochs_run=result.epochs_run,
            selected_epoch=result.selected_epoch,
            seconds=round(result.seconds, 1),
            seconds_per_epoch=round(result.seconds_per_epoch, 2),
            images_per_second=round(result.images_per_second, 1),
            command="see training/README.md",
        ),
    )


def ensemble_outcome(outcomes: list[FoldOutcome], split: Split) -> FoldOutcome:
    """The CV fold models as one model; threshold from their pooled out-of-fold scores.

    Each image is scored by the single fold model that held its subject out, so the pooled
    scores (all subjects, every normal donor) stand in for unseen patients far better than
    one fold's handful of validation cells. No subject is unseen by the whole ensemble: its
    held-out estimate remains the cross-validation.
    """
    if not outcomes:
        raise ValueError("no fold models to ensemble")
    members = [o.result.model for o in outcomes]
    y = np.concatenate([o.y_test for o in outcomes])
    p = np.concatenate([o.p_test for o in outcomes])
    threshold = choose_threshold(y, p)
    history: dict[str, list[float]] = {}
    for o in outcomes:
        for k, v in o.result.history.items():
            history[f"{o.split.name}_{k}"] = v
    seconds = sum(o.result.seconds for o in outcomes)
    per_epoch = float(np.median([o.result.seconds_per_epoch for o in outcomes]))
    result = TrainResult(
        MeanEnsemble(members),
        history,
        max(o.result.epochs_run for o in outcomes),
        max(o.result.selected_epoch for o in outcomes),
        seconds,
        float(np.mean([o.result.images_per_second for o in outcomes])),
        per_epoch,
    )
    validation = classification_metrics(y, p, threshold)
    validation["threshold_transfer"] = threshold_transfer(outcomes)
    return FoldOutcome(split, threshold, validation, None, result, y, p)


def threshold_transfer(outcomes: list[FoldOutcome]) -> dict[str, Any]:
    """Does a threshold pooled over members carry to a member that did not set it?

    For each fold model: choose the threshold on the *other* fold models' out-of-fold scores
    and apply it to this model's own held-out subjects. If the members' score scales agree,
    this scores about as well as each model's own validation threshold; if they do not, it
    collapses towards 0.5 balanced accuracy and the ensemble's pooled threshold is not to be
    trusted.
    """
    folds = []
    for k, o in enumerate(outcomes):
        others = [x for j, x in enumerate(outcomes) if j != k]
        t = choose_threshold(
            np.concatenate([x.y_test for x in others]), np.concatenate([x.p_test for x in others])
        )
        m = classification_metrics(o.y_test, o.p_test, t)
        folds.append(
            {
                "fold": o.split.name,
                "threshold_from_other_folds": t,
                "own_validation_threshold": o.threshold,
                **{key: m[key] for key in ("balanced_accuracy", "weighted_f1", "roc_auc")},
            }
        )
    mean = {
        key: float(np.mean([f[key] for f in folds]))
        for key in ("balanced_accuracy", "weighted_f1", "roc_auc")
    }
    return {"folds": folds, "mean": mean, "consistent": mean["balanced_accuracy"] >= 0.6}


def probe_fold(
    config: TrainConfig,
    data_root: Path,
    cache_dir: Path | None,
    run_dir: Path,
    fold: str,
    pretrain_data: PretrainData | None = None,
) -> dict[str, Any]:
    """Train and score one CV fold only: a cheap look at a recipe (no final model, no export)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    images = load_images(data_root, config.input_size, config.crop_fraction, cache_dir)
    table = subject_table(images.subjects, images.labels)
    splits = {
        s.name: s
        for s in cv_splits(table, 3, config.validation_fraction, config.validation_max_share)
    }
    outcome = run_split(config, images, splits[fold], pretrain_data)
    result = {
        "config": config.to_dict(),
        "fold": fold,
        "threshold": outcome.threshold,
        "selected_epoch": outcome.result.selected_epoch,
        "validation": outcome.validation,
        "test": outcome.test,
        "splits": split_counts(images, splits[fold]),
    }
    dump_json(result, run_dir / f"probe-{fold}.json")
    return result

"""Run training recipes through the comparison protocol (training/protocol.py) on real data.

    python -m training protocol --data ../shared/data/cnmc --base base.json \
        --challenger challenger.json --folds 5 --repeats 2 --out reports/protocol/<name>

``base.json``/``challenger.json`` hold a ``TrainConfig`` (the ``config`` of a run's
config.json, or a bare dict). Each recipe's out-of-fold scores are kept in
``<out>/runs/<config digest>.npz`` with its thresholds, folds, cells (subjects and labels),
costs and config (``save_run``), so a recipe already run with the same
folds, seeds and data is not trained again when it meets another challenger. The report is
``<out>/report.md`` plus ``<out>/comparison.json``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from training.data import CachedImages, load_images
from training.pretrain import PretrainData
from training.protocol import (
    Cells,
    FitScore,
    FloatArray,
    RecipeRun,
    comparison_report,
    decide,
    paired_comparison,
    recipe_summary,
    repeat_seed,
    repeated_subject_folds,
    run_recipe,
)
from training.splits import Split, pick_validation, subject_table
from training.train import TrainConfig


def config_digest(config: TrainConfig, n_folds: int, repeats: int, seed: int, manifest: str) -> str:
    text = json.dumps(
        {"config": config.to_dict(), "folds": n_folds, "repeats": repeats, "seed": seed,
         "data": manifest},
        sort_keys=True, default=str,
    )  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fit_score_for(
    config: TrainConfig,
    images: CachedImages,
    cost: dict[str, float],
    models_dir: Path | None = None,
    pretrain_data: PretrainData | None = None,
) -> FitScore:
    """Train ``config`` on the training subjects (validation subjects picked among them, as
    in every run), score the test cells; ``cost`` accumulates training and scoring times.
    With ``models_dir``, each fold model (before test-time views are wrapped around it) is
    saved as ``fold-seed<seed>.keras``, with its threshold and test subjects beside it, so
    calibration, the out-of-distribution check and an ensemble can be built from the very
    models whose out-of-fold scores the protocol measured. With ``pretrain="pbc"``, the folds
    of one repeat share one pretrained backbone (``repeat_seed``): it never sees C-NMC, so
    sharing it leaks no test subject into any fold."""
    from training.pipeline import run_split

    table = subject_table(images.subjects, images.labels)

    def fit_score(train: np.ndarray, test: np.ndarray, seed: int) -> tuple[FloatArray, float]:
        train_subjects = sorted({str(s) for s in images.subjects[train]})
        validation = pick_validation(
            {s: table[s] for s in train_subjects},
            train_subjects,
            config.validation_fraction,
            config.validation_max_share,
        )
        split = Split(
            f"protocol-seed{seed}",
            tuple(s for s in train_subjects if s not in validation),
            tuple(sorted(validation)),
            tuple(sorted({str(s) for s in images.subjects[test]})),
        )
        split.check_disjoint()
        started = time.perf_counter()
        outcome = run_split(
            replace(config, seed=seed), images, split, pretrain_data, repeat_seed(seed)
        )
        if models_dir is not None:
            models_dir.mkdir(parents=True, exist_ok=True)
            raw = getattr(outcome.result.model, "inner", outcome.result.model)
            raw.save(models_dir / f"fold-seed{seed}.keras")
            (models_dir / f"fold-seed{seed}.json").write_text(
                json.dumps(
                    {
                        "threshold": float(outcome.threshold),
                        "train": list(split.train),
                        "validation": list(split.validation),
                        "test": list(split.test),
                        "selected_epoch": outcome.result.selected_epoch,
                    },
                    indent=1,
                )
            )
        cost["fits"] = cost.get("fits", 0) + 1
        cost["train_seconds"] = cost.get("train_seconds", 0.0) + outcome.result.seconds
        cost["seconds_per_epoch_sum"] = (
            cost.get("seconds_per_epoch_sum", 0.0) + outcome.result.seconds_per_epoch
        )
        cost["wall_seconds"] = cost.get("wall_seconds", 0.0) + time.perf_counter() - started
        return outcome.p_test.astype(np.float64), float(outcome.threshold)

    return fit_score


def run_or_reuse(
    name: str,
    config: TrainConfig,
    images: CachedImages,
    cells: Cells,
    folds: np.ndarray,
    seed: int,
    runs_dir: Path,
    pretrain_data: PretrainData | None = None,
) -> RecipeRun:
    digest = config_digest(config, int(folds.max()) + 1, len(folds), seed, images.manifest_sha256)
    cached = runs_dir / f"{digest}.npz"
    if cached.is_file():
        print(f"[protocol] {name}: reusing {cached}", flush=True)
        return read_cached_run(cached, name).run
    cost: dict[str, float] = {}
    fit_score = fit_score_for(config, images, cost, runs_dir / digest, pretrain_data)
    run = run_recipe(name, fit_score, cells, folds, seed)
    cost["seconds_per_epoch"] = cost.pop("seconds_per_epoch_sum") / cost["fits"]
    run.cost = cost
    save_run(cached, run, config, cells)
    return run


def save_run(path: Path, run: RecipeRun, config: TrainConfig, cells: Cells) -> None:
    """A recipe's out-of-fold result with everything needed to analyse it again: its folds
    and cells (so the analysis needs no data set), its cost and its config."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        scores=run.scores,
        thresholds=run.thresholds,
        folds=run.fold_index(),
        subjects=cells.subjects,
        labels=cells.labels,
        cost=json.dumps(run.cost),
        config=json.dumps(config.to_dict(), default=str),
    )


def flat_config(raw: dict[str, Any]) -> dict[str, Any]:
    """A saved config as one flat, JSON-normalised dict: the improved model's options beside
    the others (the committed cards' layout), lists for tuples. A plain dict rather than a
    ``TrainConfig``, so runs cached by code with options this code does not know still read."""
    normal: dict[str, Any] = json.loads(json.dumps(raw, default=str))
    return {**{k: v for k, v in normal.items() if k != "improved"}, **normal.get("improved", {})}


@dataclass(frozen=True)
class CachedRun:
    """A recipe's cached out-of-fold result and its config (``flat_config``). ``cells`` is
    ``None`` for runs cached before their subjects and labels were saved with them (see
    ``cells_of``)."""

    run: RecipeRun
    config: dict[str, Any]
    cells: Cells | None


def read_cached_run(path: Path, name: str | None = None) -> CachedRun:
    with np.load(path, allow_pickle=False) as saved:
        run = RecipeRun(
            name or path.stem,
            saved["scores"],
            saved["thresholds"],
            json.loads(str(saved["cost"])),
            folds=saved["folds"].astype(np.int64) if "folds" in saved else None,
        )
        config = flat_config(json.loads(str(saved["config"])))
        cells = (
            Cells(saved["subjects"], saved["labels"].astype(np.int64))
            if "subjects" in saved
            else None
        )
    return CachedRun(run, config, cells)


def cells_of(cached: CachedRun, data: Path, cache_dir: Path) -> Cells:
    """The run's cells: saved with it, or (older runs) the data set's cells in the order
    ``load_images`` gives them, which is the order the run was scored in."""
    if cached.cells is not None:
        return cached.cells
    size, crop = int(cached.config["input_size"]), float(cached.config["crop_fraction"])
    images = load_images(data, size, crop, cache_dir, log=False)
    cells = Cells(np.asarray(images.subjects), np.asarray(images.labels, dtype=np.int64))
    if len(cells.labels) != cached.run.scores.shape[1]:
        raise ValueError(f"{cached.run.name}: {data} does not hold the cells this run scored")
    return cells


def read_config(path: Path) -> TrainConfig:
    raw: dict[str, Any] = json.loads(path.read_text())
    return TrainConfig.from_dict(raw.get("config", raw))


def compare_recipes(
    data: Path,
    cache_dir: Path,
    base_path: Path,
    challenger_path: Path,
    out: Path,
    n_folds: int = 5,
    repeats: int = 2,
    seed: int = 0,
    n_boot: int = 1000,
    serving_ms: tuple[float, float] | None = None,
    runs_dir: Path | None = None,
    pretrain_data: PretrainData | None = None,
) -> dict[str, Any]:
    """Run (or reuse) both recipes on the same folds and seeds; write the report. Recipes'
    out-of-fold scores and fold models are kept in ``runs_dir`` (default ``<out>/runs``)."""
    base, challenger = read_config(base_path), read_config(challenger_path)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    cells: Cells | None = None
    folds: np.ndarray | None = None
    for name, config in ((base_path.stem, base), (challenger_path.stem, challenger)):
        # Each recipe has its own resized cache; the cells and subjects must be the same.
        images = load_images(data, config.input_size, config.crop_fraction, cache_dir)
        these = Cells(np.asarray(images.subjects), np.asarray(images.labels, dtype=np.int64))
        if cells is None:
            cells, folds = these, repeated_subject_folds(these, n_folds, repeats, seed)
        elif not np.array_equal(cells.subjects, these.subjects):
            raise ValueError("the two recipes see different cells (data or dedupe changed)")
        assert folds is not None
        runs.append(
            run_or_reuse(
                name, config, images, cells, folds, seed, runs_dir or out / "runs", pretrain_data
            )
        )
    assert cells is not None
    return write_comparison(
        out, cells, runs[0], runs[1], n_folds, repeats, seed, n_boot, serving_ms
    )


def write_comparison(
    out: Path, cells: Cells, base: RecipeRun, challenger: RecipeRun, n_folds: int,
    repeats: int, seed: int, n_boot: int, serving_ms: tuple[float, float] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The paired comparison of two (trained or cached) runs: ``report.md`` and
    ``comparison.json`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    runs = [base, challenger]
    comparison = paired_comparison(cells, base, challenger, n_boot=n_boot, seed=seed)
    # Without measured serving costs, "equal and cheaper" cannot apply: pass equal costs.
    base_ms, challenger_ms = serving_ms or (1.0, 1.0)
    verdict = decide(comparison, base_ms, challenger_ms)
    report = comparison_report(
        comparison, verdict, runs[0].name, runs[1].name, n_folds, repeats, n_boot
    )
    costs = "\n".join(
        f"- {run.name}: {run.cost.get('seconds_per_epoch', 0):.1f} s/epoch, "
        f"{run.cost.get('train_seconds', 0):.0f} s training over {run.cost.get('fits', 0):.0f} fits"
        for run in runs
    )
    summaries = {run.name: recipe_summary(cells, run, n_boot=n_boot, seed=seed) for run in runs}
    (out / "report.md").write_text(report + "\n## Cost\n\n" + costs + "\n")
    result = {
        "comparison": comparison,
        "verdict": verdict,
        "summaries": summaries,
        "costs": {run.name: run.cost for run in runs},
    }
    (out / "comparison.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(report, flush=True)
    return result


def write_calibration(run_file: Path, out: Path, data: Path, cache_dir: Path) -> dict[str, Any]:
    """Calibration of one cached run (``training/calibration.py``): ``calibration.json``
    (out-of-fold ECE before/after, the maps to export) and ``reliability.png`` in ``out``."""
    from training.calibration import calibration_study, reliability_diagram

    cached = read_cached_run(run_file)
    study = calibration_study(cells_of(cached, data, cache_dir), cached.run)
    out.mkdir(parents=True, exist_ok=True)
    reliability_diagram(
        study["probabilities"],
        study["labels"],
        out / "reliability.png",
        f"{run_file.stem}: out-of-fold, calibration cross-fitted over folds",
    )
    result = {k: study[k] for k in ("ece", "final", "platt_threshold")}
    (out / "calibration.json").write_text(json.dumps(result, indent=1) + "\n")
    return result

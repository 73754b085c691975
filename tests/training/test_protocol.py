"""The recipe-comparison protocol (training/protocol.py) on small generated populations."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from training.protocol import (
    METRICS,
    Cells,
    FloatArray,
    RecipeRun,
    centred_logits,
    comparison_report,
    decide,
    paired_comparison,
    recipe_metrics,
    recipe_summary,
    repeated_subject_folds,
    run_recipe,
    weighted_auc,
    weighted_f1,
    why_unpaired,
)


def population(n_all: int = 20, n_hem: int = 10, per_subject: int = 30) -> Cells:
    subjects = [f"ALL_{i}" for i in range(n_all)] + [f"H_{i}" for i in range(n_hem)]
    labels = [1] * n_all + [0] * n_hem
    return Cells(
        np.repeat(np.array(subjects), per_subject), np.repeat(np.array(labels), per_subject)
    )


def recipe(cells: Cells, signal: float, noise_seed: int):  # type: ignore[no-untyped-def]
    """A stand-in for training: scores = signal x label + a per-subject shift + noise. The
    shift and the noise depend on the subject/cell and the seed, never on the test labels."""
    subjects = np.unique(cells.subjects)
    shift = dict(
        zip(subjects, np.random.default_rng(99).normal(0, 0.5, len(subjects)), strict=True)
    )
    seen: list[tuple[set[str], set[str]]] = []

    def fit_score(train: np.ndarray, test: np.ndarray, seed: int) -> tuple[FloatArray, float]:
        seen.append((set(cells.subjects[train]), set(cells.subjects[test])))
        rng = np.random.default_rng([noise_seed, seed])
        y = cells.labels[test]
        s = signal * y + np.array([shift[x] for x in cells.subjects[test]])
        s = s + rng.normal(0, 1.0, size=len(y))
        return 1 / (1 + np.exp(-s)), 0.5

    return fit_score, seen


def test_folds_group_subjects_and_differ_between_repeats() -> None:
    cells = population()
    folds = repeated_subject_folds(cells, n_folds=5, repeats=3, seed=0)
    assert folds.shape == (3, len(cells.labels))
    for repeat in folds:
        for subject in np.unique(cells.subjects):
            assert len(np.unique(repeat[cells.subjects == subject])) == 1  # never split
        for k in range(5):  # stratified: both classes in every fold
            assert set(cells.labels[repeat == k]) == {0, 1}
    assert not np.array_equal(folds[0], folds[1])
    assert np.array_equal(folds, repeated_subject_folds(cells, 5, 3, seed=0))  # deterministic


def test_recipe_never_sees_its_test_subjects_in_training() -> None:
    cells = population()
    folds = repeated_subject_folds(cells, 5, 2)
    fit_score, seen = recipe(cells, 1.0, 0)
    run = run_recipe("a", fit_score, cells, folds)
    assert len(seen) == 10 and run.scores.shape == (2, len(cells.labels))
    for train, test in seen:
        assert not train & test


def test_weighted_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    score = np.round(rng.random(200), 2)  # ties on purpose
    w = rng.integers(0, 4, 200).astype(float)
    assert weighted_auc(y, score, w) == pytest.approx(roc_auc_score(y, score, sample_weight=w))
    pred = score >= 0.4
    assert weighted_f1(y, pred, w) == pytest.approx(
        f1_score(y, pred, average="weighted", sample_weight=w)
    )


def test_a_real_gain_is_detected_and_no_gain_is_not() -> None:
    cells = population()
    folds = repeated_subject_folds(cells, 5, 2)
    weak = run_recipe("weak", recipe(cells, 0.3, 1)[0], cells, folds)
    strong = run_recipe("strong", recipe(cells, 3.0, 2)[0], cells, folds)
    twin = run_recipe("twin", recipe(cells, 0.3, 1)[0], cells, folds)

    better = paired_comparison(cells, weak, strong, n_boot=200)
    assert better["roc_auc"]["ci95"][0] > 0
    assert decide(better, 5.0, 9.0)[0] == "replace"

    same = paired_comparison(cells, weak, twin, n_boot=200)
    assert same["roc_auc"]["difference"] == 0 and same["roc_auc"]["ci95"] == (0.0, 0.0)
    assert decide(same, 5.0, 5.0)[0] == "keep"
    assert decide(same, 5.0, 2.0)[0] == "replace"  # level and cheaper

    worse = paired_comparison(cells, strong, weak, n_boot=200)
    assert decide(worse, 9.0, 1.0)[0] == "keep"  # cheaper is not enough when worse
    report = comparison_report(better, decide(better, 5.0, 9.0), "weak", "strong", 5, 2, 200)
    assert "| roc_auc |" in report and "replace" in report


def test_summary_intervals_bracket_the_estimate() -> None:
    cells = population()
    run = run_recipe("a", recipe(cells, 1.5, 0)[0], cells, repeated_subject_folds(cells, 5, 2))
    summary = recipe_summary(cells, run, n_boot=200)
    for metric in METRICS:
        low, high = summary[metric]["ci95"]
        assert low <= summary[metric]["value"] <= high
        assert 0.0 <= low <= high <= 1.0


def test_cells_reject_a_subject_with_both_classes() -> None:
    with pytest.raises(ValueError, match="both classes"):
        Cells(np.array(["a", "a"]), np.array([0, 1]))


def test_compare_recipes_on_real_training_writes_a_report_and_reuses_runs(
    cnmc_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The protocol's adaptor trains real (tiny) models per fold; a second comparison with
    the same recipes, folds and data trains nothing."""
    import json

    from tests.training.test_training import TINY_CONFIG
    from training import pipeline
    from training.study import compare_recipes

    base, challenger = tmp_path / "base.json", tmp_path / "wider.json"
    base.write_text(json.dumps({"config": TINY_CONFIG.to_dict()}))
    wider = dataclasses.replace(TINY_CONFIG, epochs=3)
    challenger.write_text(json.dumps(wider.to_dict()))
    out = tmp_path / "protocol"
    kwargs = dict(n_folds=2, repeats=1, n_boot=50)
    result = compare_recipes(cnmc_tiny, tmp_path / "cache", base, challenger, out, **kwargs)
    assert set(result["comparison"]["roc_auc"]) >= {"base", "wider", "difference", "ci95"}
    assert result["costs"]["base"]["fits"] == 2 and result["costs"]["wider"]["fits"] == 2
    assert "| roc_auc |" in (out / "report.md").read_text()
    from training.study import read_cached_run

    for run_file in (out / "runs").glob("*.npz"):  # analysable again without the data set
        cached = read_cached_run(run_file)
        assert cached.cells is not None and cached.run.folds is not None
        assert cached.run.folds.shape == cached.run.scores.shape == (1, len(cached.cells.labels))

    def no_training(*_: object) -> None:
        raise AssertionError("a cached recipe was trained again")

    monkeypatch.setattr(pipeline, "run_split", no_training)
    again = compare_recipes(cnmc_tiny, tmp_path / "cache", base, challenger, out, **kwargs)
    assert again["comparison"] == result["comparison"]


def shifted_folds_run(cells: Cells, folds: np.ndarray, signal: float = 1.5) -> tuple[
    RecipeRun, FloatArray
]:  # fmt: skip
    """One repeat whose fold models rank cells identically (latent ``signal x label +
    noise``) but each put their scores and threshold at a different place on the logit
    scale, as fold models trained on different subjects do."""
    rng = np.random.default_rng(5)
    latent = signal * cells.labels + rng.normal(0, 1.0, len(cells.labels))
    offsets = np.array([-3.0, 2.5, -1.0, 3.0, 0.0])[folds[0]]
    scores = 1 / (1 + np.exp(-(latent + offsets)))
    thresholds = 1 / (1 + np.exp(-offsets))
    return RecipeRun("shifted", scores[None], thresholds[None], folds=folds[:1]), latent


def test_centred_auc_removes_fold_scale_differences_that_pooling_suffers() -> None:
    cells = population()
    folds = repeated_subject_folds(cells, 5, 1)
    run, latent = shifted_folds_run(cells, folds)
    metrics = recipe_metrics(cells, run)
    ones = np.ones(len(latent))
    assert metrics["roc_auc"] == pytest.approx(weighted_auc(cells.labels, latent, ones))
    assert metrics["roc_auc_pooled_raw"] < metrics["roc_auc"] - 0.05
    per_fold = [
        roc_auc_score(cells.labels[folds[0] == k], run.scores[0, folds[0] == k]) for k in range(5)
    ]
    assert metrics["roc_auc_fold_mean"] == pytest.approx(np.mean(per_fold))
    # z >= 0 is the fold's own decision.
    z = centred_logits(run.scores, run.thresholds)
    assert np.array_equal(z >= 0, run.scores >= run.thresholds)


def test_folds_recovered_from_thresholds_and_unpaired_runs_refused() -> None:
    cells = population()
    folds = repeated_subject_folds(cells, 5, 1)
    run, _ = shifted_folds_run(cells, folds)
    legacy = dataclasses.replace(run, folds=None)  # cached before folds were saved
    recovered = legacy.fold_index()[0]
    for k in range(5):  # the same partition, under other fold numbers
        assert len(np.unique(recovered[folds[0] == k])) == 1
    assert len(np.unique(recovered)) == 5 and why_unpaired(run, legacy) is None
    assert recipe_metrics(cells, legacy) == recipe_metrics(cells, run)
    relabelled = dataclasses.replace(run, folds=(folds[:1] + 2) % 5)
    assert why_unpaired(run, relabelled) is None

    other_folds = repeated_subject_folds(cells, 5, 1, seed=7)
    reshuffled, _ = shifted_folds_run(cells, other_folds)
    assert why_unpaired(run, reshuffled) == "different fold assignment in repeat 0"
    with pytest.raises(ValueError, match="fold assignment"):
        paired_comparison(cells, run, reshuffled, n_boot=10)
    two_repeats = run_recipe(
        "a", recipe(cells, 1.0, 0)[0], cells, repeated_subject_folds(cells, 5, 2)
    )
    assert "repeats" in str(why_unpaired(run, two_repeats))

"""A comparison protocol that can tell two training recipes apart on unseen subjects.

Repeated subject-grouped cross-validation: every repeat deals the subjects (never single
images) into ``n_folds`` folds with its own seed, stratified by the subject's class, so
each cell is scored once per repeat by a model that never saw its subject. Two recipes
compared with the same folds and seeds are *paired*: their difference is measured on the
same cells, which removes most of the fold-to-fold noise that unpaired means carry.

Uncertainty comes from resampling subjects, the unit that generalises: a bootstrap draws
subjects with replacement (within each class, so both classes stay present), every cell of
a drawn subject counts as often as the subject was drawn, and each metric is recomputed on
the out-of-fold scores of every repeat and averaged over repeats. The 2.5th and 97.5th
percentiles of the recipe difference form its 95% interval.

Decision rule (``decide``): a challenger replaces the default only when the interval of the
paired ROC AUC difference (threshold-centred, see below) lies above zero and balanced
accuracy is not worse (its interval's upper end above zero), or when the AUC interval
contains zero and the challenger is cheaper to serve.

Metrics, per cell: ROC AUC, balanced accuracy and weighted F1 at each fold's own threshold
(chosen by the recipe on its training subjects). Per subject: the out-of-fold blast fraction
(share of its cells called ``all``) and the subject-level ROC AUC of that fraction against
the subject's diagnosis.

Three ROC AUCs, because pooling out-of-fold scores mixes fold models whose scores sit on
different scales (one fold's model puts its threshold at 0.40, another's at 0.93):

- ``roc_auc`` (primary, used by ``decide``): pooled AUC of the *threshold-centred* logit
  ``z = logit(score) - logit(fold threshold)``. Each fold's scores are shifted so that its
  own decision point sits at zero; the shift comes from the fold's validation subjects,
  never from test labels. It asks what a deployed model needs: does one cut rank cells of
  unseen subjects, whichever training set the model came from.
- ``roc_auc_pooled_raw``: pooled AUC of the raw scores, which penalises a recipe for
  fold-to-fold scale differences that its own thresholds already correct.
- ``roc_auc_fold_mean``: mean of the per-fold AUCs (ranking within a fold only; each fold
  holds few subjects, so it is noisy, and it ignores whether folds agree at all).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
METRICS = (
    "roc_auc",
    "roc_auc_pooled_raw",
    "roc_auc_fold_mean",
    "balanced_accuracy",
    "weighted_f1",
    "subject_auc",
)
# Scores of exactly 0 or 1 (float32 sigmoids saturate) would have infinite logits.
_LOGIT_EPS = 1e-7


@dataclass(frozen=True)
class Cells:
    """The population the protocol scores: one entry per cell."""

    subjects: NDArray[np.str_]
    labels: NDArray[np.int64]  # 1 = positive (ALL blast), 0 = normal

    def __post_init__(self) -> None:
        if self.subjects.shape != self.labels.shape:
            raise ValueError("subjects and labels must have one entry per cell")
        for subject in np.unique(self.subjects):
            if len(np.unique(self.labels[self.subjects == subject])) != 1:
                raise ValueError(f"subject {subject} has cells of both classes")

    def subject_labels(self) -> dict[str, int]:
        return {str(s): int(self.labels[self.subjects == s][0]) for s in np.unique(self.subjects)}


FitScore = Callable[[NDArray[np.bool_], NDArray[np.bool_], int], tuple[FloatArray, float]]
"""(train mask, test mask, seed) -> (scores of the test cells, the threshold the recipe chose
on its training subjects). The recipe must not look at the test cells' labels."""


def repeated_subject_folds(
    cells: Cells, n_folds: int, repeats: int, seed: int = 0
) -> NDArray[np.int64]:
    """``[repeats, n_cells]`` fold index of every cell. Per repeat and class, subjects are
    shuffled and each goes to the fold that holds the fewest cells of its class so far."""
    subject_labels = cells.subject_labels()
    counts = {s: int(np.sum(cells.subjects == s)) for s in subject_labels}
    for label in (0, 1):
        if sum(v == label for v in subject_labels.values()) < n_folds:
            raise ValueError(f"class {label} has fewer subjects than folds ({n_folds})")
    folds = np.empty((repeats, len(cells.labels)), dtype=np.int64)
    for repeat in range(repeats):
        rng = np.random.default_rng([seed, repeat])
        fold_of: dict[str, int] = {}
        for label in (0, 1):
            pool = sorted(s for s, v in subject_labels.items() if v == label)
            load = [0] * n_folds
            for subject in rng.permutation(pool):
                k = min(range(n_folds), key=lambda j: (load[j], j))
                fold_of[str(subject)] = k
                load[k] += counts[str(subject)]
        folds[repeat] = [fold_of[str(s)] for s in cells.subjects]
    return folds


def logit(p: FloatArray | float) -> FloatArray:
    q = np.clip(np.asarray(p, dtype=np.float64), _LOGIT_EPS, 1 - _LOGIT_EPS)
    return np.asarray(np.log(q) - np.log1p(-q))


def centred_logits(scores: FloatArray, thresholds: FloatArray) -> FloatArray:
    """``logit(score) - logit(threshold)``: each fold model's scores on one scale, with its
    own decision point at 0 (``z >= 0`` exactly when ``score >= threshold``, up to the
    clipping of saturated scores)."""
    return logit(scores) - logit(thresholds)


@dataclass
class RecipeRun:
    """Out-of-fold scores of one recipe: ``[repeats, n_cells]`` scores and thresholds, and
    the fold of every cell in each repeat (``folds``; ``None`` for runs cached without it,
    whose folds are recovered from the thresholds, see ``fold_index``)."""

    name: str
    scores: FloatArray
    thresholds: FloatArray
    cost: dict[str, float] = field(default_factory=dict)
    folds: NDArray[np.int64] | None = None

    def fold_index(self) -> NDArray[np.int64]:
        """``[repeats, n_cells]`` fold of each cell. Without saved folds, cells that share
        a threshold share a fold model: every fold model chose its own threshold, so two
        folds merge only if their thresholds are bit-identical."""
        if self.folds is not None:
            return self.folds
        return np.stack(
            [np.unique(t, return_inverse=True)[1].astype(np.int64) for t in self.thresholds]
        )


FOLD_SEED_STRIDE = 1000
"""Fold ``k`` of repeat ``r`` trains with seed ``seed + FOLD_SEED_STRIDE * r + k``."""


def repeat_seed(fold_seed: int) -> int:
    """The seed the folds of one repeat share (fold seeds differ only below the stride, as
    long as ``seed % FOLD_SEED_STRIDE + n_folds <= FOLD_SEED_STRIDE``)."""
    return fold_seed - fold_seed % FOLD_SEED_STRIDE


def run_recipe(
    name: str, fit_score: FitScore, cells: Cells, folds: NDArray[np.int64], seed: int = 0
) -> RecipeRun:
    repeats, n = folds.shape
    scores = np.full((repeats, n), np.nan)
    thresholds = np.full((repeats, n), np.nan)
    for repeat in range(repeats):
        for k in np.unique(folds[repeat]):
            test = folds[repeat] == k
            fold_seed = seed + FOLD_SEED_STRIDE * repeat + int(k)
            fold_scores, threshold = fit_score(~test, test, fold_seed)
            scores[repeat, test] = fold_scores
            thresholds[repeat, test] = threshold
    if np.isnan(scores).any():
        raise ValueError(f"recipe {name}: some cells were never scored")
    return RecipeRun(name, scores, thresholds, folds=folds.astype(np.int64))


# --- weighted metrics (weights = how often a cell's subject was drawn) -------------------
def weighted_auc(y: NDArray[np.int64], score: FloatArray, w: FloatArray) -> float:
    """Mann-Whitney AUC with cell weights; ties count one half."""
    pos, neg = y == 1, y == 0
    w_pos, w_neg = w[pos], w[neg]
    total = w_pos.sum() * w_neg.sum()
    if total == 0:
        return float("nan")
    order = np.argsort(score[neg], kind="stable")
    neg_sorted, neg_cum = score[neg][order], np.concatenate([[0.0], np.cumsum(w_neg[order])])
    below = neg_cum[np.searchsorted(neg_sorted, score[pos], side="left")]
    upto = neg_cum[np.searchsorted(neg_sorted, score[pos], side="right")]
    return float(np.sum(w_pos * (below + 0.5 * (upto - below))) / total)


def _rates(y: NDArray[np.int64], pred: NDArray[np.bool_], w: FloatArray) -> dict[str, float]:
    tp = float(np.sum(w[(y == 1) & pred]))
    fn = float(np.sum(w[(y == 1) & ~pred]))
    tn = float(np.sum(w[(y == 0) & ~pred]))
    fp = float(np.sum(w[(y == 0) & pred]))
    return {"tp": tp, "fn": fn, "tn": tn, "fp": fp}


def weighted_balanced_accuracy(
    y: NDArray[np.int64], pred: NDArray[np.bool_], w: FloatArray
) -> float:
    r = _rates(y, pred, w)
    sensitivity = r["tp"] / (r["tp"] + r["fn"]) if r["tp"] + r["fn"] else float("nan")
    specificity = r["tn"] / (r["tn"] + r["fp"]) if r["tn"] + r["fp"] else float("nan")
    return (sensitivity + specificity) / 2


def weighted_f1(y: NDArray[np.int64], pred: NDArray[np.bool_], w: FloatArray) -> float:
    """F1 of each class weighted by the class's (weighted) support, as sklearn's 'weighted'."""
    r = _rates(y, pred, w)
    f1_pos = 2 * r["tp"] / (2 * r["tp"] + r["fp"] + r["fn"]) if r["tp"] + r["fp"] + r["fn"] else 0.0
    f1_neg = 2 * r["tn"] / (2 * r["tn"] + r["fn"] + r["fp"]) if r["tn"] + r["fn"] + r["fp"] else 0.0
    support_pos, support_neg = r["tp"] + r["fn"], r["tn"] + r["fp"]
    return (f1_pos * support_pos + f1_neg * support_neg) / (support_pos + support_neg)


def subject_blast_fractions(
    cells: Cells, scores: FloatArray, thresholds: FloatArray
) -> dict[str, float]:
    """Each subject's out-of-fold share of cells called positive (one repeat's scores)."""
    called = scores >= thresholds
    return {str(s): float(np.mean(called[cells.subjects == s])) for s in np.unique(cells.subjects)}


@dataclass(frozen=True)
class _Index:
    """Subject lookups computed once per population (the bootstrap reuses them)."""

    subjects: NDArray[np.str_]
    cell_subject: NDArray[np.int64]
    subject_label: NDArray[np.int64]
    cells_per_subject: NDArray[np.int64]

    @classmethod
    def of(cls, cells: Cells) -> _Index:
        subjects, cell_subject = np.unique(cells.subjects, return_inverse=True)
        labels = np.zeros(len(subjects), dtype=np.int64)
        labels[cell_subject] = cells.labels
        return cls(subjects, cell_subject, labels, np.bincount(cell_subject))


def recipe_metrics(
    cells: Cells,
    run: RecipeRun,
    subject_weight: dict[str, float] | None = None,
    index: _Index | None = None,
) -> dict[str, float]:
    """Each metric averaged over repeats; ``subject_weight`` (bootstrap counts) weights cells."""
    index = index or _Index.of(cells)
    if subject_weight is None:
        weights_by_subject = np.ones(len(index.subjects))
    else:
        weights_by_subject = np.array([subject_weight.get(str(s), 0.0) for s in index.subjects])
    w = weights_by_subject[index.cell_subject]
    out: dict[str, list[float]] = {m: [] for m in METRICS}
    y = cells.labels
    for scores, thresholds, folds in zip(run.scores, run.thresholds, run.fold_index(), strict=True):
        pred = scores >= thresholds
        out["roc_auc"].append(weighted_auc(y, centred_logits(scores, thresholds), w))
        out["roc_auc_pooled_raw"].append(weighted_auc(y, scores, w))
        per_fold = [
            weighted_auc(y[f], scores[f], w[f]) for f in (folds == k for k in np.unique(folds))
        ]
        # A bootstrap draw can leave a fold without one class: that fold has no AUC.
        finite = [a for a in per_fold if np.isfinite(a)]
        out["roc_auc_fold_mean"].append(float(np.mean(finite)) if finite else float("nan"))
        out["balanced_accuracy"].append(weighted_balanced_accuracy(y, pred, w))
        out["weighted_f1"].append(weighted_f1(y, pred, w))
        called = np.bincount(
            index.cell_subject, weights=pred.astype(float), minlength=len(index.subjects)
        )
        fractions = called / index.cells_per_subject
        out["subject_auc"].append(weighted_auc(index.subject_label, fractions, weights_by_subject))
    return {m: float(np.mean(v)) for m, v in out.items()}


def bootstrap_subject_weights(cells: Cells, n_boot: int, seed: int) -> list[dict[str, float]]:
    """Subject draw counts, resampled with replacement within each class."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[str]] = {0: [], 1: []}
    for subject, label in cells.subject_labels().items():
        by_class[label].append(subject)
    draws = []
    for _ in range(n_boot):
        counts: dict[str, float] = {}
        for pool in by_class.values():
            for subject in rng.choice(sorted(pool), size=len(pool), replace=True):
                counts[str(subject)] = counts.get(str(subject), 0.0) + 1.0
        draws.append(counts)
    return draws


def interval(values: list[float]) -> tuple[float, float]:
    finite = np.asarray([v for v in values if np.isfinite(v)])
    return float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))


def recipe_summary(
    cells: Cells, run: RecipeRun, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Point estimates with 95% subject-bootstrap intervals, per metric."""
    index = _Index.of(cells)
    point = recipe_metrics(cells, run, index=index)
    boots = [
        recipe_metrics(cells, run, w, index) for w in bootstrap_subject_weights(cells, n_boot, seed)
    ]
    return {m: {"value": point[m], "ci95": interval([b[m] for b in boots])} for m in METRICS}


def why_unpaired(base: RecipeRun, challenger: RecipeRun) -> str | None:
    """Why two runs cannot be compared cell by cell, or ``None`` when they can: they need the
    same repeats and cells, and the same subjects in each fold of each repeat. Folds
    recovered from thresholds may merge two folds of one run (identical thresholds), so a
    partition that is a coarsening of the other's still counts as the same."""
    if base.scores.shape != challenger.scores.shape:
        return (
            f"{base.scores.shape[0]} vs {challenger.scores.shape[0]} repeats of "
            f"{base.scores.shape[1]} vs {challenger.scores.shape[1]} cells"
        )
    for repeat, (a, b) in enumerate(zip(base.fold_index(), challenger.fold_index(), strict=True)):
        joint = len(np.unique(np.stack([a, b]), axis=1).T)
        if joint != max(len(np.unique(a)), len(np.unique(b))):
            return f"different fold assignment in repeat {repeat}"
    return None


def paired_comparison(
    cells: Cells, base: RecipeRun, challenger: RecipeRun, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """challenger - base per metric, with a 95% interval from the same subject draws."""
    reason = why_unpaired(base, challenger)
    if reason is not None:
        raise ValueError(f"paired runs need the same repeats, cells and folds: {reason}")
    index = _Index.of(cells)
    a, b = recipe_metrics(cells, base, index=index), recipe_metrics(cells, challenger, index=index)
    diffs: dict[str, list[float]] = {m: [] for m in METRICS}
    for w in bootstrap_subject_weights(cells, n_boot, seed):
        ma = recipe_metrics(cells, base, w, index)
        mb = recipe_metrics(cells, challenger, w, index)
        for m in METRICS:
            diffs[m].append(mb[m] - ma[m])
    return {
        m: {
            base.name: a[m],
            challenger.name: b[m],
            "difference": b[m] - a[m],
            "ci95": interval(diffs[m]),
        }
        for m in METRICS
    }


Verdict = Literal["replace", "keep"]


def decide(
    comparison: dict[str, Any], base_cost_ms: float, challenger_cost_ms: float
) -> tuple[Verdict, str]:
    """Apply the decision rule of the module docstring to a ``paired_comparison``."""
    auc_low, auc_high = comparison["roc_auc"]["ci95"]
    _, bacc_high = comparison["balanced_accuracy"]["ci95"]
    if auc_low > 0 and bacc_high > 0:
        return "replace", f"ROC AUC better (95% CI {auc_low:+.3f} to {auc_high:+.3f})"
    if auc_low <= 0 <= auc_high and challenger_cost_ms < base_cost_ms:
        return "replace", (
            f"ROC AUC level (95% CI {auc_low:+.3f} to {auc_high:+.3f}) and cheaper "
            f"({challenger_cost_ms:.2f} vs {base_cost_ms:.2f} ms/image)"
        )
    if auc_high < 0:
        return "keep", f"ROC AUC worse (95% CI {auc_low:+.3f} to {auc_high:+.3f})"
    return "keep", f"no shown gain (ROC AUC 95% CI {auc_low:+.3f} to {auc_high:+.3f})"


def comparison_report(
    comparison: dict[str, Any], verdict: tuple[Verdict, str], base: str, challenger: str,
    n_folds: int, repeats: int, n_boot: int,
) -> str:  # fmt: skip
    lines = [
        f"# {challenger} vs {base}",
        "",
        f"Repeated subject-grouped cross-validation: {repeats} repeats x {n_folds} folds, "
        f"paired (same folds and seeds); 95% intervals from {n_boot} subject bootstraps.",
        "",
        f"| metric | {base} | {challenger} | difference | 95% CI |",
        "|---|---:|---:|---:|---|",
    ]
    for m in METRICS:
        row = comparison[m]
        low, high = row["ci95"]
        lines.append(
            f"| {m} | {row[base]:.3f} | {row[challenger]:.3f} | {row['difference']:+.3f} "
            f"| {low:+.3f} to {high:+.3f} |"
        )
    lines += ["", f"Decision: **{verdict[0]}** ({verdict[1]})."]
    return "\n".join(lines) + "\n"

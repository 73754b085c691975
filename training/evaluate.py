"""Held-out metrics with ``all`` as the positive class, threshold choice, and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score, roc_curve

from training.data import LABELS


def choose_threshold(y_true: np.ndarray, p_all: np.ndarray) -> float:
    """Threshold maximising balanced accuracy on validation subjects.

    Returns the midpoint of the best-scoring interval between consecutive distinct scores
    (not an edge that sits on a validation image), preferring the interval closest to 0.5.
    """
    if len(np.unique(y_true)) < 2:
        return 0.5
    scores = np.unique(p_all)
    cuts = np.concatenate([[0.0], (scores[:-1] + scores[1:]) / 2.0, [1.0]])
    best: tuple[float, float] = (-1.0, 0.5)
    for t in cuts:
        pred = p_all >= t
        tpr = float(np.mean(pred[y_true == 1]))
        tnr = float(np.mean(~pred[y_true == 0]))
        bal = (tpr + tnr) / 2.0
        if bal > best[0] + 1e-12 or (
            abs(bal - best[0]) <= 1e-12 and abs(t - 0.5) < abs(best[1] - 0.5)
        ):
            best = (bal, float(t))
    return best[1]


def classification_metrics(
    y_true: np.ndarray, p_all: np.ndarray, threshold: float
) -> dict[str, Any]:
    """All metrics the report and card carry. ``y_true``: 1 = all (positive), 0 = hem."""
    y_true = np.asarray(y_true).astype(int)
    pred = (np.asarray(p_all) >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y_true, pred, labels=[0, 1]).ravel().tolist()

    def ratio(a: int, b: int) -> float | None:
        return a / b if b else None

    sens, spec = ratio(tp, tp + fn), ratio(tn, tn + fp)
    known = [v for v in (sens, spec) if v is not None]
    f1 = f1_score(y_true, pred, labels=[0, 1], average=None, zero_division=0)
    auc = float(roc_auc_score(y_true, p_all)) if len(np.unique(y_true)) == 2 else None
    return {
        "n_images": len(y_true),
        "n_per_class": {"hem": int((y_true == 0).sum()), "all": int((y_true == 1).sum())},
        "threshold": float(threshold),
        "accuracy": float((pred == y_true).mean()) if len(y_true) else None,
        "balanced_accuracy": sum(known) / len(known) if known else None,
        "sensitivity": sens,
        "specificity": spec,
        "precision_all": ratio(tp, tp + fp),
        "precision_hem": ratio(tn, tn + fn),
        "f1_all": float(f1[1]),
        "f1_hem": float(f1[0]),
        "weighted_f1": float(f1_score(y_true, pred, average="weighted", zero_division=0)),
        "roc_auc": auc,
        "confusion_matrix": {"labels": list(LABELS), "rows_true_cols_pred": [[tn, fp], [fn, tp]]},
    }


SUMMARY_KEYS = (
    "accuracy",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "precision_all",
    "f1_all",
    "f1_hem",
    "weighted_f1",
    "roc_auc",
)


def mean_std(fold_metrics: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    mean: dict[str, float] = {}
    std: dict[str, float] = {}
    for key in SUMMARY_KEYS:
        values = [m[key] for m in fold_metrics if m.get(key) is not None]
        if values:
            mean[key] = float(np.mean(values))
            std[key] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return mean, std


def plot_curves(history: dict[str, list[float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # keys "loss", "val_loss", ... or, for several models, "<model>_loss", "<model>_val_loss"
    models = sorted({k.removesuffix("_val_loss") for k in history if k.endswith("_val_loss")})
    models = models or [""]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        for model in models:
            head = f"{model}_" if model else ""
            for prefix, style in (("", "-"), ("val_", "--")):
                if head + prefix + key in history:
                    ax.plot(
                        range(1, len(history[head + prefix + key]) + 1),
                        history[head + prefix + key],
                        style,
                        label=f"{model} " * bool(model)
                        + ("validation " if prefix else "train ")
                        + key,
                    )
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (y, p) in curves.items():
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, p):.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity (all = positive)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_confusion(metrics: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.array(metrics["confusion_matrix"]["rows_true_cols_pred"])
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(
            j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black"
        )
    ax.set_xticks([0, 1], LABELS)
    ax.set_yticks([0, 1], LABELS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)

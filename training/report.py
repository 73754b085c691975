"""Markdown reports: one per exported model, and the side-by-side comparison."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROWS = (
    ("balanced_accuracy", "balanced accuracy"),
    ("weighted_f1", "weighted F1"),
    ("roc_auc", "ROC AUC"),
    ("accuracy", "accuracy"),
    ("sensitivity", "sensitivity (all)"),
    ("specificity", "specificity (hem)"),
    ("precision_all", "precision (all)"),
    ("f1_all", "F1 all"),
    ("f1_hem", "F1 hem"),
)


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else ("-" if v is None else str(v))


def metrics_table(columns: dict[str, dict[str, Any]]) -> str:
    lines = ["| metric | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for key, label in ROWS:
        lines.append(
            f"| {label} | " + " | ".join(_fmt(c.get(key)) for c in columns.values()) + " |"
        )
    return "\n".join(lines)


def cv_table(cv: dict[str, Any]) -> str:
    cols: dict[str, dict[str, Any]] = {}
    for f in cv["folds"]:
        cols[
            f"{f['fold']} (test: {', '.join(f['splits']['test']['subjects'][:4])}"
            f"{'...' if len(f['splits']['test']['subjects']) > 4 else ''})"
        ] = f["test"]
    mean, std = cv["mean"], cv["std"]
    cols["mean ± std"] = {k: f"{mean[k]:.3f} ± {std[k]:.3f}" for k in mean}
    cols["pooled"] = cv["pooled_held_out"]
    return metrics_table(cols)


def _transfer_lines(check: dict[str, Any] | None) -> list[str]:
    if not check:
        return []
    rows = "; ".join(
        f"{f['fold']}: threshold {f['threshold_from_other_folds']:.3f} (own validation "
        f"{f['own_validation_threshold']:.3f}) -> balanced accuracy "
        f"{f['balanced_accuracy']:.3f}"
        for f in check["folds"]
    )
    verdict = (
        "the members' score scales agree, so one pooled threshold is meaningful"
        if check["consistent"]
        else "**the members' score scales disagree: the pooled threshold is not to be trusted**"
    )
    return [
        "Threshold transfer check (threshold chosen on the *other* folds' out-of-fold scores, "
        f"applied to each fold's held-out subjects): {rows}; mean balanced accuracy "
        f"{check['mean']['balanced_accuracy']:.3f}, weighted F1 "
        f"{check['mean']['weighted_f1']:.3f}: {verdict}.",
        "",
    ]


def write_model_report(
    run_dir: Path, name: str, summary: dict[str, Any], cv: dict[str, Any] | None
) -> Path:
    s = summary
    lines = [
        f"# {name}: training and evaluation report",
        "",
        f"Architecture `{s['config']['architecture']}`, input {s['config']['input_size']}px "
        f"(crop fraction {s['config']['crop_fraction']}), seed {s['config']['seed']}. "
        f"Data manifest sha256 `{s['manifest_sha256'][:16]}...`; "
        f"{s['data']['n_images_kept']} images kept, {s['data']['duplicates_dropped']} "
        f"duplicates dropped, {len(s['data']['problems'])} problem files.",
        "",
    ]
    if cv:
        lines += [
            "## Held-out subjects (cross-validation, the honest estimate)",
            "",
            f"Scheme: {cv['scheme']}. Each fold model is trained without its test "
            "subjects; its threshold comes from its own validation subjects.",
            "",
            cv_table(cv),
            "",
        ]
        for f in cv["folds"]:
            sp = f["splits"]
            lines.append(
                f"- {f['fold']}: test {sp['test']['subjects']} {sp['test']['n_images']}; "
                f"validation {sp['validation']['subjects']} "
                f"{sp['validation']['n_images']}; train {sp['train']['subjects']} "
                f"{sp['train']['n_images']}; threshold {f['threshold']:.3f}"
            )
        lines += ["", "![CV ROC](cv_roc.png) ![CV confusion](cv_confusion.png)", ""]
    sp = s["splits"]
    if s.get("ship") == "cv_ensemble":
        lines += [
            "## Shipped model: the mean of the cross-validation fold models",
            "",
            "The shipped model averages P(all) over the fold models above. Each member was "
            "trained with one group of normal donors (and a third of the patients) held out, "
            "so together they have seen every subject; no subject is unseen by all of them, "
            "so the cross-validation above is its held-out estimate. Threshold "
            f"{s['threshold']:.3f}: maximum balanced accuracy over the pooled out-of-fold "
            "scores (each image scored by the member that never trained on its subject).",
            "",
            "Out-of-fold metrics at that threshold (optimistic: the threshold was chosen on "
            "them; the per-fold thresholds of the CV table were not):",
            "",
            metrics_table({"out-of-fold": s["validation"]}),
            "",
            *_transfer_lines(s["validation"].get("threshold_transfer")),
            "Training time (all members):",
        ]
    else:
        lines += [
            "## Shipped model",
            "",
            f"Trained on {sp['train']['subjects']} {sp['train']['n_images']}; validation "
            f"subjects {sp['validation']['subjects']} {sp['validation']['n_images']} chose "
            f"the threshold {s['threshold']:.3f} (max balanced accuracy) and the epoch "
            f"({s['selected_epoch']} of {s['epochs_run']}).",
            "",
            "Validation-subject metrics (optimistic: the threshold was chosen on them):",
            "",
            metrics_table({"validation subjects": s["validation"]}),
            "",
            "Training time:",
        ]
    lines[-1] += (
        f" {s['seconds_final']:.0f} s, {s['seconds_per_epoch']:.1f} s/epoch (median), "
        f"{s['images_per_second']:.0f} training images/s."
    )
    lines += [
        "",
        "![curves](curves.png) ![ROC](roc_validation.png) ![confusion](confusion_validation.png)",
        "",
    ]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def load_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    final = json.loads((run_dir / "final.json").read_text())
    cv_path = run_dir / "cv.json"
    return final, (json.loads(cv_path.read_text()) if cv_path.exists() else None)


def _threshold_source(summary: dict[str, Any]) -> str:
    if summary.get("ship") == "cv_ensemble":
        return "mean of the CV fold models; chosen on their pooled out-of-fold scores"
    return "chosen on the shipped model's validation subjects"


def write_comparison(paper_run: Path, improved_run: Path, out: Path) -> Path:
    """Paper as published vs paper under the honest protocol vs the improved model."""
    paper, paper_cv = load_run(paper_run)
    improved, improved_cv = load_run(improved_run)
    if paper_cv is None or improved_cv is None:
        raise ValueError("both runs need cross-validation results (run without --no-cv)")
    cols = {
        "paper model, CV held-out subjects (mean ± std)": {
            k: f"{paper_cv['mean'][k]:.3f} ± {paper_cv['std'][k]:.3f}" for k in paper_cv["mean"]
        },
        "improved model, CV held-out subjects (mean ± std)": {
            k: f"{improved_cv['mean'][k]:.3f} ± {improved_cv['std'][k]:.3f}"
            for k in improved_cv["mean"]
        },
        "paper, pooled CV": paper_cv["pooled_held_out"],
        "improved, pooled CV": improved_cv["pooled_held_out"],
    }
    lines = [
        "# Paper CNN vs improved CNN on C-NMC (held-out subjects)",
        "",
        "## As published (not comparable)",
        "",
        "The paper reports 88% accuracy, 90.33% precision and 67.39% recall, on a random "
        "image-level split (cells of the same subject on both sides: leaky) and with `hem` "
        "as the positive class by accident. Those numbers cannot be reproduced honestly "
        "and are not comparable with the table below.",
        "",
        "## Under the honest protocol (positive class = all)",
        "",
        metrics_table(cols),
        "",
        f"Thresholds of the shipped versions: paper {paper['threshold']:.3f} "
        f"({_threshold_source(paper)}); improved {improved['threshold']:.3f} "
        f"({_threshold_source(improved)}).",
        "",
        "## Per fold",
        "",
        "### paper",
        "",
        cv_table(paper_cv),
        "",
        "### improved",
        "",
        cv_table(improved_cv),
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    return out

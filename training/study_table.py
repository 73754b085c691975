"""The study table: every recipe cached in a protocol runs dir, against one base recipe.

    python -m training study-table --runs-dir runs/round2/runs --base <digest or config.json> \
        --out report.md [--serving-ms serving.json]

One row per recipe: its metrics with 95% subject-bootstrap intervals
(``protocol.recipe_summary``), the paired difference from the base with its interval and the
decision (``protocol.paired_comparison``, ``protocol.decide``), training s/epoch, serving
ms/image (from a JSON ``{digest: ms}``, blank when not measured), and the out-of-fold ECE
before and after Platt calibration (``calibration.calibration_study``). Recipes scored on
other cells, repeats or fold assignments than the base cannot be paired and are listed
below the table with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from training.calibration import calibration_study
from training.protocol import (
    METRICS,
    Cells,
    decide,
    paired_comparison,
    recipe_summary,
    why_unpaired,
)
from training.study import CachedRun, cells_of, flat_config, read_cached_run

HEADERS = {
    "roc_auc": "ROC AUC (centred)",
    "roc_auc_pooled_raw": "ROC AUC (raw pooled)",
    "roc_auc_fold_mean": "ROC AUC (fold mean)",
    "balanced_accuracy": "balanced accuracy",
    "weighted_f1": "weighted F1",
    "subject_auc": "subject AUC",
}


def _show(value: Any) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, list) else str(value)


def short_name(config: dict[str, Any], base: dict[str, Any]) -> str:
    """``key=value`` for every setting of a flat config that differs from the base's
    (``base`` if none)."""
    changed = [f"{k}={_show(v)}" for k, v in sorted(config.items()) if base.get(k) != v]
    return ", ".join(changed) or "base"


def find_base(runs: dict[str, CachedRun], base: str) -> str:
    """The digest of the base run: ``base`` itself, or the one run whose config equals the
    config JSON at path ``base``."""
    if base in runs:
        return base
    path = Path(base)
    if not path.is_file():
        raise ValueError(f"--base {base}: neither a run in the runs dir nor a config file")
    raw = json.loads(path.read_text())
    wanted = flat_config(raw.get("config", raw))
    matches = [d for d, cached in runs.items() if cached.config == wanted]
    if len(matches) != 1:
        raise ValueError(
            f"--base {base} matches {len(matches)} cached runs ({', '.join(matches) or 'none'}); "
            "pass the digest of one"
        )
    return matches[0]


def _interval(entry: dict[str, Any]) -> str:
    low, high = entry["ci95"]
    return f"{entry['value']:.3f} ({low:.3f}-{high:.3f})"


def _difference(entry: dict[str, Any]) -> str:
    low, high = entry["ci95"]
    return f"{entry['difference']:+.3f} ({low:+.3f} to {high:+.3f})"


def study_rows(
    runs: dict[str, CachedRun],
    base_digest: str,
    data: Path,
    cache_dir: Path,
    serving_ms: dict[str, float],
    n_boot: int,
    seed: int,
) -> tuple[list[dict[str, Any]], list[str]]:
    """One result per pairable run (the base first) and one note per skipped run."""
    base = runs[base_digest]
    cells = cells_of(base, data, cache_dir)
    rows, skipped = [], []
    for digest in [base_digest, *sorted(d for d in runs if d != base_digest)]:
        cached = runs[digest]
        reason = why_unpaired(base.run, cached.run) or _other_cells(cells, cached, data, cache_dir)
        if reason is not None:
            skipped.append(f"{digest} ({short_name(cached.config, base.config)}): {reason}")
            continue
        row: dict[str, Any] = {
            "digest": digest,
            "recipe": short_name(cached.config, base.config),
            "summary": recipe_summary(cells, cached.run, n_boot=n_boot, seed=seed),
            "seconds_per_epoch": cached.run.cost.get("seconds_per_epoch"),
            "serving_ms": serving_ms.get(digest),
            "ece": calibration_study(cells, cached.run)["ece"],
        }
        if digest != base_digest:
            comparison = paired_comparison(cells, base.run, cached.run, n_boot=n_boot, seed=seed)
            ms = (serving_ms.get(base_digest), serving_ms.get(digest))
            # Without both serving costs, "level and cheaper" cannot apply: equal costs.
            costs = (ms[0], ms[1]) if ms[0] is not None and ms[1] is not None else (1.0, 1.0)
            row["comparison"] = comparison
            row["decision"] = decide(comparison, *costs)
        rows.append(row)
    return rows, skipped


def _other_cells(cells: Cells, cached: CachedRun, data: Path, cache_dir: Path) -> str | None:
    theirs = cells_of(cached, data, cache_dir)
    if np.array_equal(theirs.subjects, cells.subjects) and np.array_equal(
        theirs.labels, cells.labels
    ):
        return None
    return "scored on other cells than the base"


def study_table(
    rows: list[dict[str, Any]], skipped: list[str], repeats: int, n_boot: int
) -> str:  # fmt: skip
    metric_headers = " | ".join(HEADERS[m] for m in METRICS)
    lines = [
        "# Study table",
        "",
        f"Out-of-fold results of every cached recipe: {repeats} repeat(s) of subject-grouped "
        f"folds, the same for all rows; metrics with 95% intervals from {n_boot} subject "
        "bootstraps; differences paired with the base (first row, "
        f"`{rows[0]['digest']}`) on the same draws. ECE: 15 bins, out of fold, raw scores -> "
        "Platt calibration cross-fitted over folds.",
        "",
        f"| recipe | {metric_headers} | ROC AUC vs base | balanced accuracy vs base "
        "| decision | s/epoch | serving ms/image | ECE raw -> Platt |",
        "|---|" + "---:|" * len(METRICS) + "---|---|---|---:|---:|---|",
    ]
    for row in rows:
        cells = [f"{row['recipe']} (`{row['digest']}`)"]
        cells += [_interval(row["summary"][m]) for m in METRICS]
        if "comparison" in row:
            cells += [
                _difference(row["comparison"]["roc_auc"]),
                _difference(row["comparison"]["balanced_accuracy"]),
                f"{row['decision'][0]}: {row['decision'][1]}",
            ]
        else:
            cells += ["", "", "(base)"]
        spe, ms = row["seconds_per_epoch"], row["serving_ms"]
        cells += [
            f"{spe:.1f}" if spe is not None else "",
            f"{ms:.2f}" if ms is not None else "",
            f"{row['ece']['raw']['cells']:.3f} -> {row['ece']['platt']['cells']:.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if skipped:
        lines += ["", "Not paired with the base, so not in the table:", ""]
        lines += [f"- {note}" for note in skipped]
    return "\n".join(lines) + "\n"


def write_study_table(
    runs_dir: Path,
    base: str,
    out: Path,
    data: Path,
    cache_dir: Path,
    serving_ms_file: Path | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Read every ``*.npz`` of ``runs_dir``, write the table to ``out`` (and its numbers to
    ``out`` with the suffix ``.json``)."""
    runs = {path.stem: read_cached_run(path) for path in sorted(runs_dir.glob("*.npz"))}
    if not runs:
        raise ValueError(f"no cached runs in {runs_dir}")
    serving_ms: dict[str, float] = (
        json.loads(serving_ms_file.read_text()) if serving_ms_file is not None else {}
    )
    base_digest = find_base(runs, base)
    rows, skipped = study_rows(runs, base_digest, data, cache_dir, serving_ms, n_boot, seed)
    repeats = runs[base_digest].run.scores.shape[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(study_table(rows, skipped, repeats, n_boot))
    numbers = {"base": base_digest, "rows": rows, "skipped": skipped}
    out.with_suffix(".json").write_text(json.dumps(numbers, indent=1, default=str) + "\n")
    return rows

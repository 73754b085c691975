"""The study table (training/study_table.py) over generated cached runs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from tests.training.test_protocol import population, recipe
from training.protocol import Cells, repeated_subject_folds, run_recipe
from training.study import flat_config, save_run
from training.study_table import short_name, write_study_table
from training.train import TrainConfig

BASE = TrainConfig(input_size=64, epochs=14)


def cache_run(
    runs_dir: Path, digest: str, config: TrainConfig, cells: Cells, signal: float,
    folds: np.ndarray, cost: float,
) -> None:  # fmt: skip
    run = run_recipe(digest, recipe(cells, signal, 1)[0], cells, folds)
    run.cost = {"seconds_per_epoch": cost}
    save_run(runs_dir / f"{digest}.npz", run, config, cells)


def test_short_name_lists_the_differences_from_the_base_nested_or_flat() -> None:
    wider = dataclasses.replace(
        BASE, input_size=128, epochs=24, improved=dataclasses.replace(BASE.improved, dropout=0.5)
    )
    base = flat_config(BASE.to_dict())
    assert (
        short_name(flat_config(wider.to_dict()), base) == "dropout=0.5, epochs=24, input_size=128"
    )
    flat = {k: v for k, v in BASE.to_dict().items() if k != "improved"} | BASE.to_dict()["improved"]
    assert short_name(flat_config(flat), base) == "base"
    # An option this code does not know (a run cached by newer code) is named, not refused.
    assert short_name(flat_config(BASE.to_dict() | {"hed_jitter": 0.05}), base) == "hed_jitter=0.05"


def test_study_table_pairs_what_it_can_and_skips_the_rest(tmp_path: Path) -> None:
    cells = population()
    folds = repeated_subject_folds(cells, 5, 2)
    runs = tmp_path / "runs"
    cache_run(runs, "aaaa", BASE, cells, 0.3, folds, 10.0)
    strong = dataclasses.replace(BASE, input_size=128, epochs=24)
    cache_run(runs, "bbbb", strong, cells, 3.0, folds, 14.0)
    other_folds = repeated_subject_folds(cells, 5, 2, seed=9)
    cache_run(runs, "cccc", dataclasses.replace(BASE, epochs=30), cells, 3.0, other_folds, 9.0)
    cache_run(runs, "dddd", dataclasses.replace(BASE, epochs=8), cells, 3.0, folds[:1], 9.0)
    base_json = tmp_path / "base.json"
    base_json.write_text(json.dumps({"config": BASE.to_dict()}))
    serving = tmp_path / "serving.json"
    serving.write_text(json.dumps({"bbbb": 3.25}))
    out = tmp_path / "study" / "report.md"

    # The base given by its config: the one cached run with that config.
    rows = write_study_table(
        runs, str(base_json), out, tmp_path / "no-data", tmp_path, serving, n_boot=100
    )
    assert [row["digest"] for row in rows] == ["aaaa", "bbbb"]
    assert rows[1]["decision"][0] == "replace"
    assert rows[1]["comparison"]["roc_auc"]["ci95"][0] > 0
    text = out.read_text()
    strong_line = next(line for line in text.splitlines() if "`bbbb`" in line)
    assert "epochs=24, input_size=128" in strong_line and "| 14.0 | 3.25 |" in strong_line
    base_line = next(line for line in text.splitlines() if line.startswith("| base"))
    assert "| 10.0 |  |" in base_line  # serving cost not measured: blank
    assert "cccc (epochs=30): different fold assignment in repeat 0" in text
    assert "dddd (epochs=8): 2 vs 1 repeats" in text
    numbers = json.loads(out.with_suffix(".json").read_text())
    assert numbers["base"] == "aaaa" and len(numbers["skipped"]) == 2

    cache_run(runs, "eeee", BASE, cells, 0.3, folds, 10.0)  # the same config twice
    with pytest.raises(ValueError, match="matches 2 cached runs"):
        write_study_table(runs, str(base_json), out, tmp_path, tmp_path, n_boot=10)


def test_runs_cached_without_cells_or_folds_read_them_from_the_data(
    cnmc_tiny: Path, tmp_path: Path
) -> None:
    """Older runs hold only scores, thresholds, cost and config: the cells come from
    ``load_images`` and each fold is the set of cells sharing a threshold."""
    from training.data import load_images

    images = load_images(cnmc_tiny, BASE.input_size, BASE.crop_fraction, tmp_path / "cache")
    cells = Cells(np.asarray(images.subjects), np.asarray(images.labels, dtype=np.int64))
    folds = repeated_subject_folds(cells, 2, 1)
    runs = tmp_path / "runs"
    runs.mkdir()
    runs_made = (("old1", BASE, 0.5, {}), ("old2", strong_config(), 2.0, {"hed_jitter": 0.05}))
    for digest, config, signal, extra in runs_made:
        rng = np.random.default_rng(len(digest) + int(signal))
        latent = signal * cells.labels + rng.normal(0, 1, len(cells.labels))
        np.savez(
            runs / f"{digest}.npz",
            scores=1 / (1 + np.exp(-latent))[None],
            thresholds=np.where(folds == 0, 0.41, 0.62) + signal / 100,
            cost=json.dumps({"seconds_per_epoch": 5.0}),
            # old2 was cached by code with an option this code does not know.
            config=json.dumps(config.to_dict() | extra, default=str),
        )
    out = tmp_path / "report.md"
    rows = write_study_table(runs, "old1", out, cnmc_tiny, tmp_path / "cache", n_boot=20)
    assert [row["digest"] for row in rows] == ["old1", "old2"]
    assert "epochs=24, hed_jitter=0.05, input_size=128" in out.read_text()


def strong_config() -> TrainConfig:
    return dataclasses.replace(BASE, input_size=128, epochs=24)

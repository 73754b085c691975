"""``python -m training``: every subcommand runs its own function and nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import training.__main__ as cli


@pytest.mark.parametrize(
    ("argv", "module", "function"),
    [
        (["pbc"], "training.pbc", "segment_command"),
        (["ship", "runs/x", "--name", "m", "--description", "d"], "training.shipping", "ship"),
        (["calibration", "x.npz", "--out", "o"], "training.study", "write_calibration"),
        (["throughput"], "training.throughput", "measure"),
    ],
)
def test_subcommand_calls_only_its_function(
    argv: list[str], module: str, function: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    calls: list[str] = []

    def fake(*args: Any, **kwargs: Any) -> Any:
        calls.append(function)
        return {"ece": {}} if function == "write_calibration" else Path("x")

    monkeypatch.setattr(importlib.import_module(module), function, fake)

    def must_not_run(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("fell through to the 'compare' subcommand")

    monkeypatch.setattr(
        importlib.import_module("training.report"), "write_comparison", must_not_run
    )
    assert cli.main(argv) == 0
    assert calls == [function]

"""docker/runtime_requirements.py: what the images install, and that the locks are current."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
GPU_TENSORFLOW = "tensorflow[and-cuda]==2.21.0"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "runtime_requirements", REPO / "docker" / "runtime_requirements.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


rr = _load()


def _pyproject(tmp_path: Path, dependencies: list[str]) -> Path:
    listed = ", ".join(f'"{d}"' for d in dependencies)
    path = tmp_path / "pyproject.toml"
    path.write_text(f'[project]\nname = "x"\ndependencies = [{listed}]\n', encoding="utf-8")
    return path


def test_runtime_requirements_are_the_project_pins_without_extras() -> None:
    requirements = rr.runtime_requirements(REPO / "pyproject.toml", None)
    names = {rr.canonical(r.split("[")[0].split("==")[0]) for r in requirements}
    assert "tensorflow-cpu" in names and "fastapi" in names
    assert not names & {"pytest", "ruff", "mypy", "scikit-learn", "matplotlib"}


def test_gpu_variant_swaps_only_tensorflow(tmp_path: Path) -> None:
    pyproject = _pyproject(tmp_path, ["tensorflow-cpu==2.21.0", "numpy==2.4.6"])
    assert rr.runtime_requirements(pyproject, GPU_TENSORFLOW) == [GPU_TENSORFLOW, "numpy==2.4.6"]


def test_unpinned_runtime_dependency_is_refused(tmp_path: Path) -> None:
    pyproject = _pyproject(tmp_path, ["tensorflow-cpu==2.21.0", "numpy>=2"])
    with pytest.raises(rr.LockError, match="exact pin"):
        rr.runtime_requirements(pyproject, None)


def test_stale_lock_is_refused(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text("# header\nnumpy==2.4.5\nsix==1.17.0\n", encoding="utf-8")
    with pytest.raises(rr.LockError, match=r"numpy==2.4.6 \(lock: 2.4.5\)"):
        rr.check_lock(["numpy==2.4.6"], lock)
    with pytest.raises(rr.LockError, match="lock: missing"):
        rr.check_lock(["pillow==13.0.0"], lock)


def test_lock_names_are_canonical_and_extras_ignored(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text("Uvicorn==0.54.0\nprometheus_client==0.26.0\n", encoding="utf-8")
    lines = rr.check_lock(["uvicorn[standard]==0.54.0", "prometheus-client==0.26.0"], lock)
    assert lines == ["prometheus-client==0.26.0", "uvicorn==0.54.0"]


@pytest.mark.parametrize(
    ("lock", "tensorflow"),
    [("requirements-cpu.lock", None), ("requirements-gpu.lock", GPU_TENSORFLOW)],
)
def test_committed_locks_match_pyproject(lock: str, tensorflow: str | None) -> None:
    """What the Docker builds check; failing here means: run `make docker-lock`."""
    requirements = rr.runtime_requirements(REPO / "pyproject.toml", tensorflow)
    locked = rr.check_lock(requirements, REPO / "docker" / lock)
    assert len(locked) > len(requirements)  # transitive dependencies are pinned too

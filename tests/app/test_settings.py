"""Settings: one class, LEUK_ env prefix, every field documented (here and in app/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.settings import Settings
from tests.app.conftest import REPO


def test_env_prefix_and_comma_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEUK_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("LEUK_API_KEYS", "a, b ,,c")
    monkeypatch.setenv("LEUK_CORS_ORIGINS", "https://lab.example")
    monkeypatch.setenv("LEUK_WARMUP_BATCH_SIZES", "1,4")
    monkeypatch.setenv("LEUK_MODEL_VERSION", "3")
    settings = Settings()
    assert settings.max_batch_size == 8
    assert settings.api_keys == ["a", "b", "c"]
    assert settings.cors_origins == ["https://lab.example"]
    assert settings.warmup_batch_sizes == [1, 4]
    assert settings.model_version == 3


def test_defaults_are_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(f"LEUK_{name.upper()}", raising=False)
    settings = Settings()
    assert settings.host == "127.0.0.1"
    assert settings.load_api_keys() == [] and settings.cors_origins == []
    assert settings.model_version is None


def test_invalid_values_are_refused() -> None:
    with pytest.raises(ValidationError):
        Settings(max_batch_size=0)
    with pytest.raises(ValidationError):
        Settings(log_level="LOUD")  # type: ignore[arg-type]


def test_key_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("# comment\n  k1  \n\nk2\n")
    assert Settings(api_keys=["k0"], api_keys_file=keys).load_api_keys() == ["k0", "k1", "k2"]


def test_every_setting_is_documented_in_code_and_readme() -> None:
    readme = (REPO / "app" / "README.md").read_text()
    for name, field in Settings.model_fields.items():
        assert field.description, name
        assert f"`LEUK_{name.upper()}`" in readme, name


def test_the_queue_must_hold_one_full_request() -> None:
    # Images of a request are admitted together: a queue smaller than max_files would refuse
    # a full request even when idle.
    with pytest.raises(ValidationError, match="max_queue"):
        Settings(max_queue=10, max_files=11)
    assert Settings(max_queue=11, max_files=11).max_queue == 11

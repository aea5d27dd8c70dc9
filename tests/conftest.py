"""Shared test set-up: every test runs offline with its own HOME, Hugging Face cache and FLARE_HOME."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_offline_env(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("FLARE_HOME", str(home / "flare"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("FLARE_DEBUG", raising=False)

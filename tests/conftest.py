"""Shared test set-up: every test runs offline with its own HOME, Hugging Face cache and FLARE_HOME.

The suite must pass whatever the user has exported (HF_HUB_OFFLINE=1 on an air-gapped cluster,
HF_HOME, HF_TOKEN, TRANSFORMERS_CACHE, FLARE_DEBUG, ...): those variables are removed here, at
import time, before huggingface_hub or transformers read them into module constants (HF_HUB_OFFLINE
is then set to 1, so nothing waits on the network), and again around every test. Tests that need a particular setting (the local Hub server's) set it themselves.
"""

from __future__ import annotations

import os

import pytest

USER_ENV_PREFIXES = ("HF_", "HUGGINGFACE_", "HUGGING_FACE_", "TRANSFORMERS_", "FLARE_")


def user_env_vars(environ=os.environ) -> list[str]:
    return [name for name in environ if name.upper().startswith(USER_ENV_PREFIXES)]


for _name in user_env_vars():
    del os.environ[_name]
# Offline from the start: huggingface_hub, transformers and datasets read HF_HUB_OFFLINE into module
# constants at import, and a test run must never wait on (or reach) the network. The local Hub
# server's tests switch their constants back on (hub_server.hermetic_hub_env).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"


@pytest.fixture(autouse=True)
def _isolated_offline_env(tmp_path_factory, monkeypatch):
    for var in user_env_vars():
        monkeypatch.delenv(var, raising=False)
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("FLARE_HOME", str(home / "flare"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")

"""The suite passes whatever Hugging Face / flare variables the user has exported (air-gapped
clusters export HF_HUB_OFFLINE=1): tests/conftest.py removes them before any library reads them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
HOSTILE = {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9",
    "HF_TOKEN": "hf_userTokenThatMustNotBeUsed", "HUGGING_FACE_HUB_TOKEN": "hf_old", "HF_HUB_CACHE": "/nonexistent",
    "TRANSFORMERS_CACHE": "/nonexistent", "HF_HUB_ENABLE_HF_TRANSFER": "1", "FLARE_DEBUG": "1",
}


def test_no_user_variable_reaches_a_test():
    import huggingface_hub.constants as constants

    for name in HOSTILE:
        if name != "HF_HUB_OFFLINE":  # the fixture sets this one itself
            assert name not in os.environ, name
    assert constants.ENDPOINT == "https://huggingface.co"  # read at import: after the clean-up
    assert constants.HF_HUB_CACHE.startswith(os.environ["HOME"]) or "nonexistent" not in constants.HF_HUB_CACHE


def test_suite_passes_with_a_users_hf_environment_exported(tmp_path):
    env = {**os.environ, **HOSTILE, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
         f"{TESTS / 'test_hermetic.py'}::test_no_user_variable_reaches_a_test", str(TESTS / "test_push.py")],
        env=env, cwd=TESTS.parent, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]

"""The small shared helpers have one home (flare_cli/errors.py) and behave the same for every caller."""

from __future__ import annotations

import pytest

from flare_cli.errors import first_line, hub_offline


def test_first_line_is_the_message_s_first_line_or_the_type_name():
    assert first_line(ValueError("  bad thing\nTraceback detail\n")) == "bad thing"
    assert first_line(OSError()) == "OSError"  # `str(err).splitlines()[0]` raised IndexError here
    assert first_line(KeyError("k")) == "'k'"


@pytest.mark.parametrize("name", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
@pytest.mark.parametrize("value,expected", [("1", True), ("true", True), ("ON", True), ("0", False), ("", False)])
def test_hub_offline_reads_either_variable(monkeypatch, name, value, expected):
    import huggingface_hub.constants as constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "is_offline_mode", lambda: False)
    monkeypatch.setenv(name, value)
    assert hub_offline() is expected


def test_hub_offline_follows_huggingface_hub(monkeypatch):
    import huggingface_hub.constants as constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "is_offline_mode", lambda: True)
    assert hub_offline() is True

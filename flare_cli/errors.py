"""The one exception family that crosses from the core into the CLI.

Stage modules raise these; only ``cli.py`` turns them into messages and exit codes.
"""


class FlareError(Exception):
    """A failure the user can act on. ``exit_code`` follows the CLI convention."""

    exit_code = 1  # runtime failure


class ConfigError(FlareError):
    """Bad flags, config files or option combinations (a usage error)."""

    exit_code = 2


class DataError(FlareError):
    """Missing files, wrong columns, empty or undecodable data."""

    exit_code = 2


class LanguageError(ConfigError):
    """An unknown or unsupported language code."""


class ModelError(FlareError):
    """A base model, adapter or checkpoint that cannot be loaded or used as asked."""


class MergeError(FlareError):
    """A merge that would silently change the model (FLARE adapters do not fold into W)."""

    exit_code = 2


class PivotError(FlareError):
    """A FLARE layer ran without pivot states, or with states of the wrong shape."""


class HubError(FlareError):
    """Hugging Face Hub failures: auth, offline mode, network."""


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message (its type name when the message is empty): one-line errors."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def hub_offline() -> bool:
    """Whether the user switched the Hub off (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, or huggingface_hub's own check)."""
    import os

    env = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").upper()
    if env in {"1", "ON", "YES", "TRUE"}:
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.is_offline_mode())

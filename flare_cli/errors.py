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


class NotBuiltError(FlareError):
    """A subcommand registered ahead of its implementation."""

    exit_code = 2

"""The FLARE method, importable without the CLI."""

from flare_cli.flare.fusion import FUSIONS, get_fusion
from flare_cli.flare.model import (
    FLARE_CONFIG_NAME,
    FlareConfig,
    FlareModel,
    get_flare_model,
    load_flare_model,
    read_flare_config,
)

__all__ = [
    "FLARE_CONFIG_NAME",
    "FUSIONS",
    "FlareConfig",
    "FlareModel",
    "get_flare_model",
    "get_fusion",
    "load_flare_model",
    "read_flare_config",
]

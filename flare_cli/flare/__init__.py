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
from flare_cli.flare.mt_encoder import MTEncoder, load_mt_encoder

__all__ = [
    "FLARE_CONFIG_NAME",
    "FUSIONS",
    "FlareConfig",
    "FlareModel",
    "MTEncoder",
    "get_flare_model",
    "get_fusion",
    "load_flare_model",
    "load_mt_encoder",
    "read_flare_config",
]

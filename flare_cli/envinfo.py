"""Versions and devices for `flare env` (bug reports)."""

from __future__ import annotations

import platform
import sys
from importlib import metadata


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def collect_env() -> dict[str, str]:
    import torch

    from flare_cli import __version__

    cuda = torch.cuda.is_available()
    info = {
        "flare_cli": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "huggingface_hub": _version("huggingface-hub"),
        "datasets": _version("datasets"),
        "accelerate": _version("accelerate"),
        "cuda_available": str(cuda),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "cuda_devices": str(torch.cuda.device_count() if cuda else 0),
        "cuda_version": str(torch.version.cuda),
        "bf16_supported": str(cuda and torch.cuda.is_bf16_supported()),
    }
    return info

"""Stage configs: a YAML file (-c) first, then CLI flags on top; unknown keys are an error.

A flag, a YAML key and a dataclass field share one name (flag --learning-rate = key learning_rate).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Optional, TypeVar

from flare_cli.errors import ConfigError

C = TypeVar("C")
SECRET_KEYS = ("token", "hf_token", "password")


def read_yaml(path: Optional[str]) -> dict[str, Any]:
    if not path:
        return {}
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def build_config(cls: type[C], file_values: dict[str, Any], flag_values: dict[str, Any], source: str = "config") -> C:
    """cls(**file_values, then non-None flag_values on top); unknown keys raise ConfigError."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(file_values) - names)
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r} (known: {', '.join(sorted(names))})")
    values = {**file_values, **{k: v for k, v in flag_values.items() if v is not None}}
    missing = [f.name for f in dataclasses.fields(cls)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in values]
    if missing:
        raise ConfigError(f"missing required option --{missing[0].replace('_', '-')}")
    return cls(**values)


def public_dict(config: Any) -> dict[str, Any]:
    """A config as a plain dict without secrets (for saved configs, logs and --dry-run)."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in SECRET_KEYS}


def dump_yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def flare_home() -> Path:
    """flare_cli's own cache root: $FLARE_HOME, else ~/.cache/flare_cli (toy worlds, MT cache)."""
    return Path(os.environ.get("FLARE_HOME") or Path.home() / ".cache" / "flare_cli")

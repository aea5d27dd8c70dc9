"""The one reader of a saved adapter folder (docs/architecture.md, "Saved adapters").

    folder = AdapterFolder.read("runs/flare-sw")
    folder.method.fuses, folder.meta["task"], folder.base_model, folder.flare_config(), folder.metrics()

A folder holds ``adapter_config.json`` (a plain peft LoraConfig), the weights, ``flare_config.json``
(``FlareConfig``'s fields at the top level, provenance under ``meta``; absent for a plain peft
adapter) and optionally ``metrics.json``. eval, merge, push and the model card all read it here.

Provenance written at the top level (older or hand-made folders) is still read as provenance, but
``flare_config()`` is strict: it refuses keys FlareConfig does not know.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from flare_cli.errors import DataError, ModelError
from flare_cli.methods import DEFAULT_METHOD, Method, method_of

ADAPTER_CONFIG = "adapter_config.json"
FLARE_CONFIG = "flare_config.json"
METRICS = "metrics.json"
WEIGHTS = "adapter_model.safetensors"


def read_json_object(path: Path) -> dict:
    """A JSON object from ``path``; DataError when missing, not JSON or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not valid JSON ({err})") from None
    except OSError as err:
        raise DataError(f"{path} cannot be read ({err.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} must hold a JSON object")
    return data


@dataclass(frozen=True)
class AdapterFolder:
    path: Path
    lora_config: dict = field(default_factory=dict)  # adapter_config.json ({} for a merged-model folder)
    raw: dict = field(default_factory=dict)  # flare_config.json as written ({} when there is none)

    @classmethod
    def read(cls, path: Union[str, Path], *, require_adapter: bool = True) -> "AdapterFolder":
        """Read ``path``; with ``require_adapter`` a folder without adapter_config.json is a ModelError."""
        path = Path(path)
        config_path = path / ADAPTER_CONFIG
        if require_adapter and not config_path.is_file():
            raise ModelError(f"{path}: not an adapter folder (no {ADAPTER_CONFIG})")
        lora_config = read_json_object(config_path) if config_path.is_file() else {}
        raw = read_json_object(path / FLARE_CONFIG) if (path / FLARE_CONFIG).is_file() else {}
        return cls(path, lora_config, raw)

    @property
    def has_flare_config(self) -> bool:
        return bool(self.raw)

    @property
    def method_name(self) -> str:
        return self.raw.get("method", DEFAULT_METHOD)

    @property
    def method(self) -> Method:
        return method_of(self.method_name)

    @property
    def meta(self) -> dict:
        """Provenance (base_model, task, lang, task_adapter, max_length, ...): ``meta``, with keys an
        older or hand-made folder wrote at the top level."""
        return {**(self.raw.get("meta") or {}), **{k: v for k, v in self.raw.items() if k not in _MATH_KEYS}}

    @property
    def settings(self) -> dict:
        """Everything in one flat view: FlareConfig's fields and the provenance."""
        return {**self.meta, **{k: v for k, v in self.raw.items() if k in _MATH_KEYS and k != "meta"}}

    def get(self, key: str, default: Any = None) -> Any:
        return self.settings.get(key, default)

    @property
    def base_model(self) -> Optional[str]:
        """The recorded base: flare_config.json's provenance, else adapter_config.json's."""
        return self.meta.get("base_model") or self.lora_config.get("base_model_name_or_path")

    @property
    def task_adapter(self) -> Optional[str]:
        """The stage-1 adapter this one was trained on top of: its bundled copy in a pushed FLARE
        repo, None when it is folded into this adapter, else the recorded folder or Hub id."""
        meta = self.meta
        if meta.get("bundled_task_adapter"):
            return str(self.path / meta["bundled_task_adapter"])
        if meta.get("task_adapter_folded"):
            return None
        return meta.get("task_adapter")

    def flare_config(self):
        """The strict FlareConfig (unknown top-level keys refused); ModelError when there is none."""
        from flare_cli.flare.model import FlareConfig

        if not self.raw:
            raise ModelError(f"{self.path}: no {FLARE_CONFIG}; not an adapter written by flare_cli")
        return FlareConfig.from_dict(self.raw)

    def check_weights(self) -> None:
        """DataError unless the folder is a saved peft LoRA (config and weights)."""
        if not self.path.is_dir():
            raise DataError(f"adapter folder {self.path} does not exist")
        missing = [name for name in (ADAPTER_CONFIG, WEIGHTS) if not (self.path / name).is_file()]
        if missing:
            raise DataError(f"{self.path} is not a saved adapter: missing {', '.join(missing)}")
        if self.lora_config.get("peft_type") != "LORA":
            raise DataError(f"{self.path / ADAPTER_CONFIG} is not a LoRA adapter config")

    def metrics(self) -> list[dict]:
        """metrics.json rows ({"metric", "value", ...}); [] when there is none."""
        path = self.path / METRICS
        if not path.exists():
            return []
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"{path} is not valid JSON ({err})") from None
        rows = data if isinstance(data, list) else [data]
        if not all(isinstance(r, dict) and "metric" in r and "value" in r for r in rows):
            raise DataError(f"{path}: each entry needs 'metric' and 'value'")
        return rows


def _math_keys() -> frozenset:
    # FlareConfig's fields without importing torch: flare_cli/flare/model.py is the owner; this list
    # is checked against it in tests/test_adapter_folder.py.
    return frozenset({
        "flare_cli_version", "method", "fusion", "r", "lora_alpha", "lora_dropout", "target_modules", "fused_modules",
        "fused_layers", "align", "source_norm", "mt_model", "mt_revision", "mt_hidden_size", "mt_projection", "meta",
    })


_MATH_KEYS = _math_keys()

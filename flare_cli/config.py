"""Stage configs: a YAML file (-c) first, then CLI flags on top; unknown keys are an error.

A flag, a YAML key and a dataclass field share one name (flag --learning-rate = key learning_rate).
Each stage's config dataclass is its command's one schema: pydantic types every value through the
field's annotation (``learning_rate: 1e-4`` is a float, ``r: "8"`` an int), a field's metadata
carries its help text and CLI panel (``option()``), and docs/config.md is generated from them
(``python -m flare_cli.config --markdown``).
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any, Optional, TypeVar

from flare_cli.errors import ConfigError

C = TypeVar("C")
SECRET_KEYS = ("token", "hf_token", "password")


def option(default: Any = dataclasses.MISSING, help: str = "", panel: Optional[str] = None,
           flags: tuple[str, ...] = (), default_text: Optional[str] = None, **kwargs: Any) -> Any:
    """A config field with its CLI metadata: help text, help panel, extra flag names (aliases) and
    how its default reads in --help when the value itself says little (None: "the task's")."""
    metadata = {"help": help, "panel": panel, "flags": tuple(flags), "default_text": default_text}
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


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


def field_types(cls: type) -> dict[str, Any]:
    """name -> the resolved annotation of every field of a config dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def typed_values(cls: type, values: dict[str, Any], source: str) -> dict[str, Any]:
    """Each value validated (lax: "8" -> 8, "1e-4" -> 1e-4, "yes" -> True) against its field's type
    by pydantic; a value that does not fit is one ConfigError naming the key."""
    from pydantic import TypeAdapter, ValidationError

    types = field_types(cls)
    typed = {}
    for key, value in values.items():
        try:
            typed[key] = TypeAdapter(types[key]).validate_python(value)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("", None))
            what = first["msg"] + (f" at {where}" if where and not where[0].isupper() else "")
            raise ConfigError(f"{source}: {key}: {what} (got {value!r})") from None
    return typed


def build_config(cls: type[C], file_values: dict[str, Any], flag_values: dict[str, Any], source: str = "config") -> C:
    """cls(**file_values, then non-None flag_values on top), every value typed by its field;
    unknown keys and values of the wrong type raise ConfigError."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(file_values) - names)
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r} (known: {', '.join(sorted(names))})")
    values = {**typed_values(cls, file_values, source),
              **typed_values(cls, {k: v for k, v in flag_values.items() if v is not None}, "flag")}
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


# -- the config reference (docs/config.md) ------------------------------------------------------
def type_name(annotation: Any) -> str:
    """`Optional[int]` -> "int or null", for the reference and --help."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if annotation is Any:
        return "any"
    if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join(type_name(a) for a in args) + (" or null" if type(None) in typing.get_args(annotation) else "")
    if typing.get_origin(annotation) in (list, tuple):
        return f"list of {type_name(args[0])}" if args else "list"
    return getattr(annotation, "__name__", str(annotation))


def default_text(f: dataclasses.Field) -> str:
    if f.metadata.get("default_text"):
        return f.metadata["default_text"]
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        return "required"
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def reference_markdown(schemas: list[tuple[str, type, dict[str, tuple[str, str, str]]]], example: str) -> str:
    """docs/config.md: one table per command, one row per YAML key (``options``: key -> the CLI
    option's type, default and help); type, default and help come from the stage config's field
    where the key is one, else from the option."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- generated by `python -m flare_cli.config --markdown > docs/config.md`; do not edit -->",
        "",
        "Every command takes `-c/--config FILE.yaml`: its keys are the option names below (`-` or `_`),",
        "flags given on the command line override them, an unknown key or a value of the wrong type is",
        "one error line (exit 2). Values are typed by the field's type: `learning_rate: 1e-4` is a float,",
        "`r: \"8\"` an int, `overwrite: yes` a boolean. Booleans have `--no-` forms on the command line.",
        "",
        "```yaml",
        *example.rstrip("\n").splitlines(),
        "```",
        "",
    ]
    for command, cls, options in schemas:
        lines += [f"## `flare {command}`", "", f"Schema: `{cls.__module__}.{cls.__name__}`.", "",
                  "| key | type | default | meaning |", "|---|---|---|---|"]
        types = field_types(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key, (cli_type, cli_default, cli_help) in options.items():
            f = fields.get(key)
            kind = type_name(types[key]) if f is not None else cli_type
            default = default_text(f) if f is not None else cli_default
            text = ((f.metadata.get("help") if f is not None else "") or cli_help or "").replace("|", "\\|")
            lines.append(f"| `{key}` | {kind} | {default} | {' '.join(text.split())} |")
        lines.append("")
    return "\n".join(lines)


def _main(argv: Optional[list[str]] = None) -> None:
    import sys

    args = sys.argv[1:] if argv is None else argv
    if args != ["--markdown"]:
        sys.exit("usage: python -m flare_cli.config --markdown")
    from flare_cli.cli import config_reference

    sys.stdout.write(config_reference())


if __name__ == "__main__":
    _main()

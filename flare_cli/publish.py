"""What a pushed adapter repo holds: everything needed to rebuild the trained model from the base alone.

A stage-3 adapter is trained on base + a stage-1 English task adapter (merged into the base first).
Uploading the stage-3 files alone would publish a different model, so `flare push` stages a
self-contained copy:

- a LoRA (or input-fusion) adapter on top of a stage-1 LoRA becomes ONE plain peft LoRA: on every
  module, W + s1·B1·A1 + s3·B3·A3 = W + [s1·B1 | s3·B3]·[A1 ; A3], a LoRA of rank r1 + r3 with its
  scalings folded into B (modules in only one of them keep their own, zero-padded to the common
  rank so that one `r`/`lora_alpha` pair, and scaling 1, serves every module);
- a FLARE / FLARE-MT adapter cannot be one LoRA (its pivot pass runs base + stage 1 with the
  stage-3 adapter off), so its stage-1 adapter travels inside the repo, in ``task_adapter/``,
  named by ``meta.bundled_task_adapter`` in flare_config.json; ``load_flare_model`` merges it.

Local paths are no Hub ids: the staged configs name the base by its Hub id (``--base-model``, or
the id read from a Hugging Face cache path), and local data/adapter paths keep only their file name.
The training folder itself is never modified (the card aside, see hub.py).
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from flare_cli.adapter_folder import AdapterFolder, read_json_object
from flare_cli.errors import ConfigError, DataError, FlareError

BUNDLED_TASK_ADAPTER = "task_adapter"  # the subfolder a FLARE repo carries its stage-1 adapter in
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_CACHE_SNAPSHOT = re.compile(r"(?:^|/)(models|datasets)--([^/]+?)--([^/]+)/snapshots/([0-9a-f]{40})(?:/|$)")
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")
_PEFT_PREFIX = "base_model.model."


# --------------------------------------------------------------------------- names that are no local paths


def is_local_path(name: Optional[str]) -> bool:
    """A name that points at this machine (an existing path, or one that cannot be a Hub id)."""
    if not name:
        return False
    return Path(name).expanduser().exists() or not _HUB_ID.match(name)


def hub_id_of(name: Optional[str]) -> Optional[str]:
    """The Hub id behind ``name``: itself if it is one, the repo of a Hugging Face cache snapshot
    path (``.../models--org--name/snapshots/<sha>``), else None (a plain local folder)."""
    if not name:
        return None
    if not is_local_path(name):
        return name
    match = _CACHE_SNAPSHOT.search(Path(name).expanduser().resolve().as_posix())
    if match and match.group(1) == "models":
        return f"{match.group(2)}/{match.group(3)}"
    return None


def public_name(name: Optional[str]) -> Optional[str]:
    """What a published file may say about ``name``: the Hub id, or a local path's last component."""
    if not name:
        return name
    return hub_id_of(name) or Path(str(name).rstrip("/")).name


# --------------------------------------------------------------------------- staged upload


@dataclass
class StagedAdapter:
    """``files`` maps path in repo -> local file (the folder's own files, or staged rewrites)."""

    files: dict[str, Path]
    base_model: Optional[str]  # the base's Hub id, None when only a local folder is known
    base_local: Optional[str]  # the local base path the adapter was trained on, if any (never published)
    task_adapter: Optional[str]  # how stage 1 travels: "folded", "bundled" or None
    warnings: list[str] = field(default_factory=list)


def _write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def stage_adapter(
    folder: Path,
    files: dict[str, Path],
    staging: Path,
    *,
    base_model: Optional[str] = None,
    task_adapter: Optional[str] = None,
    local_only: bool = False,
) -> StagedAdapter:
    """Rewrite what must change for a self-contained repo into ``staging``; return the upload map.

    ``files`` is the folder's allow-listed top-level files; ``base_model`` the base's Hub id
    (overrides what the adapter recorded); ``task_adapter`` overrides the recorded stage-1 adapter.
    """
    from flare_cli.hub import resolve_adapter

    files = dict(files)
    warnings: list[str] = []
    adapter = AdapterFolder.read(folder)
    adapter_config, flare = dict(adapter.lora_config), adapter.raw
    meta = dict(flare.get("meta") or {})
    method = adapter.method

    recorded_base = meta.get("base_model") or flare.get("base_model") or adapter_config.get("base_model_name_or_path")
    hub_base = base_model or hub_id_of(recorded_base)
    if base_model and not _HUB_ID.match(base_model):
        raise ConfigError(f"--base-model must be a Hub id (user/name), not {base_model!r}")
    if hub_base is None and recorded_base:
        warnings.append(
            f"the base model is the local folder {public_name(recorded_base)!r}, which is no Hub id: the card and "
            "adapter_config.json name no base (pass --base-model USER/NAME to name it)"
        )

    already_bundled = meta.get("bundled_task_adapter")
    stage1_ref = task_adapter or (None if already_bundled else meta.get("task_adapter") or flare.get("task_adapter"))
    how = "bundled" if already_bundled else None
    if already_bundled:  # a folder downloaded from a pushed repo: send its stage 1 along as it is
        sub = folder / already_bundled
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            if not (sub / name).is_file():
                raise DataError(f"{folder}: flare_config.json names the bundled task adapter {already_bundled}/, "
                                f"which lacks {name}")
            files[f"{already_bundled}/{name}"] = sub / name
    elif stage1_ref:
        try:
            stage1 = resolve_adapter(stage1_ref, what="task adapter", local_only=local_only)
        except FlareError as err:
            raise DataError(
                f"{folder} was trained on top of the task adapter {stage1_ref}, which is not found from here ({err}); "
                "pass --task-adapter DIR|USER/NAME (the repo must hold stage 1 to be the trained model)"
            ) from None
        if method.fuses:  # the pivot pass needs stage 1 apart from the stage-3 LoRA
            sub = staging / BUNDLED_TASK_ADAPTER
            stage1_config = read_json_object(stage1 / "adapter_config.json")
            stage1_config["base_model_name_or_path"] = hub_base
            files[f"{BUNDLED_TASK_ADAPTER}/adapter_config.json"] = _write_json(sub / "adapter_config.json",
                                                                               stage1_config)
            sub.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(stage1 / "adapter_model.safetensors", sub / "adapter_model.safetensors")
            files[f"{BUNDLED_TASK_ADAPTER}/adapter_model.safetensors"] = sub / "adapter_model.safetensors"
            meta["bundled_task_adapter"] = BUNDLED_TASK_ADAPTER
            how = "bundled"
        else:
            adapter_config = fold_loras(stage1, folder, staging / "adapter_model.safetensors")
            files["adapter_model.safetensors"] = staging / "adapter_model.safetensors"
            meta["task_adapter_folded"] = True
            how = "folded"
        meta["task_adapter"] = public_name(stage1_ref)

    adapter_config["base_model_name_or_path"] = hub_base
    files["adapter_config.json"] = _write_json(staging / "adapter_config.json", adapter_config)
    if flare:
        meta["base_model"] = hub_base
        flare = dict(flare)
        if "base_model" in flare:  # provenance written at the top level (older or hand-made folders)
            flare["base_model"] = hub_base
        for where in (meta, flare):  # a published file names no local path
            for key in ("train_data", "validation_data", "task_adapter"):
                if where.get(key):
                    where[key] = public_name(where[key])
        mt_model = flare.get("mt_model")
        if mt_model and hub_id_of(mt_model) is None:
            flare["mt_model"] = public_name(mt_model)
            warnings.append(
                f"mt_model {mt_model!r} is a local folder, published as {flare['mt_model']!r}: whoever loads this "
                "FLARE-MT adapter needs their own copy (`load_flare_model(..., mt_encoder=...)` or "
                "`flare eval --mt-model PATH`)"
            )
        elif mt_model and hub_id_of(mt_model) != mt_model:  # a Hugging Face cache snapshot: its id and commit
            flare["mt_model"] = hub_id_of(mt_model)
            flare["mt_revision"] = flare.get("mt_revision") or _CACHE_SNAPSHOT.search(
                Path(mt_model).expanduser().resolve().as_posix()).group(4)
        files["flare_config.json"] = _write_json(staging / "flare_config.json", {**flare, "meta": meta})
    return StagedAdapter(files=files, base_model=hub_base, base_local=recorded_base if hub_base is None else None,
                         task_adapter=how, warnings=warnings)


# --------------------------------------------------------------------------- two LoRAs -> one


def _module_scalings(config: dict, modules: dict[str, dict]) -> dict[str, float]:
    """peft's scaling per module: lora_alpha (or its alpha_pattern entry) / r (sqrt r with rslora),
    the rank read from the tensors, which is what peft built the layer with."""
    from peft.utils.other import get_pattern_key

    alpha_pattern = config.get("alpha_pattern") or {}
    out = {}
    for module, ab in modules.items():
        rank = ab["A"].shape[0]
        alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), module), config.get("lora_alpha", 8))
        out[module] = alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
    return out


def _saved_modules(state: dict, config: dict) -> dict:
    """The tensors of fully trained modules (``modules_to_save``: an encoder's task head), which
    peft stores under the module's own path; the rest of ``state`` is LoRA."""
    names = config.get("modules_to_save") or []
    return {key: tensor for key, tensor in state.items()
            if not _LORA_KEY.match(key) and any(f".{name}." in f".{key}" for name in names)}


def _lora_modules(state: dict, where: Path) -> dict[str, dict]:
    modules: dict[str, dict] = {}
    for key, tensor in state.items():
        match = _LORA_KEY.match(key)
        if not match or not key.startswith(_PEFT_PREFIX):
            raise DataError(f"{where}: tensor {key} is not a plain LoRA A/B matrix; cannot fold it into one LoRA")
        modules.setdefault(match["module"][len(_PEFT_PREFIX):], {})[match["ab"]] = tensor
    broken = [m for m, ab in modules.items() if set(ab) != {"A", "B"}]
    if broken:
        raise DataError(f"{where}: module {broken[0]} has only one of lora_A/lora_B")
    return modules


_UNFOLDABLE = ("use_dora", "lora_bias", "target_parameters")


def _check_plain(config: dict, where: Path) -> None:
    if config.get("peft_type") != "LORA":
        raise DataError(f"{where}: not a LoRA adapter")
    for key in _UNFOLDABLE:
        if config.get(key):
            raise DataError(f"{where}: {key}={config.get(key)!r} cannot be folded into one plain LoRA")
    if config.get("bias", "none") != "none":
        raise DataError(f"{where}: bias={config['bias']!r} cannot be folded into one plain LoRA")


def fold_loras(stage1: Path, stage3: Path, out_file: Path) -> dict:
    """Write the one LoRA equal to ``stage1`` then ``stage3`` applied on the same base to
    ``out_file``; return its adapter_config (peft's LoraConfig as a dict, scaling 1 everywhere)."""
    import torch
    from safetensors.torch import load_file, save_file

    configs = [read_json_object(stage1 / "adapter_config.json"), read_json_object(stage3 / "adapter_config.json")]
    for config, where in zip(configs, (stage1, stage3)):
        _check_plain(config, where)
    if bool(configs[0].get("fan_in_fan_out")) != bool(configs[1].get("fan_in_fan_out")):
        raise DataError(f"{stage1} and {stage3} disagree on fan_in_fan_out; cannot fold them into one LoRA")
    states = [load_file(str(p / "adapter_model.safetensors")) for p in (stage1, stage3)]
    states[1] = {k: v for k, v in states[1].items() if "lora_flare_" not in k}  # never present for lora/input-fusion
    # Fully trained modules (an encoder's head) are not LoRA: stage 3 trained its copy starting from
    # stage 1's (merged into its base), so stage 3's replaces stage 1's; one only stage 1 saved stays.
    saved = [_saved_modules(s, c) for s, c in zip(states, configs)]
    states = [{k: v for k, v in s.items() if k not in kept} for s, kept in zip(states, saved)]
    parts = [_lora_modules(s, p) for s, p in zip(states, (stage1, stage3))]
    scalings = [_module_scalings(c, m) for c, m in zip(configs, parts)]

    combined: dict[str, tuple] = {}
    for module in sorted(set(parts[0]) | set(parts[1])):
        present = [(part[module], scale[module]) for part, scale in zip(parts, scalings) if module in part]
        dtype = present[0][0]["A"].dtype  # the wider of the two adapters' dtypes
        for ab, _ in present:
            dtype = torch.promote_types(torch.promote_types(dtype, ab["A"].dtype), ab["B"].dtype)
        As = [ab["A"].to(dtype) for ab, _ in present]
        # fold the scaling into B, multiplied in fp32 at least so that a half-precision B rounds once
        Bs = [(ab["B"].to(torch.promote_types(dtype, torch.float32)) * s).to(dtype) for ab, s in present]
        combined[module] = (torch.cat(As, 0), torch.cat(Bs, 1))
    rank = max(a.shape[0] for a, _ in combined.values())
    state = {}
    for module, (a, b) in combined.items():
        pad = rank - a.shape[0]  # zero rows/columns add nothing: one rank serves every module
        if pad:
            a = torch.cat([a, a.new_zeros(pad, a.shape[1])], 0)
            b = torch.cat([b, b.new_zeros(b.shape[0], pad)], 1)
        state[f"{_PEFT_PREFIX}{module}.lora_A.weight"] = a.contiguous()
        state[f"{_PEFT_PREFIX}{module}.lora_B.weight"] = b.contiguous()
    state.update({**saved[0], **saved[1]})
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out_file), metadata={"format": "pt"})

    config = dict(configs[1])
    config.update(r=rank, lora_alpha=rank, rank_pattern={}, alpha_pattern={}, use_rslora=False,
                  target_modules=_combined_targets(configs, combined), layers_to_transform=None,
                  layers_pattern=None, exclude_modules=None)
    heads = list(dict.fromkeys((configs[0].get("modules_to_save") or []) + (configs[1].get("modules_to_save") or [])))
    config["modules_to_save"] = heads or None
    return config


def _combined_targets(configs: list[dict], modules: dict) -> Any:
    """The union of two plain lists of module names, or an exact regex of the adapted modules."""
    simple = all(isinstance(c.get("target_modules"), list) and not c.get("layers_to_transform")
                 and not c.get("exclude_modules") for c in configs)
    if simple:
        return sorted(set(configs[0]["target_modules"]) | set(configs[1]["target_modules"]))
    return "^(?:" + "|".join(re.escape(m) for m in sorted(modules)) + ")$"

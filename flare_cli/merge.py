"""`flare merge`: fold a LoRA adapter (and its stage-1 task adapter) into its base, atomically.

A FLARE adapter's output depends on the English pivot, so it does not fold into W (see
docs/export.md). `merge` refuses it unless the caller asks for the pivot-less model explicitly,
and then says so in the result and in the card (flare_cli/card.py writes the card).
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flare_cli.adapter_folder import AdapterFolder
from flare_cli.card import build_model_card
from flare_cli.errors import ConfigError, DataError, MergeError, ModelError, first_line, hub_offline
from flare_cli.fsutil import (
    check_output_dir, give_usual_modes, make_temp_dir, overlaps, remove_tree, stale_temp_dirs,
)

# Tensors only FLARE layers use; plain peft ignores them (the pivot-less model).
FLARE_TENSOR_MARKER = "lora_flare_"


@dataclass
class MergeConfig:
    adapter: Path
    output_dir: Path
    base: str | None = None  # overrides adapter_config.json base_model_name_or_path
    # Stage-1 task LoRA merged into the base first (default: the one the adapter was trained on,
    # from flare_config.json meta.task_adapter); without it the merged model would lose stage 1.
    task_adapter: str | None = None
    no_task_adapter: bool = False
    max_shard_size: str = "5GB"
    drop_pivot: bool = False
    dequantize: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        self.adapter, self.output_dir = Path(self.adapter), Path(self.output_dir)
        check_output_dir(self.output_dir, "--output-dir")
        if self.no_task_adapter and self.task_adapter:
            raise ConfigError("--task-adapter and --no-task-adapter contradict each other; pass one")


# What `flare merge` writes; --overwrite replaces a folder holding only these, never anything else.
MERGE_OUTPUT_PATTERNS = (
    "config.json", "generation_config.json", "model*.safetensors", "model.safetensors.index.json", "README.md",
    "tokenizer*", "special_tokens_map.json", "added_tokens.json", "chat_template.*", "*.model", "vocab*",
    "merges.txt",
)


@dataclass
class MergeResult:
    output_dir: Path
    base_model: str
    method: str
    dtype: str
    files: list[str]
    dropped_pivot: bool
    warnings: list[str] = field(default_factory=list)
    task_adapter: str | None = None


# --------------------------------------------------------------------------- adapter folder


def _flare_refusal(folder: Path, flare: dict) -> str:
    fusion = flare.get("fusion", "?")
    return (
        f"{folder} is a FLARE adapter (method {flare.get('method')}, fusion {fusion}): its output depends on "
        "the English pivot, so it cannot be folded into the base weights; publish the adapter itself "
        "(`flare push --folder ADAPTER`), or pass --drop-pivot to write the pivot-less model, which is NOT "
        "the trained model"
    )


# --------------------------------------------------------------------------- base model


def _load_base_config(base: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(base)
    except (OSError, ValueError) as err:
        if Path(base).exists():
            raise ModelError(f"cannot read the base model config in {base}: {first_line(err)}") from None
        why = "HF_HUB_OFFLINE is set and it is not in the local cache" if hub_offline() else first_line(err)
        raise ModelError(f"cannot load base model {base!r} ({why}); pass --base with a local folder") from None


def _dtype_of(config) -> "Any":
    """The dtype the base was saved in; fp32 only when the config names none (the HF default)."""
    import torch

    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    quant = getattr(config, "quantization_config", None)
    if quant is not None:  # a quantized base computes in its compute dtype
        compute = quant.get("bnb_4bit_compute_dtype") if isinstance(quant, dict) else None
        dtype = compute or dtype
    if dtype is None or dtype == "auto":
        return torch.float32
    if isinstance(dtype, str):
        return getattr(torch, dtype.replace("torch.", ""))
    return dtype


def _is_quantized(config) -> bool:
    return getattr(config, "quantization_config", None) is not None


# --------------------------------------------------------------------------- merge


def run(cfg: MergeConfig) -> MergeResult:
    """Fold a LoRA adapter into its base and save a full model folder (atomic)."""
    from flare_cli.hub import resolve_adapter

    adapter = resolve_adapter(cfg.adapter)  # a folder, or a Hub repo user/name[@revision]
    folder = AdapterFolder.read(adapter, require_adapter=False)
    folder.check_weights()
    adapter_config, flare = folder.lora_config, folder.settings
    method = folder.method_name
    mergeable = folder.method.mergeable
    if not mergeable and not cfg.drop_pivot:
        raise MergeError(_flare_refusal(adapter, flare))
    if cfg.drop_pivot and mergeable:
        raise ConfigError(f"--drop-pivot is only for FLARE adapters; {adapter} is a plain LoRA adapter ({method})")

    out = Path(cfg.output_dir)
    base = cfg.base or adapter_config.get("base_model_name_or_path")
    if not base:
        raise ConfigError(f"{adapter / 'adapter_config.json'} names no base model; pass --base")

    task_adapter = None if cfg.no_task_adapter else (cfg.task_adapter or folder.task_adapter)
    # never write over (or into) what this merge reads
    for option, source in (("--adapter", adapter), ("--base", base), ("--task-adapter", task_adapter)):
        if source and Path(source).exists():
            _refuse_overlap(out, Path(source), option)
    _check_output(out, cfg.overwrite)
    base_config = _load_base_config(base)
    if _is_quantized(base_config) and not cfg.dequantize:
        raise MergeError(
            f"base model {base} is quantized (quantization_config in its config): merging into 4-bit weights "
            "loses the adapter; pass --dequantize to merge into a dequantized copy"
        )
    dtype = _dtype_of(base_config)

    warnings: list[str] = []
    if cfg.drop_pivot:
        warnings.append(
            f"--drop-pivot: the merged model drops the English pivot path of this {method} adapter; "
            "it is NOT the trained model (run `flare eval` on both to measure the difference)"
        )

    task_adapter_dir = _as_local_adapter(task_adapter) if task_adapter else None
    if task_adapter and not (task_adapter_dir / "adapter_config.json").is_file():
        raise ConfigError(
            f"the adapter was trained on base + task adapter {task_adapter}, which is not an adapter folder here; "
            "pass --task-adapter DIR (or --no-task-adapter to merge into the bare base)"
        )
    lora_config, lora_state = _read_lora(adapter)  # before the (slow) base load: fail fast
    model = _load_base(base, dtype, dequantize=_is_quantized(base_config), flare=flare)
    if task_adapter:
        model = _merge_task_adapter(model, str(task_adapter_dir))
    _check_same_base(adapter, flare, base, model)
    merged = _fold_adapter(model, adapter, lora_config, lora_state)

    leftovers = stale_temp_dirs(out.parent, out.name)  # a killed merge's full-model copies
    for stale in leftovers:
        remove_tree(stale)
    if leftovers:
        warnings.append(f"removed {len(leftovers)} unfinished folder(s) of an interrupted merge next to {out} "
                        f"({', '.join(p.name for p in leftovers)})")
    _write_merged(cfg, merged, adapter, base, dtype, out)
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    return MergeResult(
        output_dir=out,
        base_model=base,
        method=method,
        dtype=str(dtype).replace("torch.", ""),
        files=files,
        dropped_pivot=cfg.drop_pivot,
        warnings=warnings,
        task_adapter=task_adapter,
    )


def _check_output(out: Path, overwrite: bool) -> None:
    """A non-empty --output-dir needs --overwrite, and then may hold only a merged model's files."""
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise ConfigError(f"{out} exists and is not empty; pass --overwrite to replace it")
    foreign = [p.name for p in out.iterdir()
               if p.is_dir() or not any(fnmatch.fnmatch(p.name, pat) for pat in MERGE_OUTPUT_PATTERNS)]
    if foreign:
        raise ConfigError(
            f"--overwrite replaces only a merged model folder; {out} also holds {sorted(foreign)[0]!r}, "
            "which flare merge did not write: move it or pick another --output-dir"
        )


def _refuse_overlap(out: Path, source: Path, option: str) -> None:
    if overlaps(out, source):
        raise ConfigError(f"--output-dir {out} overlaps {option} {source}; write the merged model elsewhere")


def base_fingerprint(model) -> dict:
    """A short identity of base weights: shape settings + 64 values spread over the input
    embedding (robust to fp32/bf16 rounding), so a merge can tell another base of the same shape."""
    import torch

    config = model.config
    shape = {k: getattr(config, k, None) for k in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")}
    weight = model.get_input_embeddings().weight.detach().reshape(-1)
    index = torch.linspace(0, weight.numel() - 1, 64).long()
    values = weight[index.to(weight.device)].float().cpu()
    return {**shape, "scale": float(weight.float().std()), "sample": [round(float(v), 6) for v in values]}


def fingerprints_match(a: dict, b: dict) -> bool:
    keys = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")
    if any(a.get(k) != b.get(k) for k in keys) or len(a.get("sample", ())) != len(b.get("sample", ())):
        return False
    tolerance = 0.02 * max(a.get("scale") or 0.0, 1e-8)  # bf16 keeps ~0.4% of a value
    return all(abs(x - y) <= tolerance for x, y in zip(a["sample"], b["sample"]))


def _check_same_base(adapter: Path, flare: dict, base: str, model) -> None:
    """Refuse to merge into weights other than those the adapter was trained on."""
    recorded = flare.get("base_fingerprint")
    if not isinstance(recorded, dict):
        return  # adapters from flare_cli < 0.2 or plain peft record none
    if not fingerprints_match(recorded, base_fingerprint(model)):
        trained_on = flare.get("base_model") or "another base"
        raise MergeError(
            f"{adapter} was trained on {trained_on}, and the weights of {base} are not that model's (same "
            "shape, different values); merging would give a model nobody trained. Pass the base it was trained on"
        )


def _write_merged(cfg: MergeConfig, merged, adapter: Path, base: str, dtype, out: Path) -> None:
    """Save into a temp folder next to ``out``; swap it in only once it is complete."""
    tmp = make_temp_dir(out.parent, out.name)
    try:
        try:
            merged.save_pretrained(tmp, max_shard_size=cfg.max_shard_size)
        except ValueError as err:
            raise ConfigError(f"bad --max-shard-size {cfg.max_shard_size!r}: {first_line(err)}") from None
        _copy_tokenizer(adapter, base, tmp)
        card = build_model_card(
            adapter, base_model=base, relation="merge", dropped_pivot=cfg.drop_pivot, merged_dtype=str(dtype)
        )
        card.save(tmp / "README.md")
        give_usual_modes(tmp)
        _replace_dir(tmp, out)
    except BaseException:
        remove_tree(tmp)
        raise


def _as_local_adapter(ref: str) -> Path:
    """A task adapter folder, or the snapshot of a Hub id; a missing folder stays as it is."""
    from flare_cli.hub import resolve_adapter

    try:
        return resolve_adapter(ref, what="task adapter")
    except DataError:
        return Path(ref)


def _merge_task_adapter(model, task_adapter: str):
    """Fold the stage-1 task LoRA in first: the stage-3 adapter was trained on top of it."""
    from peft import PeftModel
    from safetensors import SafetensorError

    try:
        return PeftModel.from_pretrained(model, task_adapter).merge_and_unload()
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as err:
        raise ModelError(f"cannot merge task adapter {task_adapter}: {first_line(err)}") from None


def _load_base(base: str, dtype, *, dequantize: bool, flare: dict | None = None):
    """The base as trained: a causal LM, or an encoder with the head (and labels) its adapter records."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    from flare_cli.flare.encoder import HEADS, load_encoder

    head = HEADS.get((flare or {}).get("head") or "")
    try:
        if head is not None:
            model = load_encoder(base, head, (flare or {}).get("labels"), dtype=dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
        if dequantize:
            model = model.dequantize()
    except ImportError as err:  # e.g. bitsandbytes missing for a quantized base
        raise ModelError(f"cannot load base model {base}: {first_line(err)}") from None
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:  # SafetensorError: a truncated shard
        raise ModelError(f"cannot load base model {base}: {first_line(err)}") from None
    return model


def _read_lora(adapter: Path):
    """The LoRA config and the plain LoRA tensors (never the lora_flare_* ones)."""
    from peft import LoraConfig
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        lora_config = LoraConfig.from_pretrained(str(adapter))
    except (TypeError, ValueError) as err:
        raise DataError(f"{adapter / 'adapter_config.json'}: {first_line(err)}") from None
    try:
        state = load_file(str(adapter / "adapter_model.safetensors"))
    except (SafetensorError, OSError) as err:
        raise DataError(f"{adapter / 'adapter_model.safetensors'} is corrupt: {first_line(err)}") from None
    state = {k: v for k, v in state.items() if FLARE_TENSOR_MARKER not in k}
    if not state:
        raise DataError(f"{adapter / 'adapter_model.safetensors'} holds no LoRA tensors")
    return lora_config, state


def _fold_adapter(model, adapter: Path, lora_config, state: dict):
    """Load the LoRA tensors into a fresh peft wrapper and merge them into W.

    Loading by hand instead of PeftModel.from_pretrained lets us skip lora_flare_* tensors and
    refuse an adapter whose tensors do not match the base instead of merging peft's fresh init.
    """
    from peft import get_peft_model, set_peft_model_state_dict

    try:
        peft_model = get_peft_model(model, lora_config)
        result = set_peft_model_state_dict(peft_model, state)
    except (ValueError, RuntimeError, KeyError) as err:
        raise ModelError(f"adapter {adapter} does not fit its base: {first_line(err)}") from None
    if result.unexpected_keys:
        raise ModelError(
            f"adapter {adapter} does not fit its base: {len(result.unexpected_keys)} unused tensors "
            f"(first: {result.unexpected_keys[0]})"
        )
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing:
        raise ModelError(f"adapter {adapter} lacks {len(missing)} LoRA tensors (first: {missing[0]})")
    return peft_model.merge_and_unload(safe_merge=True)


def _copy_tokenizer(adapter: Path, base: str, dest: Path) -> None:
    """Tokenizer (with its chat template) from the adapter folder when it has one, else from the base."""
    from transformers import AutoTokenizer

    has_own = any((adapter / n).exists() for n in ("tokenizer_config.json", "tokenizer.json", "tokenizer.model"))
    source = str(adapter) if has_own else base
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot load the tokenizer from {source}: {first_line(err)}") from None
    tokenizer.save_pretrained(dest)


def _replace_dir(new: Path, out: Path) -> None:
    """Put `new` at `out`; an old `out` is moved aside first and removed only after the swap."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")  # fsutil.stale_temp_dirs knows this name
        os.replace(out, old)
    os.replace(new, out)
    if old is not None:
        remove_tree(old)

"""Exports: fold a LoRA adapter into its base (`flare merge`) and write honest model cards.

A FLARE adapter's output depends on the English pivot, so it does not fold into W (see
docs/export.md). `merge` refuses it unless the caller asks for the pivot-less model explicitly,
and then says so in the result and in the card.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from flare_cli import __version__
from flare_cli.adapter_folder import AdapterFolder
from flare_cli.errors import ConfigError, DataError, MergeError, ModelError, first_line, hub_offline
from flare_cli.fsutil import (
    check_output_dir, give_usual_modes, make_temp_dir, overlaps, remove_tree, stale_temp_dirs,
)
from flare_cli.methods import DEFAULT_METHOD, method_of

# Tensors only FLARE layers use; plain peft ignores them (the pivot-less model).
FLARE_TENSOR_MARKER = "lora_flare_"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# Task key -> Hub pipeline task used in model-index.
_HUB_TASK = {"qa": "question-answering", "nli": "text-classification", "sentiment": "text-classification"}


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


# --------------------------------------------------------------------------- model card

def _encoder_head(flare: dict):
    """The task head an encoder adapter was trained with (flare_config.json meta), or None (decoder)."""
    from flare_cli.flare.encoder import HEADS

    return HEADS.get(flare.get("head") or "")


def _head_kwargs(flare: dict) -> str:
    """from_pretrained arguments of a classification head: its size and label names in training's order."""
    labels = flare.get("labels")
    if not (_encoder_head(flare) and labels):
        return ""
    id2label = dict(enumerate(labels))
    return f", num_labels={len(labels)}, id2label={id2label!r}, label2id={ {v: k for k, v in id2label.items()}!r}"


# Placeholder for the repo id in a card written before anyone knows it (`flare merge`); `flare push`
# puts the real id in its place.
REPO_PLACEHOLDER = "YOUR_USER/YOUR_REPO"
PIPELINE_TAG = "text-generation"  # every task is answered by generation from a prompt

# Licences of models and data flare_cli works with, as Hub licence ids. Most restrictive first.
_KNOWN_LICENSES = (
    (re.compile(r"(^|/)nllb", re.I), "cc-by-nc-4.0"),  # NLLB-200 weights
    (re.compile(r"^facebook/xnli$", re.I), "cc-by-nc-4.0"),
    (re.compile(r"(^|/)m2m100", re.I), "mit"),
    (re.compile(r"^google-research-datasets/tydiqa$", re.I), "apache-2.0"),
    (re.compile(r"^indonlp/nusax-senti$", re.I), "cc-by-sa-4.0"),
    (re.compile(r"^meta-llama/(meta-)?llama-3\.3", re.I), "llama3.3"),
    (re.compile(r"^meta-llama/(meta-)?llama-3\.2", re.I), "llama3.2"),
    (re.compile(r"^meta-llama/(meta-)?llama-3\.1", re.I), "llama3.1"),
    (re.compile(r"^meta-llama/meta-llama-3-", re.I), "llama3"),
    (re.compile(r"^meta-llama/llama-2", re.I), "llama2"),
    (re.compile(r"^google/gemma-3", re.I), "gemma"),
    (re.compile(r"^google/gemma", re.I), "gemma"),
    (re.compile(r"^mistralai/mistral-7b", re.I), "apache-2.0"),
)


def license_rank(license_id: str) -> int:
    """How restrictive a Hub licence id is: 3 non-commercial, 2 custom terms, 1 share-alike, 0 permissive."""
    lid = license_id.lower()
    if "-nc" in lid or lid in {"other", "unknown"}:
        return 3 if "-nc" in lid else 2
    if lid.startswith(("llama", "gemma", "openrail", "bigscience", "creativeml", "deepfloyd", "apple")):
        return 2
    if "-sa" in lid or lid.startswith(("gpl", "agpl", "lgpl")):
        return 1
    return 0


def known_license(name: Optional[str], local_path: Optional[str] = None) -> Optional[str]:
    """The licence of a model or dataset: from its Hub id, or a local copy's README.md front matter."""
    for candidate in (local_path, name):
        if candidate and Path(candidate).is_dir() and (Path(candidate) / "README.md").is_file():
            try:
                from huggingface_hub import ModelCard

                found = ModelCard.load(Path(candidate) / "README.md", ignore_metadata_errors=True).data.license
            except Exception:  # a README that is no card: nothing known from it
                found = None
            if found:
                return str(found)
    from flare_cli.publish import hub_id_of

    hub = hub_id_of(name) or name
    for pattern, lid in _KNOWN_LICENSES:
        if hub and pattern.search(hub):
            return lid
    return None


def derive_license(sources: list[tuple[str, str, Optional[str]]]) -> tuple[Optional[str], list[str]]:
    """(most restrictive known licence, one line per source) for ``(role, name, local path)`` rows."""
    found = []
    for role, name, local in sources:
        lid = known_license(name, local) if name else None
        if lid:
            found.append((role, name, lid))
    if not found:
        return None, []
    top = max(found, key=lambda row: license_rank(row[2]))
    return top[2], [f"{role} `{name}`: `{lid}`" for role, name, lid in found]


def hub_language(code: Optional[str]) -> Optional[str]:
    """The Hub's language code: ISO 639-1 where one exists, else ISO 639-3 (never swh_Latn or sw-KE)."""
    if not code:
        return None
    from flare_cli.languages import resolve

    lang = resolve(code)
    return lang.iso1 or lang.iso3


def _hub_dataset(name: Optional[str]) -> Optional[str]:
    from flare_cli.publish import is_local_path

    return name if name and not is_local_path(name) else None


def build_model_card(
    folder: Path,
    *,
    base_model: str | None = None,
    relation: str = "adapter",
    dropped_pivot: bool = False,
    merged_dtype: str | None = None,
    repo_id: str | None = None,
    license: str | None = None,
    base_path: str | None = None,
    warnings: list | None = None,
):
    """A README.md for an adapter folder (relation "adapter") or a model merged from it ("merge").

    `folder` is the adapter folder: its adapter_config.json, flare_config.json and metrics.json
    supply the metadata. A local base path is never published (only Hub ids are); `license`
    overrides the derived licence (a line is appended to `warnings` when they differ).
    """
    from huggingface_hub import ModelCard, ModelCardData

    from flare_cli.publish import hub_id_of, public_name

    folder = Path(folder)
    if relation not in {"adapter", "merge"}:
        raise ValueError(f"relation must be 'adapter' or 'merge', not {relation!r}")
    adapter = AdapterFolder.read(folder, require_adapter=False)
    adapter_config, flare, metrics = adapter.lora_config, adapter.settings, adapter.metrics()
    method = adapter.method_name
    task = flare.get("task")
    lang = flare.get("lang")
    recorded = base_model or flare.get("base_model") or adapter_config.get("base_model_name_or_path") or base_path
    base_hub = hub_id_of(recorded)
    base_local = base_path or (recorded if recorded and base_hub is None else None)
    name = repo_id.split("/")[-1] if repo_id else folder.resolve().name

    data_mt = flare.get("train_data_mt_model")
    derived, license_lines = derive_license([
        ("base model", base_hub or public_name(recorded), base_local),
        ("MT encoder", flare.get("mt_model"), flare.get("mt_model")),
        ("MT model that translated the training data", data_mt, None),
        ("training data", flare.get("train_data"), None),
    ])
    if license and derived and license != derived and warnings is not None:
        warnings.append(f"--license {license} overrides the derived licence {derived} ({'; '.join(license_lines)})")
    chosen = license or flare.get("license") or derived

    tags = ["flare", "lora", "cross-lingual"] + ([task] if task else []) + ([method] if method != DEFAULT_METHOD else [])
    if relation == "merge":
        tags.append("merged")
    eval_results = [r for row in metrics for r in _eval_results(row, task, lang)] or None
    datasets = list(flare.get("datasets") or [])
    datasets += [d for d in (_hub_dataset(flare.get("train_data")), _hub_dataset(flare.get("validation_data"))) if d]
    language = hub_language(lang)
    head = _encoder_head(flare)
    data = ModelCardData(
        base_model=base_hub,
        base_model_relation=relation if base_hub else None,
        library_name="peft" if relation == "adapter" else "transformers",
        pipeline_tag=head.pipeline_tag if head else PIPELINE_TAG,
        language=[language] if language else None,
        license=chosen,
        tags=list(dict.fromkeys(tags)),
        datasets=list(dict.fromkeys(datasets)) or None,
        model_name=name,
        eval_results=eval_results,
    )
    body = _card_body(
        name=name,
        repo_id=repo_id or REPO_PLACEHOLDER,
        base=base_hub,
        base_shown=base_hub or public_name(recorded),
        relation=relation,
        method=method,
        flare=flare,
        adapter_config=adapter_config,
        metrics=metrics,
        license=chosen,
        license_lines=license_lines,
        overridden=bool(license and derived and license != derived),
        dropped_pivot=dropped_pivot,
        merged_dtype=merged_dtype,
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


_SCORE_KEYS = ("exact_match", "f1", "accuracy", "macro_f1")


def _eval_results(row: dict, task: str | None, lang: str | None) -> list:
    """One EvalResult per score in a metrics.json row, on the split and data that were really scored."""
    from huggingface_hub import EvalResult

    from flare_cli.publish import public_name

    settings = row.get("settings") or {}
    row_task = row.get("task") or task or "task"
    row_lang = row.get("lang") or lang
    data = row.get("dataset") or settings.get("data")
    dataset = _hub_dataset(data) or public_name(data) or f"flare-{row_task}" + (f"-{row_lang}" if row_lang else "")
    split = row.get("split") or settings.get("split")
    scores = [(k, row[k]) for k in _SCORE_KEYS if isinstance(row.get(k), (int, float))]
    if not scores:
        scores = [(str(row["metric"]), row["value"])]
    return [
        EvalResult(
            task_type=_HUB_TASK.get(row_task, row_task),
            dataset_type=dataset,
            dataset_name=f"{dataset} ({hub_language(row_lang) or row_lang})" if row_lang else dataset,
            dataset_split=split,
            dataset_config=hub_language(row_lang) if row_lang else None,
            metric_type=metric,
            metric_value=value,
        )
        for metric, value in scores
    ]


def _card_body(
    *, name, repo_id, base, base_shown, relation, method, flare, adapter_config, metrics, license, license_lines,
    overridden, dropped_pivot, merged_dtype,
) -> str:
    from flare_cli.publish import public_name

    record = method_of(method)
    is_flare = record.fuses
    fusion = flare.get("fusion")
    base_code = base or "BASE_MODEL"  # a local base has no Hub id to print
    lines = [f"# {name}", ""]
    what = record.card.format(fusion=fusion)
    task, lang = flare.get("task"), flare.get("lang")
    on = f" for `{task}`" if task else ""
    on += f" in `{lang}`" if lang else ""
    base_text = f"`{base}`" if base else f"a local base model (`{base_shown}`, no Hub id recorded)"
    if relation == "adapter":
        version = flare.get("flare_cli_version")
        made_with = f", trained with flare_cli {version}" if version else ""
        lines.append(f"This is {what}{on}, on top of {base_text}{made_with}.")
    else:
        lines.append(f"This is {base_text} with {what}{on} merged into its weights (dtype `{merged_dtype}`).")
    lines.append("")
    task_adapter = public_name(flare.get("task_adapter"))
    if relation == "merge" and task_adapter and not flare.get("task_adapter_folded"):
        lines += [f"The stage-1 English task adapter `{task_adapter}` was merged into the base first.", ""]
    elif flare.get("task_adapter_folded"):
        lines += [f"It was trained on the base with the stage-1 English task adapter `{task_adapter}` merged in. "
                  "That adapter is folded into this one (one LoRA of their summed rank, the same function), "
                  "so this repo alone, on the bare base, is the trained model.", ""]
    elif flare.get("bundled_task_adapter"):
        lines += [f"It was trained on the base with the stage-1 English task adapter `{task_adapter}` merged in. "
                  f"That adapter travels in this repo (`{flare['bundled_task_adapter']}/`); `load_flare_model` "
                  "merges it into the base before attaching this adapter.", ""]
    elif task_adapter:
        lines += [f"It was trained on the base with the stage-1 English task adapter `{task_adapter}` merged in: "
                  "merge that adapter into the base before loading this one.", ""]

    if relation == "merge" and dropped_pivot:
        lines += [
            "## Warning: this is NOT the trained model",
            "",
            f"The adapter was trained with FLARE ({method}); its LoRA output depends on "
            + ("the MT encoder's states of the input" if record.reads_mt else "the English pivot")
            + ", which a merged model cannot receive. This model was written with `flare merge --drop-pivot`: "
            "the pivot path is dropped, so it behaves differently from the trained adapter. Evaluate it with "
            "`flare eval` before use; the faithful export is the standalone adapter.",
            "",
        ]
        if fusion == "add":
            lines += [
                "With fusion `add` the adapted layer computes (W + sBA)u + sBA h, where u is the target-language "
                "input and h the pivot. The merged weights reproduce (W + sBA)u exactly; the pivot term sBA h "
                "is what is dropped.",
                "",
            ]
        else:
            lines += [
                f"With fusion `{fusion}` the adapter is not linear in its input, so no part of the trained "
                "layer is reproduced exactly; the merged weights are W + sBA only.",
                "",
            ]

    lines += ["## How to use", ""]
    if not base:
        lines += ["Replace `BASE_MODEL` below with the base model this adapter was trained on "
                  f"(a local folder named `{base_shown}`).", ""]
    task_lang = f" --task {task or 'TASK'} --lang {lang or 'LANG'}"
    head = _encoder_head(flare)
    auto_class = head.auto_class if head else "AutoModelForCausalLM"
    if relation == "merge":
        lines += ["```python", f"from transformers import {auto_class}, AutoTokenizer", "",
                  f'model = {auto_class}.from_pretrained("{repo_id}")',
                  f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")', "```", ""]
    elif is_flare:
        lines += [
            "Load it with flare_cli (`pip install flare-cli`), which reads `flare_config.json` and restores the "
            "pivot fusion:",
            "",
            "```bash",
            f"flare eval --adapter {repo_id}{task_lang}" + ("" if base else " --base BASE_MODEL"),
            "```",
            "",
            "```python",
            f"from transformers import {auto_class}, AutoTokenizer",
            "",
            "from flare_cli.flare import load_flare_model",
            "",
            f'base = {auto_class}.from_pretrained("{base_code}"{_head_kwargs(flare)})',
            f'tokenizer = AutoTokenizer.from_pretrained("{base_code}")',
            f'model = load_flare_model(base, "{repo_id}")  # downloads the repo; merges its stage-1 adapter',
            "```",
            "",
            "Plain `peft` (`PeftModel.from_pretrained`) loads only the LoRA matrices and ignores the "
            "`lora_flare_*` tensors and the pivot: that gives the pivot-less model, not the trained one.",
            "",
        ]
        if record.reads_mt:
            revision = flare.get("mt_revision")
            lines += [
                f"FLARE-MT needs its frozen MT encoder, `{flare.get('mt_model')}`"
                + (f" (revision `{revision}`)" if revision else "")
                + ": it is not part of this adapter; flare_cli loads it as named in `flare_config.json` "
                "(`flare eval --mt-model PATH` points to a local copy). No English pivot and no translation "
                "are needed at inference.",
                "",
            ]
    else:
        lines += [
            "```python",
            "from peft import PeftModel",
            f"from transformers import {auto_class}",
            "",
            f'base = {auto_class}.from_pretrained("{base_code}"{_head_kwargs(flare)})',
            f'model = PeftModel.from_pretrained(base, "{repo_id}")',
            "```",
            "",
            "or with flare_cli:",
            "",
            "```bash",
            f"flare eval --adapter {repo_id}{task_lang}" + ("" if base else " --base BASE_MODEL"),
            f"flare merge --adapter {repo_id} --output-dir merged" + ("" if base else " --base BASE_MODEL"),
            "```",
            "",
        ]

    if adapter_config:
        lines += ["## Training setup", ""]
        for key, label in (("r", "LoRA rank"), ("lora_alpha", "LoRA alpha"), ("target_modules", "target modules")):
            if adapter_config.get(key) is not None:
                value = adapter_config[key]
                value = ", ".join(sorted(value)) if isinstance(value, list) else value
                lines.append(f"- {label}: {value}")
        for key in ("fusion", "fused_modules", "align", "mt_model", "translate_model"):
            if flare.get(key):
                value = flare[key]
                lines.append(f"- {key}: {', '.join(value) if isinstance(value, list) else value}")
        lines.append("")

    data_lines = []
    if flare.get("train_data"):
        data_lines.append(f"- training data: `{public_name(flare['train_data'])}`")
    if flare.get("train_data_mt_model"):
        revision = flare.get("train_data_mt_revision")
        data_lines.append(f"- machine-translated by `{flare['train_data_mt_model']}`"
                          + (f" (revision `{revision}`)" if revision else "")
                          + (f", {flare['train_data_src_lang']} -> {flare['train_data_tgt_lang']}"
                             if flare.get("train_data_src_lang") else ""))
    if flare.get("validation_data"):
        data_lines.append(f"- validation data: `{public_name(flare['validation_data'])}`")
    if data_lines:
        lines += ["## Training data", "", *data_lines, ""]

    if metrics:
        lines += ["## Evaluation", "", "| task | lang | method | data | split | metric | value | n |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in metrics:
            settings = row.get("settings") or {}
            data = public_name(row.get("dataset") or settings.get("data")) or ""
            split = row.get("split") or settings.get("split") or ""
            lines.append(
                f"| {row.get('task', task or '')} | {row.get('lang', lang or '')} | {row.get('method', method)} "
                f"| {data} | {split} | {row['metric']} | {row['value']} | {row.get('n', '')} |"
            )
        lines.append("")

    lines += ["## License", ""]
    if license_lines:
        lines.append("Known licences of what this model is made from: " + "; ".join(license_lines) + ".")
    if overridden:
        lines.append(f"The publisher declared `{license}` instead of the most restrictive of these.")
    elif license and license_rank(license) == 3:
        lines.append(
            f"This card declares `{license}`, the most restrictive of them (non-commercial): check every "
            "licence above before any commercial use."
        )
    elif license:
        lines.append(f"This card declares `{license}`, the most restrictive of them; the others apply as well.")
    else:
        lines.append("The base model's licence applies to this model as well.")
    lines += ["", f"Card written by flare_cli {__version__} (FLARE: Borchert et al., ACL 2025).", ""]
    return "\n".join(lines)

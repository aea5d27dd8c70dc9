"""`flare train`: stage 1 (English LoRA) and stage 3 (LoRA / FLARE / input-fusion / FLARE-MT on the target).

A readable recipe: setup -> (resume) -> loop of micro-batches with gradient accumulation ->
periodic validation and checkpoints -> the best adapter written to the output folder.

Output folder:
    adapter_model.safetensors, adapter_config.json, flare_config.json   the adapter (best on validation)
    tokenizer files, train_config.yaml (resolved, no secrets), trainer_log.jsonl, train_result.json
    checkpoints/checkpoint-<step>/  adapter + optimizer.pt + scheduler.pt + rng.pt + state.json
``train_result.json`` is written last: a folder without it is an unfinished run, resumed next time.

Under ``torchrun`` / ``accelerate launch`` (several processes; flare_cli/distributed.py) each rank
runs this same recipe on its own share of every global batch, DDP averages the gradients, and
only rank 0 writes files and logs; ``--batch-size`` stays the global batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pickle
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from flare_cli.config import dump_yaml, option, public_dict
from flare_cli.errors import ConfigError, DataError, ModelError
from flare_cli.fsutil import (
    LOCK_NAME, atomic_copy, atomic_write_text, check_output_dir, give_usual_modes, remove_tree, run_lock,
)
from flare_cli.methods import DEFAULT_METHOD, ENCODER_METHODS, TRAIN_METHODS, method_of

RESULT_NAME = "train_result.json"
# Prompt tokens kept per task when --max-length is not given (docs/tasks.md, "Truncation"): QA
# prompts carry a whole TyDiQA-GoldP passage, classification prompts a sentence or two.
DEFAULT_MAX_LENGTH = {"qa": 512, "nli": 256, "sentiment": 256, "custom": 512}
CONFIG_NAME = "train_config.yaml"
LOG_NAME = "trainer_log.jsonl"
# Files only `flare train` writes: a folder holding none of them is someone else's.
TRACKER_DIR = "runs"  # --report-to tensorboard event files
OWN_FILES = {CONFIG_NAME, LOG_NAME, "checkpoints", RESULT_NAME, LOCK_NAME, TRACKER_DIR}
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", "flare_config.json")
# What tokenizer.save_pretrained may write, for runs whose train_result.json lists no files.
TOKENIZER_FILES = {
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "added_tokens.json",
    "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt", "sentencepiece.bpe.model",
    "spiece.model", "vocab.txt",
}
# Settings a resumed run may change: they do not change what is trained.
RESUMABLE_CHANGES = {"overwrite", "logging_steps", "eval_steps", "save_steps", "save_total_limit", "device_map",
                     "gradient_checkpointing", "report_to", "resume_from_checkpoint", "early_stopping_patience"}


# Optimizers built by transformers' own factory (Trainer.get_optimizer_cls_and_kwargs) and
# schedules by transformers.get_scheduler: the names are theirs.
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adafactor", "paged_adamw_8bit")
LR_SCHEDULERS = ("linear", "cosine", "constant_with_warmup")
TRACKERS = ("tensorboard", "wandb", "mlflow")  # accelerate's tracker classes; "none" turns them off

MODEL, DATA, ADAPTER, OPTIM, OUTPUT = "Model", "Data", "LoRA/FLARE", "Optimisation", "Output"


@dataclass
class TrainConfig:
    base: str = option(help="Base model: Hub id or local folder.", panel=MODEL)
    output_dir: str = option(help="Output folder (resumed from its newest checkpoint unless --overwrite).",
                             panel=OUTPUT, flags=("-o",))
    task: str = option("qa", "Task: qa, nli, sentiment or custom; an encoder base gets its head from it.", DATA)
    lang: str = option("en", "Training data language (ISO 639 / FLORES code).", DATA)
    method: str = option(DEFAULT_METHOD, f"{' | '.join(TRAIN_METHODS)}.", ADAPTER)
    data: Optional[str] = option(None, "Training data: local JSONL/CSV/parquet or Hub dataset id.", DATA,
                                 default_text="the task's Hub dataset")
    validation_data: Optional[str] = option(None, "Validation data (machine-translated for stage 3).", DATA)
    split: str = option("train", "Split of a Hub dataset.", DATA)
    data_config: Optional[str] = option(None, "Hub config (subset) of --data.", DATA, default_text="the task's for --lang")
    columns: Optional[str] = option(None, "Map the data's columns: ours=theirs,... e.g. question=q,context=passage.", DATA)
    fields: Any = option(None, "--task custom: comma-separated input columns.", DATA)
    labels: Any = option(None, "--task custom: comma-separated label words (free-text answers without).", DATA)
    limit: Optional[int] = option(None, "Use only the first N training rows.", DATA)
    max_length: Optional[int] = option(None, "Max prompt tokens, kept from the end; truncated rows are counted.", DATA,
                                       default_text="qa 512, nli/sentiment 256")
    task_adapter: Optional[str] = option(None, "Stage-1 English task adapter, merged into the base first.", MODEL)
    dtype: str = option("auto", "auto | fp32 | bf16 | fp16 (auto: bf16 on GPU, fp32 on CPU).", MODEL)
    load_in_4bit: bool = option(False, "4-bit NF4 base with bf16 compute via bitsandbytes (QLoRA; extra: quant).", MODEL)
    device_map: Optional[str] = option(None, "transformers device_map, e.g. auto for big bases.", MODEL)
    gradient_checkpointing: bool = option(False, "Recompute activations in backward (fusion stays on).", MODEL)
    fusion: str = option("add_relu", "add_relu | add | mul | cross_attention | none.", ADAPTER)
    # None: the base family's default (decoders: all-linear LoRA, fusion on q_proj,v_proj, align end;
    # encoders: query,value, both fused, align start)
    target_modules: Any = option(None, "LoRA targets, comma-separated, or all-linear.", ADAPTER,
                                 default_text="all-linear; encoders query,value")
    fused_modules: Any = option(None, "Targets that fuse the pivot; Phi-3: the q and v rows of qkv_proj.", ADAPTER,
                                default_text="q_proj,v_proj; encoders query,value")
    fused_layers: Any = option(None, "Decoder layers that fuse, comma-separated.", ADAPTER, default_text="all")
    align: Optional[str] = option(None, "Pivot alignment: end | start.", ADAPTER, default_text="end; encoders start")
    source_norm: bool = option(False, "Norm pivot states with the layer's input norm.", ADAPTER)
    mt_model: Optional[str] = option(None, "flare-mt: the frozen NLLB/M2M100 encoder (Hub id or local folder).", ADAPTER)
    mt_revision: Optional[str] = option(None, "flare-mt: Hub revision (branch, tag or commit) of --mt-model.", ADAPTER)
    mt_projection: str = option("shared", "flare-mt: shared | per-layer projection d_mt -> d_model.", ADAPTER)
    r: int = option(8, "LoRA rank.", ADAPTER, flags=("--rank", "--lora-r"))
    lora_alpha: int = option(16, "LoRA alpha.", ADAPTER)
    lora_dropout: float = option(0.0, "LoRA dropout.", ADAPTER)
    learning_rate: float = option(2e-5, "Peak learning rate.", OPTIM, flags=("--lr",))
    batch_size: int = option(32, "Global batch size (micro-batch x accumulation x processes).", OPTIM)
    micro_batch_size: int = option(8, "Rows per forward on each process; the rest is gradient accumulation.", OPTIM,
                                   flags=("--per-device-train-batch-size",))
    gradient_accumulation_steps: Optional[int] = option(
        None, "HF spelling: sets --batch-size to micro-batch x this x processes.", OPTIM,
        default_text="batch-size / micro-batch-size")
    epochs: float = option(3.0, "Epochs.", OPTIM, flags=("--num-train-epochs",))
    max_steps: Optional[int] = option(None, "Optimizer steps (overrides --epochs).", OPTIM)
    optim: str = option("adamw_torch", f"Optimizer, built by transformers: {' | '.join(OPTIMIZERS)}.", OPTIM)
    lr_scheduler_type: str = option("linear", f"Learning-rate schedule: {' | '.join(LR_SCHEDULERS)}.", OPTIM)
    warmup_ratio: float = option(0.0, "Warm-up share of the steps.", OPTIM)
    weight_decay: float = option(0.0, "Weight decay.", OPTIM)
    max_grad_norm: float = option(1.0, "Gradient clipping norm; 0 turns clipping off.", OPTIM)
    seed: int = option(42, "Random seed (data order, init).", OPTIM)
    early_stopping_patience: Optional[int] = option(
        None, "Stop after N validations without a better validation loss (needs --validation-data).", OPTIM,
        default_text="off")
    logging_steps: int = option(10, "Log every N steps.", OUTPUT)
    eval_steps: Optional[int] = option(None, "Validate every N steps.", OUTPUT, default_text="a quarter of the run")
    save_steps: Optional[int] = option(None, "Checkpoint every N steps.", OUTPUT, default_text="= eval steps")
    save_total_limit: int = option(2, "Checkpoints kept (the best is always kept).", OUTPUT)
    report_to: str = option("none", f"Trackers, comma-separated: {' | '.join(TRACKERS)} | none (rank 0 only).", OUTPUT)
    resume_from_checkpoint: Optional[str] = option(
        None, "Resume from this checkpoint folder.", OUTPUT, default_text="the newest valid one in --output-dir")
    overwrite: bool = option(False, "Start over in a used output folder.", OUTPUT)

    def __post_init__(self) -> None:
        from flare_cli.distributed import world_size_from_env
        from flare_cli.languages import resolve
        from flare_cli.tasks.registry import get_task

        get_task(self.task, **task_options(self))  # an unknown task (or custom without fields) fails here
        resolve(self.lang)  # an unknown language code too: both before anything is loaded
        if self.fusion not in FUSION_NAMES:
            raise ConfigError(f"unknown fusion {self.fusion!r}; choose one of: {', '.join(FUSION_NAMES)}")
        if self.align not in (None, "end", "start"):
            raise ConfigError(f"unknown align {self.align!r}; choose end or start")
        if self.optim not in OPTIMIZERS:
            raise ConfigError(f"unknown optim {self.optim!r}; choose one of: {', '.join(OPTIMIZERS)}")
        if self.optim == "paged_adamw_8bit" and not _has_module("bitsandbytes"):
            raise ConfigError("--optim paged_adamw_8bit needs bitsandbytes (pip install 'flare-cli[quant]'), "
                              "which is not installed")
        if self.load_in_4bit and not _has_module("bitsandbytes"):
            raise ConfigError("--load-in-4bit needs bitsandbytes: pip install 'flare-cli[quant]'")
        if self.lr_scheduler_type not in LR_SCHEDULERS:
            raise ConfigError(f"unknown lr_scheduler_type {self.lr_scheduler_type!r}; "
                              f"choose one of: {', '.join(LR_SCHEDULERS)}")
        self.report_to = ",".join(report_targets(self.report_to)) or "none"
        for name in report_targets(self.report_to):
            if not _has_module(TRACKER_MODULES[name]):
                raise ConfigError(f"--report-to {name} needs the {TRACKER_MODULES[name]} package "
                                  "(pip install 'flare-cli[track]'), which is not installed")
        if self.max_grad_norm < 0:
            raise ConfigError(f"--max-grad-norm must not be negative, got {self.max_grad_norm} (0 turns clipping off)")
        if self.early_stopping_patience is not None:
            if self.early_stopping_patience < 1:
                raise ConfigError(f"--early-stopping-patience must be at least 1, got {self.early_stopping_patience}")
            if not self.validation_data:
                raise ConfigError("--early-stopping-patience watches the validation loss: give --validation-data")
        if self.gradient_accumulation_steps is not None:
            if self.gradient_accumulation_steps < 1:
                raise ConfigError(f"--gradient-accumulation-steps must be at least 1, got "
                                  f"{self.gradient_accumulation_steps}")
            self.batch_size = self.micro_batch_size * self.gradient_accumulation_steps * world_size_from_env()
        if self.resume_from_checkpoint and not (Path(self.resume_from_checkpoint) / "state.json").is_file():
            raise ConfigError(f"--resume-from-checkpoint {self.resume_from_checkpoint}: not a complete checkpoint "
                              "folder (no state.json); give one of <output-dir>/checkpoints/checkpoint-<step>")
        method = method_of(self.method, choices=TRAIN_METHODS)
        if method.reads_mt and not self.mt_model:
            raise ConfigError("--method flare-mt needs --mt-model (an NLLB/M2M100 Hub id or local folder)")
        if not method.reads_mt and (self.mt_model or self.mt_revision):
            raise ConfigError("--mt-model/--mt-revision are for --method flare-mt only")
        if self.mt_projection not in ("shared", "per-layer"):
            raise ConfigError(f"--mt-projection must be shared or per-layer, got {self.mt_projection!r}")
        for name in ("r", "batch_size", "micro_batch_size", "max_length", "logging_steps", "lora_alpha"):
            value = getattr(self, name)
            if value is not None and value <= 0:  # (max_length None: the task's default)
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.batch_size % self.micro_batch_size:
            raise ConfigError(
                f"--batch-size {self.batch_size} must be a multiple of --micro-batch-size {self.micro_batch_size}"
            )
        if self.max_length is None:
            self.max_length = DEFAULT_MAX_LENGTH.get(self.task, 512)
        if self.learning_rate <= 0:
            raise ConfigError(f"--learning-rate must be positive, got {self.learning_rate}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ConfigError(f"--max-steps must be positive, got {self.max_steps} (leave it out to train --epochs)")
        if not self.epochs > 0:
            raise ConfigError(f"--epochs must be positive, got {self.epochs}")
        for name in ("eval_steps", "save_steps", "limit"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.save_total_limit < 1:
            raise ConfigError(f"--save-total-limit must be at least 1, got {self.save_total_limit}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        if self.weight_decay < 0:
            raise ConfigError(f"--weight-decay must not be negative, got {self.weight_decay}")
        self.fused_layers = _layer_list(self.fused_layers)
        check_output_dir(self.output_dir, "--output-dir")


# The fusion registry's names (flare/fusion.py FUSIONS), kept here so validating a config needs no torch;
# tests/test_config.py checks the two agree.
FUSION_NAMES = ("add_relu", "add", "mul", "cross_attention", "none")


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def report_targets(value: Optional[str]) -> list[str]:
    """--report-to "tensorboard,wandb" -> ["tensorboard", "wandb"]; "none" (or empty) -> []."""
    names = [n.strip().lower() for n in str(value or "").split(",") if n.strip()]
    if "none" in names:
        if len(names) > 1:
            raise ConfigError(f"--report-to {value!r}: 'none' cannot be combined with trackers")
        return []
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"unknown --report-to {name!r}; choose from {', '.join(TRACKERS)} or none")
    return list(dict.fromkeys(names))


TRACKER_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def _layer_list(value: Any) -> Optional[list[int]]:
    """--fused-layers "0,2" (or a YAML list) -> [0, 2]; ConfigError on anything but layer numbers."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        items = [items]
    layers = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        if not text.isdigit():
            raise ConfigError(f"--fused-layers takes comma-separated layer numbers (0, 1, ...), got {value!r}")
        layers.append(int(text))
    if not layers:
        raise ConfigError(f"--fused-layers names no layer ({value!r}); leave it out to fuse every layer")
    return layers


@dataclass
class TrainResult:
    output_dir: str
    method: str
    steps: int
    epochs: float
    train_loss: float
    best_validation_loss: Optional[float]
    best_step: Optional[int]
    resumed_from: Optional[int]
    elapsed_s: float
    already_complete: bool = False
    engine: str = "single"  # single | DDP | FSDP2 (flare_cli/distributed.py), with `processes` ranks
    processes: int = 1
    truncation: Optional[dict] = None  # encode.truncation_report of the training rows
    log: list[dict] = field(default_factory=list, repr=False)


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)


def _read_json(path: Path) -> Optional[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _inspect_output_dir(cfg: TrainConfig) -> Optional[dict]:
    """Read-only look at --output-dir: refuse someone else's folder and a resume with changed
    settings; return a finished run's train_result.json (None when there is work to do)."""
    out = Path(cfg.output_dir)
    if not out.is_dir() or not any(out.iterdir()):
        return None
    names = {p.name for p in out.iterdir()}
    if not names & OWN_FILES:
        raise ConfigError(f"--output-dir {out} holds other files ({sorted(names)[0]}, ...); pick an empty folder")
    if cfg.overwrite:
        return None
    finished = _read_json(out / RESULT_NAME)
    if finished is not None or _checkpoints(out):
        changed = _changed_settings(out, cfg)
        if changed:
            what = "was trained" if finished is not None else "holds a run to resume"
            raise ConfigError(
                f"--output-dir {out} {what} with other settings ({', '.join(changed)}); pass --overwrite to "
                "start over, or pick another folder"
            )
    return finished


def _changed_settings(out: Path, cfg: TrainConfig) -> list[str]:
    """Settings that differ from the saved train_config.yaml, as `name: old -> new`."""
    import yaml

    try:
        old = yaml.safe_load((out / CONFIG_NAME).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return []
    new = yaml.safe_load(dump_yaml(public_dict(cfg)))  # through YAML, as saved
    keys = [k for k in new if k not in RESUMABLE_CHANGES and k in old and old[k] != new[k]]
    return [f"{k.replace('_', '-')}: {old[k]!r} -> {new[k]!r}" for k in keys]


def _flare_files(out: Path) -> list[Path]:
    """What earlier `flare train` runs wrote in ``out`` (never anything else)."""
    finished = _read_json(out / RESULT_NAME) or {}
    written = set(finished.get("files") or ()) or TOKENIZER_FILES
    names = (OWN_FILES - {LOCK_NAME}) | set(ADAPTER_FILES) | written
    return [p for p in out.iterdir()
            if p.name in names or (p.name.startswith(".") and p.name.endswith(".tmp"))]


def _remove_previous_run(out: Path) -> list[str]:
    """--overwrite: delete the earlier run's files, keep every file flare did not write."""
    removed = []
    for path in _flare_files(out):
        if path.is_dir() and not path.is_symlink():
            remove_tree(path)
        else:
            path.unlink(missing_ok=True)
        removed.append(path.name)
    return sorted(removed)


def task_options(cfg: TrainConfig) -> dict:
    """get_task options of --task custom (fields, labels); none for the built-in tasks."""
    def as_list(value):
        return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value

    return {k: v for k, v in (("input_fields", as_list(cfg.fields)), ("labels", as_list(cfg.labels))) if v}


def _load_rows(cfg: TrainConfig, source: Optional[str], split: str, task):
    from flare_cli.tasks.base import parse_columns

    rows = task.load(source, cfg.lang, split, config=cfg.data_config, columns=parse_columns(cfg.columns))
    if method_of(cfg.method).reads_pivot:
        task.require_pivots(rows, source or task.hub_id or cfg.task)
    return rows[: cfg.limit] if cfg.limit else rows


def _load_mt_encoder(cfg: TrainConfig, model):
    """FLARE-MT: the frozen MT encoder in the base's dtype; its tokenizer must know the target's code."""
    from flare_cli.flare import load_mt_encoder

    encoder = load_mt_encoder(cfg.mt_model, cfg.mt_revision, dtype=model.get_input_embeddings().weight.dtype)
    encoder.lang_code(cfg.lang)  # fails now, with the language named, rather than at the first batch
    return encoder


def _mt_revision(cfg: TrainConfig) -> Optional[str]:
    from flare_cli.flare.mt_encoder import resolved_revision

    return resolved_revision(cfg.mt_model, cfg.mt_revision)


def _data_provenance(data: Optional[str]) -> dict:
    """Who translated the training data (its `flare translate` sidecar ``<data>.meta.json``), for the card."""
    path = Path(f"{data}.meta.json") if data else None
    if path is None or not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    keys = {"mt_model": "train_data_mt_model", "revision": "train_data_mt_revision",
            "src_lang": "train_data_src_lang", "tgt_lang": "train_data_tgt_lang"}
    return {ours: meta[theirs] for theirs, ours in keys.items() if isinstance(meta, dict) and meta.get(theirs)}


def _checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints (state.json is written last), newest first."""
    done = [p for p in (out / "checkpoints").glob("checkpoint-*") if (p / "state.json").is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]), reverse=True)


def _save_checkpoint(model, optimizer, scheduler, state: dict, out: Path, limit: int, dist) -> Optional[Path]:
    """Every rank calls this (FSDP gathers the adapter and optimizer shards); rank 0 writes."""
    import torch

    adapter, optimizer_state = dist.adapter_state_dict(model), dist.optimizer_state_dict(optimizer)
    if not dist.is_main:
        return None
    ckpt_root = out / "checkpoints"
    ckpt = ckpt_root / f"checkpoint-{state['step']}"
    tmp = ckpt_root / f".tmp-checkpoint-{state['step']}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, **({"state_dict": adapter} if adapter is not None else {}))
    torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save({"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}, tmp / "rng.pt")
    give_usual_modes(tmp)  # safetensors writes 0600 files
    atomic_write_text(tmp / "state.json", json.dumps(state, indent=2))  # last: marks the checkpoint complete
    shutil.rmtree(ckpt, ignore_errors=True)
    os.replace(tmp, ckpt)
    keep = {state.get("best_step"), state["step"]}
    finished = sorted((p for p in ckpt_root.glob("checkpoint-*")), key=lambda p: int(p.name.split("-")[1]))
    for old in finished[: max(0, len(finished) - limit)]:
        if int(old.name.split("-")[1]) not in keep:
            shutil.rmtree(old, ignore_errors=True)
    return ckpt


class _UnusableCheckpoint(Exception):
    pass


def _read_checkpoint(ckpt: Path) -> dict:
    """Every file of a checkpoint, read before anything is applied (a bad file changes nothing)."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return {
            "adapter": load_file(str(ckpt / "adapter_model.safetensors")),
            "optimizer": torch.load(ckpt / "optimizer.pt", weights_only=True),
            "scheduler": torch.load(ckpt / "scheduler.pt", weights_only=True),
            "rng": torch.load(ckpt / "rng.pt", weights_only=True),
            "state": json.loads((ckpt / "state.json").read_text(encoding="utf-8")),
        }
    except (SafetensorError, OSError, RuntimeError, ValueError, EOFError, KeyError, pickle.UnpicklingError) as err:
        # (torch.load of a file that is no checkpoint: "Weights only load failed" or "invalid load key")
        text = str(err).strip().splitlines()
        raise _UnusableCheckpoint(text[0] if text else type(err).__name__) from None


def _load_checkpoint(fm, optimizer, scheduler, ckpt: Path, dist) -> dict:
    import torch

    saved = _read_checkpoint(ckpt)
    try:
        dist.load_adapter_state_dict(fm, saved["adapter"])
        dist.load_optimizer_state_dict(optimizer, saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise _UnusableCheckpoint(str(err).strip().splitlines()[0]) from None
    torch.set_rng_state(saved["rng"]["torch"])
    random.setstate((3, tuple(saved["rng"]["python"]), None))
    return saved["state"]


def _resume(fm, optimizer, scheduler, out: Path, dist, on_log: Callable[[dict], None],
            only: Optional[Path] = None) -> Optional[dict]:
    """Load the newest checkpoint that reads back; a damaged one (a disk error, a kill the OS did
    not flush) is skipped, and said so, in favour of the one before it. ``only`` (from
    --resume-from-checkpoint): that checkpoint or a one-line error, no fallback."""
    if only is not None:
        try:
            state = _load_checkpoint(fm, optimizer, scheduler, only, dist)
        except _UnusableCheckpoint as err:
            raise ModelError(f"--resume-from-checkpoint {only}: unreadable ({err})") from None
        on_log({"event": "resume", "step": state["step"], "checkpoint": str(only)})
        return state
    for ckpt in _checkpoints(out):
        try:
            state = _load_checkpoint(fm, optimizer, scheduler, ckpt, dist)
        except _UnusableCheckpoint as err:
            on_log({"event": "skip_checkpoint", "checkpoint": str(ckpt), "reason": str(err)})
            continue
        on_log({"event": "resume", "step": state["step"], "checkpoint": str(ckpt)})
        return state
    return None


def _truncate_log(path: Path, step: int) -> None:
    """Keep the log records up to the resumed step: the steps after it are trained again."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line cut by a kill
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line + "\n")
    atomic_write_text(path, "".join(kept))


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """A deterministic shuffle per epoch, so a resumed run sees the same batches."""
    import torch

    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()


def _model_inputs(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def validation_loss(fm, examples, pad_id: int, micro: int, device, dist=None) -> float:
    """Token-weighted mean loss; with several ranks each takes every world_size-th micro-batch
    and the sums are reduced, so every rank gets the global figure."""
    import torch

    from flare_cli.encode import collate
    from flare_cli.encoder_tasks import loss_weight

    starts = list(range(0, len(examples), micro))
    world, rank = (dist.world_size, dist.rank) if dist is not None else (1, 0)
    rounds = math.ceil(len(starts) / world)
    mine = starts[rank::world]
    fm.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for k in range(rounds):
            # a rank short of batches runs a throwaway one, so wrapped (collective) forwards stay in step
            i = mine[k] if k < len(mine) else starts[0]
            batch = _model_inputs(collate(examples[i : i + micro], pad_id), device)
            n = loss_weight(batch)
            out = fm(**batch)
            if k < len(mine):
                total += float(out.loss) * n
                tokens += n
    fm.train()
    if world > 1:
        total, tokens = dist.sum(total, tokens)
    return total / max(tokens, 1)


def build_optimizer(cfg: TrainConfig, params: list):
    """--optim through transformers' own factory (the class and keyword arguments its Trainer uses
    for the same name), over one parameter group with --weight-decay."""
    from accelerate.state import PartialState
    from transformers import Trainer, TrainingArguments

    # under torchrun / accelerate launch, TrainingArguments must reuse the process group that
    # distributed.py set up (by default it resets accelerate's state)
    configured = {"use_configured_state": True} if PartialState._shared_state else None
    args = TrainingArguments(optim=cfg.optim, learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay,
                             report_to="none", accelerator_config=configured)
    try:
        optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    except (ImportError, ValueError) as err:
        raise ConfigError(f"--optim {cfg.optim}: {str(err).strip().splitlines()[0]}") from None
    return optimizer_cls([{"params": params, "weight_decay": cfg.weight_decay}], **kwargs)


# trainer_log.jsonl keys sent to --report-to trackers (train/loss, train/lr, ..., eval/loss)
TRACKED = ("loss", "lr", "epoch", "eval_loss")


def start_trackers(cfg: TrainConfig, out: Path) -> list:
    """accelerate's own tracker classes for --report-to (rank 0 only; the caller checks). TensorBoard
    writes under <output-dir>/runs/; W&B and MLflow follow their usual environment (WANDB_PROJECT,
    WANDB_DIR, WANDB_MODE, MLFLOW_TRACKING_URI). The run's hyperparameters are its public config."""
    names = report_targets(cfg.report_to)
    if not names:
        return []
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    hparams = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in public_dict(cfg).items()}
    trackers = []
    for name in names:
        if name == "tensorboard":
            tracker = LOGGER_TYPE_TO_CLASS[name](out.name or "run", logging_dir=str(out / TRACKER_DIR))
        elif name == "wandb":
            tracker = LOGGER_TYPE_TO_CLASS[name](os.environ.get("WANDB_PROJECT", "flare_cli"), name=out.name)
        else:
            tracker = LOGGER_TYPE_TO_CLASS[name](os.environ.get("MLFLOW_EXPERIMENT_NAME", "flare_cli"),
                                                 run_name=out.name)
        tracker.start()
        tracker.store_init_configuration(hparams)
        trackers.append(tracker)
    return trackers


def _accumulation_group(micro: int, accum: int, micro_per_epoch: int) -> list[int]:
    """The global micro-batch indices of the optimizer step starting at ``micro``: up to ``accum``
    of them, cut at the epoch's end (an epoch's last partial group still steps)."""
    end = micro + 1
    while end % accum and end % micro_per_epoch:
        end += 1
    return list(range(micro, end))


def _check_layers(cfg: TrainConfig, model) -> None:
    n = getattr(model.config, "num_hidden_layers", None)
    bad = [i for i in cfg.fused_layers or () if n is not None and i >= n]
    if bad:
        raise ConfigError(f"--fused-layers {bad[0]}: the base has {n} decoder layers (0-{n - 1})")


def _finished_result(record: dict) -> TrainResult:
    names = {f.name for f in dataclasses.fields(TrainResult)}
    return TrainResult(**{**{k: v for k, v in record.items() if k in names}, "already_complete": True})


def run(cfg: TrainConfig, on_log: Optional[Callable[[dict], None]] = None) -> TrainResult:
    from flare_cli.distributed import Dist
    from flare_cli.languages import resolve
    from flare_cli.tasks.registry import get_task

    on_log = on_log or (lambda record: None)
    resolve(cfg.lang)  # unknown language codes fail before anything is loaded
    task = get_task(cfg.task, **task_options(cfg))
    dist = Dist.from_env()  # one process: a no-op; torchrun / accelerate launch: accelerate + DDP
    if dist.world_size > 1 and cfg.device_map:
        raise ConfigError("--device-map splits one model over devices; it cannot be combined with torchrun / "
                          "accelerate launch (one model copy per process)")
    if dist.world_size > 1 and cfg.batch_size % (cfg.micro_batch_size * dist.world_size):
        raise ConfigError(f"--batch-size {cfg.batch_size} must be a multiple of --micro-batch-size "
                          f"{cfg.micro_batch_size} x {dist.world_size} processes")
    out = Path(cfg.output_dir)
    if not dist.is_main:
        dist.barrier()  # rank 0 has checked the folder
        finished = None if cfg.overwrite else _read_json(out / RESULT_NAME)
        if finished is not None:
            return _finished_result(finished)
        return _train(cfg, task, dist, out, on_log)
    _inspect_output_dir(cfg)  # someone else's folder is refused before we put a lock file in it
    created, had_lock_file = not out.exists(), (out / LOCK_NAME).exists()
    with run_lock(out, "flare train"):  # a second run into this folder is refused, not interleaved
        try:
            finished = _inspect_output_dir(cfg)  # again: the folder may have changed meanwhile
            dist.barrier()
            if finished is not None:
                return _finished_result(finished)
            return _train(cfg, task, dist, out, on_log)
        except BaseException:
            if {p.name for p in out.iterdir()} <= {LOCK_NAME} and not had_lock_file:
                # a start that failed before writing anything leaves the folder as it found it
                remove_tree(out) if created else (out / LOCK_NAME).unlink(missing_ok=True)
            raise


@dataclass
class _Setup:
    """What a run trains with, all built before the first write (a typo never costs the run in the folder)."""

    fm: Any  # the FlareModel (saved, resumed)
    wrapped: Any  # what forwards go through: fm, its DDP wrapper, or fm sharded in place (FSDP2)
    optimizer: Any
    scheduler: Any
    params: list  # the trainable parameters as the engine holds them (clipping)
    tokenizer: Any
    device: Any
    examples: list
    val_examples: list
    truncation: dict
    accum: int  # micro-batches per optimizer step (all ranks together)
    micro_per_epoch: int
    total_steps: int


def _build(cfg: TrainConfig, task, dist) -> _Setup:
    from transformers import get_scheduler

    from flare_cli.encode import build_examples, truncation_meta, truncation_report
    from flare_cli.merge import base_fingerprint
    from flare_cli.flare import FlareConfig, get_flare_model
    from flare_cli.flare.encoder import encoder_meta, family_defaults, model_family
    from flare_cli.modeling import load_base_model, pick_device, resolve_dtype

    # Everything that can fail on bad input (data, model, adapter settings) runs before the first
    # write, so a typo never costs the run that is in the folder.
    rows = _load_rows(cfg, cfg.data, cfg.split, task)
    val_rows = _load_rows(cfg, cfg.validation_data, "validation", task) if cfg.validation_data else []
    if not rows:
        raise DataError(f"{cfg.data or task.hub_id or cfg.task}: no training rows")
    _seed_everything(cfg.seed)
    if dist.sharded and method_of(cfg.method).reads_mt:
        raise ConfigError("--method flare-mt does not run under FSDP (its MT projection sits in a sharded layer but "
                          "runs before that layer's forward); use DDP (examples/accelerate/ddp.yaml)")
    if dist.sharded and cfg.load_in_4bit:
        raise ConfigError("--load-in-4bit does not run under FSDP in flare train; use DDP "
                          "(examples/accelerate/ddp.yaml), each process holding its own 4-bit base")
    device = dist.device or (pick_device() if not cfg.device_map else None)
    device_map = cfg.device_map
    if dist.world_size > 1 and cfg.load_in_4bit and dist.device.type == "cuda":
        device_map = {"": dist.device.index}  # each process quantizes its own copy onto its own GPU
    dtype = cfg.dtype
    if dist.sharded and dtype == "auto":  # loaded on CPU, trained on dist.device: that device's dtype
        dtype = str(resolve_dtype("auto", str(dist.device))).removeprefix("torch.")
    model, tokenizer = load_base_model(
        cfg.base, task_adapter=cfg.task_adapter, dtype=dtype, device_map=device_map,
        load_in_4bit=cfg.load_in_4bit, task=task,
        # FSDP: every rank loads the base on CPU and fully_shard moves only its shard to the device
        **({"device": "cpu" if dist.sharded else str(dist.device)} if dist.world_size > 1 else {}),
    )
    family = model_family(model.config)  # encoders (XLM-R) load with their task head; flare/encoder.py
    defaults = family_defaults(family)
    if family == "encoder" and not method_of(cfg.method).encoder_bases:
        takes = ", ".join(m for m in TRAIN_METHODS if m in ENCODER_METHODS)
        raise ConfigError(f"--method {cfg.method} is for decoder bases; an encoder base takes {takes}")
    if family == "encoder" and cfg.source_norm:
        raise ConfigError("--source-norm applies a layer's input norm; a post-LN encoder (XLM-R) has none")
    if cfg.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    targets = cfg.target_modules or defaults["target_modules"]
    mt_encoder = _load_mt_encoder(cfg, model) if method_of(cfg.method).reads_mt else None
    flare_config = FlareConfig(
        method=cfg.method, fusion=cfg.fusion if method_of(cfg.method).fuses else "none", r=cfg.r,
        lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets,
        fused_modules=cfg.fused_modules or defaults["fused_modules"], fused_layers=cfg.fused_layers,
        align=cfg.align or defaults["align"],
        source_norm=cfg.source_norm, mt_model=cfg.mt_model, mt_projection=cfg.mt_projection,
        mt_revision=_mt_revision(cfg) if mt_encoder is not None else None,
        meta={"base_model": cfg.base, "task": cfg.task, "lang": cfg.lang, "task_adapter": cfg.task_adapter,
              "train_data": cfg.data, "validation_data": cfg.validation_data, **_data_provenance(cfg.data),
              "base_fingerprint": base_fingerprint(model),
              **(encoder_meta(model, task, cfg.max_length) if family == "encoder" else truncation_meta(cfg.max_length))},
    )
    _check_layers(cfg, model)
    try:
        fm = get_flare_model(model, flare_config, mt_encoder=mt_encoder)
    except ValueError as err:  # peft: "Target modules {...} not found in the base model"
        raise ConfigError(f"--target-modules {cfg.target_modules}: {str(err).strip().splitlines()[0]}") from None
    if cfg.gradient_checkpointing:
        fm.gradient_checkpointing_enable()  # each recomputed layer gets its own forward's pivot back
    device = device or next(fm.parameters()).device
    fm.train()

    mt = {"mt_encoder": mt_encoder, "lang": cfg.lang} if mt_encoder is not None else {}
    examples = build_examples(tokenizer, task, rows, cfg.method, cfg.max_length, family=family, **mt)
    truncation = truncation_report(cfg.max_length, examples)
    val_examples = build_examples(tokenizer, task, val_rows, cfg.method, cfg.max_length, family=family, **mt) \
        if val_rows else []
    accum = cfg.batch_size // cfg.micro_batch_size
    micro_per_epoch = math.ceil(len(examples) / cfg.micro_batch_size)
    steps_per_epoch = max(1, micro_per_epoch // accum)
    total_steps = cfg.max_steps or max(1, math.ceil(steps_per_epoch * cfg.epochs))
    optimizer = build_optimizer(cfg, [p for p in fm.parameters() if p.requires_grad])
    # what training forwards go through: fm itself, its DDP wrapper, or fm sharded in place (FSDP2,
    # which also moves the optimizer onto the shards)
    wrapped, optimizer = dist.prepare(fm, optimizer)
    params = [p for p in wrapped.parameters() if p.requires_grad]
    scheduler = get_scheduler(cfg.lr_scheduler_type, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    return _Setup(fm=fm, wrapped=wrapped, optimizer=optimizer, scheduler=scheduler, params=params,
                  tokenizer=tokenizer, device=device, examples=examples, val_examples=val_examples,
                  truncation=truncation, accum=accum, micro_per_epoch=micro_per_epoch, total_steps=total_steps)


class _RunLog:
    """The one writer of what a run reports: trainer_log.jsonl, the --report-to trackers and the
    CLI's on_log. Rank 0 only; on other ranks every method does nothing."""

    def __init__(self, cfg: TrainConfig, dist, out: Path, on_log: Callable[[dict], None]) -> None:
        self.cfg, self.out, self.path = cfg, out, out / LOG_NAME
        self.active = dist.is_main
        self.on_log = on_log if self.active else (lambda record: None)
        self.trackers: list = []

    def start_trackers(self) -> None:
        if self.active:
            self.trackers = start_trackers(self.cfg, self.out)

    def event(self, record: dict) -> None:
        """For the CLI only (progress, resume, overwrite): not in trainer_log.jsonl."""
        self.on_log(record)

    def record(self, record: dict) -> None:
        if not self.active:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        scalars = {k: record[k] for k in TRACKED if k in record}
        for tracker in self.trackers if scalars and "step" in record else ():
            tracker.log({f"train/{k}" if k != "eval_loss" else "eval/loss": v for k, v in scalars.items()},
                        step=record["step"])
        self.on_log(record)

    def restart(self, resumed_step: Optional[int]) -> None:
        """A resumed run keeps the records up to its step; a fresh one starts an empty log."""
        if not self.active:
            return
        if resumed_step is not None:
            _truncate_log(self.path, resumed_step)
        else:
            self.path.unlink(missing_ok=True)

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()


def _start_output(cfg: TrainConfig, dist, out: Path, setup: _Setup, log: _RunLog) -> tuple[dict, Optional[int]]:
    """--overwrite's removal and the saved config (rank 0), then the newest usable checkpoint loaded
    on every rank. Returns (the training state to go on from: step, micro, best, ...; the step
    resumed from, None for a fresh start)."""
    if dist.is_main and cfg.overwrite:
        removed = _remove_previous_run(out)
        if removed:
            log.event({"event": "overwrite", "removed": removed})
    dist.barrier()  # rank 0 has removed the old run (--overwrite) before anyone looks for checkpoints
    if dist.is_main:
        atomic_write_text(out / CONFIG_NAME, f"# flare train -c {CONFIG_NAME}\n{dump_yaml(public_dict(cfg))}")
    resumed = _resume(setup.fm, setup.optimizer, setup.scheduler, out, dist, log.event,
                      only=Path(cfg.resume_from_checkpoint) if cfg.resume_from_checkpoint else None)
    if resumed is not None:
        log.restart(resumed["step"])
        return resumed, resumed["step"]
    log.restart(None)
    return {"step": 0, "micro": 0, "best_loss": None, "best_step": None, "train_loss": None}, None


def _optimizer_step(cfg: TrainConfig, setup: _Setup, dist, micro: int) -> tuple[int, float, int]:
    """One optimizer step over the accumulation group that starts at global micro-batch ``micro``.
    Returns (the next group's first micro-batch, the sum of this rank's micro-batch losses, their count)."""
    from flare_cli.encode import collate

    # Each rank takes every world-th micro-batch of the group; DDP/FSDP average the ranks'
    # gradients, hence the factor `world` below.
    world, fm, wrapped = dist.world_size, setup.fm, setup.wrapped
    group = _accumulation_group(micro, setup.accum, setup.micro_per_epoch)
    mine = group[dist.rank :: world]
    rounds = math.ceil(len(group) / world)
    loss_sum, n = 0.0, 0
    for k in range(rounds):
        # at an epoch's ragged end a rank may be short: it runs a zero-weight micro-batch so
        # that every rank takes part in the (collective) gradient all-reduce
        g = mine[k] if k < len(mine) else group[0]
        epoch, offset = divmod(g, setup.micro_per_epoch)
        order = _epoch_order(len(setup.examples), cfg.seed, epoch)
        chunk = order[offset * cfg.micro_batch_size : (offset + 1) * cfg.micro_batch_size]
        batch = _model_inputs(collate([setup.examples[i] for i in chunk], setup.tokenizer.pad_token_id), setup.device)
        with dist.no_sync(wrapped) if k < rounds - 1 else contextlib.nullcontext():
            loss = wrapped(**batch).loss
            (loss * world / setup.accum if k < len(mine) else loss * 0.0).backward()
        fm.release()  # the pivot states are spent once backward is done: free them before the next step
        if k < len(mine):
            loss_sum += loss.item()
            n += 1
    if cfg.max_grad_norm > 0:
        dist.clip_grad_norm_(wrapped, setup.params, cfg.max_grad_norm)
    setup.optimizer.step()
    setup.scheduler.step()
    setup.optimizer.zero_grad(set_to_none=True)
    return group[-1] + 1, loss_sum, n


def _validate(cfg: TrainConfig, setup: _Setup, dist, state: dict, log: _RunLog) -> bool:
    """The validation loss at ``state["step"]``: keeps the best step, counts validations without
    improvement; True when --early-stopping-patience says stop."""
    vloss = validation_loss(setup.wrapped, setup.val_examples, setup.tokenizer.pad_token_id, cfg.micro_batch_size,
                            setup.device, dist)
    improved = state["best_loss"] is None or vloss < state["best_loss"]
    if improved:
        state["best_loss"], state["best_step"] = vloss, state["step"]
    state["evals_without_improvement"] = 0 if improved else state.get("evals_without_improvement", 0) + 1
    log.record({"step": state["step"], "eval_loss": round(vloss, 6), "best": improved})
    patience = cfg.early_stopping_patience
    return patience is not None and state["evals_without_improvement"] >= patience


def _write_result(dist, out: Path, tokenizer, state: dict, result: TrainResult) -> None:
    """Rank 0: the best checkpoint's adapter, the tokenizer, then train_result.json (last: it marks
    the run finished); every rank returns once that is on disk."""
    if dist.is_main:
        final = out / "checkpoints" / f"checkpoint-{state['best_step'] or state['step']}"
        for name in ADAPTER_FILES:
            atomic_copy(final / name, out / name)
        saved = tokenizer.save_pretrained(str(out))
        record = {k: v for k, v in result.__dict__.items() if k not in ("log", "already_complete")}
        # what this run wrote besides OWN_FILES, so that --overwrite removes exactly these
        record["files"] = sorted(set(ADAPTER_FILES) | {Path(f).name for f in saved if Path(f).parent == out})
        atomic_write_text(out / RESULT_NAME, json.dumps(record, indent=2))
    dist.barrier()


def _train(cfg: TrainConfig, task, dist, out: Path, on_log: Callable[[dict], None]) -> TrainResult:
    setup = _build(cfg, task, dist)
    log = _RunLog(cfg, dist, out, on_log)
    state, resumed_from = _start_output(cfg, dist, out, setup, log)
    total_steps = setup.total_steps
    eval_every = cfg.eval_steps or max(1, total_steps // 4)
    save_every = cfg.save_steps or eval_every
    start, start_step = time.time(), state["step"]
    running, running_n = 0.0, 0
    log.start_trackers()
    if setup.truncation["n_truncated"] and resumed_from is None:
        log.record({"event": "truncation", **setup.truncation})
    micro = state["micro"]
    patience = cfg.early_stopping_patience
    while state["step"] < total_steps and not (patience and state.get("evals_without_improvement", 0) >= patience):
        micro, loss_sum, n = _optimizer_step(cfg, setup, dist, micro)
        running, running_n = running + loss_sum, running_n + n
        state["step"] += 1
        state["micro"] = micro
        step = state["step"]
        log.event({"event": "progress", "step": step, "total_steps": total_steps})  # the CLI's bar; not logged
        if step % cfg.logging_steps == 0 or step == total_steps:
            elapsed = time.time() - start
            rate = elapsed / max(step - start_step, 1)
            if dist.world_size > 1:
                running, running_n = dist.sum(running, running_n)
            state["train_loss"] = running / running_n
            log.record({"step": step, "loss": round(state["train_loss"], 6), "lr": setup.scheduler.get_last_lr()[0],
                        "epoch": round(micro / setup.micro_per_epoch, 4), "elapsed": round(elapsed, 2),
                        "eta": round(rate * (total_steps - step), 2), "total_steps": total_steps})
            running, running_n = 0.0, 0
        stop = bool(setup.val_examples) and (step % eval_every == 0 or step == total_steps) and \
            _validate(cfg, setup, dist, state, log)
        if step % save_every == 0 or step == total_steps or stop:
            _save_checkpoint(setup.fm, setup.optimizer, setup.scheduler, dict(state), out, cfg.save_total_limit, dist)
        if stop:
            log.record({"event": "early_stop", "step": step, "best_step": state["best_step"], "patience": patience})
            break

    log.finish()
    result = TrainResult(
        output_dir=str(out), method=cfg.method, steps=state["step"], epochs=round(micro / setup.micro_per_epoch, 4),
        train_loss=state["train_loss"] if state["train_loss"] is not None else float("nan"),
        best_validation_loss=state["best_loss"], best_step=state["best_step"], resumed_from=resumed_from,
        elapsed_s=round(time.time() - start, 2), truncation=setup.truncation, engine=dist.name,
        processes=dist.world_size,
    )
    _write_result(dist, out, setup.tokenizer, state, result)
    return result

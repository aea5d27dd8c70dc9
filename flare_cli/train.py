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
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from flare_cli.config import dump_yaml, public_dict
from flare_cli.errors import ConfigError

RESULT_NAME = "train_result.json"
OWN_FILES = {"train_config.yaml", "trainer_log.jsonl", "checkpoints", RESULT_NAME}


@dataclass
class TrainConfig:
    base: str
    output_dir: str
    task: str = "qa"
    lang: str = "en"
    method: str = "lora"
    data: Optional[str] = None
    validation_data: Optional[str] = None
    split: str = "train"
    task_adapter: Optional[str] = None
    fusion: str = "add_relu"
    target_modules: Any = "q_proj,v_proj"
    fused_modules: Any = "q_proj,v_proj"
    fused_layers: Optional[list[int]] = None
    align: str = "end"
    source_norm: bool = False
    mt_model: Optional[str] = None  # flare-mt: the frozen NLLB/M2M100 encoder (Hub id or local folder)
    mt_revision: Optional[str] = None  # flare-mt: Hub revision of mt_model
    mt_projection: str = "shared"  # flare-mt: one projection for every fused layer, or per-layer
    r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    learning_rate: float = 2e-5
    batch_size: int = 32
    micro_batch_size: int = 8
    epochs: float = 3.0
    max_steps: Optional[int] = None
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_length: int = 128
    seed: int = 42
    dtype: str = "auto"
    gradient_checkpointing: bool = False
    device_map: Optional[str] = None
    load_in_4bit: bool = False
    logging_steps: int = 10
    eval_steps: Optional[int] = None
    save_steps: Optional[int] = None
    save_total_limit: int = 2
    limit: Optional[int] = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.method not in ("lora", "flare", "input-fusion", "flare-mt"):
            raise ConfigError(f"unknown method {self.method!r}; choose lora, flare, input-fusion or flare-mt")
        if self.method == "flare-mt" and not self.mt_model:
            raise ConfigError("--method flare-mt needs --mt-model (an NLLB/M2M100 Hub id or local folder)")
        if self.method != "flare-mt" and (self.mt_model or self.mt_revision):
            raise ConfigError("--mt-model/--mt-revision are for --method flare-mt only")
        if self.mt_projection not in ("shared", "per-layer"):
            raise ConfigError(f"--mt-projection must be shared or per-layer, got {self.mt_projection!r}")
        if self.batch_size % self.micro_batch_size:
            raise ConfigError(
                f"--batch-size {self.batch_size} must be a multiple of --micro-batch-size {self.micro_batch_size}"
            )
        for name in ("r", "batch_size", "micro_batch_size", "max_length", "logging_steps"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive")
        if self.learning_rate <= 0:
            raise ConfigError("--learning-rate must be positive")
        if isinstance(self.fused_layers, str):
            self.fused_layers = [int(x) for x in self.fused_layers.split(",") if x.strip()]


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
    log: list[dict] = field(default_factory=list, repr=False)


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)


def _prepare_output_dir(cfg: TrainConfig) -> Optional[dict]:
    """Refuse foreign folders; return a finished run's result; wipe on --overwrite."""
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output-dir {out} is a file")
    if out.exists() and cfg.overwrite:
        shutil.rmtree(out)
    if out.is_dir() and any(out.iterdir()):
        names = {p.name for p in out.iterdir()}
        if not names & OWN_FILES:
            raise ConfigError(f"--output-dir {out} holds other files ({sorted(names)[0]}, ...); pick an empty folder")
        if (out / RESULT_NAME).is_file():
            return json.loads((out / RESULT_NAME).read_text(encoding="utf-8"))
    out.mkdir(parents=True, exist_ok=True)
    return None


def _load_rows(cfg: TrainConfig, source: Optional[str], split: str, task):
    rows = task.load(source, cfg.lang, split)
    if cfg.method in ("flare", "input-fusion"):
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


def _latest_checkpoint(out: Path) -> Optional[Path]:
    done = [p for p in (out / "checkpoints").glob("checkpoint-*") if (p / "state.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1])) if done else None


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _save_checkpoint(model, optimizer, scheduler, state: dict, out: Path, limit: int) -> Path:
    import torch

    ckpt_root = out / "checkpoints"
    ckpt = ckpt_root / f"checkpoint-{state['step']}"
    tmp = ckpt_root / f".tmp-checkpoint-{state['step']}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save({"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}, tmp / "rng.pt")
    _atomic_text(tmp / "state.json", json.dumps(state, indent=2))  # last: marks the checkpoint complete
    shutil.rmtree(ckpt, ignore_errors=True)
    os.replace(tmp, ckpt)
    keep = {state.get("best_step"), state["step"]}
    finished = sorted((p for p in ckpt_root.glob("checkpoint-*")), key=lambda p: int(p.name.split("-")[1]))
    for old in finished[: max(0, len(finished) - limit)]:
        if int(old.name.split("-")[1]) not in keep:
            shutil.rmtree(old, ignore_errors=True)
    return ckpt


def _load_checkpoint(fm, optimizer, scheduler, ckpt: Path) -> dict:
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(fm.peft_model, load_file(str(ckpt / "adapter_model.safetensors")))
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    rng = torch.load(ckpt / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    random.setstate((3, tuple(rng["python"]), None))
    return json.loads((ckpt / "state.json").read_text(encoding="utf-8"))


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
            n = int((batch["labels"] != -100).sum())
            out = fm(**batch)
            if k < len(mine):
                total += float(out.loss) * n
                tokens += n
    fm.train()
    if world > 1:
        total, tokens = dist.sum(total, tokens)
    return total / max(tokens, 1)


def _accumulation_group(micro: int, accum: int, micro_per_epoch: int) -> list[int]:
    """The global micro-batch indices of the optimizer step starting at ``micro``: up to ``accum``
    of them, cut at the epoch's end (an epoch's last partial group still steps)."""
    end = micro + 1
    while end % accum and end % micro_per_epoch:
        end += 1
    return list(range(micro, end))


def _read_finished(out: Path) -> Optional[dict]:
    path = out / RESULT_NAME
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def run(cfg: TrainConfig, on_log: Optional[Callable[[dict], None]] = None) -> TrainResult:
    import torch
    from transformers import get_linear_schedule_with_warmup

    from flare_cli.distributed import Dist
    from flare_cli.encode import build_examples, collate
    from flare_cli.flare import FlareConfig, get_flare_model
    from flare_cli.languages import resolve
    from flare_cli.modeling import load_base_model, pick_device
    from flare_cli.tasks.registry import get_task

    on_log = on_log or (lambda record: None)
    resolve(cfg.lang)  # unknown language codes fail before anything is loaded
    task = get_task(cfg.task)
    dist = Dist.from_env()  # one process: a no-op; torchrun / accelerate launch: accelerate + DDP
    if dist.world_size > 1 and cfg.device_map:
        raise ConfigError("--device-map splits one model over devices; it cannot be combined with torchrun / "
                          "accelerate launch (one model copy per process)")
    if dist.world_size > 1 and cfg.batch_size % (cfg.micro_batch_size * dist.world_size):
        raise ConfigError(f"--batch-size {cfg.batch_size} must be a multiple of --micro-batch-size "
                          f"{cfg.micro_batch_size} x {dist.world_size} processes")
    finished = _prepare_output_dir(cfg) if dist.is_main else None
    dist.barrier()  # rank 0 has checked, wiped (--overwrite) or created the folder
    out = Path(cfg.output_dir)
    if not dist.is_main:
        finished = _read_finished(out)
    if finished is not None:
        return TrainResult(**{**finished, "already_complete": True})

    rows = _load_rows(cfg, cfg.data, cfg.split, task)
    val_rows = _load_rows(cfg, cfg.validation_data, "validation", task) if cfg.validation_data else []
    _seed_everything(cfg.seed)
    device = dist.device or (pick_device() if not cfg.device_map else None)
    device_map = cfg.device_map
    if dist.world_size > 1 and cfg.load_in_4bit and dist.device.type == "cuda":
        device_map = {"": dist.device.index}  # each process quantizes its own copy onto its own GPU
    model, tokenizer = load_base_model(
        cfg.base, task_adapter=cfg.task_adapter, dtype=cfg.dtype, device_map=device_map,
        load_in_4bit=cfg.load_in_4bit, **({"device": str(dist.device)} if dist.world_size > 1 else {}),
    )
    if cfg.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    targets = cfg.target_modules if cfg.target_modules == "all-linear" else cfg.target_modules
    mt_encoder = _load_mt_encoder(cfg, model) if cfg.method == "flare-mt" else None
    flare_config = FlareConfig(
        method=cfg.method, fusion=cfg.fusion if cfg.method in ("flare", "flare-mt") else "none", r=cfg.r,
        lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets,
        fused_modules=cfg.fused_modules, fused_layers=cfg.fused_layers, align=cfg.align,
        source_norm=cfg.source_norm, mt_model=cfg.mt_model, mt_projection=cfg.mt_projection,
        mt_revision=_mt_revision(cfg) if mt_encoder is not None else None,
        meta={"base_model": cfg.base, "task": cfg.task, "lang": cfg.lang, "task_adapter": cfg.task_adapter,
              "train_data": cfg.data, "validation_data": cfg.validation_data, **_data_provenance(cfg.data)},
    )
    fm = get_flare_model(model, flare_config, mt_encoder=mt_encoder)
    if cfg.gradient_checkpointing:
        fm.gradient_checkpointing_enable()  # each recomputed layer gets its own forward's pivot back
    device = device or next(fm.parameters()).device
    fm.train()
    wrapped = dist.wrap(fm)  # what training forwards go through: fm itself, or its DDP/FSDP wrapper

    mt = {"mt_encoder": mt_encoder, "lang": cfg.lang} if mt_encoder is not None else {}
    examples = build_examples(tokenizer, task, rows, cfg.method, cfg.max_length, **mt)
    val_examples = build_examples(tokenizer, task, val_rows, cfg.method, cfg.max_length, **mt) if val_rows else []
    accum = cfg.batch_size // cfg.micro_batch_size
    micro_per_epoch = math.ceil(len(examples) / cfg.micro_batch_size)
    steps_per_epoch = max(1, micro_per_epoch // accum)
    total_steps = cfg.max_steps or max(1, math.ceil(steps_per_epoch * cfg.epochs))
    params = [p for p in wrapped.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)

    if dist.is_main:
        _atomic_text(out / "train_config.yaml", f"# flare train -c train_config.yaml\n{dump_yaml(public_dict(cfg))}")
    state = {"step": 0, "micro": 0, "best_loss": None, "best_step": None, "train_loss": None}
    resumed_from = None
    ckpt = _latest_checkpoint(out)
    if ckpt is not None:
        state = _load_checkpoint(fm, optimizer, scheduler, ckpt)
        resumed_from = state["step"]
        if dist.is_main:
            on_log({"event": "resume", "step": state["step"], "checkpoint": str(ckpt)})
    elif dist.is_main:
        (out / "trainer_log.jsonl").unlink(missing_ok=True)
    eval_every = cfg.eval_steps or max(1, total_steps // 4)
    save_every = cfg.save_steps or eval_every
    log_path = out / "trainer_log.jsonl"
    start = time.time()
    start_step = state["step"]
    running, running_n = 0.0, 0
    pad_id = tokenizer.pad_token_id

    def log(record: dict) -> None:
        if not dist.is_main:
            return
        with log_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        on_log(record)

    micro = state["micro"]
    world = dist.world_size
    while state["step"] < total_steps:
        # One optimizer step = one group of micro-batches (global indices). Each rank takes every
        # world-th of them; DDP averages the ranks' gradients, hence the factor `world` below.
        group = _accumulation_group(micro, accum, micro_per_epoch)
        mine = group[dist.rank :: world]
        rounds = math.ceil(len(group) / world)
        for k in range(rounds):
            # at an epoch's ragged end a rank may be short: it runs a zero-weight micro-batch so
            # that every rank takes part in the (collective) gradient all-reduce
            g = mine[k] if k < len(mine) else group[0]
            epoch, offset = divmod(g, micro_per_epoch)
            order = _epoch_order(len(examples), cfg.seed, epoch)
            chunk = order[offset * cfg.micro_batch_size : (offset + 1) * cfg.micro_batch_size]
            batch = _model_inputs(collate([examples[i] for i in chunk], pad_id), device)
            with dist.no_sync(wrapped) if k < rounds - 1 else contextlib.nullcontext():
                loss = wrapped(**batch).loss
                (loss * world / accum if k < len(mine) else loss * 0.0).backward()
            fm.release()  # the pivot states are spent once backward is done: free them before the next step
            if k < len(mine):
                running += loss.item()
                running_n += 1
        micro = group[-1] + 1
        dist.clip_grad_norm_(wrapped, params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        state["micro"] = micro
        step = state["step"]
        if step % cfg.logging_steps == 0 or step == total_steps:
            elapsed = time.time() - start
            rate = elapsed / max(step - start_step, 1)
            if world > 1:
                running, running_n = dist.sum(running, running_n)
            state["train_loss"] = running / running_n
            log({"step": step, "loss": round(state["train_loss"], 6), "lr": scheduler.get_last_lr()[0],
                 "epoch": round(micro / micro_per_epoch, 4), "elapsed": round(elapsed, 2),
                 "eta": round(rate * (total_steps - step), 2), "total_steps": total_steps})
            running, running_n = 0.0, 0
        if val_examples and (step % eval_every == 0 or step == total_steps):
            vloss = validation_loss(wrapped, val_examples, pad_id, cfg.micro_batch_size, device, dist)
            improved = state["best_loss"] is None or vloss < state["best_loss"]
            if improved:
                state["best_loss"], state["best_step"] = vloss, step
            log({"step": step, "eval_loss": round(vloss, 6), "best": improved})
        if dist.is_main and (step % save_every == 0 or step == total_steps):
            _save_checkpoint(fm, optimizer, scheduler, dict(state), out, cfg.save_total_limit)

    result = TrainResult(
        output_dir=str(out), method=cfg.method, steps=state["step"], epochs=round(micro / micro_per_epoch, 4),
        train_loss=state["train_loss"] if state["train_loss"] is not None else float("nan"),
        best_validation_loss=state["best_loss"], best_step=state["best_step"], resumed_from=resumed_from,
        elapsed_s=round(time.time() - start, 2),
    )
    if dist.is_main:
        final = out / "checkpoints" / f"checkpoint-{state['best_step'] or state['step']}"
        for name in ("adapter_model.safetensors", "adapter_config.json", "flare_config.json"):
            tmp = out / f".{name}.tmp"
            shutil.copyfile(final / name, tmp)
            os.replace(tmp, out / name)
        tokenizer.save_pretrained(str(out))
        record = {k: v for k, v in result.__dict__.items() if k not in ("log", "already_complete")}
        _atomic_text(out / RESULT_NAME, json.dumps(record, indent=2))
    dist.barrier()  # every rank returns once the run is complete on disk
    return result

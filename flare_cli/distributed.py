"""Multi-process training plumbing for `flare train`, on accelerate (DDP, or FSDP2 from a config).

`flare train` runs unchanged under ``torchrun --nproc_per_node N`` and ``accelerate launch``: both
set ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK``, and ``Dist.from_env()`` then builds an
``accelerate.Accelerator`` (gloo on CPU, NCCL on CUDA) that wraps the model in DDP, or shards it
with FSDP2 when ``accelerate launch`` was given an FSDP config (examples/accelerate/fsdp.yaml). A
single process (no ``WORLD_SIZE`` or 1) gets a ``Dist`` whose every method is a no-op, and
accelerate is never imported: the single-process path is exactly the code it was before.

Gradients are averaged by the engine (DDP's bucketed all-reduce, FSDP's reduce-scatter), never by
hand; this module only adds what a training *recipe* needs around it: which rank writes files,
barriers, summing a few scalars across ranks, and (FSDP) the full adapter and optimizer state
gathered for a checkpoint and put back into shards on resume. On disk a checkpoint is the same
whatever the engine: full tensors, so a run may resume under another engine or process count.
"""

from __future__ import annotations

import contextlib
import os
from typing import Optional

from flare_cli.errors import ConfigError


def world_size_from_env() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def is_main_process() -> bool:
    """Rank 0 (or a single process): the one that prints and writes files."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("true", "1", "yes")


def sharded_engine() -> Optional[str]:
    """"FSDP" or "DeepSpeed" when `accelerate launch` was given such a config (it says so in the
    environment), else None (DDP or one process)."""
    if _env_flag("ACCELERATE_USE_DEEPSPEED"):
        return "DeepSpeed"
    if _env_flag("ACCELERATE_USE_FSDP"):
        return "FSDP"
    return None


def check_engine_settings() -> None:
    """Refuse, in one line and before accelerate starts, the sharded settings this recipe cannot run."""
    engine = sharded_engine()
    if engine == "DeepSpeed":
        # accelerate runs DeepSpeed on accelerators only (never on CPU, so nothing here could test
        # it), and its engine takes over backward, accumulation and the optimizer step
        raise ConfigError(
            "flare train does not run under DeepSpeed (its engine would own the backward pass, gradient "
            "accumulation and the optimizer step of the FLARE recipe, an untested path); shard a large base with "
            "FSDP2 (examples/accelerate/fsdp.yaml) or use DDP (examples/accelerate/ddp.yaml)"
        )
    if engine == "FSDP":
        version = os.environ.get("FSDP_VERSION", "1").strip()
        if version != "2":
            raise ConfigError(
                f"flare train runs FSDP2 only; the accelerate config asks for fsdp_version {version} (FSDP1 keeps "
                "flat parameters that mix the frozen base with the adapter): set fsdp_version: 2, as in "
                "examples/accelerate/fsdp.yaml"
            )
        if _env_flag("FSDP_CPU_RAM_EFFICIENT_LOADING"):
            raise ConfigError(
                "fsdp_cpu_ram_efficient_loading: true is not supported by flare train (ranks other than 0 would "
                "hold an empty base while the adapter is built and the base fingerprinted); set it to false"
            )
        if _env_flag("FSDP_ACTIVATION_CHECKPOINTING"):
            raise ConfigError(
                "fsdp_activation_checkpointing: true is not supported by flare train; set it to false and pass "
                "--gradient-checkpointing (FLARE's own checkpointing keeps each forward's pivot)"
            )


class Dist:
    """A single process: rank 0 of 1; every collective is the identity."""

    world_size = 1
    rank = 0
    is_main = True
    device = None  # the caller picks its device as before
    name = "single"  # what ran: single, DDP or FSDP2 (recorded in train_result.json)

    sharded = False  # FSDP: parameters are DTensor shards; state must be gathered to be saved

    @staticmethod
    def from_env() -> "Dist":
        if world_size_from_env() > 1:
            check_engine_settings()
            return AccelerateDist()
        return Dist()

    def prepare(self, model, optimizer):
        """(model that training forwards and backwards go through, optimizer): DDP wraps the model;
        FSDP2 shards it in place and points the optimizer at the shards. The optimizer is built
        on the unwrapped model's trainable parameters first."""
        return model, optimizer

    # -- checkpoints: full tensors on disk, whatever the engine ------------------------------
    def adapter_state_dict(self, fm) -> Optional[dict]:
        """The adapter's tensors (model keys, as ``peft_model.state_dict()`` names them) gathered
        in full, for ``save_pretrained(state_dict=...)``; None: peft reads the model itself.
        Collective under FSDP: every rank calls it, rank 0 writes."""
        return None

    def optimizer_state_dict(self, optimizer) -> dict:
        """``optimizer.state_dict()`` with full tensors (collective under FSDP)."""
        return optimizer.state_dict()

    def load_adapter_state_dict(self, fm, saved: dict) -> None:
        """Put a saved adapter (peft's keys, full tensors) into the model."""
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(fm.peft_model, saved)

    def load_optimizer_state_dict(self, optimizer, saved: dict) -> None:
        optimizer.load_state_dict(saved)

    def no_sync(self, wrapped):
        """Skip the gradient all-reduce (all but the last micro-batch of an accumulation group)."""
        return contextlib.nullcontext()

    def barrier(self) -> None:
        pass

    def sum(self, *values: float) -> tuple[float, ...]:
        """Element-wise sum of a few Python numbers across ranks (float64)."""
        return tuple(values)

    def clip_grad_norm_(self, wrapped, params, max_norm: float):
        import torch

        return torch.nn.utils.clip_grad_norm_(params, max_norm)


class AccelerateDist(Dist):
    """N processes launched by torchrun or accelerate launch; accelerate owns the process group."""

    def __init__(self) -> None:
        import torch
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, DistributedType

        from flare_cli.errors import ModelError

        # cpu=True on a machine without CUDA: accelerate only sets up gloo for torchrun-launched
        # CPU processes when told so (accelerate launch --cpu says it through ACCELERATE_USE_CPU).
        # The rotary-embedding buffers of a decoder are constants: no per-forward buffer broadcast
        # (it would also make DDP forwards collective, so ranks could not validate different shards).
        self.accelerator = Accelerator(
            cpu=not torch.cuda.is_available(),
            kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
        )
        if self.accelerator.num_processes != world_size_from_env():
            # never let N processes each train the whole run on their own and race on the files
            raise ModelError(
                f"WORLD_SIZE is {world_size_from_env()} but accelerate set up {self.accelerator.num_processes} "
                f"process(es) ({self.accelerator.distributed_type}); launch with torchrun or accelerate launch"
            )
        if sharded_engine() == "FSDP" and self.accelerator.distributed_type == DistributedType.MULTI_CPU:
            # accelerate turns an FSDP config into FSDP on accelerators only and falls back to
            # DDP on CPU; FSDP2 itself shards over gloo, so CPU processes (the test suite) get the
            # same accelerate FSDP2 path (plugin from the launcher's environment) as GPUs do
            from accelerate.utils import FullyShardedDataParallelPlugin

            self.accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()
            self.accelerator.state.distributed_type = DistributedType.FSDP
        kind = str(self.accelerator.distributed_type).split(".")[-1]
        if not (kind.startswith("MULTI_") or self.accelerator.is_fsdp2):
            raise ConfigError(
                f"flare train runs DDP or FSDP2; accelerate set up {kind}. Use examples/accelerate/ddp.yaml, "
                "examples/accelerate/fsdp.yaml or torchrun"
            )
        self.sharded = self.accelerator.is_fsdp2
        self.world_size = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        self.is_main = self.accelerator.is_main_process
        self.device = self.accelerator.device
        self.name = "FSDP2" if self.sharded else "DDP"

    def prepare(self, model, optimizer):
        if not self.sharded:
            return self.accelerator.prepare_model(model), optimizer
        # accelerate's FSDP2 recipe: fully_shard every decoder layer (the config's
        # fsdp_transformer_layer_cls_to_wrap) and the root, then swap the optimizer onto the shards
        _check_layer_classes(self.accelerator.state.fsdp_plugin, model)
        model, prepared = self.accelerator.prepare(model, optimizer)
        return model, getattr(prepared, "optimizer", prepared)  # the torch optimizer inside accelerate's wrapper

    def no_sync(self, wrapped):
        return self.accelerator.no_sync(wrapped)

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def sum(self, *values: float) -> tuple[float, ...]:
        import torch

        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        return tuple(float(v) for v in self.accelerator.reduce(tensor, reduction="sum"))

    def clip_grad_norm_(self, wrapped, params, max_norm: float):
        return self.accelerator.clip_grad_norm_(params, max_norm)

    # -- FSDP2: gather for saving, shard on loading ------------------------------------------
    def adapter_state_dict(self, fm) -> Optional[dict]:
        if not self.sharded:
            return None
        model_sd, saved_keys = _adapter_parameters(fm)
        # only the adapter is gathered (a few MB), never the sharded base; same order on every rank
        return {key: _full(value) for key, value in model_sd.items() if key in saved_keys}

    def optimizer_state_dict(self, optimizer) -> dict:
        state = optimizer.state_dict()
        if not self.sharded:
            return state
        for index in sorted(state["state"]):
            state["state"][index] = {k: _full(v) for k, v in state["state"][index].items()}
        return state

    def load_adapter_state_dict(self, fm, saved: dict) -> None:
        if not self.sharded:
            return super().load_adapter_state_dict(fm, saved)
        import torch
        from peft.utils import get_peft_model_state_dict

        live = get_peft_model_state_dict(fm.peft_model, state_dict=fm.peft_model.state_dict(keep_vars=True))
        if set(saved) != set(live):
            missing = sorted(set(live) - set(saved)) or sorted(set(saved) - set(live))
            raise ValueError(f"adapter tensors do not match the model ({missing[0]}, ...)")
        with torch.no_grad():
            for key, param in live.items():
                _copy_into(param, saved[key])

    def load_optimizer_state_dict(self, optimizer, saved: dict) -> None:
        if self.sharded:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            saved = {**saved, "state": {
                index: {k: _shard_like(v, params[int(index)]) for k, v in entry.items()}
                for index, entry in saved["state"].items()
            }}
        optimizer.load_state_dict(saved)


def _check_layer_classes(plugin, fm) -> None:
    """fsdp_transformer_layer_cls_to_wrap must name classes of this base (accelerate would raise a
    traceback); left out, it defaults to the base's decoder layer class (one FSDP unit per layer)."""
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    from flare_cli.flare.pivot import find_decoder_layers

    if plugin.auto_wrap_policy is not transformer_auto_wrap_policy:
        return  # size-based or no auto wrap: accelerate's own choice
    layer_class = type(find_decoder_layers(fm.base_model)[0]).__name__
    names = plugin.transformer_cls_names_to_wrap
    if not names:
        plugin.transformer_cls_names_to_wrap = [layer_class]
        return
    present = {type(module).__name__ for module in fm.modules()}
    for name in names:
        if name not in present:
            raise ConfigError(
                f"fsdp_transformer_layer_cls_to_wrap {name} is not a module class of this base (its layers are "
                f"{layer_class}); set fsdp_transformer_layer_cls_to_wrap: {layer_class} in the accelerate config"
            )


def _adapter_parameters(fm) -> tuple[dict, set]:
    """(the peft model's state dict with live tensors, the model keys peft saves as the adapter)."""
    from peft.utils import get_peft_model_state_dict

    model_sd = fm.peft_model.state_dict(keep_vars=True)
    # peft's own selection (and renaming) of what an adapter file holds, matched back by identity
    chosen = {id(v) for v in get_peft_model_state_dict(fm.peft_model, state_dict=model_sd).values()}
    return model_sd, {key for key, value in model_sd.items() if id(value) in chosen}


def _full(value):
    """A DTensor shard gathered to the full CPU tensor (collective); anything else as it is."""
    from torch.distributed.tensor import DTensor

    if isinstance(value, DTensor):
        return value.full_tensor().detach().cpu()
    return value.detach().cpu() if hasattr(value, "detach") else value


def _shard_like(value, param):
    """A full tensor of ``param``'s shape cut into this rank's shard of ``param`` (no communication:
    every rank read the same file); scalars (Adam's step) and non-sharded params pass through."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(param, DTensor) and hasattr(value, "shape") and tuple(value.shape) == tuple(param.shape):
        return distribute_tensor(value.to(param.device), param.device_mesh, param.placements,
                                 src_data_rank=None)
    return value


def _copy_into(param, value) -> None:
    from torch.distributed.tensor import DTensor

    if tuple(value.shape) != tuple(param.shape):
        raise ValueError(f"adapter tensor has shape {tuple(value.shape)}, the model expects {tuple(param.shape)}")
    if isinstance(param, DTensor):
        param.copy_(_shard_like(value.to(param.dtype), param))
    else:
        param.copy_(value.to(param.device, param.dtype))


def shard(items: list, rank: int, world_size: int) -> Optional[list]:
    """Rank ``rank``'s share of ``items`` (round robin); ``None`` when it gets nothing."""
    mine = items[rank::world_size]
    return mine or None

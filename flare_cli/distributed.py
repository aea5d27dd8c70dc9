"""Multi-process training plumbing for `flare train`, on accelerate (DDP, or FSDP from a config).

`flare train` runs unchanged under ``torchrun --nproc_per_node N`` and ``accelerate launch``: both
set ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK``, and ``Dist.from_env()`` then builds an
``accelerate.Accelerator`` (gloo on CPU, NCCL on CUDA) that wraps the model in DDP (or FSDP when
``accelerate launch`` was given an FSDP config). A single process (no ``WORLD_SIZE`` or 1) gets a
``Dist`` whose every method is a no-op, and accelerate is never imported: the single-process path
is exactly the code it was before.

Gradients are averaged by the engine (DDP's bucketed all-reduce), never by hand; this module only
adds what a training *recipe* needs around it: which rank writes files, barriers, summing a few
scalars (validation loss, logged train loss) across ranks.
"""

from __future__ import annotations

import contextlib
import os
from typing import Optional


def world_size_from_env() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def is_main_process() -> bool:
    """Rank 0 (or a single process): the one that prints and writes files."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def refuse_sharded_engines() -> None:
    """FSDP and DeepSpeed (what `accelerate launch` with an FSDP/DeepSpeed config asks for, said in
    the environment) are refused in one line before accelerate starts: they shard the weights and
    the optimizer, and this recipe does not gather either for checkpoints, the final adapter or
    resume (docs/performance.md, "FSDP and DeepSpeed")."""
    from flare_cli.errors import ConfigError

    for engine, variable in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED")):
        if os.environ.get(variable, "false").lower() == "true":
            raise ConfigError(
                f"flare train does not run under {engine} yet (it would not gather the sharded adapter and "
                "optimizer for checkpoints and resume); use DDP (examples/accelerate/ddp.yaml) with "
                "--load-in-4bit, or one process with --device-map auto"
            )


class Dist:
    """A single process: rank 0 of 1; every collective is the identity."""

    world_size = 1
    rank = 0
    is_main = True
    device = None  # the caller picks its device as before
    name = "single"

    @staticmethod
    def from_env() -> "Dist":
        if world_size_from_env() > 1:
            refuse_sharded_engines()
            return AccelerateDist()
        return Dist()

    def wrap(self, model):
        """The model that training forwards and backwards go through (DDP/FSDP-wrapped if any)."""
        return model

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

    name = "accelerate"

    def __init__(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        # The rotary-embedding buffers of a decoder are constants: no per-forward buffer broadcast
        # (it would also make DDP forwards collective, so ranks could not validate different shards).
        import torch

        from flare_cli.errors import ConfigError, ModelError

        # cpu=True on a machine without CUDA: accelerate only sets up gloo for torchrun-launched
        # CPU processes when told so (accelerate launch --cpu says it through ACCELERATE_USE_CPU).
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
        kind = str(self.accelerator.distributed_type).split(".")[-1]
        if not kind.startswith("MULTI_"):
            # FSDP / DeepSpeed shard the weights: checkpoints, the final adapter and resume would
            # need gathered state dicts on every rank, which this recipe does not do yet.
            raise ConfigError(
                f"flare train runs data-parallel (DDP) only; accelerate set up {kind}. Use "
                "examples/accelerate/ddp.yaml (or torchrun); docs/performance.md says what FSDP still needs"
            )
        self.world_size = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        self.is_main = self.accelerator.is_main_process
        self.device = self.accelerator.device
        self.name = str(self.accelerator.distributed_type).split(".")[-1]

    def wrap(self, model):
        return self.accelerator.prepare_model(model)

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


def shard(items: list, rank: int, world_size: int) -> Optional[list]:
    """Rank ``rank``'s share of ``items`` (round robin); ``None`` when it gets nothing."""
    mine = items[rank::world_size]
    return mine or None

"""Pretrain the tiny Llama base on the toy corpus (world building, not the product's train stage)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class BaseSettings:
    hidden: int = 64
    layers: int = 4
    heads: int = 4
    ffn: int = 192
    init_std: float = 0.1  # toyworld.md: the default 0.02 learns far slower at this size
    steps: int = 1000
    batch: int = 32
    seq_len: int = 128
    lr: float = 3e-3
    warmup: int = 50


def train_threads() -> int:
    """Two threads on an idle 2-core machine; one when the cores are busy, where two threads
    spin-wait on each other and run several times slower than one. (Weights therefore are not
    bit-identical across machines and loads; the generated text and data are.)"""
    import os

    cores = os.cpu_count() or 1
    return 1 if os.getloadavg()[0] > cores - 1 else min(2, cores)


@contextmanager
def restored_threads():
    """Training re-picks torch's thread count; give the caller's back afterwards."""
    import torch

    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)


def lr_at(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak (as a multiplier)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def pack(documents: Iterator[str], tokenizer, blocks: int, seq_len: int):
    """`blocks` rows of `seq_len` tokens holding whole documents, each ending in EOS, padded at the
    end (labels -100 there). Whole documents matter: a QA document cut between its context and
    its answer teaches nothing, and with plain concatenation about half of them were cut.
    No BOS: the tokenizer adds none, so prompts at train/eval time look like a document start."""
    import torch

    input_ids = torch.full((blocks, seq_len), tokenizer.pad_token_id)
    labels = torch.full((blocks, seq_len), -100)
    row, used = 0, 0
    while row < blocks:
        batch = [next(documents) for _ in range(512)]
        for ids in tokenizer(batch, add_special_tokens=False).input_ids:
            ids = (ids + [tokenizer.eos_token_id])[:seq_len]
            if used + len(ids) > seq_len:
                row, used = row + 1, 0
                if row == blocks:
                    break
            input_ids[row, used : used + len(ids)] = torch.tensor(ids)
            labels[row, used : used + len(ids)] = torch.tensor(ids)
            used += len(ids)
    return input_ids, labels


def pretrain(
    out_dir: Path, tokenizer, documents: Iterator[str], settings: BaseSettings, seed: int, progress: Progress | None
) -> float:
    """Train a LlamaForCausalLM from scratch, save it (safetensors) with the tokenizer; returns the
    mean loss of the last 10% of steps."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden,
        intermediate_size=settings.ffn,
        num_hidden_layers=settings.layers,
        num_attention_heads=settings.heads,
        num_key_value_heads=settings.heads,
        max_position_embeddings=512,
        initializer_range=settings.init_std,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    inputs, targets = pack(documents, tokenizer, settings.steps * settings.batch, settings.seq_len)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.01, betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, settings.steps, settings.warmup))
    model.train()
    tail: list[float] = []
    for step in range(settings.steps):
        if step % 50 == 0:  # other jobs come and go on a shared machine
            torch.set_num_threads(train_threads())
        rows = slice(step * settings.batch, (step + 1) * settings.batch)
        loss = model(input_ids=inputs[rows], labels=targets[rows]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= settings.steps * 0.9:
            tail.append(loss.item())
        if progress and (step % 10 == 0 or step == settings.steps - 1):
            progress("pretrain base", step + 1, settings.steps)
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return sum(tail) / len(tail)

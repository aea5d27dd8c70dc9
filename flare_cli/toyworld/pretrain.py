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
    # Instruction tuning after pretraining: English task prompts, loss on the answers only. It plays
    # the instruction-tuned release of a large model (strong in English, weak in the target
    # language): pretraining alone left English QA at EM ~0.08 (docs/toyworld.md).
    instruct_steps: int = 5000
    instruct_batch: int = 32
    instruct_lr: float = 3e-3


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


def answer_only_batch(tokenizer, examples: list[tuple[str, str]]):
    """Right-padded (input_ids, attention_mask, labels) of prompt + answer + EOS, labels on the answer."""
    import torch

    ids, labels = [], []
    for prompt, answer in examples:
        prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
        answer_ids = tokenizer(answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        ids.append(prompt_ids + answer_ids)
        labels.append([-100] * len(prompt_ids) + answer_ids)
    width = max(map(len, ids))
    input_ids = torch.full((len(ids), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    targets = torch.full((len(ids), width), -100)
    for row, (seq, lab) in enumerate(zip(ids, labels)):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        targets[row, : len(lab)] = torch.tensor(lab)
    return input_ids, mask, targets


def _train(model, batches: Callable[[int], tuple], steps: int, lr: float, warmup: int, label: str, progress) -> float:
    """AdamW with warm-up and cosine decay over `steps`; returns the mean loss of the last 10%."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, steps, warmup))
    model.train()
    tail: list[float] = []
    for step in range(steps):
        if step % 50 == 0:  # other jobs come and go on a shared machine
            torch.set_num_threads(train_threads())
        input_ids, mask, labels = batches(step)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= steps * 0.9:
            tail.append(loss.item())
        if progress and (step % 10 == 0 or step == steps - 1):
            progress(label, step + 1, steps)
    model.eval()
    return sum(tail) / max(1, len(tail))


def pretrain(
    out_dir: Path,
    tokenizer,
    documents: Iterator[str],
    settings: BaseSettings,
    seed: int,
    progress: Progress | None,
    instructions: Iterator[tuple[str, str]] | None = None,
) -> dict[str, float]:
    """Train a LlamaForCausalLM from scratch on `documents`, then instruction-tune it on
    `instructions` ((prompt, answer) pairs); save it (safetensors) with the tokenizer. Returns the
    mean loss of the last 10% of each phase's steps."""
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

    def blocks(step: int):
        rows = slice(step * settings.batch, (step + 1) * settings.batch)
        return inputs[rows], None, targets[rows]

    losses = {"pretrain_loss": _train(model, blocks, settings.steps, settings.lr, settings.warmup, "pretrain base", progress)}
    if instructions is not None and settings.instruct_steps:
        losses["instruct_loss"] = _train(
            model,
            lambda step: answer_only_batch(tokenizer, [next(instructions) for _ in range(settings.instruct_batch)]),
            settings.instruct_steps,
            settings.instruct_lr,
            settings.warmup,
            "instruction-tune base",
            progress,
        )
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return losses

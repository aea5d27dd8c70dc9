"""Turning task rows into token tensors for training: answer-only labels and the prompt mask.

Prompts longer than ``max_length`` keep their first token (BOS) and their *end*, so the template
tail ("Answer:") that end-alignment relies on always survives truncation.

FLARE-MT examples also carry the target prompt in MT-encoder tokens (``mt_ids``, first token the
target language's code); only ids are made here: the encoder runs batched in the model forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

IGNORE = -100


def encode_prompt(tokenizer, text: str, max_length: int) -> list[int]:
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    if len(ids) <= max_length:
        return ids
    keep_bos = tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id
    return ([ids[0]] + ids[-(max_length - 1):]) if keep_bos else ids[-max_length:]


def encode_answer(tokenizer, answer: str, max_answer_length: int = 64) -> list[int]:
    ids = tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"][:max_answer_length]
    return ids + [tokenizer.eos_token_id]


@dataclass
class Example:
    input_ids: list[int]
    prompt_len: int
    pivot_ids: Optional[list[int]] = None
    mt_ids: Optional[list[int]] = None


def build_examples(
    tokenizer, task, rows: Sequence[dict], method: str, max_length: int, *, mt_encoder=None, lang: Optional[str] = None,
    family: str = "decoder",
) -> list[Example]:
    """``mt_encoder`` (an ``MTEncoder``) and ``lang`` (the target language) are for ``flare-mt``.
    ``family="encoder"`` builds an encoder's examples instead (flare_cli/encoder_tasks.py)."""
    if family == "encoder":
        from flare_cli.encoder_tasks import build_encoder_examples

        return build_encoder_examples(tokenizer, task, rows, method, max_length)
    mt_ids: list = [None] * len(rows)
    if method == "flare-mt":
        if mt_encoder is None or lang is None:
            raise ValueError("flare-mt examples need mt_encoder= and lang=")
        mt_ids = mt_encoder.encode_texts([task.prompt(row) for row in rows], lang, max_length)
    examples = []
    for row, row_mt_ids in zip(rows, mt_ids):
        if method == "input-fusion":
            prompt = task.input_fusion_prompt(row)
        else:
            prompt = task.prompt(row)
        prompt_ids = encode_prompt(tokenizer, prompt, max_length * (2 if method == "input-fusion" else 1))
        answer_ids = encode_answer(tokenizer, task.target(row))
        pivot_ids = encode_prompt(tokenizer, task.prompt(row, pivot=True), max_length) if method in ("flare",) else None
        examples.append(Example(prompt_ids + answer_ids, len(prompt_ids), pivot_ids, row_mt_ids))
    return examples


def collate(examples: Sequence[Example], pad_id: int):
    """Right-padded target (ids, mask, labels on answers only, prompt mask), pivot and MT tensors.
    Encoder examples get their own batch (labels or start/end positions; no prompt mask)."""
    import torch

    from flare_cli.encoder_tasks import EncoderExample, collate_encoder

    if examples and isinstance(examples[0], EncoderExample):
        return collate_encoder(examples, pad_id)

    L = max(len(e.input_ids) for e in examples)
    B = len(examples)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    mask = torch.zeros(B, L, dtype=torch.long)
    labels = torch.full((B, L), IGNORE, dtype=torch.long)
    prompt = torch.zeros(B, L, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        mask[i, :n] = 1
        labels[i, e.prompt_len:n] = ids[i, e.prompt_len:n]
        prompt[i, : e.prompt_len] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels, "prompt_mask": prompt}
    if examples[0].pivot_ids is not None:
        Ls = max(len(e.pivot_ids) for e in examples)
        piv = torch.full((B, Ls), pad_id, dtype=torch.long)
        pmask = torch.zeros(B, Ls, dtype=torch.long)
        for i, e in enumerate(examples):
            piv[i, : len(e.pivot_ids)] = torch.tensor(e.pivot_ids)
            pmask[i, : len(e.pivot_ids)] = 1
        batch.update(pivot_input_ids=piv, pivot_attention_mask=pmask)
    if examples[0].mt_ids is not None:
        # padded with 0: the MT encoder puts its own pad id under the mask (M2M100 counts positions from it)
        Lm = max(len(e.mt_ids) for e in examples)
        mt = torch.zeros(B, Lm, dtype=torch.long)
        mmask = torch.zeros(B, Lm, dtype=torch.long)
        for i, e in enumerate(examples):
            mt[i, : len(e.mt_ids)] = torch.tensor(e.mt_ids)
            mmask[i, : len(e.mt_ids)] = 1
        batch.update(mt_input_ids=mt, mt_attention_mask=mmask)
    return batch

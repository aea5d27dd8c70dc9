"""Turning task rows into token tensors for training: answer-only labels and the prompt mask.

Prompts longer than ``max_length`` keep their first token (BOS) and their *end*, so the template
tail ("Answer:") that end-alignment relies on always survives truncation. Truncation is never
silent: each Example says whether its prompt was cut and whether the gold answer span was cut
away with it, and ``truncation_report`` sums that up for train/eval output and logs.

FLARE-MT examples also carry the target prompt in MT-encoder tokens (``mt_ids``, first token the
target language's code); only ids are made here: the encoder runs batched in the model forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

IGNORE = -100


def encode_prompt(tokenizer, text: str, max_length: int) -> list[int]:
    return truncate_ids(tokenizer, tokenizer(text, add_special_tokens=True)["input_ids"], max_length)


def truncate_ids(tokenizer, ids: list[int], max_length: int) -> list[int]:
    """The first token when it is BOS, then the last ``max_length - 1`` (or the last ``max_length``)."""
    if len(ids) <= max_length:
        return ids
    keep_bos = tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id
    return ([ids[0]] + ids[-(max_length - 1):]) if keep_bos else ids[-max_length:]


def answer_offset(task, row: dict, prompt: str) -> Optional[int]:
    """Character offset in ``prompt`` where the gold answer span starts, for free-text tasks whose
    answer is a span of an input field (QA); None when there is none to find."""
    if getattr(task, "labels", None):
        return None  # label words are not spans of the input
    answer = row.get(task.gold_field)
    if not isinstance(answer, str) or not answer.strip():
        return None
    for field in task.input_fields:
        text = row.get(field)
        if not isinstance(text, str):
            continue
        start = row.get("answer_start")
        if not (isinstance(start, int) and text[start : start + len(answer)] == answer):
            start = text.find(answer)
        if start >= 0:
            where = prompt.rfind(text)  # rfind: the target copy in an input-fusion prompt
            return where + start if where >= 0 else None
    return None


def answer_survives(tokenizer, prompt: str, offset: int, kept_tokens: int) -> bool:
    """Whether the prompt's last ``kept_tokens`` tokens still hold the answer starting at ``offset``."""
    tail = tokenizer(prompt[offset:], add_special_tokens=False)["input_ids"]
    return len(tail) <= kept_tokens


def prompt_truncation(tokenizer, task, row: dict, prompt: str, max_length: int) -> tuple[list[int], bool, bool]:
    """(ids, truncated, answer_cut) for one prompt cut to ``max_length`` tokens as encode_prompt does."""
    full = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    ids = truncate_ids(tokenizer, full, max_length)
    truncated = len(ids) < len(full)
    answer_cut = False
    if truncated:
        offset = answer_offset(task, row, prompt)
        keep_bos = tokenizer.bos_token_id is not None and full[0] == tokenizer.bos_token_id
        answer_cut = offset is not None and not answer_survives(tokenizer, prompt, offset, max_length - keep_bos)
    return ids, truncated, answer_cut


def truncation_report(max_length: Optional[int], examples: Sequence, *, limit: int = 10) -> dict:
    """``{"max_length", "n", "n_truncated", "n_answer_cut", "answer_cut_ids"}`` over examples that
    carry ``truncated``/``answer_cut``/``row_id`` (Example, or the eval-side records)."""
    truncated = [e for e in examples if e.truncated]
    cut = [e.row_id for e in examples if e.answer_cut]
    return {
        "max_length": max_length,
        "n": len(examples),
        "n_truncated": len(truncated),
        "n_pivot_truncated": sum(bool(getattr(e, "pivot_truncated", False)) for e in examples),
        "n_answer_cut": len(cut),
        "answer_cut_ids": cut[:limit],
    }


def encode_answer(tokenizer, answer: str, max_answer_length: int = 64) -> list[int]:
    ids = tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"][:max_answer_length]
    return ids + [tokenizer.eos_token_id]


@dataclass
class Example:
    input_ids: list[int]
    prompt_len: int
    pivot_ids: Optional[list[int]] = None
    mt_ids: Optional[list[int]] = None
    row_id: Optional[str] = None
    truncated: bool = False  # the prompt lost tokens (its start) to max_length
    answer_cut: bool = False  # ... and the gold answer span with them
    pivot_truncated: bool = False


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
        limit = max_length * (2 if method == "input-fusion" else 1)
        prompt_ids, truncated, answer_cut = prompt_truncation(tokenizer, task, row, prompt, limit)
        answer_ids = encode_answer(tokenizer, task.target(row))
        pivot_ids, pivot_truncated = None, False
        if method == "flare":
            pivot_prompt = task.prompt(row, pivot=True)
            pivot_ids = encode_prompt(tokenizer, pivot_prompt, max_length)
            pivot_truncated = len(pivot_ids) < len(tokenizer(pivot_prompt, add_special_tokens=True)["input_ids"])
        examples.append(Example(prompt_ids + answer_ids, len(prompt_ids), pivot_ids, row_mt_ids,
                                str(row.get("id")), truncated, answer_cut, pivot_truncated))
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

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

from flare_cli.methods import method_of

IGNORE = -100
# One truncation policy for training and eval: a prompt over budget loses its start (BOS kept).
TRUNCATION_SIDE = "left"
MT_MAX_LENGTH = 1024  # FLARE-MT without a prompt budget: MT-encoder tokens kept (the language tag and the end)


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
    input_ids: list[int]  # the prompt's ids, then (training) the answer's
    prompt_len: int
    pivot_ids: Optional[list[int]] = None
    mt_ids: Optional[list[int]] = None
    row_id: Optional[str] = None
    truncated: bool = False  # the prompt lost tokens (its start) to max_length
    answer_cut: bool = False  # ... and the gold answer span with them
    pivot_truncated: bool = False


def method_texts(task, row: dict, method) -> tuple[str, Optional[str]]:
    """(prompt, English pivot prompt or None) that ``method`` (a name or a methods.Method) reads for ``row``."""
    method = method_of(method) if isinstance(method, str) else method
    if method.prompt == "fused":
        prompt = task.input_fusion_prompt(row)
    else:
        prompt = task.prompt(row, pivot=method.prompt == "pivot")
    pivot = task.prompt(row, pivot=True) if method.side_input == "pivot" else None
    return prompt, pivot


def truncation_meta(max_length: int) -> dict:
    """What `flare train` records in flare_config.json's meta so `flare eval` cuts prompts the same way."""
    return {"max_length": max_length, "truncation_side": TRUNCATION_SIDE}


def recorded_max_length(meta: dict) -> Optional[int]:
    """The prompt budget an adapter was trained with (None when not recorded: no cut at eval)."""
    side = meta.get("truncation_side", TRUNCATION_SIDE)
    if side != TRUNCATION_SIDE:
        from flare_cli.errors import ConfigError

        raise ConfigError(f"the adapter was trained with truncation_side {side!r}; this flare_cli cuts {TRUNCATION_SIDE!r}")
    return meta.get("max_length")


def encode_inputs(
    tokenizer, task, rows: Sequence[dict], method, max_length: Optional[int], *, mt_encoder=None,
    lang: Optional[str] = None,
) -> list[Example]:
    """The model inputs of ``rows`` under ``method``, for training and eval alike: prompt ids (cut to
    ``max_length`` times the method's prompt_length_factor, BOS kept, the end kept), the English
    pivot prompt's ids (FLARE, cut to ``max_length``) and the target prompt in MT-encoder ids
    (FLARE-MT, cut to ``max_length`` or MT_MAX_LENGTH). ``max_length`` None cuts nothing."""
    method = method_of(method) if isinstance(method, str) else method
    texts = [method_texts(task, row, method) for row in rows]
    mt_ids: list = [None] * len(rows)
    if method.reads_mt:
        if mt_encoder is None or lang is None:
            raise ValueError("flare-mt inputs need mt_encoder= and lang=")
        mt_ids = mt_encoder.encode_texts([prompt for prompt, _ in texts], lang, max_length or MT_MAX_LENGTH)
    examples = []
    for row, (prompt, pivot), row_mt_ids in zip(rows, texts, mt_ids):
        if max_length is None:
            prompt_ids, truncated, answer_cut = tokenizer(prompt, add_special_tokens=True)["input_ids"], False, False
        else:
            limit = max_length * method.prompt_length_factor
            prompt_ids, truncated, answer_cut = prompt_truncation(tokenizer, task, row, prompt, limit)
        pivot_ids, pivot_truncated = None, False
        if pivot is not None:
            full = tokenizer(pivot, add_special_tokens=True)["input_ids"]
            pivot_ids = full if max_length is None else truncate_ids(tokenizer, full, max_length)
            pivot_truncated = len(pivot_ids) < len(full)
        examples.append(Example(prompt_ids, len(prompt_ids), pivot_ids, row_mt_ids, str(row.get("id")),
                                truncated, answer_cut, pivot_truncated))
    return examples


def build_examples(
    tokenizer, task, rows: Sequence[dict], method: str, max_length: int, *, mt_encoder=None, lang: Optional[str] = None,
    family: str = "decoder",
) -> list[Example]:
    """Training examples: ``encode_inputs`` plus the answer (labels). ``mt_encoder`` (an
    ``MTEncoder``) and ``lang`` (the target language) are for ``flare-mt``.
    ``family="encoder"`` builds an encoder's examples instead (flare_cli/encoder_tasks.py)."""
    if family == "encoder":
        from flare_cli.encoder_tasks import build_encoder_examples

        return build_encoder_examples(tokenizer, task, rows, method, max_length)
    examples = encode_inputs(tokenizer, task, rows, method, max_length, mt_encoder=mt_encoder, lang=lang)
    for row, example in zip(rows, examples):
        example.input_ids = example.input_ids + encode_answer(tokenizer, task.target(row))
    return examples


def pad(rows: Sequence[Sequence[int]], pad_value: int, side: str = "right"):
    """(ids, mask) of ``rows`` padded with ``pad_value`` on ``side`` (right for training, left for
    generation, which continues from the last column)."""
    import torch

    if side not in ("right", "left"):
        raise ValueError(f"padding side must be 'right' or 'left', not {side!r}")
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), pad_value, dtype=torch.long)
    mask = torch.zeros(len(rows), L, dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(L - len(r), L) if side == "left" else slice(0, len(r))
        ids[i, span] = torch.tensor(list(r), dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def collate(examples: Sequence[Example], pad_id: int, padding_side: str = "right"):
    """Padded target (ids, mask, labels on answers only, prompt mask), pivot and MT tensors; right
    padding for training, left for generation. Encoder examples get their own batch (labels or
    start/end positions; no prompt mask)."""
    import torch

    from flare_cli.encoder_tasks import EncoderExample, collate_encoder

    if examples and isinstance(examples[0], EncoderExample):
        return collate_encoder(examples, pad_id)

    ids, mask = pad([e.input_ids for e in examples], pad_id, padding_side)
    L = ids.shape[1]
    labels = torch.full_like(ids, IGNORE)
    prompt = torch.zeros_like(ids)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        first = L - n if padding_side == "left" else 0
        labels[i, first + e.prompt_len : first + n] = ids[i, first + e.prompt_len : first + n]
        prompt[i, first : first + e.prompt_len] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels, "prompt_mask": prompt}
    if examples[0].pivot_ids is not None:
        piv, pmask = pad([e.pivot_ids for e in examples], pad_id, padding_side)
        batch.update(pivot_input_ids=piv, pivot_attention_mask=pmask)
    if examples[0].mt_ids is not None:
        # padded with 0: the MT encoder puts its own pad id under the mask (M2M100 counts positions from it)
        mt, mmask = pad([e.mt_ids for e in examples], 0, padding_side)
        batch.update(mt_input_ids=mt, mt_attention_mask=mmask)
    return batch

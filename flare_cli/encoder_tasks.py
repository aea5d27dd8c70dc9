"""Encoder tasks (XLM-R and kin): examples, batches and predictions for a classification or span head.

An encoder reads the task's input fields as a sentence pair, not the decoders' English prompt
template: NLI is (premise, hypothesis), sentiment is (text), extractive QA is (question, context).
The English pivot is the same pair built from the ``pivot_*`` columns.

- Classification (nli, sentiment, custom with labels): one example per row, ``labels`` = the
  label's index in ``task.labels`` (the head's id2label order), cross-entropy loss.
- Extractive QA: a context longer than the window is split into overlapping windows (HF
  ``return_overflowing_tokens`` with ``stride``); each window is one example with
  ``start_positions``/``end_positions`` on the answer's tokens, or on ``<s>`` (0, 0) when the
  window does not hold the whole answer. At prediction the best span over all windows of a row
  (start logit + end logit, start <= end, at most ``MAX_ANSWER_TOKENS``, inside the context) is
  mapped back to characters of the context through the offset mapping. Window k of the target
  reads window k of the pivot (the last pivot window when the pivot has fewer): the same part of
  the passage, as near as token counts allow.
- Input-level fusion puts the target input and the English input in one sequence (target first;
  for QA the English question joins the target question, the span comes from the target context).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from flare_cli.errors import ConfigError, DataError, ModelError
from flare_cli.methods import ENCODER_METHODS, TRAIN_METHODS, method_of
from flare_cli.tasks.base import PIVOT_PREFIX

MAX_ANSWER_TOKENS = 30  # longest span considered at prediction (SQuAD/TyDiQA practice)
N_BEST = 20  # start and end candidates per window
DEFAULT_MAX_LENGTH = 128  # the paper's max length; eval uses the adapter's training value when recorded


def doc_stride(max_length: int) -> int:
    """Tokens two neighbouring QA windows share."""
    return max(1, max_length // 4)


@dataclass
class EncoderExample:
    """One model input: a row (classification) or one window of a row's context (QA)."""

    input_ids: list[int]
    row: int  # index of the source row
    label: Optional[int] = None  # classification gold (index into task.labels)
    start: Optional[int] = None  # QA gold token positions (0, 0: the answer is not in this window)
    end: Optional[int] = None
    pivot_ids: Optional[list[int]] = None
    offsets: Optional[list] = None  # QA: (char start, char end) in the context per token, None outside it
    # truncation, as encode.truncation_report reads it: a classification input cut to max_length, or a
    # QA question cut to half a window (QA contexts are split into strided windows, never cut)
    truncated: bool = False
    answer_cut: bool = False
    row_id: Optional[str] = None


def is_qa(task) -> bool:
    return getattr(task, "name", None) == "qa"


def _fields(task, row: dict, pivot: bool) -> list[str]:
    return [row[PIVOT_PREFIX + f if pivot else f] for f in task.input_fields]


def pair(task, row: dict, pivot: bool = False) -> tuple[str, Optional[str]]:
    """The (text, text_pair) an encoder reads for ``row``: QA (question, context); one field alone;
    two or more fields as the first and the rest."""
    if is_qa(task):
        prefix = PIVOT_PREFIX if pivot else ""
        return row[prefix + "question"], row[prefix + "context"]
    fields = _fields(task, row, pivot)
    if len(fields) == 1:
        return fields[0], None
    return fields[0], " ".join(fields[1:])


def fused_pair(task, row: dict, sep: str) -> tuple[str, Optional[str]]:
    """Input-level fusion: target input first, then the English input, in one sequence."""
    if is_qa(task):
        return f"{row['question']} {sep} {row[PIVOT_PREFIX + 'question']}", row["context"]
    target = f" {sep} ".join(_fields(task, row, False))
    english = f" {sep} ".join(_fields(task, row, True))
    return target, english


def _answer_span(task, row: dict) -> Optional[tuple[int, int]]:
    """Character span of the gold answer in the context (``answer_start`` if it matches, else the
    first occurrence); None when the answer is not in the context."""
    context, answer = row["context"], str(row.get(task.gold_field) or "").strip()
    if not answer:
        return None
    start = row.get("answer_start")
    if isinstance(start, int) and context[start : start + len(answer)] == answer:
        return start, start + len(answer)
    found = context.find(answer)
    return (found, found + len(answer)) if found >= 0 else None


def _qa_windows(tokenizer, question: str, context: str, max_length: int):
    """[(input_ids, offsets)] of the (question, context) windows; offsets None outside the context."""
    budget = max_length // 2
    q_ids = tokenizer(question, add_special_tokens=False)["input_ids"]
    if len(q_ids) > budget:  # keep room for the context: a question never takes more than half the window
        question = tokenizer.decode(q_ids[:budget])
    enc = tokenizer(
        question, context, truncation="only_second", max_length=max_length, stride=doc_stride(max_length),
        return_overflowing_tokens=True, return_offsets_mapping=True,
    )
    windows = []
    for k, ids in enumerate(enc["input_ids"]):
        sequence = enc.sequence_ids(k)
        offsets = [tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][k], sequence)]
        windows.append((list(ids), offsets))
    return windows


def _token_span(offsets: list, span: tuple[int, int]) -> tuple[int, int]:
    """Token positions of a character span in one window, or (0, 0) when the window lacks part of it."""
    context_tokens = [i for i, o in enumerate(offsets) if o is not None]
    if not context_tokens:
        return 0, 0
    first, last = context_tokens[0], context_tokens[-1]
    if offsets[first][0] > span[0] or offsets[last][1] < span[1]:
        return 0, 0
    start = next(i for i in context_tokens if offsets[i][1] > span[0])
    end = next(i for i in reversed(context_tokens) if offsets[i][0] < span[1])
    return start, max(start, end)


def build_encoder_examples(
    tokenizer, task, rows: Sequence[dict], method: str, max_length: int, *, training: bool = True
) -> list[EncoderExample]:
    """Encoder examples for ``method`` (lora, flare, input-fusion; at eval also zero-shot and
    translate-test). With ``training`` they carry gold; QA rows whose answer is not in the
    context are skipped then (DataError if none is left)."""
    record = method_of(method)
    if not record.encoder_bases:
        takes = ", ".join(m for m in TRAIN_METHODS if m in ENCODER_METHODS)
        raise ConfigError(f"--method {method} is for decoder bases; an encoder base takes {takes}")
    if not tokenizer.is_fast:
        raise ModelError("an encoder base needs a fast tokenizer (offset mapping, overflowing windows)")
    sep = tokenizer.sep_token or ""
    length = max_length * record.prompt_length_factor
    examples: list[EncoderExample] = []
    skipped = 0
    for index, row in enumerate(rows):
        if record.prompt == "fused":
            text, text_pair = fused_pair(task, row, sep)
        else:
            text, text_pair = pair(task, row, pivot=record.prompt == "pivot")
        if is_qa(task):
            span = _answer_span(task, row) if training else None
            if training and span is None:
                skipped += 1
                continue
            windows = _qa_windows(tokenizer, text, text_pair, length)
            question_cut = len(tokenizer(text, add_special_tokens=False)["input_ids"]) > length // 2
            pivots = [ids for ids, _ in _qa_windows(tokenizer, *pair(task, row, pivot=True), max_length)] \
                if record.side_input == "pivot" else None
            for k, (ids, offsets) in enumerate(windows):
                start, end = _token_span(offsets, span) if span else (None, None)
                pivot_ids = pivots[min(k, len(pivots) - 1)] if pivots else None
                examples.append(EncoderExample(ids, index, start=start, end=end, pivot_ids=pivot_ids, offsets=offsets,
                                               truncated=question_cut, row_id=row.get("id")))
        else:
            ids = tokenizer(text, text_pair, truncation=True, max_length=length)["input_ids"]
            truncated = len(tokenizer(text, text_pair)["input_ids"]) > len(ids)
            pivot_ids = None
            if record.side_input == "pivot":
                pivot_ids = tokenizer(*pair(task, row, pivot=True), truncation=True, max_length=max_length)["input_ids"]
            label = task.labels.index(row[task.gold_field]) if training else None
            examples.append(EncoderExample(ids, index, label=label, pivot_ids=pivot_ids, truncated=truncated,
                                           row_id=row.get("id")))
    if training and rows and not examples:
        raise DataError(f"none of the {len(rows)} QA rows has its answer in its context (answer_start or text)")
    return examples


def collate_encoder(examples: Sequence[EncoderExample], pad_id: int) -> dict:
    """Right-padded ids and mask, gold (``labels`` or ``start_positions``/``end_positions``) when the
    examples carry it, and the right-padded pivot."""
    import torch

    from flare_cli.encode import pad

    ids, mask = pad([e.input_ids for e in examples], pad_id)  # right padding: encoders read position 0 (CLS)
    batch = {"input_ids": ids, "attention_mask": mask}
    if examples[0].label is not None:
        batch["labels"] = torch.tensor([e.label for e in examples])
    if examples[0].start is not None:
        batch["start_positions"] = torch.tensor([e.start for e in examples])
        batch["end_positions"] = torch.tensor([e.end for e in examples])
    if examples[0].pivot_ids is not None:
        batch["pivot_input_ids"], batch["pivot_attention_mask"] = pad([e.pivot_ids for e in examples], pad_id)
    return batch


def loss_weight(batch: dict) -> int:
    """How many items a batch's mean loss averages over: answer tokens (decoders), rows or windows (encoders)."""
    labels = batch.get("labels")
    if labels is not None and labels.dim() > 1:
        return int((labels != -100).sum())
    return int(batch["input_ids"].shape[0])


def _best_span(start_logits, end_logits, offsets: list) -> Optional[tuple[float, int, int]]:
    """(score, char start, char end) of the best span of one window, or None if it has no context."""
    import torch

    valid = torch.tensor([o is not None for o in offsets])
    if not bool(valid.any()):
        return None
    neg = torch.finfo(start_logits.dtype).min
    s = start_logits[: len(offsets)].masked_fill(~valid, neg)
    e = end_logits[: len(offsets)].masked_fill(~valid, neg)
    k = min(N_BEST, int(valid.sum()))
    best = None
    for i in s.topk(k).indices.tolist():
        for j in e.topk(k).indices.tolist():
            if offsets[i] is None or offsets[j] is None or j < i or j - i + 1 > MAX_ANSWER_TOKENS:
                continue
            score = float(s[i] + e[j])
            if best is None or score > best[0]:
                best = (score, offsets[i][0], offsets[j][1])
    return best


def predict(
    model, tokenizer, task, rows: Sequence[dict], *, method: str, max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int = 8, progress: Optional[Callable[[int], None]] = None,
) -> list[Optional[str]]:
    """One prediction per row: the argmax label word, or the best answer span's text (None when no
    span fits). ``model`` is a FlareModel for ``flare`` (one no-grad English pass and one target
    pass per batch, fused as in training), else a peft or plain transformers model."""
    import torch

    if not method_of(method).encoder_bases:
        raise ConfigError(f"--method {method} is not available for encoder bases (choose from {', '.join(ENCODER_METHODS)})")
    if batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    features = build_encoder_examples(tokenizer, task, rows, method, max_length, training=False)
    pad_id = tokenizer.pad_token_id
    device = next(model.parameters()).device
    qa = is_qa(task)
    if not qa:
        num_labels = getattr(getattr(model, "config", None), "num_labels", None)
        if num_labels is None:
            num_labels = len(task.labels)
        if num_labels != len(task.labels):
            raise ModelError(f"the model's head has {num_labels} labels, task {task.name!r} has {len(task.labels)}")
    best: dict[int, tuple] = {}
    labels: dict[int, str] = {}
    done_rows = 0
    with torch.no_grad():
        for first in range(0, len(features), batch_size):
            chunk = features[first : first + batch_size]
            batch = {k: v.to(device) for k, v in collate_encoder(chunk, pad_id).items()}
            out = model(**batch)
            if qa:
                for feature, s, e in zip(chunk, out.start_logits.float().cpu(), out.end_logits.float().cpu()):
                    span = _best_span(s, e, feature.offsets)
                    if span is not None and (feature.row not in best or span[0] > best[feature.row][0]):
                        best[feature.row] = span
            else:
                for feature, index in zip(chunk, out.logits.argmax(-1).tolist()):
                    labels[feature.row] = task.labels[index]
            if progress is not None:  # rows before the next batch's first row are complete
                following = first + batch_size
                finished = features[following].row if following < len(features) else len(rows)
                progress(finished - done_rows)
                done_rows = finished
    if not qa:
        return [labels.get(i) for i in range(len(rows))]
    # the offsets index the context that was read: the English one for translate-test
    context = PIVOT_PREFIX + "context" if method_of(method).prompt == "pivot" else "context"
    return [rows[i][context][best[i][1] : best[i][2]] if i in best else None for i in range(len(rows))]


def evaluate_encoder_rows(
    model, tokenizer, task, rows: Sequence[dict], *, method: str, lang: str, source: str = "data",
    score: bool = True, max_length: int = DEFAULT_MAX_LENGTH, batch_size: int = 8,
    progress: Optional[Callable[[int], None]] = None,
    answer_translator: Optional[Callable[[list[str]], list[str]]] = None,
):
    """``evaluate.evaluate_rows`` for an encoder: predict, then score with the task's own metrics
    (accuracy and macro-F1, or QA exact match and F1), so encoder and decoder runs compare.
    ``answer_translator`` maps translate-test's English answer spans into the target language."""
    from flare_cli.evaluate import score_predictions

    if method_of(method).reads_pivot:
        task.require_pivots(rows, source)
    raw = predict(model, tokenizer, task, rows, method=method, max_length=max_length,
                  batch_size=batch_size, progress=progress)
    predictions = raw
    if answer_translator is not None:
        found = [i for i, p in enumerate(raw) if p is not None]
        translated = answer_translator([raw[i] for i in found]) if found else []
        predictions = list(raw)
        for i, text in zip(found, translated):
            predictions[i] = text
    return score_predictions(task, rows, predictions, raw, lang=lang, score=score,
                             back_translated=predictions if answer_translator is not None else None)

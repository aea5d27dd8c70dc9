"""`flare eval`: generate answers for a task's target-language inputs and score them.

Three layers, each usable alone:

- ``generate_answers``: batched, left-padded greedy generation with the KV cache; with pivots it
  drives a FlareModel (one no-grad prefill over the pivot batch, prompt fused, new tokens unfused);
  with ``mt_lang`` a FLARE-MT model (its MT encoder reads the target prompt: no pivot, no English).
- ``evaluate_rows``: builds each method's inputs from task rows, parses and scores; writes nothing.
- ``run``: loads models from an EvalConfig, evaluates, writes ``predictions.jsonl`` and
  ``metrics.json`` atomically.
"""

from __future__ import annotations

import functools
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from flare_cli.adapter_folder import AdapterFolder
from flare_cli.errors import ConfigError, ModelError, first_line
from flare_cli.fsutil import atomic_write_text as write_text_atomic
from flare_cli.fsutil import check_output_dir
from flare_cli.methods import BASE_METHOD, method_of
from flare_cli.tasks import Task, get_task
from flare_cli.tasks.base import PIVOT_PREFIX

DEFAULT_MAX_NEW_TOKENS = {"qa": 32}
DEFAULT_LABEL_MAX_NEW_TOKENS = 8


@dataclass
class EvalResult:
    metrics: dict
    predictions: list[dict]
    output_dir: Optional[str] = None


@dataclass
class EvalConfig:
    task: Optional[str] = None  # default: the adapter's flare_config.json
    lang: Optional[str] = None  # default: the adapter's flare_config.json
    adapter: Optional[str] = None
    base: Optional[str] = None  # default: the adapter's recorded base model
    task_adapter: Optional[str] = None  # stage-1 LoRA merged into the base first (default: the adapter's)
    method: Optional[str] = None  # default: the adapter's method, or zero-shot without an adapter
    data: Optional[str] = None  # local file or Hub id; default: the task's Hub dataset
    split: Optional[str] = None
    output_dir: str = "eval"
    batch_size: int = 8
    max_new_tokens: Optional[int] = None
    limit: Optional[int] = None
    predict: bool = False  # no gold: write predictions only
    task_options: dict = field(default_factory=dict)  # for --task custom
    mt_model: Optional[str] = None  # translates missing pivots on the fly (default: the adapter's)
    # translate-test on free-text answers (QA): the English answer is translated back into the
    # target language before scoring, as the gold answer is in the target language.
    back_translate_answers: bool = True
    mt_engine: str = "transformers"  # engine and precision of on-the-fly translation (flare_cli.mt_engines)
    mt_compute_type: str = "auto"
    dtype: str = "auto"
    qa_metric: Optional[str] = None  # squad | mlqa | unicode (default: flare_cli.metrics.default_qa_metric)
    data_config: Optional[str] = None  # Hub config of --data
    columns: Optional[str] = None  # "ours=theirs,..." column mapping
    max_length: Optional[int] = None  # prompt tokens kept (from the end, as in training); None: the adapter's training length, else no cut

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_new_tokens", "limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.lang:
            from flare_cli.languages import resolve

            resolve(self.lang)  # an unknown code fails now, not after the model has loaded
        check_output_dir(self.output_dir, "--output-dir")


# -- generation core ----------------------------------------------------------------------------
def _newline_stop(tokenizer, prompt_length: int):
    """A StoppingCriteria that ends a row once its new tokens decode to text with a newline.

    transformers' ``stop_strings=["\n"]`` stops at the same step (the first token whose text holds
    a newline) but precomputes a table from the tokenizer's vocabulary that fails on tokenizers
    which cannot encode its probe text (small or character-level vocabularies). Decoding the new
    tokens works for every tokenizer; answers are at most a few dozen tokens.
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopAtNewline(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            texts = tokenizer.batch_decode(input_ids[:, prompt_length:], skip_special_tokens=True)
            return torch.tensor(["\n" in text for text in texts], dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopAtNewline()])


def generate_answers(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    pivots: Optional[Sequence[str]] = None,
    mt_lang: Optional[str] = None,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    progress: Optional[Callable[[int], None]] = None,
    max_length: Optional[int] = None,
) -> list[str]:
    """Greedy answers (new tokens only, cut at the first newline) for ``prompts``, in order.

    With ``pivots`` (one English prompt per target prompt), ``model`` is a FlareModel and gets the
    left-padded pivot batch as ``pivot_input_ids``/``pivot_attention_mask``. With ``mt_lang`` (the
    prompts' language), ``model`` is a FLARE-MT FlareModel and gets the prompts in its MT encoder's
    tokens, tagged with that language's code, as ``mt_input_ids``/``mt_attention_mask``. Prompts
    over ``max_length`` are cut as training cuts them (flare_cli/encode.py).
    """
    from flare_cli.encode import MT_MAX_LENGTH, Example, truncate_ids

    if pivots is not None and len(pivots) != len(prompts):
        raise ValueError(f"{len(pivots)} pivots for {len(prompts)} prompts")

    def ids(text: str) -> list[int]:
        full = tokenizer(text, add_special_tokens=True)["input_ids"]
        return full if max_length is None else truncate_ids(tokenizer, full, max_length)

    mt_ids: list = [None] * len(prompts)
    if mt_lang is not None:
        mt_ids = model.mt_encoder.encode_texts(list(prompts), mt_lang, max_length or MT_MAX_LENGTH)
    examples = []
    for i, prompt in enumerate(prompts):
        prompt_ids = ids(prompt)
        examples.append(Example(prompt_ids, len(prompt_ids), ids(pivots[i]) if pivots is not None else None, mt_ids[i]))
    return generate_from_inputs(model, tokenizer, examples, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                progress=progress)


def generate_from_inputs(
    model,
    tokenizer,
    examples: Sequence,
    *,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    progress: Optional[Callable[[int], None]] = None,
) -> list[str]:
    """Greedy answers for ``encode.encode_inputs`` examples: batched, left-padded (generation
    continues from the last column), with the KV cache."""
    import torch

    from flare_cli.encode import collate

    if batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ModelError("the tokenizer has neither a pad nor an EOS token")
    device = next(model.parameters()).device
    model_inputs = ("input_ids", "attention_mask", "pivot_input_ids", "pivot_attention_mask", "mt_input_ids",
                    "mt_attention_mask")
    answers: list[str] = []
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start : start + batch_size], pad_id, padding_side="left")
        kwargs: dict[str, Any] = {k: batch[k].to(device) for k in model_inputs if k in batch}
        width = kwargs["input_ids"].shape[1]
        with torch.no_grad():
            output = model.generate(
                **kwargs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad_id,
                eos_token_id=tokenizer.eos_token_id,
                stopping_criteria=_newline_stop(tokenizer, width),  # answers are one line
            )
        for text in tokenizer.batch_decode(output[:, width:], skip_special_tokens=True):
            answers.append(text.split("\n", 1)[0])
        if progress is not None:
            progress(kwargs["input_ids"].shape[0])
    return answers


# -- method inputs and scoring ------------------------------------------------------------------
def build_inputs(task: Task, rows: Sequence[dict], method: str) -> tuple[list[str], Optional[list[str]]]:
    """(prompts, pivots) for ``method``; pivots only for FLARE (FLARE-MT reads the prompts)."""
    from flare_cli.encode import method_texts

    record = method_of(method)
    texts = [method_texts(task, row, record) for row in rows]
    return [prompt for prompt, _ in texts], ([pivot for _, pivot in texts] if record.side_input == "pivot" else None)


def default_max_new_tokens(task: Task) -> int:
    return DEFAULT_MAX_NEW_TOKENS.get(task.name, DEFAULT_LABEL_MAX_NEW_TOKENS if hasattr(task, "labels") else 32)


def evaluate_rows(
    model,
    tokenizer,
    task: Task,
    rows: Sequence[dict],
    *,
    method: str,
    lang: str,
    source: str = "data",
    score: bool = True,
    max_new_tokens: Optional[int] = None,
    batch_size: int = 8,
    progress: Optional[Callable[[int], None]] = None,
    answer_translator: Optional[Callable[[list[str]], list[str]]] = None,
    max_length: Optional[int] = None,
) -> EvalResult:
    """Generate, parse and (with ``score``) score ``rows`` under ``method``. Writes nothing.

    ``answer_translator`` maps the generated (English) answers into the target language before
    parsing: translate-test's back-translation of free-text answers."""
    if method_of(method).reads_pivot:
        task.require_pivots(rows, source)
    from flare_cli.encode import encode_inputs, truncation_report

    record = method_of(method)
    examples = encode_inputs(tokenizer, task, rows, record, max_length,
                             mt_encoder=model.mt_encoder if record.reads_mt else None, lang=lang)
    raw = generate_from_inputs(model, tokenizer, examples, max_new_tokens=max_new_tokens or default_max_new_tokens(task),
                               batch_size=batch_size, progress=progress)
    answers = answer_translator(raw) if answer_translator else None
    parsed = [task.parse(text) for text in (answers or raw)]
    result = score_predictions(task, rows, parsed, raw, back_translated=answers, lang=lang, score=score)
    result.metrics["truncation"] = truncation_report(max_length, examples)
    return result


def score_predictions(
    task: Task, rows: Sequence[dict], predictions: Sequence[Optional[str]], raw: Sequence[Optional[str]], *,
    back_translated: Optional[Sequence[Optional[str]]] = None, lang: str, score: bool = True,
) -> EvalResult:
    """One record per row (id, prediction, raw model output, the back-translation when there is one,
    gold and correctness when scored) and the task's metrics; decoder and encoder eval share it."""
    records = []
    for i, (row, prediction, text) in enumerate(zip(rows, predictions, raw)):
        record = {"id": row["id"], "prediction": prediction, "raw": text if text is not None else ""}
        if back_translated is not None:
            record["back_translated"] = back_translated[i]
        if score:
            record["gold"] = task.target(row)
            record["correct"] = task.is_correct(prediction, row, lang)
        records.append(record)
    if score:
        metrics = task.score(list(predictions), rows, lang=lang)
    else:
        metrics = {"n": len(rows), "n_unparseable": sum(p is None for p in predictions)}
    return EvalResult(metrics=metrics, predictions=records)


# -- model loading --------------------------------------------------------------------------------
def _load_base(name_or_path: str, task_adapter: Optional[str], dtype: str, task: Optional[Task] = None):
    """``task`` picks an encoder base's head (classification or span); decoders ignore it."""
    from flare_cli.modeling import load_base_model

    return load_base_model(name_or_path, task_adapter=task_adapter, dtype=dtype, task=task)


def _attach_lora(model, adapter_dir: str):
    from peft import PeftModel

    from safetensors import SafetensorError

    try:
        return PeftModel.from_pretrained(model, adapter_dir)
    except (OSError, RuntimeError, ValueError, KeyError, SafetensorError) as err:  # SafetensorError: truncated
        raise ModelError(f"{adapter_dir}: cannot load adapter onto this base ({first_line(err)})") from None


def _load_adapter(model, folder: AdapterFolder, mt_model: Optional[str] = None, has_task_adapter: bool = False):
    """``mt_model`` (FLARE-MT only) replaces the recorded MT encoder, e.g. a local copy of it;
    ``has_task_adapter``: ``model`` has a stage-1 adapter merged already."""
    adapter_dir = str(folder.path)
    if folder.method.fuses:
        try:
            from flare_cli.flare import load_flare_model, load_mt_encoder
        except ImportError:
            raise ModelError("FLARE adapters need flare_cli.flare, which this install lacks") from None
        encoder = None
        if folder.method.reads_mt and mt_model:
            encoder = load_mt_encoder(mt_model, dtype=model.get_input_embeddings().weight.dtype)
        return load_flare_model(model, adapter_dir, mt_encoder=encoder, merge_task_adapter=not has_task_adapter)
    return _attach_lora(model, adapter_dir)


# -- the stage ----------------------------------------------------------------------------------
@dataclass
class _Resolved:
    task: Task
    lang: str
    method: str
    base: str
    source: str
    task_adapter: Optional[str] = None
    folder: Optional[AdapterFolder] = None  # the --adapter folder


def _resolve(cfg: EvalConfig) -> _Resolved:
    folder = AdapterFolder.read(cfg.adapter) if cfg.adapter else None
    settings = folder.settings if folder else {}
    method = cfg.method or (folder.method_name if folder else BASE_METHOD)
    record = method_of(method)
    if not record.needs_adapter and cfg.adapter:
        raise ConfigError(f"--method {method} runs the base (plus --task-adapter), not --adapter")
    if record.needs_adapter and not cfg.adapter:
        raise ConfigError(f"--method {method} needs --adapter DIR")
    if record.fuses and settings.get("method") != method:
        raise ConfigError(f"{cfg.adapter}: --method {method} needs an adapter trained with --method {method}")
    task_name = cfg.task or settings.get("task")
    lang = cfg.lang or settings.get("lang")
    if not task_name:
        raise ConfigError("which task? pass --task (qa, nli, sentiment, custom)")
    if not lang:
        raise ConfigError("which language? pass --lang")
    base = cfg.base or (folder.base_model if folder else None)
    if not base:
        raise ConfigError("which base model? pass --base")
    task = get_task(task_name, **cfg.task_options)
    # A stage-3 adapter was trained on base + its stage-1 task adapter: evaluate it on the same
    # (a pushed FLARE repo carries it; load_flare_model merges that one itself).
    task_adapter = cfg.task_adapter
    if cfg.adapter and not task_adapter and not settings.get("bundled_task_adapter"):
        task_adapter = folder.task_adapter
    if task_adapter:
        from flare_cli.hub import resolve_adapter

        task_adapter = str(resolve_adapter(task_adapter, what="task adapter"))
    return _Resolved(task, lang, method, base, cfg.data or task.hub_id or "", task_adapter, folder)


def _ensure_pivots(task: Task, rows: list[dict], resolved: _Resolved, cfg: EvalConfig) -> Optional[str]:
    """Rows without ``pivot_*`` columns get them from the MT model (cached, as `flare translate`).

    Returns the MT model used, or None when the data had every pivot."""
    from flare_cli.translate import DEFAULT_MT_MODEL, translate_pivots

    columns = [PIVOT_PREFIX + f for f in task.input_fields]
    if all(isinstance(r.get(c), str) and r[c].strip() for r in rows for c in columns):
        return None
    recorded = resolved.folder.get("mt_model") if resolved.folder else None
    mt_model = cfg.mt_model or recorded or DEFAULT_MT_MODEL
    translate_pivots(rows, task.input_fields, lang=resolved.lang, mt_model=mt_model,
                     cache_dir=Path(cfg.output_dir) / ".flare_cache", mt_engine=cfg.mt_engine,
                     compute_type=cfg.mt_compute_type)
    task.require_pivots(rows, resolved.source)
    return mt_model


def _answer_translator(task: Task, resolved: _Resolved, cfg: EvalConfig):
    """(translator, MT model) for translate-test on free-text answers into a non-English language;
    (None, None) otherwise. Label tasks need none: their verbalizer words are the labels."""
    from flare_cli.languages import resolve
    from flare_cli.translate import DEFAULT_MT_MODEL, data_mt_model, translate_texts

    from flare_cli.tasks.base import ClassificationTask

    if method_of(resolved.method).prompt != "pivot" or not cfg.back_translate_answers or isinstance(task, ClassificationTask):
        return None, None
    if resolve(resolved.lang) == resolve("en"):
        return None, None
    mt_model = cfg.mt_model or data_mt_model(cfg.data) or DEFAULT_MT_MODEL

    def translator(answers: list[str]) -> list[str]:
        return translate_texts(answers, lang=resolved.lang, direction="train", mt_model=mt_model,
                               cache_dir=Path(cfg.output_dir) / ".flare_cache", mt_engine=cfg.mt_engine,
                               compute_type=cfg.mt_compute_type)

    return translator, mt_model


def run(cfg: EvalConfig, progress: Optional[Callable[[int], None]] = None) -> EvalResult:
    """Resolve settings, load data and models, evaluate, write predictions.jsonl and metrics.json."""
    if cfg.limit is not None and cfg.limit < 1:
        raise ConfigError("--limit must be at least 1")
    from flare_cli.mt_engines import check_engine_options

    check_engine_options(cfg.mt_engine, cfg.mt_compute_type)  # a missing MT engine fails before any model loads
    adapter_ref = cfg.adapter
    if cfg.adapter:  # a folder, or a Hub repo user/name[@revision] (its snapshot in the HF cache)
        from flare_cli.hub import resolve_adapter

        cfg = dataclasses.replace(cfg, adapter=str(resolve_adapter(cfg.adapter)))
    resolved = _resolve(cfg)
    task = resolved.task
    if cfg.qa_metric:
        from flare_cli.metrics import check_qa_metric

        if not hasattr(task, "qa_metric"):
            raise ConfigError(f"--qa-metric scores free-text answers; task {task.name!r} has labels")
        task.qa_metric = check_qa_metric(cfg.qa_metric)
    if cfg.max_length is not None and cfg.max_length < 1:
        raise ConfigError("--max-length must be at least 1")
    from flare_cli.tasks.base import parse_columns

    rows = task.load(cfg.data, resolved.lang, cfg.split, require_gold=not cfg.predict,
                     config=cfg.data_config, columns=parse_columns(cfg.columns))
    if cfg.limit:
        rows = rows[: cfg.limit]
    pivots_from = None
    if method_of(resolved.method).reads_pivot:
        pivots_from = _ensure_pivots(task, rows, resolved, cfg)  # before loading the LLM: fail fast

    model, tokenizer = _load_base(resolved.base, resolved.task_adapter, cfg.dtype, task)
    from flare_cli.flare.encoder import is_encoder

    encoder = is_encoder(getattr(model, "config", None))
    if encoder and not method_of(resolved.method).encoder_bases:
        raise ConfigError(f"--method {resolved.method} is for decoder bases, not encoders")
    if encoder and not method_of(resolved.method).needs_adapter and getattr(model, "flare_head_is_new", False) \
            and not resolved.task_adapter:
        raise ConfigError(f"{resolved.base} has no trained {task.name} head: --method {resolved.method} needs "
                          "--task-adapter (the stage-1 English adapter, which holds the head)")
    if cfg.adapter:
        model = _load_adapter(model, resolved.folder, mt_model=cfg.mt_model,
                              has_task_adapter=resolved.task_adapter is not None)
    model.eval()

    max_new_tokens = cfg.max_new_tokens or default_max_new_tokens(task)
    # the prompt budget training used (flare_config.json meta) unless --max-length overrides it
    from flare_cli.encode import recorded_max_length

    max_length = cfg.max_length or (recorded_max_length(resolved.folder.meta) if resolved.folder else None)
    answer_translator, answers_by = _answer_translator(task, resolved, cfg)
    if encoder:  # a classification or span head: argmax, no generation (flare_cli/encoder_tasks.py)
        from flare_cli.encoder_tasks import DEFAULT_MAX_LENGTH, evaluate_encoder_rows

        max_new_tokens = None
        max_length = max_length or DEFAULT_MAX_LENGTH
        evaluate_rows_for = functools.partial(
            evaluate_encoder_rows, max_length=max_length, answer_translator=answer_translator,
        )
    else:
        evaluate_rows_for = functools.partial(
            evaluate_rows, max_new_tokens=max_new_tokens, answer_translator=answer_translator,
            max_length=max_length,
        )
    result = evaluate_rows_for(
        model,
        tokenizer,
        task,
        rows,
        method=resolved.method,
        lang=resolved.lang,
        source=resolved.source,
        score=not cfg.predict,
        batch_size=cfg.batch_size,
        progress=progress,
    )
    metrics = {
        **result.metrics,
        "task": task.name,
        "lang": resolved.lang,
        "method": resolved.method,
        "adapter": adapter_ref,
        "settings": {
            "base": resolved.base,
            "task_adapter": resolved.task_adapter,
            "data": resolved.source,
            "split": cfg.split or task.default_split,
            "data_config": cfg.data_config,
            "max_length": max_length,
            "max_new_tokens": max_new_tokens,
            "batch_size": cfg.batch_size,
            "limit": cfg.limit,
            "predict": cfg.predict,
            "decoding": "argmax" if encoder else "greedy",
            "pivots": f"translated on the fly by {pivots_from}" if pivots_from else "data",
            **({"answers": f"back-translated by {answers_by}"} if answers_by else {}),
            **({"mt_encoder": model.mt_encoder.model_id} if method_of(resolved.method).reads_mt else {}),
        },
    }
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in result.predictions)
    write_text_atomic(out / "predictions.jsonl", lines)
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    return EvalResult(metrics=metrics, predictions=result.predictions, output_dir=str(out))


# -- several runs (flare eval --compare) -------------------------------------------------------------
def run_label(adapter_dir: Optional[str], method: Optional[str]) -> str:
    """The sub-folder of one run among several: the adapter folder's name (or ``base``) and the method."""
    parts = [Path(adapter_dir).name if adapter_dir else "base"] + ([method] if method else [])
    return "-".join(parts)


def plan_runs(cfg: EvalConfig, adapters: Sequence[Optional[str]], methods: Sequence[Optional[str]]) -> list[EvalConfig]:
    """One EvalConfig per (adapter, method) pair, ``cfg`` for the rest; with several runs each writes
    into its own sub-folder of ``cfg.output_dir``. No adapters means the base; no methods, each
    adapter's own."""
    import dataclasses

    pairs = [(a, m) for a in (list(adapters) or [None]) for m in (list(methods) or [None])]
    return [
        dataclasses.replace(cfg, adapter=a, method=m,
                            output_dir=str(Path(cfg.output_dir) / run_label(a, m)) if len(pairs) > 1 else cfg.output_dir)
        for a, m in pairs
    ]


def run_compare(
    configs: Sequence[EvalConfig], progress_for: Optional[Callable[[EvalConfig], Optional[Callable[[int], None]]]] = None,
) -> list[EvalResult]:
    """Run every config in order (``plan_runs``); ``progress_for(cfg)`` gives each run its progress callback."""
    return [run(cfg, progress=progress_for(cfg) if progress_for else None) for cfg in configs]

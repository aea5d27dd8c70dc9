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

from flare_cli.errors import ConfigError, ModelError
from flare_cli.fsutil import atomic_write_text as write_text_atomic
from flare_cli.fsutil import check_output_dir
from flare_cli.tasks import Task, get_task

METHODS = ("zero-shot", "translate-test", "lora", "input-fusion", "flare", "flare-mt")
# Methods that read the English pivot_* columns.
PIVOT_METHODS = ("translate-test", "input-fusion", "flare")
# Methods run on the (stage-1) base alone, without a target-language adapter.
BASE_ONLY_METHODS = ("zero-shot", "translate-test")
DEFAULT_MAX_NEW_TOKENS = {"qa": 32}
DEFAULT_LABEL_MAX_NEW_TOKENS = 8
MT_MAX_LENGTH = 1024  # FLARE-MT: MT-encoder tokens kept per prompt (the language tag and the end)


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
    max_length: Optional[int] = None  # prompt tokens kept (from the end, as in training); None: no cut

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
def _left_padded(tokenizer, texts: Sequence[str], device, max_length: Optional[int] = None):
    if max_length is None:
        batch = tokenizer(list(texts), return_tensors="pt", padding=True)
    else:  # cut as training does: BOS + the end of the prompt
        from flare_cli.encode import encode_prompt

        ids = [encode_prompt(tokenizer, text, max_length) for text in texts]
        batch = tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
    return batch["input_ids"].to(device), batch["attention_mask"].to(device)


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
    tokens, tagged with that language's code, as ``mt_input_ids``/``mt_attention_mask``.
    """
    import torch

    if pivots is not None and len(pivots) != len(prompts):
        raise ValueError(f"{len(pivots)} pivots for {len(prompts)} prompts")
    if batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ModelError("the tokenizer has neither a pad nor an EOS token")
    saved_side, saved_pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"  # decoder-only generation continues from the last column
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = next(model.parameters()).device
    answers: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            input_ids, attention_mask = _left_padded(tokenizer, prompts[start : start + batch_size], device, max_length)
            kwargs: dict[str, Any] = {}
            if pivots is not None:
                pivot_ids, pivot_mask = _left_padded(tokenizer, pivots[start : start + batch_size], device, max_length)
                kwargs = {"pivot_input_ids": pivot_ids, "pivot_attention_mask": pivot_mask}
            elif mt_lang is not None:
                encoder = model.mt_encoder
                rows = encoder.encode_texts(prompts[start : start + batch_size], mt_lang, MT_MAX_LENGTH)
                mt_ids, mt_mask = encoder.pad(rows, side="left", device=device)
                kwargs = {"mt_input_ids": mt_ids, "mt_attention_mask": mt_mask}
            with torch.no_grad():
                output = model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad_id,
                    eos_token_id=tokenizer.eos_token_id,
                    stopping_criteria=_newline_stop(tokenizer, input_ids.shape[1]),  # answers are one line
                    **kwargs,
                )
            new_tokens = output[:, input_ids.shape[1] :]
            for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True):
                answers.append(text.split("\n", 1)[0])
            if progress is not None:
                progress(input_ids.shape[0])
    finally:
        tokenizer.padding_side, tokenizer.pad_token = saved_side, saved_pad
    return answers


# -- method inputs and scoring ------------------------------------------------------------------
def build_inputs(task: Task, rows: Sequence[dict], method: str) -> tuple[list[str], Optional[list[str]]]:
    """(prompts, pivots) for ``method``; pivots only for FLARE (FLARE-MT reads the prompts)."""
    if method in ("zero-shot", "lora", "flare-mt"):
        return [task.prompt(r) for r in rows], None
    if method == "translate-test":
        return [task.prompt(r, pivot=True) for r in rows], None
    if method == "input-fusion":
        return [task.input_fusion_prompt(r) for r in rows], None
    if method == "flare":
        return [task.prompt(r) for r in rows], [task.prompt(r, pivot=True) for r in rows]
    raise ConfigError(f"unknown method {method!r} (choose from {', '.join(METHODS)})")


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
    if method in PIVOT_METHODS:
        task.require_pivots(rows, source)
    prompts, pivots = build_inputs(task, rows, method)
    raw = generate_answers(
        model,
        tokenizer,
        prompts,
        pivots=pivots,
        mt_lang=lang if method == "flare-mt" else None,
        max_new_tokens=max_new_tokens or default_max_new_tokens(task),
        batch_size=batch_size,
        progress=progress,
        max_length=max_length,
    )
    answers = answer_translator(raw) if answer_translator else raw
    parsed = [task.parse(text) for text in answers]
    predictions = []
    for row, prediction, text, answer in zip(rows, parsed, raw, answers):
        record = {"id": row["id"], "prediction": prediction, "raw": text}
        if answer_translator:
            record["back_translated"] = answer
        if score:
            record["gold"] = task.target(row)
            record["correct"] = task.is_correct(prediction, row, lang)
        predictions.append(record)
    if score:
        metrics = task.score(parsed, rows, lang=lang)
    else:
        metrics = {"n": len(rows), "n_unparseable": sum(p is None for p in parsed)}
    metrics["truncation"] = _truncation(tokenizer, task, rows, prompts, pivots, max_length)
    return EvalResult(metrics=metrics, predictions=predictions)


def _truncation(tokenizer, task: Task, rows, prompts, pivots, max_length: Optional[int]) -> dict:
    """encode.truncation_report of the prompts as generate_answers cut them (nothing without max_length)."""
    from types import SimpleNamespace

    from flare_cli.encode import encode_prompt, prompt_truncation, truncation_report

    records = []
    for i, (row, prompt) in enumerate(zip(rows, prompts)):
        truncated = answer_cut = pivot_truncated = False
        if max_length is not None:
            _, truncated, answer_cut = prompt_truncation(tokenizer, task, row, prompt, max_length)
            if pivots is not None:
                full = len(tokenizer(pivots[i], add_special_tokens=True)["input_ids"])
                pivot_truncated = len(encode_prompt(tokenizer, pivots[i], max_length)) < full
        records.append(SimpleNamespace(row_id=str(row.get("id")), truncated=truncated, answer_cut=answer_cut,
                                       pivot_truncated=pivot_truncated))
    return truncation_report(max_length, records)


# -- model loading --------------------------------------------------------------------------------
def _read_json(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ModelError(f"{path}: unreadable JSON ({err.__class__.__name__})") from None


def adapter_settings(adapter_dir: str) -> dict:
    """flare_config.json of an adapter (``{}`` for a plain peft adapter); checks the folder."""
    folder = Path(adapter_dir)
    if not (folder / "adapter_config.json").is_file():
        raise ModelError(f"{adapter_dir}: not an adapter folder (no adapter_config.json)")
    try:
        from flare_cli.flare import read_flare_config
    except ImportError:  # the FLARE package lands separately; the file format is the contract
        return _read_json(folder / "flare_config.json") or {}
    return read_flare_config(adapter_dir) or {}


def _adapter_base(adapter_dir: str) -> Optional[str]:
    config = _read_json(Path(adapter_dir) / "adapter_config.json") or {}
    return config.get("base_model_name_or_path")


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
        raise ModelError(f"{adapter_dir}: cannot load adapter onto this base ({str(err).splitlines()[0]})") from None


def _load_adapter(model, adapter_dir: str, settings: dict, mt_model: Optional[str] = None,
                  has_task_adapter: bool = False):
    """``mt_model`` (FLARE-MT only) replaces the recorded MT encoder, e.g. a local copy of it;
    ``has_task_adapter``: ``model`` has a stage-1 adapter merged already."""
    if settings.get("method") in ("flare", "flare-mt"):
        try:
            from flare_cli.flare import load_flare_model, load_mt_encoder
        except ImportError:
            raise ModelError("FLARE adapters need flare_cli.flare, which this install lacks") from None
        encoder = None
        if settings.get("method") == "flare-mt" and mt_model:
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


def _resolve(cfg: EvalConfig) -> _Resolved:
    settings = adapter_settings(cfg.adapter) if cfg.adapter else {}
    # Provenance keys sit at the top level (architecture.md) or under "meta" (FlareConfig.to_dict).
    settings = {**settings.get("meta", {}), **settings}
    method = cfg.method or settings.get("method") or ("lora" if cfg.adapter else "zero-shot")
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r} (choose from {', '.join(METHODS)})")
    if method in BASE_ONLY_METHODS and cfg.adapter:
        raise ConfigError(f"--method {method} runs the base (plus --task-adapter), not --adapter")
    if method not in BASE_ONLY_METHODS and not cfg.adapter:
        raise ConfigError(f"--method {method} needs --adapter DIR")
    if method in ("flare", "flare-mt") and settings.get("method") != method:
        raise ConfigError(f"{cfg.adapter}: --method {method} needs an adapter trained with --method {method}")
    task_name = cfg.task or settings.get("task")
    lang = cfg.lang or settings.get("lang")
    if not task_name:
        raise ConfigError("which task? pass --task (qa, nli, sentiment, custom)")
    if not lang:
        raise ConfigError("which language? pass --lang")
    base = cfg.base or settings.get("base_model") or (_adapter_base(cfg.adapter) if cfg.adapter else None)
    if not base:
        raise ConfigError("which base model? pass --base")
    task = get_task(task_name, **cfg.task_options)
    # A stage-3 adapter was trained on base + its stage-1 task adapter: evaluate it on the same
    # (a pushed FLARE repo carries it; load_flare_model merges that one itself).
    task_adapter = cfg.task_adapter
    if cfg.adapter and not task_adapter and not settings.get("bundled_task_adapter"):
        from flare_cli.publish import recorded_task_adapter

        task_adapter = recorded_task_adapter(cfg.adapter, settings)
    if task_adapter:
        from flare_cli.hub import resolve_adapter

        task_adapter = str(resolve_adapter(task_adapter, what="task adapter"))
    return _Resolved(task, lang, method, base, cfg.data or task.hub_id or "", task_adapter)


def _ensure_pivots(task: Task, rows: list[dict], resolved: _Resolved, cfg: EvalConfig) -> Optional[str]:
    """Rows without ``pivot_*`` columns get them from the MT model (cached, as `flare translate`).

    Returns the MT model used, or None when the data had every pivot."""
    from flare_cli.translate import DEFAULT_MT_MODEL, translate_pivots

    columns = ["pivot_" + f for f in task.input_fields]
    if all(isinstance(r.get(c), str) and r[c].strip() for r in rows for c in columns):
        return None
    settings = adapter_settings(cfg.adapter) if cfg.adapter else {}
    mt_model = cfg.mt_model or settings.get("mt_model") or settings.get("meta", {}).get("mt_model") or DEFAULT_MT_MODEL
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

    if resolved.method != "translate-test" or not cfg.back_translate_answers or isinstance(task, ClassificationTask):
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
    if resolved.method in PIVOT_METHODS:
        pivots_from = _ensure_pivots(task, rows, resolved, cfg)  # before loading the LLM: fail fast

    model, tokenizer = _load_base(resolved.base, resolved.task_adapter, cfg.dtype, task)
    from flare_cli.flare.encoder import is_encoder

    encoder = is_encoder(getattr(model, "config", None))
    if encoder and resolved.method == "flare-mt":
        raise ConfigError("--method flare-mt is for decoder bases, not encoders")
    if encoder and resolved.method in BASE_ONLY_METHODS and getattr(model, "flare_head_is_new", False) \
            and not resolved.task_adapter:
        raise ConfigError(f"{resolved.base} has no trained {task.name} head: --method {resolved.method} needs "
                          "--task-adapter (the stage-1 English adapter, which holds the head)")
    if cfg.adapter:
        model = _load_adapter(model, cfg.adapter, adapter_settings(cfg.adapter), mt_model=cfg.mt_model,
                              has_task_adapter=resolved.task_adapter is not None)
    model.eval()

    max_new_tokens = cfg.max_new_tokens or default_max_new_tokens(task)
    answer_translator, answers_by = _answer_translator(task, resolved, cfg)
    if encoder:  # a classification or span head: argmax, no generation (flare_cli/encoder_tasks.py)
        from flare_cli.encoder_tasks import DEFAULT_MAX_LENGTH, evaluate_encoder_rows

        meta = (adapter_settings(cfg.adapter).get("meta", {}) if cfg.adapter else {})
        max_new_tokens = None
        evaluate_rows_for = functools.partial(
            evaluate_encoder_rows, max_length=cfg.max_length or meta.get("max_length") or DEFAULT_MAX_LENGTH,
            answer_translator=answer_translator,
        )
    else:
        evaluate_rows_for = functools.partial(
            evaluate_rows, max_new_tokens=max_new_tokens, answer_translator=answer_translator,
            max_length=cfg.max_length,
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
            "max_length": cfg.max_length,
            "max_new_tokens": max_new_tokens,
            "batch_size": cfg.batch_size,
            "limit": cfg.limit,
            "predict": cfg.predict,
            "decoding": "argmax" if encoder else "greedy",
            "pivots": f"translated on the fly by {pivots_from}" if pivots_from else "data",
            **({"answers": f"back-translated by {answers_by}"} if answers_by else {}),
            **({"mt_encoder": model.mt_encoder.model_id} if resolved.method == "flare-mt" else {}),
        },
    }
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in result.predictions)
    write_text_atomic(out / "predictions.jsonl", lines)
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    return EvalResult(metrics=metrics, predictions=result.predictions, output_dir=str(out))

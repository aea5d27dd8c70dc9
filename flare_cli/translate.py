"""`flare translate`: NLLB translate-train data and translate-test pivots, batched, cached, resumable.

- ``direction="train"``: English task rows -> target-language rows; the English originals are kept
  as ``pivot_<field>``. For QA the answer is translated too and its span is projected into the
  translated context (the answer is wrapped in quotes before translation and recovered after).
- ``direction="test"``: target-language rows gain ``pivot_<field>`` (MT English).

Every distinct text segment is translated once: results go to a content-addressed sqlite cache
(`flare_cli.mt_cache`) committed after each batch, so a killed run loses at most one batch and a
rerun translates nothing it has already seen. Segments are sorted by length and batched by a token
budget; the output keeps the input row order.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Protocol

from flare_cli import __version__
from flare_cli.config import flare_home
from flare_cli.errors import ConfigError, DataError
from flare_cli.fsutil import atomic_write_bytes, check_output_dir, check_output_file
from flare_cli.languages import Language, resolve
from flare_cli.metrics import reference_scores, reference_texts
from flare_cli.mt_cache import TranslationCache, cache_key
from flare_cli.tasks.base import PIVOT_PREFIX
# The engines live in mt_engines; HFTranslator and model_revision stay importable from here.
from flare_cli.mt_engines import HFTranslator, MTEngine, check_engine_options, load_engine, model_revision  # noqa: F401

DEFAULT_MT_MODEL = "facebook/nllb-200-3.3B"

# The input fields translated per task (docs/architecture.md); `custom` takes --fields.
TASK_FIELDS: dict[str, tuple[str, ...]] = {
    "qa": ("context", "question"),
    "nli": ("premise", "hypothesis"),
    "sentiment": ("text",),
}
PROJECTION_POLICIES = ("drop", "keep", "error")
# Test hook: SIGKILL ourselves after this many committed batches (kill/resume tests).
KILL_AFTER_BATCHES_ENV = "FLARE_TRANSLATE_KILL_AFTER_BATCHES"

# Quote characters MT systems produce for a quoted span; all count as the answer marker.
_QUOTES = "\"\u201c\u201d\u201e\u00ab\u00bb\u300c\u300d\u300e\u300f\u2033\uff02"
_SENTENCE_END = re.compile(r"(?<=[.!?\u3002\uff01\uff1f\u061f\u0964\u0965])\s+")


@dataclass
class TranslateConfig:
    input: str  # a JSONL/CSV/parquet path, or "-" for JSONL on stdin
    output: str  # a .jsonl/.parquet path, or "-" for JSONL on stdout
    lang: str  # the non-English language, any spelling `languages.resolve` accepts
    direction: str = "train"  # "train": English -> lang; "test": lang -> English pivots
    task: str = "qa"  # qa | nli | sentiment | custom
    fields: tuple[str, ...] | None = None  # overrides the task's input fields (required for custom)
    mt_model: str = DEFAULT_MT_MODEL
    revision: str | None = None
    num_beams: int = 4
    max_new_tokens: int = 256
    batch_tokens: int = 4096  # padded source tokens per batch
    max_input_tokens: int = 200  # longer texts are split into sentences and rejoined
    device: str = "auto"
    device_map: str | None = None
    engine: str = "transformers"  # transformers | ctranslate2 (flare_cli.mt_engines)
    compute_type: str = "auto"  # float32 on CPU, a half type on GPU; int8* with ctranslate2
    cache_dir: str | None = None  # default: <output dir>/.flare_cache
    on_projection_failure: str = "keep"
    references: str | None = None  # score the output: a column, field=column pairs or a .txt file


@dataclass
class TranslateResult:
    output: str
    meta_path: str | None
    src: str
    tgt: str
    rows_in: int
    rows_out: int
    segments: int  # distinct text segments needed
    translated: int  # segments translated in this run
    cache_hits: int
    generated_tokens: int
    seconds: float
    projection_failed: int = 0
    projection_failed_ids: list[str] = field(default_factory=list)
    # Answerable rows whose answer the MT translated to nothing: dropped whatever the policy (an empty
    # answer would make them unanswerable, and training refuses such rows).
    empty_answers_dropped: int = 0
    quality: dict | None = None  # {field: chrF / chrF++ / BLEU} with --references (flare_cli.metrics)


class ProgressSink(Protocol):
    def start(self, total_segments: int) -> None: ...
    def advance(self, segments: int, generated_tokens: int) -> None: ...


# ---------------------------------------------------------------------------- reading and writing


def read_rows(path: str) -> list[dict]:
    """Rows of a JSONL (also stdin as "-"), CSV or parquet file; DataError on anything unreadable."""
    name = "<stdin>" if path == "-" else path
    if path != "-" and not Path(path).is_file():
        raise DataError(f"input file not found: {path}")
    suffix = "" if path == "-" else Path(path).suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as err:  # pyarrow raises several unrelated types for corrupt files
            raise DataError(f"{name}: not a readable parquet file ({err})") from None
    else:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise DataError(f"{name}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start})") from None
        rows = _parse_csv(text, name) if suffix == ".csv" else _parse_jsonl(text, name)
    if not rows:
        raise DataError(f"{name}: no rows")
    return rows


def _parse_jsonl(text: str, name: str) -> list[dict]:
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{name} line {lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{name} line {lineno}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def _parse_csv(text: str, name: str) -> list[dict]:
    try:
        return [dict(row) for row in csv.DictReader(io.StringIO(text))]
    except csv.Error as err:
        raise DataError(f"{name}: not valid CSV ({err})") from None


def encode_rows(rows: list[dict], fmt: str) -> bytes:
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), sink)
        return sink.getvalue()
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


def _output_format(path: str) -> str:
    if path == "-":
        return "jsonl"
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    if suffix == ".parquet":
        return "parquet"
    raise ConfigError(f"output {path!r}: use a .jsonl or .parquet file name, or '-' for JSONL on stdout")


# ------------------------------------------------------------------------------- segmentation


def split_segments(text: str, n_tokens: Callable[[list[str]], list[int]], max_tokens: int) -> list[str]:
    """Split a text longer than max_tokens into sentences (and over-long sentences into word runs)."""
    if n_tokens([text])[0] <= max_tokens:
        return [text]
    segments: list[str] = []
    sentences = [s for s in _SENTENCE_END.split(text) if s.strip()]
    for sentence, length in zip(sentences, n_tokens(sentences)):
        if length <= max_tokens:
            segments.append(sentence)
            continue
        words = sentence.split()
        run: list[str] = []
        run_len = 0
        for word, word_len in zip(words, n_tokens(words)):
            word_len = max(word_len - 2, 1)  # each word was counted with its language tag and EOS
            if run and run_len + word_len > max_tokens - 2:
                segments.append(" ".join(run))
                run, run_len = [], 0
            run.append(word)
            run_len += word_len
        if run:
            segments.append(" ".join(run))
    return segments


# --------------------------------------------------------------------------------- the stage


class _Translator:
    """Cache-first translation of many texts with one engine and one language pair."""

    def __init__(self, cfg: TranslateConfig, engine: MTEngine, cache: TranslationCache,
                 src: Language, tgt: Language, progress: ProgressSink | None):
        self.cfg, self.engine, self.cache = cfg, engine, cache
        self.src, self.tgt, self.progress = src, tgt, progress
        self.identity = engine.identity()
        self.translated = self.tokens = self.batches = 0
        self.segment_keys: set[str] = set()
        self.hit_keys: set[str] = set()
        self.translated_keys: set[str] = set()
        kill_after = os.environ.get(KILL_AFTER_BATCHES_ENV)
        self.kill_after = int(kill_after) if kill_after else None

    def _key(self, segment: str) -> str:
        return cache_key(
            model=self.engine.model_id, revision=self.identity, engine=self.engine.engine,
            # outputs differ by precision and hardware: never serve one's translations as another's
            compute_type=self.engine.compute_type, device=self.engine.device,
            src=self.src.flores, tgt=self.tgt.flores, num_beams=self.cfg.num_beams,
            max_new_tokens=self.cfg.max_new_tokens, text=segment,
        )

    def translate_all(self, texts: Iterable[str]) -> dict[str, str]:
        """{text: translation} for every distinct text; empty/blank texts map to ''."""
        texts = list(texts)
        distinct = sorted({t for t in texts if t.strip()})
        segments_of = {t: split_segments(t.strip(), self.engine.count_tokens, self.cfg.max_input_tokens) for t in distinct}
        keys = {s: self._key(s) for segs in segments_of.values() for s in segs}
        self.segment_keys.update(keys.values())
        found = self.cache.get_many(list(keys.values()))
        pending = [s for s, k in keys.items() if k not in found]
        self.hit_keys.update(k for k in keys.values() if k in found)
        if pending:
            found.update(self._run_batches(pending, keys))
        result = {t: " ".join(found[keys[s]] for s in segs) for t, segs in segments_of.items()}
        result.update({t: "" for t in texts if not t.strip()})
        return result

    def _run_batches(self, pending: list[str], keys: dict[str, str]) -> dict[str, str]:
        lengths = dict(zip(pending, self.engine.count_tokens(pending)))
        # Longest first: similar lengths share a batch (little padding) and OOM shows up at once.
        ordered = sorted(pending, key=lambda s: (-lengths[s], s))
        if self.progress:
            self.progress.start(len(ordered))
        done: dict[str, str] = {}
        for batch in batch_by_tokens(ordered, lengths, self.cfg.batch_tokens):
            outputs, generated = self.engine.translate_batch(
                batch, self.src, self.tgt, self.cfg.num_beams, self.cfg.max_new_tokens
            )
            self.cache.put_many([(keys[s], out) for s, out in zip(batch, outputs)])
            done.update({keys[s]: out for s, out in zip(batch, outputs)})
            self.translated_keys.update(keys[s] for s in batch)
            self.translated += len(batch)
            self.tokens += generated
            self.batches += 1
            if self.progress:
                self.progress.advance(len(batch), generated)
            if self.kill_after is not None and self.batches >= self.kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
        return done


def batch_by_tokens(ordered: list[str], lengths: dict[str, int], budget: int) -> Iterable[list[str]]:
    """Consecutive batches whose padded size (rows x longest row) stays within the token budget."""
    batch: list[str] = []
    longest = 0
    for text in ordered:
        new_longest = max(longest, lengths[text])
        if batch and new_longest * (len(batch) + 1) > budget:
            yield batch
            batch, new_longest = [], lengths[text]
        batch.append(text)
        longest = new_longest
    if batch:
        yield batch


def _validate(cfg: TranslateConfig) -> tuple[tuple[str, ...], Language, Language]:
    if cfg.direction not in ("train", "test"):
        raise ConfigError(f"unknown direction {cfg.direction!r}; use 'train' or 'test'")
    if cfg.on_projection_failure not in PROJECTION_POLICIES:
        raise ConfigError(f"unknown --on-projection-failure {cfg.on_projection_failure!r}; use drop, keep or error")
    check_engine_options(cfg.engine, cfg.compute_type, cfg.device_map, cfg.device)  # before any data is read
    if cfg.fields:
        fields = tuple(cfg.fields)
    elif cfg.task in TASK_FIELDS:
        fields = TASK_FIELDS[cfg.task]
    elif cfg.task == "custom":
        raise ConfigError("task 'custom' needs --fields (comma-separated column names)")
    else:
        raise ConfigError(f"unknown task {cfg.task!r}; use qa, nli, sentiment or custom with --fields")
    for name, value, low in (("num_beams", cfg.num_beams, 1), ("max_new_tokens", cfg.max_new_tokens, 1),
                             ("batch_tokens", cfg.batch_tokens, 1), ("max_input_tokens", cfg.max_input_tokens, 8)):
        if value < low:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
    if cfg.output != "-":
        check_output_file(cfg.output, "--output")
        if cfg.input != "-" and Path(cfg.input).resolve() == Path(cfg.output).resolve():
            raise ConfigError(f"--output {cfg.output} is the --input file; write the translation to another file")
    if cfg.cache_dir:
        check_output_dir(cfg.cache_dir, "--cache-dir")
    _check_device(cfg.device)
    target = resolve(cfg.lang)
    english = resolve("en")
    if target == english:
        raise ConfigError("--lang is the non-English side of the translation; got English")
    src, tgt = (english, target) if cfg.direction == "train" else (target, english)
    return fields, src, tgt


def _check_device(device: str) -> None:
    """--device names a device this machine has (else one line now, not a CUDA trace after loading)."""
    if device in ("auto", "cpu"):
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown --device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"--device {device}: no CUDA device is available here; use --device cpu or auto")
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"--device {device}: only {count} CUDA device(s) here (cuda:0 to cuda:{count - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {device}: MPS is not available here; use --device cpu or auto")


def _check_rows(rows: list[dict], fields: tuple[str, ...], needs_answer: bool, name: str) -> None:
    columns = list(rows[0])
    required = list(fields) + (["answer"] if needs_answer else [])
    for i, row in enumerate(rows):
        for col in required:
            if col not in row:
                where = f"row {i + 1}" if i else "the data"
                raise DataError(f"{name}: {where} has no column {col!r} (columns: {', '.join(columns)})")
            if not isinstance(row[col], str):
                raise DataError(
                    f"{name}: row {row.get('id', i + 1)!s} column {col!r} is {type(row[col]).__name__}, expected text"
                )
    with_id = sum("id" in row for row in rows)
    if 0 < with_id < len(rows):
        raise DataError(f"{name}: {len(rows) - with_id} rows have no 'id' while others do")


def run(cfg: TranslateConfig, progress: ProgressSink | None = None, engine: MTEngine | None = None) -> TranslateResult:
    """Translate `cfg.input` into `cfg.output` (+ `<output>.meta.json`); `engine` overrides `cfg.engine`."""
    started = time.perf_counter()
    fields, src, tgt = _validate(cfg)
    out_fmt = _output_format(cfg.output)
    name = "<stdin>" if cfg.input == "-" else cfg.input
    rows = read_rows(cfg.input)
    qa_train = cfg.direction == "train" and cfg.task == "qa"
    _check_rows(rows, fields, qa_train, name)
    if "id" not in rows[0]:
        rows = [{"id": str(i), **row} for i, row in enumerate(rows)]
    references = reference_texts(rows, fields, cfg.references) if cfg.references else None

    out_dir = Path.cwd() if cfg.output == "-" else Path(cfg.output).resolve().parent
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else out_dir / ".flare_cache"
    engine = engine or load_engine(cfg.engine, cfg.mt_model, cfg.revision, cfg.device, cfg.compute_type, cfg.device_map)
    engine.lang_code(src), engine.lang_code(tgt)  # fail before any work if the model lacks a language

    with TranslationCache(cache_dir / "translations.sqlite") as cache:
        mt = _Translator(cfg, engine, cache, src, tgt, progress)
        if qa_train:
            out_rows, failed_ids = _translate_qa_train(rows, fields, mt, cfg.on_projection_failure)
            emptied = len(rows) - len(out_rows) if cfg.on_projection_failure == "keep" else 0
        else:
            out_rows, failed_ids, emptied = _translate_rows(rows, fields, mt, cfg.direction), [], 0
    quality = reference_scores(out_rows, references, cfg.direction, target_lang=tgt.flores) if references else None

    meta_path = None
    if cfg.output == "-":
        sys.stdout.buffer.write(encode_rows(out_rows, out_fmt))
        sys.stdout.buffer.flush()
    else:
        out_path = Path(cfg.output)
        atomic_write_bytes(out_path, encode_rows(out_rows, out_fmt))
        meta_path = str(out_path) + ".meta.json"
        meta = {
            "flare_cli_version": __version__,
            "engine": engine.engine,
            "compute_type": engine.compute_type,
            "device": engine.device,
            "mt_model": engine.model_id,
            "revision": mt.identity,
            "direction": cfg.direction,
            "task": cfg.task,
            "fields": list(fields),
            "src_lang": src.flores,
            "tgt_lang": tgt.flores,
            "num_beams": cfg.num_beams,
            "max_new_tokens": cfg.max_new_tokens,
            "max_input_tokens": cfg.max_input_tokens,
            "rows_in": len(rows),
            "rows_out": len(out_rows),
            "projection_failed": len(failed_ids),
            "empty_answers_dropped": emptied,
            "on_projection_failure": cfg.on_projection_failure if qa_train else None,
            **({"quality": quality} if quality else {}),
        }
        atomic_write_bytes(Path(meta_path), (json.dumps(meta, indent=2, ensure_ascii=False) + "\n").encode())

    return TranslateResult(
        output=cfg.output, meta_path=meta_path, src=src.flores, tgt=tgt.flores, rows_in=len(rows),
        rows_out=len(out_rows), segments=len(mt.segment_keys), translated=mt.translated,
        cache_hits=len(mt.hit_keys - mt.translated_keys), generated_tokens=mt.tokens, seconds=time.perf_counter() - started,
        projection_failed=len(failed_ids), projection_failed_ids=failed_ids[:20], quality=quality,
        empty_answers_dropped=emptied,
    )


def _with_pivots(row: dict, translated: dict[str, str], fields: tuple[str, ...], direction: str) -> dict:
    out = dict(row)
    for f in fields:
        if direction == "train":
            out[f] = translated[f]
            out[PIVOT_PREFIX + f] = row[f]
        else:
            out[PIVOT_PREFIX + f] = translated[f]
    return out


def _translate_rows(rows: list[dict], fields: tuple[str, ...], mt: _Translator, direction: str) -> list[dict]:
    table = mt.translate_all(row[f] for row in rows for f in fields)
    return [_with_pivots(row, {f: table[row[f]] for f in fields}, fields, direction) for row in rows]


# ------------------------------------------------------------------------ QA span projection


def mark_answer(context: str, answer: str, answer_start: int | None) -> tuple[str, int] | None:
    """Wrap the gold answer in quotes; returns (marked context, quotes before the answer) or None."""
    if not answer:
        return None
    start = answer_start if isinstance(answer_start, int) and answer_start >= 0 else -1
    if start < 0 or context[start:start + len(answer)] != answer:
        start = context.find(answer)
    if start < 0:
        return None
    marked = f'{context[:start]}"{answer}"{context[start + len(answer):]}'
    return marked, sum(context[:start].count(q) for q in _QUOTES)


def recover_answer(translated: str, quotes_before: int, quotes_in_source: int) -> tuple[str, str, int] | None:
    """Find the quoted answer in a translated marked context.

    Returns (context without the two marker quotes, answer, answer_start) or None when the MT output
    does not have exactly the source's quotes plus the two markers, or the quoted span is empty.
    """
    positions = [i for i, ch in enumerate(translated) if ch in _QUOTES]
    if len(positions) != quotes_in_source + 2:
        return None
    open_at, close_at = positions[quotes_before], positions[quotes_before + 1]
    span = translated[open_at + 1:close_at]
    answer = span.strip()
    if not answer:
        return None
    context = translated[:open_at] + span + translated[close_at + 1:]
    return context, answer, open_at + (len(span) - len(span.lstrip()))


def _translate_qa_train(rows: list[dict], fields: tuple[str, ...], mt: _Translator, policy: str):
    marks = {}
    for i, row in enumerate(rows):
        marked = mark_answer(row["context"], row["answer"], row.get("answer_start"))
        if marked:
            marks[i] = marked
    texts = [row[f] for row in rows for f in fields if f != "context"] + [row["answer"] for row in rows]
    texts += [rows[i]["context"] if i not in marks else marks[i][0] for i in range(len(rows))]
    table = mt.translate_all(texts)

    projected: dict[int, tuple[str, str, int | None]] = {}
    for i, (marked, quotes_before) in marks.items():
        quotes_in_source = sum(rows[i]["context"].count(q) for q in _QUOTES)
        hit = recover_answer(table[marked], quotes_before, quotes_in_source)
        if hit:
            projected[i] = hit
    # Fallback: translate the plain context and look for the separately translated answer in it.
    unresolved = [i for i in range(len(rows)) if i not in projected]
    plain = mt.translate_all(rows[i]["context"] for i in unresolved)
    failed: list[str] = []
    for i in unresolved:
        row = rows[i]
        context, answer = plain[row["context"]], table[row["answer"]]
        if not row["answer"]:  # unanswerable: nothing to project
            projected[i] = (context, "", None)
        elif answer and answer in context:
            projected[i] = (context, answer, context.index(answer))
        else:
            failed.append(str(row["id"]))
            projected[i] = (context, answer, None)

    if failed and policy == "error":
        raise DataError(
            f"{len(failed)} of {len(rows)} rows failed answer projection (ids: {', '.join(failed[:5])}"
            f"{', ...' if len(failed) > 5 else ''}); translations are cached, rerun with "
            "--on-projection-failure keep or drop"
        )
    failed_set = set(failed)
    out = []
    for i, row in enumerate(rows):
        if policy == "drop" and str(row["id"]) in failed_set:
            continue
        context, answer, start = projected[i]
        if row["answer"] and not answer.strip():
            continue  # the MT erased the answer: the row cannot be kept (TranslateResult.empty_answers_dropped)
        translated = {f: table[row[f]] for f in fields if f != "context"}
        translated["context"] = context
        new = _with_pivots(row, translated, fields, "train")
        new["answer"] = answer
        new["answer_start"] = start
        if "answers" in row:  # only the first gold answer is translated and projected: the others are English
            new["pivot_answers"] = row["answers"]
            new["answers"] = [answer] if answer else []
        out.append(new)
    return out, failed


# ------------------------------------------------------------------ pivots on the fly (flare eval)


def translate_texts(
    texts: list[str],
    *,
    lang: str,
    direction: str,
    mt_model: str | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    num_beams: int = 4,
    max_new_tokens: int = 256,
    engine: MTEngine | None = None,
    progress: ProgressSink | None = None,
    mt_engine: str = "transformers",
    compute_type: str = "auto",
) -> list[str]:
    """Translate ``texts`` English -> ``lang`` (direction "train") or ``lang`` -> English ("test"),
    through the same cache as ``flare translate``; blank texts stay blank. ``mt_engine`` and
    ``compute_type`` pick the engine as ``flare translate --engine/--compute-type`` do."""
    cfg = TranslateConfig(
        input="<texts>", output="-", lang=lang, direction=direction, fields=("text",),
        mt_model=mt_model or DEFAULT_MT_MODEL, revision=revision, num_beams=num_beams,
        max_new_tokens=max_new_tokens, cache_dir=str(cache_dir) if cache_dir else None,
        engine=mt_engine, compute_type=compute_type,
    )
    _, src, tgt = _validate(cfg)
    if not any(t.strip() for t in texts):
        return list(texts)
    engine = engine or load_engine(cfg.engine, cfg.mt_model, cfg.revision, compute_type=cfg.compute_type)
    engine.lang_code(src), engine.lang_code(tgt)
    cache_root = Path(cfg.cache_dir) if cfg.cache_dir else flare_home() / "mt_cache"
    with TranslationCache(cache_root / "translations.sqlite") as cache:
        table = _Translator(cfg, engine, cache, src, tgt, progress).translate_all(texts)
    return [table[t] for t in texts]


def translate_pivots(
    rows: list[dict],
    fields: Iterable[str],
    *,
    lang: str,
    mt_model: str | None = None,
    cache_dir: str | Path | None = None,
    **options,
) -> int:
    """Give every row its missing ``pivot_<field>`` (MT English of ``field``), in place.

    Used by ``flare eval`` on raw target-language inputs. Pivots already in a row are kept; the
    same cache as ``flare translate`` makes a rerun free. Returns the number of texts translated.
    """
    fields = tuple(fields)
    resolve(lang)
    missing = [(row, f) for row in rows for f in fields
               if not (isinstance(row.get(PIVOT_PREFIX + f), str) and row[PIVOT_PREFIX + f].strip())]
    for row, f in missing:
        if not isinstance(row.get(f), str):
            raise DataError(f"row {row.get('id', '?')!s} has no text in column {f!r} to translate into a pivot")
    if not missing:
        return 0
    texts = [row[f] for row, f in missing]
    out = translate_texts(texts, lang=lang, direction="test", mt_model=mt_model, cache_dir=cache_dir, **options)
    for (row, f), pivot in zip(missing, out):
        row[PIVOT_PREFIX + f] = pivot
    return len(set(texts))


def data_mt_model(data: str | None) -> str | None:
    """The MT model recorded in a translated file's ``<file>.meta.json`` sidecar, if any."""
    if not data:
        return None
    meta = Path(str(data) + ".meta.json")
    try:
        return json.loads(meta.read_text(encoding="utf-8")).get("mt_model") if meta.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None

"""What every task provides: loading rows in the canonical columns, prompts, gold, parsing, scoring.

Rows are plain dicts with the columns of docs/architecture.md (``id``, the task's input fields, the
gold column, optional ``pivot_<field>`` columns). A source is either a local JSONL/CSV/parquet file
or a Hub dataset id read through ``datasets.load_dataset``; both go through the task's
``from_source`` mapping, so a local file written in the Hub schema loads exactly like the Hub.
"""

from __future__ import annotations

import csv
import json
import os
import unicodedata
from pathlib import Path
from typing import Any, Optional, Sequence

from flare_cli.errors import ConfigError, DataError, HubError, first_line
from flare_cli.tasks.templates import ANSWER_TAIL, INPUT_FUSION_SEPARATOR, template_body

LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
PIVOT_PREFIX = "pivot_"
# A single input field longer than this is almost surely a mis-parsed file (a whole document in
# one cell), not a task input.
MAX_FIELD_CHARS = 100_000


def is_local_source(source: str) -> bool:
    return Path(source).suffix.lower() in LOCAL_SUFFIXES or os.path.exists(source)


def read_records(path: str) -> list[dict]:
    """Raw records of a local JSONL (or JSON list), CSV or parquet file."""
    file = Path(path)
    if not file.exists():
        raise DataError(f"{path}: no such file")
    if file.is_dir():
        raise DataError(f"{path}: is a directory; pass a .jsonl, .csv or .parquet file")
    suffix = file.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(file).to_pylist()
        except Exception as err:  # pyarrow raises several unrelated types for corrupt files
            raise DataError(f"{path}: not a readable parquet file ({type(err).__name__})") from None
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start})") from None
    if suffix == ".csv":
        return list(csv.DictReader(text.splitlines()))
    if suffix == ".json" and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from None
    else:
        records = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: line {lineno} is not valid JSON ({err.msg})") from None
    if not all(isinstance(r, dict) for r in records):
        raise DataError(f"{path}: every record must be a JSON object")
    return records


def load_hub_records(
    dataset_id: str, config: Optional[str], split: str, *, parquet_export: Optional[bool] = None
) -> list[dict]:
    """Records of a Hub dataset through ``datasets``; offline, unknown and script-only ids give one line.

    ``datasets`` >= 4 no longer runs loading scripts. A script dataset is then read from the Hub's
    own parquet export (branch ``refs/convert/parquet``, one folder per config) when it has one.
    """
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    where = f"{dataset_id}" + (f" (config {config!r})" if config else "")
    try:
        if parquet_export:
            dataset = datasets.load_dataset(
                dataset_id, revision=PARQUET_EXPORT, data_dir=config or "default", split=split
            )
        else:
            dataset = datasets.load_dataset(dataset_id, config, split=split)
    except DatasetNotFoundError:
        raise DataError(f"dataset {where} not found on the Hub or in the local cache") from None
    except ConnectionError:
        raise HubError(
            f"cannot reach the Hub dataset {where} (offline or no network) and it is not cached; "
            "download it elsewhere and pass a local JSONL/CSV/parquet file with --data"
        ) from None
    except RuntimeError as err:  # "Dataset scripts are no longer supported, but found x.py"
        if "scripts are no longer supported" not in str(err):
            raise
        if parquet_export is None:
            return load_hub_records(dataset_id, config, split, parquet_export=True)
        raise DataError(
            f"dataset {where} needs its loading script, which datasets {datasets.__version__} no longer "
            "runs, and its parquet export did not load; export it to JSONL/CSV/parquet elsewhere and "
            "pass the file with --data"
        ) from None
    except (ValueError, FileNotFoundError) as err:  # unknown split or config; no parquet export
        if parquet_export:
            raise DataError(
                f"dataset {where} needs its loading script, which datasets {datasets.__version__} no longer "
                f"runs, and its parquet export has no such config/split ({first_line(err)}); "
                "export it to JSONL/CSV/parquet elsewhere and pass the file with --data"
            ) from None
        raise DataError(f"dataset {where}: {first_line(err)}") from None
    return dataset.to_list()


PARQUET_EXPORT = "refs/convert/parquet"


def parse_columns(spec: Optional[str]) -> dict[str, str]:
    """``--columns question=q,context=passage`` -> {"question": "q", "context": "passage"} (ours = theirs)."""
    if not spec:
        return {}
    mapping: dict[str, str] = {}
    for pair in (p.strip() for p in spec.split(",")):
        ours, sep, theirs = pair.partition("=")
        if not sep or not ours.strip() or not theirs.strip():
            raise ConfigError(f"--columns: {pair!r} is not ours=theirs (e.g. question=q,context=passage)")
        mapping[ours.strip()] = theirs.strip()
    return mapping


def rename_columns(records: list[dict], columns: dict[str, str], source: str) -> list[dict]:
    """Copy each source column ``theirs`` to the canonical name ``ours``."""
    if not columns or not records:
        return records
    missing = [theirs for theirs in columns.values() if theirs not in records[0]]
    if missing:
        raise DataError(
            f"{source}: --columns names {missing[0]!r}, which is not a column "
            f"(found: {', '.join(sorted(records[0])) or 'none'})"
        )
    out = []
    for record in records:
        row = {k: v for k, v in record.items() if k not in columns.values()}
        row.update({ours: record[theirs] for ours, theirs in columns.items()})
        out.append(row)
    return out


class Task:
    """Base class; subclasses set the class attributes and ``from_source``."""

    name: str = ""
    input_fields: tuple[str, ...] = ()
    gold_field: str = ""
    template: str = ""
    hub_id: Optional[str] = None
    default_split: str = "test"
    primary_metric: str = ""

    # -- loading ------------------------------------------------------------------------------
    def hub_config(self, lang: str) -> Optional[str]:
        """The ``datasets`` config name for ``lang`` (None: one config, filtered in from_source)."""
        return None

    def from_source(self, record: dict, index: int, lang: str, split: str) -> Optional[dict]:
        """Map one source record to a canonical row, or None to drop it (another language).

        Rows without an ``id`` get their 0-based position in the source."""
        row = dict(record)
        row.setdefault("id", str(index))
        return row

    def load(
        self,
        source: Optional[str],
        lang: str,
        split: Optional[str] = None,
        *,
        require_gold: bool = True,
        config: Optional[str] = None,
        columns: Optional[dict[str, str]] = None,
    ) -> list[dict]:
        """Rows of ``source`` (local file or Hub id; default: the task's Hub dataset) for ``lang``.

        ``config`` is the Hub config (default: the task's for ``lang``; ignored for local files);
        ``columns`` maps canonical column names to the source's (``{"question": "q"}``)."""
        split = split or self.default_split
        source = source or self.hub_id
        if source is None:
            raise ConfigError(f"task {self.name!r} has no default dataset: pass --data FILE")
        if is_local_source(source):
            records = read_records(source)
        else:
            own = source == self.hub_id
            records = load_hub_records(source, config or (self.hub_config(lang) if own else None), split)
        records = rename_columns(records, columns or {}, source)
        rows = [row for i, r in enumerate(records) if (row := self.from_source(r, i, lang, split)) is not None]
        if records and not rows:
            raise DataError(f"{source}: no rows for language {lang!r}{self._languages_hint(records)}")
        if not rows:
            raise DataError(f"{source}: no rows")
        self.validate(rows, source, require_gold=require_gold)
        return rows

    def _languages_hint(self, records: list[dict]) -> str:
        return ""

    def validate(self, rows: list[dict], source: str, *, require_gold: bool = True) -> None:
        """Check ids, input fields and (when scoring) gold; name the file, row and column."""
        needed = list(self.input_fields) + ([self.gold_field] if require_gold else [])
        missing = [c for c in needed if c not in rows[0]]
        if missing:
            hint = " (use --predict to run without gold)" if missing == [self.gold_field] else ""
            raise DataError(
                f"{source}: missing column {missing[0]!r} for task {self.name!r} "
                f"(found: {', '.join(sorted(rows[0])) or 'none'}){hint}"
            )
        seen: set[str] = set()
        for row in rows:
            row["id"] = str(row["id"])
            if row["id"] in seen:
                raise DataError(f"{source}: duplicate row id {row['id']!r}")
            seen.add(row["id"])
            if require_gold and row.get(self.gold_field) is not None:
                self.check_gold(row, source)
            for column in needed:
                value = row.get(column)
                if not isinstance(value, str) or not value.strip():
                    raise DataError(f"{source}: row {row['id']!r} has an empty or missing {column!r}")
                if len(value) > MAX_FIELD_CHARS:
                    raise DataError(
                        f"{source}: row {row['id']!r} column {column!r} has {len(value)} characters "
                        f"(limit {MAX_FIELD_CHARS}); is the file mis-parsed?"
                    )

    def check_gold(self, row: dict, source: str) -> None:
        """Subclasses with a closed label set normalize labels and refuse unknown ones here."""

    def require_pivots(self, rows: Sequence[dict], source: str) -> None:
        """Every row must carry the English ``pivot_*`` of each input field (FLARE, translate-test...)."""
        for row in rows:
            for field in self.input_fields:
                column = PIVOT_PREFIX + field
                value = row.get(column)
                if not isinstance(value, str) or not value.strip():
                    raise DataError(
                        f"{source}: row {row.get('id')!r} has no {column!r} column; "
                        "run `flare translate --direction test` first"
                    )

    # -- prompts and answers ------------------------------------------------------------------
    def _fields(self, row: dict, pivot: bool) -> dict[str, str]:
        fields = {}
        for field in self.input_fields:
            column = PIVOT_PREFIX + field if pivot else field
            if column not in row:
                raise DataError(f"row {row.get('id')!r} has no {column!r} column")
            fields[field] = row[column]
        return fields

    def prompt(self, row: dict, pivot: bool = False) -> str:
        """The English template filled with the target fields, or with the ``pivot_*`` fields."""
        return self.template.format(**self._fields(row, pivot))

    def input_fusion_prompt(self, row: dict) -> str:
        """English prompt body, a blank line, the target prompt body, then the shared tail."""
        body = template_body(self.template)
        return (
            body.format(**self._fields(row, True))
            + INPUT_FUSION_SEPARATOR
            + body.format(**self._fields(row, False))
            + ANSWER_TAIL
        )

    def target(self, row: dict) -> str:
        return str(row[self.gold_field])

    def parse(self, generated: str) -> Optional[str]:
        raise NotImplementedError

    def is_correct(self, prediction: Optional[str], row: dict, lang: str) -> bool:
        raise NotImplementedError

    def score(self, predictions: Sequence[Optional[str]], rows: Sequence[dict], *, lang: str = "") -> dict:
        """All metrics plus ``metric``/``value`` (the task's headline number), ``n``, ``n_unparseable``."""
        raise NotImplementedError


class ClassificationTask(Task):
    """A closed label set; the model answers with a label word."""

    labels: tuple[str, ...] = ()
    primary_metric = "accuracy"

    def label_name(self, value: Any, row_id: str, source: str) -> str:
        """A dataset label (integer class index or label word) as its label word."""
        if isinstance(value, bool):  # bool is an int subclass; never a valid class index
            value = str(value)
        if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
            index = int(value)
            if 0 <= index < len(self.labels):
                return self.labels[index]
        elif isinstance(value, str) and value.strip().casefold() in self.labels:
            return value.strip().casefold()
        raise DataError(
            f"{source}: row {row_id!r} has label {value!r}; expected one of {', '.join(self.labels)} "
            f"or 0-{len(self.labels) - 1}"
        )

    def check_gold(self, row: dict, source: str) -> None:
        row[self.gold_field] = self.label_name(row[self.gold_field], row["id"], source)

    def parse(self, generated: str) -> Optional[str]:
        """The label word the output starts with, else the only label word it mentions, else None."""
        words = _words(generated.split("\n", 1)[0])
        if words and words[0] in self.labels:
            return words[0]
        mentioned = {w for w in words if w in self.labels}
        return mentioned.pop() if len(mentioned) == 1 else None

    def is_correct(self, prediction: Optional[str], row: dict, lang: str) -> bool:
        return prediction is not None and prediction == row[self.gold_field]

    def score(self, predictions: Sequence[Optional[str]], rows: Sequence[dict], *, lang: str = "") -> dict:
        from flare_cli.metrics import classification_scores

        scores = classification_scores(predictions, [r[self.gold_field] for r in rows], self.labels)
        return {"metric": self.primary_metric, "value": scores[self.primary_metric], **scores}


def _words(text: str) -> list[str]:
    """Casefolded words with Unicode punctuation removed."""
    cleaned = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text.casefold())
    return cleaned.split()

"""Model cards: an honest README.md for an adapter folder or a model `flare merge` made from it.

The card's metadata (base model, licence, language, datasets, eval results) comes from the
folder's adapter_config.json, flare_config.json and metrics.json; its text is one function per
section, joined in order by `_card_body`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from flare_cli import __version__
from flare_cli.adapter_folder import AdapterFolder
from flare_cli.methods import DEFAULT_METHOD, Method, method_of
from flare_cli.publish import hub_id_of, is_local_path, public_name

# Task key -> Hub pipeline task used in model-index.
_HUB_TASK = {"qa": "question-answering", "nli": "text-classification", "sentiment": "text-classification"}


def _encoder_head(flare: dict):
    """The task head an encoder adapter was trained with (flare_config.json meta), or None (decoder)."""
    from flare_cli.flare.encoder import HEADS

    return HEADS.get(flare.get("head") or "")


def _head_kwargs(flare: dict) -> str:
    """from_pretrained arguments of a classification head: its size and label names in training's order."""
    labels = flare.get("labels")
    if not (_encoder_head(flare) and labels):
        return ""
    id2label = dict(enumerate(labels))
    return f", num_labels={len(labels)}, id2label={id2label!r}, label2id={ {v: k for k, v in id2label.items()}!r}"


# Placeholder for the repo id in a card written before anyone knows it (`flare merge`); `flare push`
# puts the real id in its place.
REPO_PLACEHOLDER = "YOUR_USER/YOUR_REPO"
PIPELINE_TAG = "text-generation"  # every task is answered by generation from a prompt

# Licences of models and data flare_cli works with, as Hub licence ids. Most restrictive first.
_KNOWN_LICENSES = (
    (re.compile(r"(^|/)nllb", re.I), "cc-by-nc-4.0"),  # NLLB-200 weights
    (re.compile(r"^facebook/xnli$", re.I), "cc-by-nc-4.0"),
    (re.compile(r"(^|/)m2m100", re.I), "mit"),
    (re.compile(r"^google-research-datasets/tydiqa$", re.I), "apache-2.0"),
    (re.compile(r"^indonlp/nusax-senti$", re.I), "cc-by-sa-4.0"),
    (re.compile(r"^meta-llama/(meta-)?llama-3\.3", re.I), "llama3.3"),
    (re.compile(r"^meta-llama/(meta-)?llama-3\.2", re.I), "llama3.2"),
    (re.compile(r"^meta-llama/(meta-)?llama-3\.1", re.I), "llama3.1"),
    (re.compile(r"^meta-llama/meta-llama-3-", re.I), "llama3"),
    (re.compile(r"^meta-llama/llama-2", re.I), "llama2"),
    (re.compile(r"^google/gemma-3", re.I), "gemma"),
    (re.compile(r"^google/gemma", re.I), "gemma"),
    (re.compile(r"^mistralai/mistral-7b", re.I), "apache-2.0"),
)


def license_rank(license_id: str) -> int:
    """How restrictive a Hub licence id is: 3 non-commercial, 2 custom terms, 1 share-alike, 0 permissive."""
    lid = license_id.lower()
    if "-nc" in lid or lid in {"other", "unknown"}:
        return 3 if "-nc" in lid else 2
    if lid.startswith(("llama", "gemma", "openrail", "bigscience", "creativeml", "deepfloyd", "apple")):
        return 2
    if "-sa" in lid or lid.startswith(("gpl", "agpl", "lgpl")):
        return 1
    return 0


def known_license(name: Optional[str], local_path: Optional[str] = None) -> Optional[str]:
    """The licence of a model or dataset: from its Hub id, or a local copy's README.md front matter."""
    for candidate in (local_path, name):
        if candidate and Path(candidate).is_dir() and (Path(candidate) / "README.md").is_file():
            try:
                from huggingface_hub import ModelCard

                found = ModelCard.load(Path(candidate) / "README.md", ignore_metadata_errors=True).data.license
            except Exception:  # a README that is no card: nothing known from it
                found = None
            if found:
                return str(found)
    hub = hub_id_of(name) or name
    for pattern, lid in _KNOWN_LICENSES:
        if hub and pattern.search(hub):
            return lid
    return None


def derive_license(sources: list[tuple[str, str, Optional[str]]]) -> tuple[Optional[str], list[str]]:
    """(most restrictive known licence, one line per source) for ``(role, name, local path)`` rows."""
    found = []
    for role, name, local in sources:
        lid = known_license(name, local) if name else None
        if lid:
            found.append((role, name, lid))
    if not found:
        return None, []
    top = max(found, key=lambda row: license_rank(row[2]))
    return top[2], [f"{role} `{name}`: `{lid}`" for role, name, lid in found]


def hub_language(code: Optional[str]) -> Optional[str]:
    """The Hub's language code: ISO 639-1 where one exists, else ISO 639-3 (never swh_Latn or sw-KE)."""
    if not code:
        return None
    from flare_cli.languages import resolve

    lang = resolve(code)
    return lang.iso1 or lang.iso3


def _hub_dataset(name: Optional[str]) -> Optional[str]:
    return name if name and not is_local_path(name) else None


def build_model_card(
    folder: Path,
    *,
    base_model: str | None = None,
    relation: str = "adapter",
    dropped_pivot: bool = False,
    merged_dtype: str | None = None,
    repo_id: str | None = None,
    license: str | None = None,
    base_path: str | None = None,
    warnings: list | None = None,
):
    """A README.md for an adapter folder (relation "adapter") or a model merged from it ("merge").

    `folder` is the adapter folder: its adapter_config.json, flare_config.json and metrics.json
    supply the metadata. A local base path is never published (only Hub ids are); `license`
    overrides the derived licence (a line is appended to `warnings` when they differ).
    """
    from huggingface_hub import ModelCard, ModelCardData

    folder = Path(folder)
    if relation not in {"adapter", "merge"}:
        raise ValueError(f"relation must be 'adapter' or 'merge', not {relation!r}")
    adapter = AdapterFolder.read(folder, require_adapter=False)
    adapter_config, flare, metrics = adapter.lora_config, adapter.settings, adapter.metrics()
    method = adapter.method_name
    task = flare.get("task")
    lang = flare.get("lang")
    recorded = base_model or flare.get("base_model") or adapter_config.get("base_model_name_or_path") or base_path
    base_hub = hub_id_of(recorded)
    base_local = base_path or (recorded if recorded and base_hub is None else None)
    name = repo_id.split("/")[-1] if repo_id else folder.resolve().name

    data_mt = flare.get("train_data_mt_model")
    derived, license_lines = derive_license([
        ("base model", base_hub or public_name(recorded), base_local),
        ("MT encoder", flare.get("mt_model"), flare.get("mt_model")),
        ("MT model that translated the training data", data_mt, None),
        ("training data", flare.get("train_data"), None),
    ])
    if license and derived and license != derived and warnings is not None:
        warnings.append(f"--license {license} overrides the derived licence {derived} ({'; '.join(license_lines)})")
    chosen = license or flare.get("license") or derived

    tags = ["flare", "lora", "cross-lingual"] + ([task] if task else []) + ([method] if method != DEFAULT_METHOD else [])
    if relation == "merge":
        tags.append("merged")
    eval_results = [r for row in metrics for r in _eval_results(row, task, lang)] or None
    datasets = list(flare.get("datasets") or [])
    datasets += [d for d in (_hub_dataset(flare.get("train_data")), _hub_dataset(flare.get("validation_data"))) if d]
    language = hub_language(lang)
    head = _encoder_head(flare)
    data = ModelCardData(
        base_model=base_hub,
        base_model_relation=relation if base_hub else None,
        library_name="peft" if relation == "adapter" else "transformers",
        pipeline_tag=head.pipeline_tag if head else PIPELINE_TAG,
        language=[language] if language else None,
        license=chosen,
        tags=list(dict.fromkeys(tags)),
        datasets=list(dict.fromkeys(datasets)) or None,
        model_name=name,
        eval_results=eval_results,
    )
    body = _card_body(_CardFacts(
        name=name,
        repo_id=repo_id or REPO_PLACEHOLDER,
        base=base_hub,
        base_shown=base_hub or public_name(recorded),
        relation=relation,
        method=method,
        flare=flare,
        adapter_config=adapter_config,
        metrics=metrics,
        license=chosen,
        license_lines=license_lines,
        overridden=bool(license and derived and license != derived),
        dropped_pivot=dropped_pivot,
        merged_dtype=merged_dtype,
    ))
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


_SCORE_KEYS = ("exact_match", "f1", "accuracy", "macro_f1")


def _eval_results(row: dict, task: str | None, lang: str | None) -> list:
    """One EvalResult per score in a metrics.json row, on the split and data that were really scored."""
    from huggingface_hub import EvalResult

    settings = row.get("settings") or {}
    row_task = row.get("task") or task or "task"
    row_lang = row.get("lang") or lang
    data = row.get("dataset") or settings.get("data")
    dataset = _hub_dataset(data) or public_name(data) or f"flare-{row_task}" + (f"-{row_lang}" if row_lang else "")
    split = row.get("split") or settings.get("split")
    scores = [(k, row[k]) for k in _SCORE_KEYS if isinstance(row.get(k), (int, float))]
    if not scores:
        scores = [(str(row["metric"]), row["value"])]
    return [
        EvalResult(
            task_type=_HUB_TASK.get(row_task, row_task),
            dataset_type=dataset,
            dataset_name=f"{dataset} ({hub_language(row_lang) or row_lang})" if row_lang else dataset,
            dataset_split=split,
            dataset_config=hub_language(row_lang) if row_lang else None,
            metric_type=metric,
            metric_value=value,
        )
        for metric, value in scores
    ]


# --------------------------------------------------------------------------- card text


@dataclass(frozen=True)
class _CardFacts:
    """What the card's text is written from; `base` is the Hub id (None for a local base)."""

    name: str
    repo_id: str
    base: Optional[str]
    base_shown: Optional[str]
    relation: str  # "adapter" or "merge"
    method: str
    flare: dict
    adapter_config: dict
    metrics: list
    license: Optional[str]
    license_lines: list
    overridden: bool
    dropped_pivot: bool
    merged_dtype: Optional[str]

    @property
    def record(self) -> Method:
        return method_of(self.method)

    @property
    def task(self) -> Optional[str]:
        return self.flare.get("task")

    @property
    def lang(self) -> Optional[str]:
        return self.flare.get("lang")

    @property
    def base_code(self) -> str:
        return self.base or "BASE_MODEL"  # a local base has no Hub id to print

    @property
    def auto_class(self) -> str:
        head = _encoder_head(self.flare)
        return head.auto_class if head else "AutoModelForCausalLM"


def _card_body(facts: _CardFacts) -> str:
    sections = (_intro, _stage1_relation, _merge_warning, _how_to_use, _training_setup, _training_data,
                _evaluation, _license_section, _footer)
    return "\n".join(line for section in sections for line in section(facts))


def _intro(c: _CardFacts) -> list[str]:
    """Title and one sentence: what this is, for which task and language, on which base."""
    what = c.record.card.format(fusion=c.flare.get("fusion"))
    on = f" for `{c.task}`" if c.task else ""
    on += f" in `{c.lang}`" if c.lang else ""
    base_text = f"`{c.base}`" if c.base else f"a local base model (`{c.base_shown}`, no Hub id recorded)"
    if c.relation == "adapter":
        version = c.flare.get("flare_cli_version")
        made_with = f", trained with flare_cli {version}" if version else ""
        sentence = f"This is {what}{on}, on top of {base_text}{made_with}."
    else:
        sentence = f"This is {base_text} with {what}{on} merged into its weights (dtype `{c.merged_dtype}`)."
    return [f"# {c.name}", "", sentence, ""]


def _stage1_relation(c: _CardFacts) -> list[str]:
    """How the stage-1 English task adapter the model was trained on reaches the user (if any)."""
    flare = c.flare
    task_adapter = public_name(flare.get("task_adapter"))
    if c.relation == "merge" and task_adapter and not flare.get("task_adapter_folded"):
        return [f"The stage-1 English task adapter `{task_adapter}` was merged into the base first.", ""]
    if flare.get("task_adapter_folded"):
        return [f"It was trained on the base with the stage-1 English task adapter `{task_adapter}` merged in. "
                "That adapter is folded into this one (one LoRA of their summed rank, the same function), "
                "so this repo alone, on the bare base, is the trained model.", ""]
    if flare.get("bundled_task_adapter"):
        return [f"It was trained on the base with the stage-1 English task adapter `{task_adapter}` merged in. "
                f"That adapter travels in this repo (`{flare['bundled_task_adapter']}/`); `load_flare_model` "
                "merges it into the base before attaching this adapter.", ""]
    if task_adapter:
        return [f"It was trained on the base with the stage-1 English task adapter `{task_adapter}` merged in: "
                "merge that adapter into the base before loading this one.", ""]
    return []


def _merge_warning(c: _CardFacts) -> list[str]:
    """A `--drop-pivot` merge is not the trained model: say so, and what part of it survives."""
    if not (c.relation == "merge" and c.dropped_pivot):
        return []
    fusion = c.flare.get("fusion")
    lines = [
        "## Warning: this is NOT the trained model",
        "",
        f"The adapter was trained with FLARE ({c.method}); its LoRA output depends on "
        + ("the MT encoder's states of the input" if c.record.reads_mt else "the English pivot")
        + ", which a merged model cannot receive. This model was written with `flare merge --drop-pivot`: "
        "the pivot path is dropped, so it behaves differently from the trained adapter. Evaluate it with "
        "`flare eval` before use; the faithful export is the standalone adapter.",
        "",
    ]
    if fusion == "add":
        return lines + [
            "With fusion `add` the adapted layer computes (W + sBA)u + sBA h, where u is the target-language "
            "input and h the pivot. The merged weights reproduce (W + sBA)u exactly; the pivot term sBA h "
            "is what is dropped.",
            "",
        ]
    return lines + [
        f"With fusion `{fusion}` the adapter is not linear in its input, so no part of the trained "
        "layer is reproduced exactly; the merged weights are W + sBA only.",
        "",
    ]


def _how_to_use(c: _CardFacts) -> list[str]:
    lines = ["## How to use", ""]
    if not c.base:
        lines += ["Replace `BASE_MODEL` below with the base model this adapter was trained on "
                  f"(a local folder named `{c.base_shown}`).", ""]
    if c.relation == "merge":
        return lines + _use_merged(c)
    return lines + (_use_flare(c) if c.record.fuses else _use_peft(c))


def _eval_command(c: _CardFacts) -> str:
    task_lang = f" --task {c.task or 'TASK'} --lang {c.lang or 'LANG'}"
    return f"flare eval --adapter {c.repo_id}{task_lang}" + ("" if c.base else " --base BASE_MODEL")


def _use_merged(c: _CardFacts) -> list[str]:
    return ["```python", f"from transformers import {c.auto_class}, AutoTokenizer", "",
            f'model = {c.auto_class}.from_pretrained("{c.repo_id}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{c.repo_id}")', "```", ""]


def _use_flare(c: _CardFacts) -> list[str]:
    """A fusing adapter loads only through flare_cli; plain peft gives the pivot-less model."""
    lines = [
        "Load it with flare_cli (`pip install flare-cli`), which reads `flare_config.json` and restores the "
        "pivot fusion:",
        "",
        "```bash",
        _eval_command(c),
        "```",
        "",
        "```python",
        f"from transformers import {c.auto_class}, AutoTokenizer",
        "",
        "from flare_cli.flare import load_flare_model",
        "",
        f'base = {c.auto_class}.from_pretrained("{c.base_code}"{_head_kwargs(c.flare)})',
        f'tokenizer = AutoTokenizer.from_pretrained("{c.base_code}")',
        f'model = load_flare_model(base, "{c.repo_id}")  # downloads the repo; merges its stage-1 adapter',
        "```",
        "",
        "Plain `peft` (`PeftModel.from_pretrained`) loads only the LoRA matrices and ignores the "
        "`lora_flare_*` tensors and the pivot: that gives the pivot-less model, not the trained one.",
        "",
    ]
    if c.record.reads_mt:
        revision = c.flare.get("mt_revision")
        lines += [
            f"FLARE-MT needs its frozen MT encoder, `{c.flare.get('mt_model')}`"
            + (f" (revision `{revision}`)" if revision else "")
            + ": it is not part of this adapter; flare_cli loads it as named in `flare_config.json` "
            "(`flare eval --mt-model PATH` points to a local copy). No English pivot and no translation "
            "are needed at inference.",
            "",
        ]
    return lines


def _use_peft(c: _CardFacts) -> list[str]:
    return [
        "```python",
        "from peft import PeftModel",
        f"from transformers import {c.auto_class}",
        "",
        f'base = {c.auto_class}.from_pretrained("{c.base_code}"{_head_kwargs(c.flare)})',
        f'model = PeftModel.from_pretrained(base, "{c.repo_id}")',
        "```",
        "",
        "or with flare_cli:",
        "",
        "```bash",
        _eval_command(c),
        f"flare merge --adapter {c.repo_id} --output-dir merged" + ("" if c.base else " --base BASE_MODEL"),
        "```",
        "",
    ]


def _training_setup(c: _CardFacts) -> list[str]:
    """LoRA hyperparameters (adapter_config.json) and FLARE settings (flare_config.json)."""
    if not c.adapter_config:
        return []
    lines = ["## Training setup", ""]
    for key, label in (("r", "LoRA rank"), ("lora_alpha", "LoRA alpha"), ("target_modules", "target modules")):
        if c.adapter_config.get(key) is not None:
            value = c.adapter_config[key]
            value = ", ".join(sorted(value)) if isinstance(value, list) else value
            lines.append(f"- {label}: {value}")
    for key in ("fusion", "fused_modules", "align", "mt_model", "translate_model"):
        if c.flare.get(key):
            value = c.flare[key]
            lines.append(f"- {key}: {', '.join(value) if isinstance(value, list) else value}")
    return lines + [""]


def _training_data(c: _CardFacts) -> list[str]:
    """The data it was trained and validated on, and the MT model that translated it."""
    flare = c.flare
    lines = []
    if flare.get("train_data"):
        lines.append(f"- training data: `{public_name(flare['train_data'])}`")
    if flare.get("train_data_mt_model"):
        revision = flare.get("train_data_mt_revision")
        lines.append(f"- machine-translated by `{flare['train_data_mt_model']}`"
                     + (f" (revision `{revision}`)" if revision else "")
                     + (f", {flare['train_data_src_lang']} -> {flare['train_data_tgt_lang']}"
                        if flare.get("train_data_src_lang") else ""))
    if flare.get("validation_data"):
        lines.append(f"- validation data: `{public_name(flare['validation_data'])}`")
    return ["## Training data", "", *lines, ""] if lines else []


def _evaluation(c: _CardFacts) -> list[str]:
    """metrics.json as a table, one row per score, naming the data and split really scored."""
    if not c.metrics:
        return []
    lines = ["## Evaluation", "", "| task | lang | method | data | split | metric | value | n |",
             "|---|---|---|---|---|---|---|---|"]
    for row in c.metrics:
        settings = row.get("settings") or {}
        data = public_name(row.get("dataset") or settings.get("data")) or ""
        split = row.get("split") or settings.get("split") or ""
        lines.append(
            f"| {row.get('task', c.task or '')} | {row.get('lang', c.lang or '')} | {row.get('method', c.method)} "
            f"| {data} | {split} | {row['metric']} | {row['value']} | {row.get('n', '')} |"
        )
    return lines + [""]


def _license_section(c: _CardFacts) -> list[str]:
    """The licences of what the model is made from, and which one the card declares."""
    lines = ["## License", ""]
    if c.license_lines:
        lines.append("Known licences of what this model is made from: " + "; ".join(c.license_lines) + ".")
    if c.overridden:
        lines.append(f"The publisher declared `{c.license}` instead of the most restrictive of these.")
    elif c.license and license_rank(c.license) == 3:
        lines.append(
            f"This card declares `{c.license}`, the most restrictive of them (non-commercial): check every "
            "licence above before any commercial use."
        )
    elif c.license:
        lines.append(f"This card declares `{c.license}`, the most restrictive of them; the others apply as well.")
    else:
        lines.append("The base model's licence applies to this model as well.")
    return lines + [""]


def _footer(c: _CardFacts) -> list[str]:
    return [f"Card written by flare_cli {__version__} (FLARE: Borchert et al., ACL 2025).", ""]

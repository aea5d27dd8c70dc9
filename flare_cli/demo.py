"""`flare demo`: the whole FLARE pipeline on the embedded toy world, offline, in minutes.

It runs the real stages (the same `run()` functions the commands call) in order:

    toy world -> translate (train, validation, test pivots) -> train stage 1 (English LoRA)
    -> train translate-train LoRA and FLARE -> eval every method -> merge LoRA -> push --dry-run

and prints the equivalent shell command before each step, so the demo doubles as a tutorial.
Every step is resumable: a rerun reuses the world, finished translations, trained adapters and
evaluations in the work folder.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

from flare_cli.errors import ConfigError
from flare_cli.fsutil import atomic_write_json, atomic_write_text, check_output_dir
from flare_cli.methods import method_of

# Methods the demo trains (stage 3) and compares, in table order; the LoRA baseline is merged and
# the FLARE adapter pushed (dry run).
TRAINED_METHODS = ("lora", "flare")
EVAL_METHODS = ("zero-shot", "translate-test", *TRAINED_METHODS)
MERGED_METHOD, PUSHED_METHOD = TRAINED_METHODS
SCORE_KEYS = {"qa": ("exact_match", "f1"), "nli": ("accuracy",), "sentiment": ("accuracy", "macro_f1")}
# The world's reference English of each translated test field: the demo scores its translate-test
# MT with them (sacrebleu chrF / chrF++ / BLEU), so the table says how good the pivots were.
PIVOT_REFERENCES = {"qa": "context=pivot_context,question=pivot_question",
                    "nli": "premise=pivot_premise,hypothesis=pivot_hypothesis", "sentiment": "text=pivot_text"}


@dataclass(frozen=True)
class Recipe:
    """Hyper-parameters of one demo size (the toy world's, see docs/toyworld.md)."""

    world_size: str
    num_beams: int
    stage1: dict[str, Any]  # TrainConfig fields of the English task LoRA
    stage3: dict[str, Any]  # TrainConfig fields shared by the target-language LoRA and FLARE
    eval_limit: Optional[int]
    eval_batch_size: int = 32
    # Rows translated per split (the MT model is the slowest step on a CPU); None: all of them.
    train_rows: Optional[int] = None
    validation_rows: Optional[int] = None
    # translate-train rows whose answer the MT loses (no quoted span in the output): the world's
    # low-resource MT loses about half; dropping them keeps every training answer a span.
    projection: str = "keep"


RECIPES = {
    # The base is instruction-tuned in English (docs/toyworld.md), so stage 1 only adapts it to the
    # task's data; stage 3 is the paper's r=8/alpha=16 LoRA on every linear layer, with the pivot fused
    # into q_proj and v_proj. Validation loss picks the best checkpoint of each run.
    "full": Recipe(
        world_size="full",
        num_beams=1,
        stage1=dict(target_modules="all-linear", r=16, lora_alpha=32, learning_rate=2e-3, batch_size=32,
                    micro_batch_size=32, max_steps=150, warmup_ratio=0.05, eval_steps=50, max_length=160),
        stage3=dict(target_modules="all-linear", fused_modules="q_proj,v_proj", r=8, lora_alpha=16,
                    learning_rate=5e-3, batch_size=32, micro_batch_size=32, max_steps=200, warmup_ratio=0.05,
                    eval_steps=50, max_length=160),
        eval_limit=500,
        # All 8000 English train rows (about half survive the projection): over 3 seeds FLARE led
        # LoRA by 9.2 exact match with them and by 6.5 with the first 2000 (docs/results.md).
        train_rows=None,
        validation_rows=200,
        projection="drop",
    ),
    # The CI end-to-end run: every step and file, barely trained.
    "quick": Recipe(
        world_size="quick",
        num_beams=1,
        stage1=dict(target_modules="all-linear", r=8, lora_alpha=16, learning_rate=3e-3, batch_size=16,
                    micro_batch_size=16, max_steps=6, eval_steps=3, max_length=160),
        stage3=dict(target_modules="all-linear", fused_modules="q_proj,v_proj", r=8, lora_alpha=16,
                    learning_rate=5e-3, batch_size=16, micro_batch_size=16, max_steps=4, eval_steps=2,
                    max_length=160),
        eval_limit=24,
        eval_batch_size=8,
    ),
}


@dataclass
class DemoConfig:
    workdir: str = "flare-demo"
    quick: bool = False
    seed: int = 0  # training seed (the world is always seed 0: one world, many runs)
    task: str = "qa"
    world_root: Optional[str] = None  # default: $FLARE_HOME/toyworld/<size>-seed0
    repo_id: str = "your-name/flare-toy-qtw-qa"
    eval_limit: Optional[int] = None  # default: the recipe's
    # MT engine of the translate steps: None picks ctranslate2 when it is installed (same float32
    # translations, several times faster; `make demo` installs it), else transformers.
    mt_engine: Optional[str] = None
    # The world's MT quality: the share of English words its MT learns wrong (None: the world's
    # default, a low-resource level; 0: a near-perfect MT). Another value builds (once) a world.
    mt_confusion: Optional[float] = None

    def __post_init__(self) -> None:
        if self.task not in SCORE_KEYS:
            raise ConfigError(f"unknown task {self.task!r} for the demo; choose qa, nli or sentiment")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise ConfigError("--eval-limit must be at least 1")
        if self.mt_confusion is not None and not 0 <= self.mt_confusion <= 1:
            raise ConfigError(f"--mt-confusion is a share of words, from 0 to 1; got {self.mt_confusion}")
        check_output_dir(self.workdir, "--workdir")
        if self.world_root:
            check_output_dir(self.world_root, "--world-root")
        if self.mt_engine is not None:
            from flare_cli.mt_engines import check_engine_options

            check_engine_options(self.mt_engine)

    @property
    def engine(self) -> str:
        from flare_cli.mt_engines import ct2_available

        return self.mt_engine or ("ctranslate2" if ct2_available() else "transformers")


@dataclass
class DemoResult:
    workdir: str
    world_root: str
    task: str
    lang: str
    rows: list[dict]  # one per method: {"method", "adapter", "n", <score keys>}
    timings: dict[str, float]
    merged_dir: str
    push_files: list[str]
    seconds: float = 0.0
    score_keys: list[str] = field(default_factory=list)  # the table's score columns, main one first
    # FLARE against the translate-train LoRA on the main score: {"label", "method", "baseline", "key", "gain"}
    headline: dict = field(default_factory=dict)
    # Stage 1 on the English originals of the test rows: {"n", <score keys>} (translate-test's ceiling)
    english: dict = field(default_factory=dict)
    # The test pivots' MT quality against the world's reference English, all fields together:
    # {"direction", "chrf", "chrf++", "bleu", "signatures"} (sacrebleu, corpus level)
    mt_quality: dict = field(default_factory=dict)

    def score(self, method: str, key: str) -> float:
        return next(row[key] for row in self.rows if row["method"] == method)


class Reporter(Protocol):
    """What the CLI shows: a header per step and progress within it."""

    def step(self, index: int, total: int, title: str, command: str) -> None: ...
    def progress(self, completed: float, total: Optional[float], note: str = "") -> None: ...
    def finished(self, seconds: float, note: str = "") -> None: ...


class _Silent:
    def step(self, index, total, title, command): pass
    def progress(self, completed, total, note=""): pass
    def finished(self, seconds, note=""): pass


def command(*parts: Any) -> str:
    """A copy-pasteable shell command."""
    return shlex.join(str(p) for p in parts if p is not None)


def cli_command(name: str, cfg: Any) -> str:
    """`flare <name>` with one flag per field of the stage config ``cfg`` that differs from its
    default, so the printed command is the run itself (tests parse it with the real CLI)."""
    flags: list[str] = []
    for f in fields(cfg):
        if not f.repr:
            continue  # secrets (PushConfig.token) never reach a printed command
        value = getattr(cfg, f.name)
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = MISSING  # required: always given
        if value == default or (value is None and default is MISSING):
            continue
        flag = f"--{f.name.replace('_', '-')}"
        if isinstance(value, bool):
            flags.append(flag if value else f"--no-{f.name.replace('_', '-')}")
        elif isinstance(value, (list, tuple)):
            flags += [flag, ",".join(map(str, value))]
        else:
            flags += [flag, str(value)]
    return command("flare", name, *flags)


@dataclass
class Step:
    key: str
    title: str
    command: str  # the equivalent shell command, built from ``config``
    run: Callable[[], str]
    config: Any = None  # the stage config the step runs (None: not a `flare` stage)
    cli_name: Optional[str] = None  # the `flare` subcommand of ``command``


class _Pipeline:
    def __init__(self, cfg: DemoConfig, reporter: Reporter):
        self.cfg = cfg
        self.recipe = RECIPES["quick" if cfg.quick else "full"]
        self.reporter = reporter
        self.work = Path(cfg.workdir)
        self.timings: dict[str, float] = {}
        self.steps: list[Step] = []

    def add(self, key: str, title: str, cmd: str, fn: Callable[[], str]) -> None:
        self.steps.append(Step(key, title, cmd, fn))

    def add_stage(self, key: str, title: str, name: str, config: Any, fn: Callable[[], str], prefix: str = "") -> None:
        """A step that runs ``config`` through a stage; its command is `flare <name>` built from it."""
        self.steps.append(Step(key, title, prefix + cli_command(name, config), fn, config, name))

    def run(self) -> None:
        for index, step in enumerate(self.steps, 1):
            self.reporter.step(index, len(self.steps), step.title, step.command)
            start = time.perf_counter()
            note = step.run() or ""
            self.timings[step.key] = round(time.perf_counter() - start, 2)
            self.reporter.finished(self.timings[step.key], note)


def plan(cfg: DemoConfig, reporter: Optional[Reporter] = None) -> tuple[_Pipeline, dict[str, Any]]:
    """The demo's steps (nothing runs yet) and the state they fill (``results``, ``push_files``)."""
    from flare_cli import evaluate, hub, merge, toyworld, train, translate

    reporter = reporter or _Silent()
    pipe = _Pipeline(cfg, reporter)
    recipe, work, task = pipe.recipe, pipe.work, cfg.task
    world_root = Path(cfg.world_root) if cfg.world_root else toyworld.default_root(recipe.world_size, 0, cfg.mt_confusion)
    lang = toyworld.TARGET_LANG
    engine = cfg.engine
    state: dict[str, Any] = {"world_root": world_root, "lang": lang, "results": {}}

    def build_world() -> str:
        world = toyworld.build(world_root, seed=0, size=recipe.world_size, mt_confusion=cfg.mt_confusion,
                               progress=lambda desc, done, total: reporter.progress(done, total, desc))
        state["world"] = world
        if world.reused:
            return "reused the cached world"
        shipped = f" (base and MT copied from the package: {', '.join(world.shipped)})" if world.shipped else ""
        return f"built in {sum(world.timings.values()):.0f}s{shipped}"

    pipe.add("world", f"Build the toy world ({recipe.world_size}): languages, tokenizer, base LLM, MT model, data",
             command("python", "-m", "flare_cli.toyworld", "--size", recipe.world_size, "--root", world_root,
                     *(("--mt-confusion", cfg.mt_confusion) if cfg.mt_confusion is not None else ())),
             build_world)

    data_dir = work / "data"
    mt_dir = world_root / "mt"
    files = {
        "train": (world_root / "data" / task / "train.en.jsonl", data_dir / f"train.{lang}.jsonl", "train"),
        "validation": (world_root / "data" / task / "validation.en.jsonl", data_dir / f"validation.{lang}.jsonl", "train"),
        "test": (world_root / "data" / task / f"test.{lang}.jsonl", data_dir / f"test.{lang}.jsonl", "test"),
    }
    limit = cfg.eval_limit or recipe.eval_limit
    rows_of = {"train": recipe.train_rows, "validation": recipe.validation_rows, "test": limit}
    for split, (src, dst, direction) in files.items():
        what = ("English training data into qtw (translate-train)" if split == "train" else
                "English validation data into qtw" if split == "validation" else
                "qtw test inputs into English pivots (translate-test)")
        n = rows_of[split]
        subset = dst.with_name(f"{src.stem}.first{n}.jsonl") if n else None
        config = translate.TranslateConfig(
            input=str(subset or src), output=str(dst), lang=lang, direction=direction, task=task, mt_model=str(mt_dir),
            num_beams=recipe.num_beams, engine=engine,
            references=PIVOT_REFERENCES[task] if split == "test" else None,
            on_projection_failure=recipe.projection if direction == "train" else "keep")
        head = f"head -n {n} {shlex.quote(str(src))} > {shlex.quote(str(subset))} && " if n else ""
        pipe.add_stage(f"translate_{split}", f"Translate the {what}", "translate", config,
                       lambda src=src, config=config, n=n: _translate(src, config, n, reporter, state), prefix=head)

    base = str(world_root / "base")
    stage1_dir = work / "stage1-en"
    stage1 = train.TrainConfig(base=base, output_dir=str(stage1_dir), task=task, lang="en",
                               data=str(files["train"][0]), validation_data=str(files["validation"][0]),
                               **dict(recipe.stage1, seed=cfg.seed))
    pipe.add_stage("train_stage1", "Train stage 1: an English task LoRA on the base", "train", stage1,
                   lambda: _train(stage1, reporter))

    adapters = {}
    for method in TRAINED_METHODS:
        out = work / f"{method}-{lang}"
        adapters[method] = out
        options = dict(recipe.stage3, seed=cfg.seed)
        if not method_of(method).fuses:
            options.pop("fused_modules")
        config = train.TrainConfig(base=base, output_dir=str(out), task_adapter=str(stage1_dir), task=task, lang=lang,
                                   method=method, data=str(files["train"][1]),
                                   validation_data=str(files["validation"][1]), **options)
        title = ("Train stage 3: FLARE, fusing the English pivot into the LoRA bottleneck" if method_of(method).fuses
                 else "Train stage 3: translate-train LoRA on the machine-translated data")
        pipe.add_stage(f"train_{method}", title, "train", config, lambda config=config: _train(config, reporter))

    english_test = world_root / "data" / task / "test.en.jsonl"
    english = evaluate.EvalConfig(base=base, task_adapter=str(stage1_dir), method="zero-shot", task=task, lang="en",
                                  data=str(english_test), limit=limit, output_dir=str(work / "eval" / "stage1-en"),
                                  batch_size=recipe.eval_batch_size)
    pipe.add_stage("eval_english", "Evaluate stage 1 on the English originals of the test rows (the ceiling)", "eval",
                   english, lambda: _evaluate("english", english, task, state["results"], reporter))

    test_file = files["test"][1]
    for method in EVAL_METHODS:
        adapter = adapters.get(method)
        config = evaluate.EvalConfig(
            adapter=str(adapter) if adapter else None, method=method, data=str(test_file), limit=limit,
            output_dir=str(work / "eval" / method), batch_size=recipe.eval_batch_size,
            mt_engine=engine if method_of(method).prompt == "pivot" else "transformers",
            **({} if adapter else {"base": base, "task_adapter": str(stage1_dir), "task": task, "lang": lang}),
        )
        pipe.add_stage(f"eval_{method}", f"Evaluate {method} on the qtw test set", "eval", config,
                       lambda method=method, config=config: _evaluate(method, config, task, state["results"], reporter))

    merged = merge.MergeConfig(adapter=adapters[MERGED_METHOD], output_dir=work / "merged-lora", overwrite=True)
    pipe.add_stage("merge", "Merge the LoRA baseline (with stage 1) into a standalone model", "merge", merged,
                   lambda: _merge(merged))
    push = hub.PushConfig(folder=adapters[PUSHED_METHOD], repo_id=cfg.repo_id, dry_run=True)
    pipe.add_stage("push", "Publish the FLARE adapter (dry run: lists files and the model card, contacts nobody)",
                   "push", push, lambda: _push(push, state))
    state["merged_dir"] = merged.output_dir
    return pipe, state


def run(cfg: DemoConfig, reporter: Optional[Reporter] = None) -> DemoResult:
    """Run the demo pipeline in ``cfg.workdir``; returns the comparison rows and timings."""
    _quiet_libraries()
    started = time.perf_counter()
    Path(cfg.workdir).mkdir(parents=True, exist_ok=True)
    pipe, state = plan(cfg, reporter)
    from flare_cli.toyworld.pretrain import restored_threads, train_threads

    with restored_threads():
        import torch

        if not os.environ.get("OMP_NUM_THREADS"):  # the user's choice wins
            torch.set_num_threads(train_threads())  # one thread on busy cores: two would spin-wait
        pipe.run()
    rows = [_table_row(method, state["results"][method], cfg.task) for method in EVAL_METHODS]
    keys = [k for k in SCORE_KEYS[cfg.task] if any(k in row for row in rows)]
    score = {row["method"]: row.get(keys[0]) for row in rows} if keys else {}
    headline = {}
    if keys and score.get(PUSHED_METHOD) is not None and score.get(MERGED_METHOD) is not None:
        headline = {"label": "FLARE vs translate-train LoRA", "method": PUSHED_METHOD, "baseline": MERGED_METHOD, "key": keys[0],
                    "gain": round(score[PUSHED_METHOD] - score[MERGED_METHOD], 4)}
    result = DemoResult(
        workdir=str(pipe.work), world_root=str(state["world_root"]), task=cfg.task, lang=state["lang"], rows=rows,
        timings=pipe.timings, merged_dir=str(state["merged_dir"]), push_files=state.get("push_files", []),
        seconds=round(time.perf_counter() - started, 2), score_keys=keys, headline=headline,
        mt_quality=state.get("mt_quality", {}),
        english=_table_row("english", state["results"]["english"], cfg.task) if "english" in state["results"] else {},
    )
    _write_summary(pipe.work / "summary.json", result)
    return result


def _quiet_libraries() -> None:
    """The demo draws its own progress; per-file download/load bars from the libraries are noise."""
    import warnings

    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    disable_progress_bars()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*is_gradient_checkpointing.*")


def _translate(src: Path, cfg, n_rows: Optional[int], reporter: Reporter, state: dict) -> str:
    from flare_cli import translate

    dst = Path(cfg.output)
    meta_file = Path(str(dst) + ".meta.json")
    if dst.is_file() and meta_file.is_file():
        quality = json.loads(meta_file.read_text(encoding="utf-8")).get("quality")
        if quality:
            state["mt_quality"] = _pooled_quality(cfg, quality)
        return "reused"
    if n_rows:  # the first n rows, as the printed `head -n` gives
        dst.parent.mkdir(parents=True, exist_ok=True)
        lines = src.read_text(encoding="utf-8").splitlines(keepends=True)[:n_rows]
        atomic_write_text(cfg.input, "".join(lines))

    class Sink:
        total = 0
        done = 0

        def start(self, total_segments: int) -> None:
            self.total, self.done = total_segments, 0
            reporter.progress(0, total_segments, "segments")

        def advance(self, segments: int, generated_tokens: int) -> None:
            self.done += segments
            reporter.progress(self.done, self.total, "segments")

    result = translate.run(cfg, progress=Sink())
    failed = f", {result.projection_failed} answers not projected" if result.projection_failed else ""
    if result.empty_answers_dropped:
        failed += f" ({result.empty_answers_dropped} rows dropped: empty translated answer)"
    quality = ""
    if result.quality:
        state["mt_quality"] = _pooled_quality(cfg, result.quality)
        quality = f", qtw->en chrF++ {state['mt_quality']['chrf++']:.1f} against the reference English"
    return f"{result.rows_out} rows, {result.translated} segments translated{failed}{quality}"


def _pooled_quality(cfg, per_field: dict) -> dict:
    """One corpus score over every translated test field (the per-field scores are in the
    translation's .meta.json): what a reader compares with FLORES figures."""
    from flare_cli.metrics import mt_scores

    def rows(path) -> list[dict]:
        return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]

    fields = [pair.split("=") for pair in (cfg.references or "").split(",") if pair]
    gold = {row["id"]: row for row in rows(cfg.input)}  # the output's pivot_* columns hold the MT
    translated = [row for row in rows(cfg.output) if row["id"] in gold]
    hypotheses = [row[f"pivot_{name}"] for row in translated for name, _ in fields]
    references = [gold[row["id"]][column] for row in translated for _, column in fields]
    pooled = mt_scores(hypotheses, references)
    return {"direction": "qtw->en", "n": pooled["n"], "chrf": round(pooled["chrf"], 2),
            "chrf++": round(pooled["chrf++"], 2), "bleu": round(pooled["bleu"], 2),
            "signatures": pooled["signatures"], "per_field": {k: round(v["chrf++"], 2) for k, v in per_field.items()}}


def _train(cfg, reporter: Reporter) -> str:
    from flare_cli import train

    def on_log(record: dict) -> None:
        if "loss" in record:
            reporter.progress(record["step"], record["total_steps"], f"loss {record['loss']:.3f}")

    result = train.run(cfg, on_log=on_log)
    if result.already_complete:
        return "reused"
    best = f", best validation loss {result.best_validation_loss:.3f}" if result.best_validation_loss else ""
    return f"{result.steps} steps, train loss {result.train_loss:.3f}{best}"


def _evaluate(method: str, cfg, task: str, results: dict, reporter: Reporter) -> str:
    from flare_cli import evaluate

    metrics_file = Path(cfg.output_dir) / "metrics.json"
    if metrics_file.is_file():
        results[method] = json.loads(metrics_file.read_text(encoding="utf-8"))
        return "reused"
    done = [0]

    def progress(n: int) -> None:
        done[0] += n
        reporter.progress(done[0], cfg.limit, "rows")

    metrics = evaluate.run(cfg, progress=progress).metrics
    results[method] = metrics
    return ", ".join(f"{k} {metrics[k]:.1f}" for k in SCORE_KEYS[task] if k in metrics)


def _merge(cfg) -> str:
    from flare_cli import merge

    result = merge.run(cfg)
    return f"{result.dtype}, {sum(f.endswith('.safetensors') for f in result.files)} safetensors file(s)"


def _push(cfg, state: dict) -> str:
    from flare_cli import hub

    result = hub.run(cfg)
    state["push_files"] = result.files
    return f"would upload {len(result.files)} files to {cfg.repo_id}: {', '.join(result.files)}"


def _table_row(method: str, metrics: dict, task: str) -> dict:
    row = {"method": method, "adapter": metrics.get("adapter"), "n": metrics["n"],
           "unparseable": metrics.get("n_unparseable", 0)}
    row.update({k: metrics[k] for k in SCORE_KEYS[task] if k in metrics})
    return row


def _write_summary(path: Path, result: DemoResult) -> None:
    atomic_write_json(path, asdict(result), sort_keys=True)

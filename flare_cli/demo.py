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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

from flare_cli.errors import ConfigError
from flare_cli.fsutil import check_output_dir

# Methods the demo compares, in table order.
EVAL_METHODS = ("zero-shot", "translate-test", "lora", "flare")
SCORE_KEYS = {"qa": ("exact_match", "f1"), "nli": ("accuracy",), "sentiment": ("accuracy", "macro_f1")}


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


RECIPES = {
    # Stage 1 teaches English QA to the base (its English QA EM is ~0.07); stage 3 is the paper's
    # r=8/alpha=16 LoRA on every linear layer, with the pivot fused into q_proj and v_proj.
    "full": Recipe(
        world_size="full",
        num_beams=1,
        stage1=dict(target_modules="all-linear", r=16, lora_alpha=32, learning_rate=3e-3, batch_size=32,
                    micro_batch_size=32, max_steps=800, warmup_ratio=0.05, eval_steps=200, max_length=160),
        stage3=dict(target_modules="all-linear", fused_modules="q_proj,v_proj", r=8, lora_alpha=16,
                    learning_rate=5e-3, batch_size=32, micro_batch_size=32, max_steps=400, warmup_ratio=0.05,
                    eval_steps=100, max_length=160),
        eval_limit=500,
        train_rows=1000,
        validation_rows=200,
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

    def __post_init__(self) -> None:
        if self.task not in SCORE_KEYS:
            raise ConfigError(f"unknown task {self.task!r} for the demo; choose qa, nli or sentiment")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise ConfigError("--eval-limit must be at least 1")
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


class _Pipeline:
    def __init__(self, cfg: DemoConfig, reporter: Reporter):
        self.cfg = cfg
        self.recipe = RECIPES["quick" if cfg.quick else "full"]
        self.reporter = reporter
        self.work = Path(cfg.workdir)
        self.timings: dict[str, float] = {}
        self.steps: list[tuple[str, str, str, Callable[[], str]]] = []

    def add(self, key: str, title: str, cmd: str, fn: Callable[[], str]) -> None:
        self.steps.append((key, title, cmd, fn))

    def run(self) -> None:
        for index, (key, title, cmd, fn) in enumerate(self.steps, 1):
            self.reporter.step(index, len(self.steps), title, cmd)
            start = time.perf_counter()
            note = fn() or ""
            self.timings[key] = round(time.perf_counter() - start, 2)
            self.reporter.finished(self.timings[key], note)


def run(cfg: DemoConfig, reporter: Optional[Reporter] = None) -> DemoResult:
    """Run the demo pipeline in ``cfg.workdir``; returns the comparison rows and timings."""
    from flare_cli import toyworld

    reporter = reporter or _Silent()
    _quiet_libraries()
    started = time.perf_counter()
    pipe = _Pipeline(cfg, reporter)
    recipe, work, task = pipe.recipe, pipe.work, cfg.task
    work.mkdir(parents=True, exist_ok=True)
    world_root = Path(cfg.world_root) if cfg.world_root else toyworld.default_root(recipe.world_size, 0)
    lang = toyworld.TARGET_LANG
    engine = cfg.engine
    state: dict[str, Any] = {}

    def build_world() -> str:
        world = toyworld.build(world_root, seed=0, size=recipe.world_size,
                               progress=lambda desc, done, total: reporter.progress(done, total, desc))
        state["world"] = world
        return "reused the cached world" if world.reused else f"built in {sum(world.timings.values()):.0f}s"

    pipe.add("world", f"Build the toy world ({recipe.world_size}): languages, tokenizer, base LLM, MT model, data",
             command("python", "-m", "flare_cli.toyworld", "--size", recipe.world_size, "--root", world_root),
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
        head = f"head -n {n} {shlex.quote(str(src))} | " if n else ""
        pipe.add(f"translate_{split}", f"Translate the {what}",
                 head + command("flare", "translate", "--input", "-" if n else src, "--output", dst, "--lang", lang,
                                "--task", task, "--direction", direction, "--mt-model", mt_dir,
                                "--num-beams", recipe.num_beams, "--engine", engine),
                 lambda src=src, dst=dst, direction=direction, n=n: _translate(
                     src, dst, direction, lang, task, mt_dir, recipe, n, reporter, engine))

    base = str(world_root / "base")
    stage1_dir = work / "stage1-en"
    stage1 = dict(recipe.stage1, seed=cfg.seed)
    pipe.add("train_stage1", "Train stage 1: an English task LoRA on the base",
             command("flare", "train", "--base", base, "--task", task, "--lang", "en",
                     "--data", files["train"][0], "--validation-data", files["validation"][0],
                     *_flags(stage1), "-o", stage1_dir),
             lambda: _train(base, stage1_dir, task, "en", "lora", files["train"][0], files["validation"][0],
                            None, stage1, reporter))

    adapters = {}
    for method in ("lora", "flare"):
        out = work / f"{method}-{lang}"
        adapters[method] = out
        stage3 = dict(recipe.stage3, seed=cfg.seed)
        if method == "lora":
            stage3.pop("fused_modules")
        title = ("Train stage 3: translate-train LoRA on the machine-translated data" if method == "lora" else
                 "Train stage 3: FLARE, fusing the English pivot into the LoRA bottleneck")
        pipe.add(f"train_{method}", title,
                 command("flare", "train", "--base", base, "--task-adapter", stage1_dir, "--task", task,
                         "--lang", lang, "--method", method, "--data", files["train"][1],
                         "--validation-data", files["validation"][1], *_flags(stage3), "-o", out),
                 lambda method=method, out=out, stage3=stage3: _train(
                     base, out, task, lang, method, files["train"][1], files["validation"][1], stage1_dir,
                     stage3, reporter))

    test_file = files["test"][1]
    results: dict[str, dict] = {}
    for method in EVAL_METHODS:
        out = work / "eval" / method
        adapter = adapters.get(method)
        base_args = ("--base", base, "--task-adapter", stage1_dir, "--task", task, "--lang", lang) if not adapter else ()
        pipe.add(f"eval_{method}", f"Evaluate {method} on the qtw test set",
                 command("flare", "eval", *(("--adapter", adapter) if adapter else ()), "--method", method,
                         *base_args, "--data", test_file, "--limit", limit,
                         *(("--mt-engine", engine) if method == "translate-test" else ()), "-o", out),
                 lambda method=method, out=out, adapter=adapter: _evaluate(
                     method, adapter, base, stage1_dir, task, lang, test_file, limit, recipe, out, results, reporter,
                     engine))

    merged_dir = work / "merged-lora"
    pipe.add("merge", "Merge the LoRA baseline (with stage 1) into a standalone model",
             command("flare", "merge", "--adapter", adapters["lora"], "-o", merged_dir, "--overwrite"),
             lambda: _merge(adapters["lora"], merged_dir))
    pipe.add("push", "Publish the FLARE adapter (dry run: lists files and the model card, contacts nobody)",
             command("flare", "push", "--folder", adapters["flare"], "--repo-id", cfg.repo_id, "--dry-run"),
             lambda: _push(adapters["flare"], cfg.repo_id, state))

    from flare_cli.toyworld.pretrain import restored_threads, train_threads

    with restored_threads():
        import torch

        if not os.environ.get("OMP_NUM_THREADS"):  # the user's choice wins
            torch.set_num_threads(train_threads())  # one thread on busy cores: two would spin-wait
        pipe.run()
    rows = [_table_row(method, results[method], task) for method in EVAL_METHODS]
    result = DemoResult(
        workdir=str(work), world_root=str(world_root), task=task, lang=lang, rows=rows, timings=pipe.timings,
        merged_dir=str(merged_dir), push_files=state.get("push_files", []),
        seconds=round(time.perf_counter() - started, 2),
    )
    _write_summary(work / "summary.json", result)
    return result


def _quiet_libraries() -> None:
    """The demo draws its own progress; per-file download/load bars from the libraries are noise."""
    import warnings

    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    disable_progress_bars()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*is_gradient_checkpointing.*")


def _flags(options: dict[str, Any]) -> list[str]:
    """TrainConfig fields as the equivalent `flare train` flags."""
    flags: list[str] = []
    for key, value in options.items():
        flags += [f"--{key.replace('_', '-')}", str(value)]
    return flags


def _translate(src: Path, dst: Path, direction: str, lang: str, task: str, mt_dir: Path, recipe: Recipe,
               n_rows: Optional[int], reporter: Reporter, engine: str = "transformers") -> str:
    from flare_cli import translate

    meta = Path(str(dst) + ".meta.json")
    if dst.is_file() and meta.is_file():
        return "reused"
    if n_rows:  # the first n rows, as `head -n` would give
        dst.parent.mkdir(parents=True, exist_ok=True)
        subset = dst.with_name(f"{src.stem}.first{n_rows}.jsonl")
        lines = src.read_text(encoding="utf-8").splitlines(keepends=True)[:n_rows]
        subset.write_text("".join(lines), encoding="utf-8")
        src = subset

    class Sink:
        total = 0
        done = 0

        def start(self, total_segments: int) -> None:
            self.total, self.done = total_segments, 0
            reporter.progress(0, total_segments, "segments")

        def advance(self, segments: int, generated_tokens: int) -> None:
            self.done += segments
            reporter.progress(self.done, self.total, "segments")

    result = translate.run(
        translate.TranslateConfig(input=str(src), output=str(dst), lang=lang, direction=direction, task=task,
                                  mt_model=str(mt_dir), num_beams=recipe.num_beams, engine=engine),
        progress=Sink(),
    )
    failed = f", {result.projection_failed} answers not projected" if result.projection_failed else ""
    return f"{result.rows_out} rows, {result.translated} segments translated{failed}"


def _train(base: str, out: Path, task: str, lang: str, method: str, data: Path, validation: Path,
           task_adapter: Optional[Path], options: dict[str, Any], reporter: Reporter) -> str:
    from flare_cli import train

    cfg = train.TrainConfig(base=base, output_dir=str(out), task=task, lang=lang, method=method, data=str(data),
                            validation_data=str(validation),
                            task_adapter=str(task_adapter) if task_adapter else None, **options)

    def on_log(record: dict) -> None:
        if "loss" in record:
            reporter.progress(record["step"], record["total_steps"], f"loss {record['loss']:.3f}")

    result = train.run(cfg, on_log=on_log)
    if result.already_complete:
        return "reused"
    best = f", best validation loss {result.best_validation_loss:.3f}" if result.best_validation_loss else ""
    return f"{result.steps} steps, train loss {result.train_loss:.3f}{best}"


def _evaluate(method: str, adapter: Optional[Path], base: str, stage1: Path, task: str, lang: str, data: Path,
              limit: Optional[int], recipe: Recipe, out: Path, results: dict, reporter: Reporter,
              engine: str = "transformers") -> str:
    from flare_cli import evaluate

    metrics_file = out / "metrics.json"
    if metrics_file.is_file():
        results[method] = json.loads(metrics_file.read_text(encoding="utf-8"))
        return "reused"
    cfg = evaluate.EvalConfig(
        adapter=str(adapter) if adapter else None, method=method, data=str(data), limit=limit,
        output_dir=str(out), batch_size=recipe.eval_batch_size, mt_engine=engine,
        **({} if adapter else {"base": base, "task_adapter": str(stage1), "task": task, "lang": lang}),
    )
    done = [0]

    def progress(n: int) -> None:
        done[0] += n
        reporter.progress(done[0], limit, "rows")

    metrics = evaluate.run(cfg, progress=progress).metrics
    results[method] = metrics
    return ", ".join(f"{k} {metrics[k]:.1f}" for k in SCORE_KEYS[task] if k in metrics)


def _merge(adapter: Path, out: Path) -> str:
    from flare_cli import export

    result = export.run(export.MergeConfig(adapter=adapter, output_dir=out, overwrite=True))
    return f"{result.dtype}, {sum(f.endswith('.safetensors') for f in result.files)} safetensors file(s)"


def _push(adapter: Path, repo_id: str, state: dict) -> str:
    from flare_cli import hub

    result = hub.run(hub.PushConfig(folder=adapter, repo_id=repo_id, dry_run=True))
    state["push_files"] = result.files
    return f"would upload {len(result.files)} files to {repo_id}: {', '.join(result.files)}"


def _table_row(method: str, metrics: dict, task: str) -> dict:
    row = {"method": method, "adapter": metrics.get("adapter"), "n": metrics["n"],
           "unparseable": metrics.get("n_unparseable", 0)}
    row.update({k: metrics[k] for k in SCORE_KEYS[task] if k in metrics})
    return row


def _write_summary(path: Path, result: DemoResult) -> None:
    from flare_cli.flare.model import write_json_atomic

    write_json_atomic(path, asdict(result))

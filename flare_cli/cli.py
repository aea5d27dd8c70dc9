"""The `flare` command line: parse flags, call a stage, render the result.

This is the only module that turns errors into exit codes (0 ok, 1 runtime failure, 2 usage or
config error). It imports nothing heavy at module level so that `flare --help` stays instant;
each command imports its stage inside the function body.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Callable, Optional, TypeVar

import typer
from typer.core import TyperGroup

try:  # typer >= 0.26 carries its own copy of click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as click_errors

from flare_cli import __version__
from flare_cli.errors import FlareError
from flare_cli.methods import BASE_METHOD, METHODS

T = TypeVar("T")


def debug_enabled() -> bool:
    """FLARE_DEBUG=1/true/yes shows tracebacks; 0, false, no or empty do not."""
    return os.environ.get("FLARE_DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}


def _say_error(message: str) -> None:
    # soft_wrap: one line whatever the terminal width (CI logs, grep)
    from rich.markup import escape

    _stderr_console().print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


class _OneLineErrors(TyperGroup):
    """Usage errors (bad flag, missing option, wrong type) as one `error: ...` line and exit 2,
    like every other error, instead of click's multi-line box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click_errors.NoArgsIsHelpError:
            sys.exit(2)  # typer has printed the help
        except click_errors.ClickException as err:
            _say_error(" ".join(err.format_message().split()))
            sys.exit(err.exit_code)
        except typer.Abort:
            _stderr_console().print("[yellow]interrupted[/]; partial work is kept and resumable")
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    name="flare",
    help="FLARE: adapt an LLM to a new language with LoRA adapters that fuse an English pivot.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's kill, `timeout`), unwound like Ctrl-C so that partial work is kept."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt():
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_stage(fn: Callable[[], T]) -> T:
    """Call a stage; turn a FlareError into a one-line message and its exit code.

    OSError (a full disk, a permission) is a runtime failure, also one line. Ctrl-C exits 130 and
    SIGTERM 143, both saying that partial work is kept. Set FLARE_DEBUG=1 to see the traceback.
    """
    try:
        with _sigterm_as_interrupt():
            return fn()
    except (FlareError, OSError) as err:
        if debug_enabled():
            raise
        if isinstance(err, FlareError):
            _say_error(str(err))
        else:
            what = f"{err.strerror}: {err.filename}" if err.strerror and err.filename else str(err)
            _say_error(what)
        raise typer.Exit(code=getattr(err, "exit_code", 1)) from None
    except KeyboardInterrupt as err:
        signal_name, code = ("SIGTERM", 143) if isinstance(err, _Terminated) else ("", 130)
        what = f"interrupted ({signal_name})" if signal_name else "interrupted"
        _stderr_console().print(f"[yellow]{what}[/]; partial work is kept and resumable", highlight=False)
        raise typer.Exit(code=code) from None


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"flare_cli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", "-V", help="Print the version and exit.", callback=_version_callback, is_eager=True
    ),
) -> None:
    """FLARE: adapt an LLM to a new language with LoRA adapters that fuse an English pivot."""


def config_file_option(schema: str):
    """-c/--config for a command whose flags map onto a stage config (``schema``: "module:Class").

    The YAML's keys become the command's defaults (click's default_map), so a flag given on the
    command line wins and a required option may come from the file. Each value is typed through
    the stage config's field (pydantic: ``1e-4`` is a float); an unknown key, or a value of the
    wrong type, is one error line (exit 2)."""

    def load(ctx, param, value):
        if not value:
            return value
        import importlib

        from flare_cli.config import field_types, read_yaml, typed_values
        from flare_cli.errors import ConfigError

        module, name = schema.split(":")
        cls = getattr(importlib.import_module(module), name)
        params = {p.name: p for p in ctx.command.params if p.name not in (param.name, "help")}
        try:
            values = read_yaml(value)
            unknown = sorted(set(values) - set(params))
            if unknown:
                raise ConfigError(f"{value}: unknown key {unknown[0]!r} (known: {', '.join(sorted(params))})")
            types = field_types(cls)
            for key in set(types) & set(values):
                if _is_sequence(types[key]) and not params[key].multiple:
                    # a list field behind a comma-separated flag (translate --fields): the flag's text
                    if isinstance(values[key], (list, tuple)):
                        values[key] = ",".join(str(v) for v in values[key])
                else:
                    values.update(typed_values(cls, {key: values[key]}, value))
        except ConfigError as err:
            raise click_errors.UsageError(str(err)) from None
        for key, item in values.items():
            if params[key].multiple and not isinstance(item, (list, tuple)):
                values[key] = [item]
            elif isinstance(item, Path):
                values[key] = str(item)
        ctx.default_map = {**(ctx.default_map or {}), **values}
        return value

    return typer.Option(None, "-c", "--config", help="YAML config: its keys are this command's options; flags "
                        "given override them.", show_default=False, is_eager=True, callback=load)


def _is_sequence(annotation) -> bool:
    import typing

    kinds = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    return any(typing.get_origin(k) in (list, tuple) or k in (list, tuple) for k in kinds)


class _RichTranslateProgress:
    """rich progress on stderr for `flare translate`: segments, generated tokens/s, ETA."""

    def __init__(self, progress):
        self._progress = progress
        self._task = None
        self._tokens = 0
        self._since = 0.0

    def start(self, total_segments: int) -> None:
        import time

        if self._task is None:
            self._since = time.perf_counter()
            self._task = self._progress.add_task("translating", total=total_segments, tok_s=0.0)
        else:  # a second pass (QA contexts whose answer span did not survive MT)
            self._progress.update(self._task, total=self._progress.tasks[0].total + total_segments)

    def advance(self, segments: int, generated_tokens: int) -> None:
        import time

        self._tokens += generated_tokens
        rate = self._tokens / max(time.perf_counter() - self._since, 1e-9)
        self._progress.update(self._task, advance=segments, tok_s=rate)


@app.command()
def translate(
    config: Optional[str] = config_file_option("flare_cli.translate:TranslateConfig"),
    input: str = typer.Option(..., "--input", "-i", help="Task data: .jsonl, .csv or .parquet; '-' reads JSONL from stdin."),
    output: str = typer.Option(..., "--output", "-o", help="Where to write: .jsonl or .parquet; '-' writes JSONL to stdout."),
    lang: str = typer.Option(..., "--lang", "-l", help="The non-English language: sw, swa, sw-KE, swh_Latn, ..."),
    direction: str = typer.Option(
        "train", "--direction", "-d",
        help="train: English rows -> LANG (originals kept as pivot_*); test: LANG rows gain English pivot_*.",
    ),
    task: str = typer.Option("qa", "--task", "-t", help="qa, nli, sentiment, or custom (with --fields)."),
    fields: str = typer.Option(None, "--fields", help="Comma-separated columns to translate (overrides the task's)."),
    mt_model: str = typer.Option(
        "facebook/nllb-200-3.3B", "--mt-model", help="Any NLLB/M2M100 Hub id or local folder."
    ),
    revision: str = typer.Option(None, "--revision", help="Hub revision (branch, tag or commit) of --mt-model."),
    num_beams: int = typer.Option(4, "--num-beams", help="Beam size."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="Longest translation per segment, in tokens."),
    batch_tokens: int = typer.Option(4096, "--batch-tokens", help="Token budget per batch (rows x longest row)."),
    max_input_tokens: int = typer.Option(
        200, "--max-input-tokens", help="Texts longer than this are split into sentences and rejoined."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, mps (mps: transformers only)."),
    device_map: str = typer.Option(None, "--device-map", help="Passed to from_pretrained, e.g. 'auto' to shard a big model."),
    engine: str = typer.Option(
        "transformers", "--engine",
        help="transformers (generate), or ctranslate2: same float32 outputs, several times faster "
        "(pip install 'flare-cli\\[ct2]'; the model is converted once and cached).",
    ),
    compute_type: str = typer.Option(
        "auto", "--compute-type",
        help="auto (float32 on CPU: identical outputs; float16 with ctranslate2 / bfloat16 with transformers on GPU), "
        "float32, float16, bfloat16, or with ctranslate2 int8, int8_float16, ... (faster, some outputs change).",
    ),
    cache_dir: str = typer.Option(
        None, "--cache-dir", help="Translation cache folder [default: .flare_cache next to the output]."
    ),
    on_projection_failure: str = typer.Option(
        "keep", "--on-projection-failure",
        help="QA rows whose answer span is not found after MT: keep (answer_start null), drop, or error.",
    ),
    references: str = typer.Option(
        None, "--references", help="Score the output (sacrebleu chrF, chrF++, BLEU) against a column of the input, "
        "field=column pairs, or a .txt file with one reference per row.", show_default=False,
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON (on stderr when --output is '-')."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Translate task data with NLLB: English train data to the target, target test data to English pivots."""
    import dataclasses
    import json

    from flare_cli import translate as stage

    cfg = stage.TranslateConfig(
        input=input, output=output, lang=lang, direction=direction, task=task,
        fields=tuple(f.strip() for f in fields.split(",") if f.strip()) if fields else None,
        mt_model=mt_model, revision=revision, num_beams=num_beams, max_new_tokens=max_new_tokens,
        batch_tokens=batch_tokens, max_input_tokens=max_input_tokens, device=device, device_map=device_map,
        cache_dir=cache_dir, on_projection_failure=on_projection_failure, references=references, engine=engine,
        compute_type=compute_type,
    )
    console = _stderr_console()
    if quiet:
        result = run_stage(lambda: stage.run(cfg))
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[tok_s]:.0f} tok/s"), TimeRemainingColumn(),
        )
        # off when stderr is no terminal (logs, CI): rich would only leave a blank line there
        with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
            result = run_stage(lambda: stage.run(cfg, progress=_RichTranslateProgress(progress)))
    # stdout carries the data when --output is '-', so the summary goes to stderr then.
    say = (lambda text: console.print(text, highlight=False, markup=False, soft_wrap=True)) if output == "-" else typer.echo
    if json_out:
        say(json.dumps(dataclasses.asdict(result)))
        return
    line = (
        f"{result.rows_out}/{result.rows_in} rows {result.src} -> {result.tgt}: {result.translated} segments "
        f"translated, {result.cache_hits} from cache, {result.seconds:.1f}s -> {result.output}"
    )
    say(line)
    for name, q in (result.quality or {}).items():
        say(f"{name}: chrF {q['chrf']:.1f}  chrF++ {q['chrf++']:.1f}  BLEU {q['bleu']:.1f}  (n={q['n']}, sacrebleu "
            f"{q['signatures']['chrf++']})")
    if result.projection_failed:
        what = "dropped" if on_projection_failure == "drop" else "kept with answer_start null"
        if result.empty_answers_dropped:
            what += f"; {result.empty_answers_dropped} whose answer the MT left empty dropped"
        console.print(
            f"[yellow]warning:[/] {result.projection_failed} rows failed answer projection ({what}); "
            f"first ids: {', '.join(result.projection_failed_ids[:5])}",
            highlight=False, soft_wrap=True,
        )


def schema_options(cls, skip: tuple[str, ...] = ()) -> list:
    """One typer option per field of a stage's config dataclass, from the field itself: flag
    --field-name plus the aliases in its metadata, its help, its default (shown as "(default: x)"),
    its help panel; booleans get a --no- form. Every option defaults to None, so a YAML value (-c)
    is overridden only by a flag actually given."""
    import dataclasses
    import inspect
    import typing

    from flare_cli.config import default_text, field_types

    types = field_types(cls)
    params = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind = [a for a in typing.get_args(types[f.name]) if a is not type(None)] or [types[f.name]]
        kind = kind[0] if kind[0] in (bool, int, float, str) else str  # lists and mappings: comma-separated text
        flag = "--" + f.name.replace("_", "-")
        names = [f"{flag}/--no-{flag[2:]}" if kind is bool else flag, *f.metadata.get("flags", ())]
        text = f.metadata.get("help", "")
        shown = default_text(f)
        if shown not in ("none", "required"):
            text += f" (default: {shown})"
        elif shown == "required":
            text += " (required)"
        default = typer.Option(None, *names, help=text, show_default=False, rich_help_panel=f.metadata.get("panel"))
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=Optional[kind]))
    return params


def schema_command(cls, extra: list, skip: tuple[str, ...] = ()):
    """Decorator: the function takes **options; its typer signature is ``extra`` (inspect.Parameters
    of the command's own flags: -c, --dry-run, --json) plus schema_options(cls)."""
    import inspect

    def decorate(fn):
        import dataclasses

        params = [*schema_options(cls, skip), *extra]
        panels = list(dict.fromkeys(f.metadata.get("panel") for f in dataclasses.fields(cls)))
        order = {panel: i for i, panel in enumerate(sorted(panels, key=lambda p: p in ("Output", None)))}
        params.sort(key=lambda p: order.get(p.default.rich_help_panel, -1))  # stable: field order within a panel
        fn.__signature__ = inspect.Signature(params)
        fn.__annotations__ = {p.name: p.annotation for p in params}
        fn.yaml_keys = {f.name for f in dataclasses.fields(cls)}  # -c takes the config's fields, not --dry-run
        return fn

    return decorate


def _flag(name: str, annotation, option):
    import inspect

    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)


def _config_option():
    return typer.Option(None, "-c", "--config", help="YAML config; flags given override its keys.", show_default=False)


_OUTPUT_PANEL = "Output"
from flare_cli.train import TrainConfig as _TrainConfig  # noqa: E402  (no torch: the schema only)


@app.command()
@schema_command(_TrainConfig, [
    _flag("config", Optional[str], _config_option()),
    _flag("bf16", bool, typer.Option(False, "--bf16", help="HF spelling of --dtype bf16.", rich_help_panel="Model")),
    _flag("dry_run", bool, typer.Option(False, "--dry-run", help="Validate and print the resolved config; train nothing.",
                                        rich_help_panel=_OUTPUT_PANEL)),
    _flag("json_out", bool, typer.Option(False, "--json", help="Machine-readable output on stdout.",
                                         rich_help_panel=_OUTPUT_PANEL)),
])
def train(config: Optional[str] = None, bf16: bool = False, dry_run: bool = False, json_out: bool = False,
          **flags) -> None:
    """Train a LoRA, FLARE, input-fusion or FLARE-MT adapter."""
    if bf16:
        if flags.get("dtype") not in (None, "bf16"):
            run_stage(lambda: _conflict("--bf16", f"--dtype {flags['dtype']}"))
        flags["dtype"] = "bf16"

    def stage():
        from flare_cli import train as train_stage
        from flare_cli.config import build_config, dump_yaml, public_dict, read_yaml

        cfg = build_config(train_stage.TrainConfig, read_yaml(config), flags, source=config or "config")
        if dry_run:
            resolved = public_dict(cfg)
            typer.echo(json.dumps(resolved, indent=2) if json_out else dump_yaml(resolved).rstrip())
            return None
        with _training_progress() as on_log:
            return train_stage.run(cfg, on_log=on_log)

    result = run_stage(stage)
    from flare_cli.distributed import is_main_process

    if result is None or not is_main_process():
        return  # under torchrun / accelerate launch only rank 0 reports
    if json_out:
        typer.echo(json.dumps({k: v for k, v in result.__dict__.items() if k != "log"}))
    elif result.already_complete:
        typer.echo(f"{result.output_dir}: already trained ({result.steps} steps); use --overwrite to train again")
    else:
        best = f", best validation loss {result.best_validation_loss:.4f} at step {result.best_step}" if result.best_step else ""
        typer.echo(f"trained {result.method} adapter in {result.output_dir}: {result.steps} steps, "
                   f"train loss {result.train_loss:.4f}{best} ({result.elapsed_s:.0f}s)")


def _conflict(a: str, b: str):
    from flare_cli.errors import ConfigError

    raise ConfigError(f"{a} and {b} contradict each other; pass one")


def _warn_truncation(report: Optional[dict], what: str) -> None:
    """One stderr line when prompts were cut to --max-length, naming rows whose gold answer went too."""
    if not report or not report.get("n_truncated"):
        return
    from rich.markup import escape

    line = (f"{report['n_truncated']}/{report['n']} {what} prompts were longer than --max-length "
            f"{report['max_length']} and lost their start")
    if report.get("n_answer_cut"):
        line += (f"; in {report['n_answer_cut']} the gold answer was cut away "
                 f"(first ids: {', '.join(report['answer_cut_ids'][:5])})")
    _stderr_console().print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)


@contextlib.contextmanager
def _training_progress():
    """A trainer_log callback for stderr: a progress bar (step, loss, ETA) on a terminal; in a pipe
    or CI log no bar, one line per logged step. Warnings and events are lines either way."""
    console = _stderr_console()
    bar = None
    if console.is_terminal:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn("[bold]train[/]"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(), console=console, transient=True)
    task = bar.add_task("train", total=None, loss="-") if bar else None

    def on_log(record: dict) -> None:
        if record.get("event") == "progress":
            if bar:
                bar.update(task, completed=record["step"], total=record["total_steps"])
        elif "loss" in record:
            if bar:
                bar.update(task, completed=record["step"], total=record["total_steps"], loss=f"{record['loss']:.4f}")
                return
            console.print(
                f"[dim]step[/] {record['step']}/{record['total_steps']}  [dim]loss[/] {record['loss']:.4f}  "
                f"[dim]lr[/] {record['lr']:.2e}  [dim]epoch[/] {record['epoch']:.2f}  [dim]eta[/] {record['eta']:.0f}s",
                highlight=False,
            )
        elif "eval_loss" in record:
            console.print(f"[dim]step[/] {record['step']}  [cyan]validation loss[/] {record['eval_loss']:.4f}"
                          + ("  [green]best[/]" if record["best"] else ""), highlight=False)
        elif record.get("event") == "early_stop":
            console.print(f"early stop at step {record['step']}: no better validation loss in {record['patience']} "
                          f"evaluations; keeping step {record['best_step']}", highlight=False)
        elif record.get("event") == "truncation":
            _warn_truncation(record, "training")
        elif record.get("event") == "resume":
            console.print(f"[yellow]resuming[/] from {record['checkpoint']}", highlight=False)
        elif record.get("event") == "skip_checkpoint":
            from rich.markup import escape

            console.print(f"[bold yellow]warning:[/] {escape(record['checkpoint'])} is unreadable "
                          f"({escape(record['reason'])}); falling back to the one before it",
                          highlight=False, soft_wrap=True)
        elif record.get("event") == "overwrite":
            console.print(f"--overwrite: removed the previous run's {', '.join(record['removed'])}",
                          highlight=False, markup=False, soft_wrap=True)

    with bar if bar is not None else contextlib.nullcontext():
        yield on_log


@app.command("eval")
def eval_(
    config: Optional[str] = config_file_option("flare_cli.evaluate:EvalConfig"),
    adapters: list[str] = typer.Argument(None, help="Adapter folders to compare (same as repeated --adapter).", show_default=False),
    adapter: list[str] = typer.Option([], "--adapter", help="Adapter folder or Hub repo user/name[@revision] (repeatable).", show_default=False),
    compare: bool = typer.Option(False, "--compare", help="Side-by-side table of every adapter/method given."),
    method: list[str] = typer.Option(
        [], "--method", help=" | ".join(METHODS) + " (repeatable; "
        f"default: the adapter's method, {BASE_METHOD} without one).", show_default=False
    ),
    base: str = typer.Option(None, "--base", help="Base model (default: the adapter's)."),
    task_adapter: str = typer.Option(None, "--task-adapter", help="Stage-1 English task LoRA (folder or Hub id) merged into the base."),
    task: str = typer.Option(None, "--task", help="qa | nli | sentiment | custom (default: the adapter's)."),
    lang: str = typer.Option(None, "--lang", help="Target language code (default: the adapter's)."),
    data: str = typer.Option(None, "--data", help="Local JSONL/CSV/parquet or Hub dataset id (default: the task's)."),
    split: str = typer.Option(None, "--split", help="Dataset split (default: the task's test split)."),
    data_config: str = typer.Option(None, "--data-config", help="Hub config (subset) of --data (default: the task's for --lang)."),
    columns: str = typer.Option(None, "--columns", help="Map the data's columns: ours=theirs,... e.g. question=q,context=passage."),
    qa_metric: str = typer.Option(
        None, "--qa-metric", help="Free-text scoring: squad (SQuAD v1.1 script) | mlqa (MLQA script) | unicode "
        "(default: squad for qa and English, mlqa otherwise).", show_default=False,
    ),
    max_length: int = typer.Option(None, "--max-length", min=1, help="Cut prompts to N tokens as training does (default: the adapter's training length, else no cut); cut rows are counted."),
    output_dir: str = typer.Option("eval", "--output-dir", "-o", help="Where predictions.jsonl and metrics.json go."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", min=1, help="Default: 32 for qa, 8 for labels."),
    limit: int = typer.Option(None, "--limit", min=1, help="Evaluate the first N rows only."),
    predict: bool = typer.Option(False, "--predict", help="Inputs without gold: write predictions only."),
    fields: str = typer.Option(None, "--fields", help="--task custom: comma-separated input columns."),
    labels: str = typer.Option(None, "--labels", help="--task custom: comma-separated label words."),
    mt_model: str = typer.Option(None, "--mt-model", help="MT model for pivots missing from the data; for a flare-mt adapter, a local copy of its MT encoder."),
    back_translate_answers: bool = typer.Option(
        True, "--back-translate-answers/--no-back-translate-answers",
        help="translate-test QA: translate the English answer back into the target language before scoring.",
    ),
    mt_engine: str = typer.Option("transformers", "--mt-engine", help="Engine for on-the-fly translation: transformers or ctranslate2 (as flare translate --engine)."),
    mt_compute_type: str = typer.Option("auto", "--mt-compute-type", help="Precision of --mt-engine (as flare translate --compute-type)."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable results on stdout."),
) -> None:
    """Evaluate adapters and baselines on a task's target-language test set."""
    import json

    from flare_cli import evaluate

    task_options = {}
    if fields:
        task_options["input_fields"] = [f.strip() for f in fields.split(",") if f.strip()]
    if labels:
        task_options["labels"] = [x.strip() for x in labels.split(",") if x.strip()]
    configs = run_stage(lambda: evaluate.plan_runs(evaluate.EvalConfig(  # the config validates: one-line errors
        task=task, lang=lang, base=base, task_adapter=task_adapter,
        data=data, split=split, output_dir=output_dir, batch_size=batch_size, max_new_tokens=max_new_tokens,
        limit=limit, predict=predict, task_options=task_options, mt_model=mt_model,
        back_translate_answers=back_translate_answers, qa_metric=qa_metric, data_config=data_config,
        columns=columns, max_length=max_length, mt_engine=mt_engine, mt_compute_type=mt_compute_type,
    ), list(adapter) + list(adapters or []), method))
    with _EvalProgress() as progress:
        results = run_stage(lambda: evaluate.run_compare(configs, progress_for=progress.bar))
    metrics = [r.metrics for r in results]
    for m in metrics:
        _warn_truncation(m.get("truncation"), "evaluation")
    _print_eval_table(metrics, predict)
    if json_out:
        typer.echo(json.dumps(metrics if (compare or len(metrics) > 1) else metrics[0], indent=2, ensure_ascii=False))
        return
    for result in results:
        typer.echo(_eval_line(result.metrics, result.output_dir))


class _EvalProgress:
    """One transient bar per eval run (on a terminal); ``bar(cfg)`` is a run's progress callback."""

    def __enter__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        console = _stderr_console()
        self._progress = Progress(
            TextColumn("[bold]eval[/] {task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=console, transient=True, disable=not console.is_terminal,
        )
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def bar(self, cfg):
        task = self._progress.add_task(cfg.adapter or cfg.method or "base", total=None)
        return lambda n: self._progress.advance(task, n)


def _print_eval_table(metrics: list[dict], predict: bool) -> None:
    from rich.table import Table

    table = Table(title="flare eval", title_justify="left")
    for column in ("adapter", "method", "task", "lang", "n", "unparseable"):
        table.add_column(column, justify="right" if column in ("n", "unparseable") else "left")
    scores = [] if predict else [k for k in ("exact_match", "f1", "accuracy", "macro_f1") if any(k in m for m in metrics)]
    for key in scores:
        table.add_column(key, justify="right")
    for m in metrics:
        cells = [str(m["adapter"] or m["settings"]["base"]), m["method"], m["task"], m["lang"], str(m["n"]),
                 str(m["n_unparseable"])]
        table.add_row(*cells, *(f"{m[k]:.2f}" if k in m else "-" for k in scores))
    _stderr_console().print(table)


def _eval_line(m: dict, output_dir: str) -> str:
    who = m["adapter"] or m["settings"]["base"]
    if "metric" in m:
        scheme = f" [{m['qa_metric']}]" if m.get("qa_metric") else ""
        return f"{who} {m['method']} {m['task']}/{m['lang']}: {m['metric']}{scheme} {m['value']:.2f} (n={m['n']}, unparseable={m['n_unparseable']}) -> {output_dir}"
    return f"{who} {m['method']} {m['task']}/{m['lang']}: {m['n']} predictions (unparseable={m['n_unparseable']}) -> {output_dir}"


@app.command()
def merge(
    config: Optional[str] = config_file_option("flare_cli.merge:MergeConfig"),
    adapter: str = typer.Option(..., "--adapter", help="Saved adapter folder, or Hub repo user/name[@revision]."),
    output_dir: Path = typer.Option(..., "--output-dir", "-o", help="Folder for the merged model."),
    base: Optional[str] = typer.Option(
        None, "--base", help="Base model folder or Hub id (default: the adapter's base_model_name_or_path)."
    ),
    task_adapter: Optional[str] = typer.Option(
        None, "--task-adapter",
        help="Stage-1 task LoRA (folder or Hub id) merged in first (default: the one the adapter was trained on).",
    ),
    no_task_adapter: bool = typer.Option(False, "--no-task-adapter", help="Merge into the bare base, without stage 1."),
    max_shard_size: str = typer.Option("5GB", "--max-shard-size", help="Largest safetensors shard, e.g. 2GB."),
    drop_pivot: bool = typer.Option(
        False, "--drop-pivot", help="FLARE adapters only: write the pivot-less model (NOT the trained model)."
    ),
    dequantize: bool = typer.Option(False, "--dequantize", help="Allow a quantized (4-bit) base: merge into a dequantized copy."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --output-dir."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable result on stdout."),
) -> None:
    """Fold a LoRA adapter into its base (FLARE adapters are refused unless asked explicitly)."""
    from flare_cli import merge as stage

    cfg = run_stage(lambda: stage.MergeConfig(
        adapter=adapter, output_dir=output_dir, base=base, task_adapter=task_adapter,
        no_task_adapter=no_task_adapter, max_shard_size=max_shard_size,
        drop_pivot=drop_pivot, dequantize=dequantize, overwrite=overwrite,
    ))
    result = run_stage(lambda: stage.run(cfg))
    for line in result.warnings:
        _stderr_console().print(f"[bold yellow]warning:[/] {line}", highlight=False)
    if json_out:
        import json

        payload = {
            "output_dir": str(result.output_dir), "base_model": result.base_model, "method": result.method,
            "dtype": result.dtype, "files": result.files, "dropped_pivot": result.dropped_pivot,
            "task_adapter": result.task_adapter, "warnings": result.warnings,
        }
        typer.echo(json.dumps(payload, indent=2))
        return
    shards = sum(1 for f in result.files if f.endswith(".safetensors"))
    stage1 = f" + {result.task_adapter}" if result.task_adapter else ""
    typer.echo(f"merged {result.method} adapter into {result.base_model}{stage1} -> {result.output_dir} "
               f"({result.dtype}, {shards} safetensors shard(s))")


@app.command()
def push(
    config: Optional[str] = config_file_option("flare_cli.hub:PushConfig"),
    folder: Path = typer.Option(..., "--folder", help="Adapter folder or merged-model folder to upload."),
    repo_id: str = typer.Option(..., "--repo-id", help="Target repository, user/name or org/name."),
    private: Optional[bool] = typer.Option(
        None, "--private/--public",
        help="Visibility; an existing repo is switched (default: keep it; a new repo gets the namespace's default).",
    ),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch to commit to; created if missing."),
    create_pr: bool = typer.Option(False, "--create-pr", help="Open a pull request instead of committing to main."),
    commit_message: Optional[str] = typer.Option(None, "--commit-message", "-m", help="Commit message."),
    token: Optional[str] = typer.Option(
        None, "--token", help="Hub token (default: HF_TOKEN, then the stored login). Never printed.",
        show_default=False,
    ),
    base_model: Optional[str] = typer.Option(
        None, "--base-model", help="Hub id of the base, when the adapter was trained on a local copy of it."
    ),
    task_adapter: Optional[str] = typer.Option(
        None, "--task-adapter", help="Stage-1 task adapter (folder or Hub id) when the recorded one is not found here."
    ),
    license: Optional[str] = typer.Option(
        None, "--license", help="Hub licence id for the card (default: the most restrictive of base, MT model, data)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the files and the card; contact nobody."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable result on stdout."),
) -> None:
    """Publish an adapter or merged model folder to the Hugging Face Hub (self-contained: the trained model)."""
    import json
    from dataclasses import asdict

    from flare_cli import hub

    cfg = hub.PushConfig(
        folder=folder, repo_id=repo_id, token=token, private=private, revision=revision,
        create_pr=create_pr, commit_message=commit_message, dry_run=dry_run, base_model=base_model,
        task_adapter=task_adapter, license=license,
    )
    result = run_stage(lambda: hub.run(cfg))
    from rich.markup import escape

    for line in result.warnings:
        _stderr_console().print(f"[bold yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)
    if result.visibility_changed:
        _stderr_console().print(f"{result.repo_id} was switched to {result.visibility_changed}", highlight=False)
    if json_out:
        typer.echo(json.dumps(asdict(result), indent=2, default=str))
        return
    if result.dry_run:
        typer.echo(f"dry run: would upload {len(result.files)} file(s) of this {result.kind} to {result.repo_id}:")
        for name in result.files:
            typer.echo(f"  {name}")
        typer.echo("--- README.md ---")
        typer.echo(result.card)
        return
    target = result.pr_url or result.commit_url
    if cfg.create_pr and result.pr_url and not result.changed:
        typer.echo(f"an open pull request already proposes these files: {result.pr_url}; no new one opened")
    elif result.changed:
        typer.echo(f"pushed {result.kind} to {result.repo_id} ({result.revision}): {target}")
    else:
        typer.echo(f"{result.repo_id} ({result.revision}) is up to date; no commit made: {target}")


@app.command()
def demo(
    config: Optional[str] = config_file_option("flare_cli.demo:DemoConfig"),
    quick: bool = typer.Option(False, "--quick", help="A small world and a few steps (the CI end-to-end run)."),
    workdir: str = typer.Option("flare-demo", "--workdir", "-o", help="Where data, adapters and evals go (resumable)."),
    task: str = typer.Option("qa", "--task", help="qa | nli | sentiment."),
    seed: int = typer.Option(0, "--seed", help="Training seed."),
    eval_limit: Optional[int] = typer.Option(None, "--eval-limit", min=1, help="Test rows per method (default: 500, quick 24)."),
    world_root: Optional[str] = typer.Option(None, "--world-root", help="Toy world folder (default: $FLARE_HOME/toyworld/...)."),
    mt_engine: Optional[str] = typer.Option(
        None, "--mt-engine", help="MT engine: transformers or ctranslate2 (default: ctranslate2 when installed).",
        show_default=False,
    ),
    mt_confusion: Optional[float] = typer.Option(
        None, "--mt-confusion", min=0.0, max=1.0,
        help="MT quality: share of English words the world's MT learns wrong (0: near perfect; default: low-resource).",
        show_default=False,
    ),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable summary on stdout."),
) -> None:
    """Run the whole pipeline offline on the embedded toy world and compare FLARE with its baselines."""
    from flare_cli import demo as demo_stage

    def stage():
        cfg = demo_stage.DemoConfig(
            workdir=workdir, quick=quick, seed=seed, task=task, world_root=world_root, eval_limit=eval_limit,
            mt_engine=mt_engine, mt_confusion=mt_confusion,
        )
        with _DemoReporter(_stderr_console()) as reporter:
            return demo_stage.run(cfg, reporter)

    result = run_stage(stage)
    if json_out:
        import dataclasses

        typer.echo(json.dumps(dataclasses.asdict(result), indent=2))
        return
    _print_demo_table(result)


class _DemoReporter:
    """Step headers with the equivalent command, and one transient progress bar per step."""

    def __init__(self, console):
        self.console = console
        self._bar = None
        self._task = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def step(self, index: int, total: int, title: str, command: str) -> None:
        from rich.markup import escape
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._stop()
        self.console.print(f"[bold cyan]\\[{index}/{total}][/] [bold]{escape(title)}[/]", highlight=False)
        self.console.print(f"  [dim]$ {escape(command)}[/]", highlight=False, soft_wrap=True)
        self._bar = Progress(TextColumn("  "), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                             TimeElapsedColumn(), console=self.console, transient=True,
                             disable=not self.console.is_terminal)
        self._bar.start()
        self._task = self._bar.add_task("", total=None)

    def progress(self, completed: float, total, note: str = "") -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=completed, total=total, description=note)

    def finished(self, seconds: float, note: str = "") -> None:
        from rich.markup import escape

        self._stop()
        self.console.print(f"  [green]done[/] {escape(note)} [dim]({seconds:.1f}s)[/]", highlight=False)


def _print_demo_table(result) -> None:
    from rich.console import Console
    from rich.table import Table

    keys = result.score_keys
    table = Table(title=f"flare demo: {result.task} on the toy language {result.lang}", title_justify="left")
    table.add_column("method")
    for key in keys:
        table.add_column(key, justify="right")
    table.add_column("n", justify="right")
    for row in result.rows:
        table.add_row(row["method"], *(f"{row[k]:.1f}" for k in keys), str(row["n"]))
    console = Console(soft_wrap=True)
    console.print(table)
    if result.english and keys:
        console.print(f"Stage 1 on the English originals of the test rows: {keys[0]} {result.english[keys[0]]:.1f} "
                      "(what translate-test could reach with perfect MT)", highlight=False)
    mt = result.mt_quality
    if mt:
        console.print(f"Pivots: the world's MT, {mt['direction']} chrF++ {mt['chrf++']:.1f} / chrF {mt['chrf']:.1f} / "
                      f"BLEU {mt['bleu']:.1f} against the reference English (sacrebleu, {mt['n']} segments)",
                      highlight=False)
    line = result.headline
    if line:
        console.print(f"{line['label']}: {line['gain']:+.1f} {line['key']} "
                      f"({result.seconds:.0f}s; outputs in {result.workdir}, summary in {result.workdir}/summary.json)",
                      highlight=False)


@app.command("env")
def env_(json_out: bool = typer.Option(False, "--json", help="Machine-readable output on stdout.")) -> None:
    """Print versions and devices, for bug reports."""
    from flare_cli.envinfo import collect_env

    info = collect_env()
    if json_out:
        import json

        typer.echo(json.dumps(info, indent=2))
        return
    width = max(len(k) for k in info)
    for key, value in info.items():
        typer.echo(f"{key:<{width}}  {value}")


# command -> its stage config, in pipeline order (docs/config.md)
CONFIG_SCHEMAS = (("translate", "flare_cli.translate:TranslateConfig"), ("train", "flare_cli.train:TrainConfig"),
                  ("eval", "flare_cli.evaluate:EvalConfig"), ("merge", "flare_cli.merge:MergeConfig"),
                  ("push", "flare_cli.hub:PushConfig"), ("demo", "flare_cli.demo:DemoConfig"))
EXAMPLE_CONFIG = Path(__file__).resolve().parent.parent / "examples" / "train_qa_sw.yaml"


def config_reference() -> str:
    """docs/config.md, generated: every YAML key of every command (`python -m flare_cli.config --markdown`)."""
    import importlib

    from flare_cli.config import SECRET_KEYS, reference_markdown

    group = typer.main.get_command(app)
    schemas = []
    for command, schema in CONFIG_SCHEMAS:
        module, name = schema.split(":")
        options = {}
        yaml_keys = getattr(group.commands[command].callback, "yaml_keys", None)
        for p in group.commands[command].params:
            if p.name in ("config", "help", "json_out", *SECRET_KEYS) or not p.expose_value \
                    or (yaml_keys is not None and p.name not in yaml_keys):
                continue
            default = "required" if p.required else "none" if p.default is None else str(p.default).lower() \
                if isinstance(p.default, bool) else str(p.default)
            kind = "bool" if getattr(p, "is_flag", False) else "text" if p.default in (None, []) else type(p.default).__name__
            options[p.name] = (kind + (" (repeatable)" if p.multiple else ""), default, p.help or "")
        schemas.append((command, getattr(importlib.import_module(module), name), options))
    return reference_markdown(schemas, EXAMPLE_CONFIG.read_text(encoding="utf-8"))


def main() -> None:
    app(prog_name="flare")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The `flare` command line: parse flags, call a stage, render the result.

This is the only module that turns errors into exit codes (0 ok, 1 runtime failure, 2 usage or
config error). It imports nothing heavy at module level so that `flare --help` stays instant;
each command imports its stage inside the function body.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, TypeVar

import typer

from flare_cli import __version__
from flare_cli.errors import FlareError, NotBuiltError

T = TypeVar("T")

app = typer.Typer(
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


def run_stage(fn: Callable[[], T]) -> T:
    """Call a stage; turn a FlareError into a one-line message and its exit code.

    Set FLARE_DEBUG=1 to see the traceback instead.
    """
    try:
        return fn()
    except FlareError as err:
        if os.environ.get("FLARE_DEBUG"):
            raise
        _stderr_console().print(f"[bold red]error:[/] {err}", highlight=False, markup=True)
        raise typer.Exit(code=err.exit_code) from None
    except KeyboardInterrupt:
        _stderr_console().print("[yellow]interrupted[/]; partial work is kept and resumable")
        raise typer.Exit(code=130) from None


def _not_built(command: str, issue: str) -> None:
    raise NotBuiltError(f"`flare {command}` is not built yet ({issue}); nothing was done")


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


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def translate() -> None:
    """Translate task data with NLLB: English train data to the target, target test data to English pivots."""
    run_stage(lambda: _not_built("translate", "the translate stage"))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train() -> None:
    """Train a LoRA, FLARE, input-fusion or FLARE-MT adapter."""
    run_stage(lambda: _not_built("train", "the train stage"))


@app.command("eval")
def eval_(
    adapters: list[str] = typer.Argument(None, help="Adapter folders to compare (same as repeated --adapter).", show_default=False),
    adapter: list[str] = typer.Option([], "--adapter", help="Adapter folder (repeatable).", show_default=False),
    compare: bool = typer.Option(False, "--compare", help="Side-by-side table of every adapter/method given."),
    method: list[str] = typer.Option(
        [], "--method", help="zero-shot | translate-test | lora | input-fusion | flare (repeatable; "
        "default: the adapter's method, zero-shot without one).", show_default=False
    ),
    base: str = typer.Option(None, "--base", help="Base model (default: the adapter's)."),
    task_adapter: str = typer.Option(None, "--task-adapter", help="Stage-1 English task LoRA merged into the base."),
    task: str = typer.Option(None, "--task", help="qa | nli | sentiment | custom (default: the adapter's)."),
    lang: str = typer.Option(None, "--lang", help="Target language code (default: the adapter's)."),
    data: str = typer.Option(None, "--data", help="Local JSONL/CSV/parquet or Hub dataset id (default: the task's)."),
    split: str = typer.Option(None, "--split", help="Dataset split (default: the task's test split)."),
    output_dir: str = typer.Option("eval", "--output-dir", "-o", help="Where predictions.jsonl and metrics.json go."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", min=1, help="Default: 32 for qa, 8 for labels."),
    limit: int = typer.Option(None, "--limit", min=1, help="Evaluate the first N rows only."),
    predict: bool = typer.Option(False, "--predict", help="Inputs without gold: write predictions only."),
    fields: str = typer.Option(None, "--fields", help="--task custom: comma-separated input columns."),
    labels: str = typer.Option(None, "--labels", help="--task custom: comma-separated label words."),
    mt_model: str = typer.Option(None, "--mt-model", help="MT model for pivots missing from the data."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable results on stdout."),
) -> None:
    """Evaluate adapters and baselines on a task's target-language test set."""
    import json
    from pathlib import Path

    from flare_cli import evaluate

    folders = list(adapter) + list(adapters or [])
    runs = [(a, m) for a in (folders or [None]) for m in (method or [None])]
    task_options = {}
    if fields:
        task_options["input_fields"] = [f.strip() for f in fields.split(",") if f.strip()]
    if labels:
        task_options["labels"] = [x.strip() for x in labels.split(",") if x.strip()]
    results = []
    for adapter_dir, run_method in runs:
        run_dir = Path(output_dir)
        if len(runs) > 1:
            run_dir = run_dir / _run_label(adapter_dir, run_method)
        cfg = evaluate.EvalConfig(
            task=task, lang=lang, adapter=adapter_dir, base=base, task_adapter=task_adapter, method=run_method,
            data=data, split=split, output_dir=str(run_dir), batch_size=batch_size, max_new_tokens=max_new_tokens,
            limit=limit, predict=predict, task_options=task_options, mt_model=mt_model,
        )
        results.append(run_stage(lambda: _eval_with_progress(evaluate, cfg)))
    metrics = [r.metrics for r in results]
    _print_eval_table(metrics, predict)
    if json_out:
        typer.echo(json.dumps(metrics if (compare or len(metrics) > 1) else metrics[0], indent=2, ensure_ascii=False))
        return
    for result in results:
        typer.echo(_eval_line(result.metrics, result.output_dir))


def _run_label(adapter_dir, method) -> str:
    from pathlib import Path

    parts = [Path(adapter_dir).name if adapter_dir else "base"] + ([method] if method else [])
    return "-".join(parts)


def _eval_with_progress(evaluate, cfg):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    label = cfg.adapter or cfg.method or "base"
    with Progress(
        TextColumn("[bold]eval[/] {task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=_stderr_console(), transient=True,
    ) as progress:
        bar = progress.add_task(label, total=None)
        return evaluate.run(cfg, progress=lambda n: progress.advance(bar, n))


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
        return f"{who} {m['method']} {m['task']}/{m['lang']}: {m['metric']} {m['value']:.2f} (n={m['n']}, unparseable={m['n_unparseable']}) -> {output_dir}"
    return f"{who} {m['method']} {m['task']}/{m['lang']}: {m['n']} predictions (unparseable={m['n_unparseable']}) -> {output_dir}"


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def merge() -> None:
    """Fold a LoRA adapter into its base (FLARE adapters are refused unless asked explicitly)."""
    run_stage(lambda: _not_built("merge", "the merge stage"))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def push() -> None:
    """Publish an adapter or merged model folder to the Hugging Face Hub."""
    run_stage(lambda: _not_built("push", "the push stage"))


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


def main() -> None:
    app(prog_name="flare")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

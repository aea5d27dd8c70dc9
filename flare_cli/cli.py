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
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, mps (bf16 on GPU)."),
    device_map: str = typer.Option(None, "--device-map", help="Passed to from_pretrained, e.g. 'auto' to shard a big model."),
    cache_dir: str = typer.Option(
        None, "--cache-dir", help="Translation cache folder [default: .flare_cache next to the output]."
    ),
    on_projection_failure: str = typer.Option(
        "keep", "--on-projection-failure",
        help="QA rows whose answer span is not found after MT: keep (answer_start null), drop, or error.",
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
        cache_dir=cache_dir, on_projection_failure=on_projection_failure,
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
        with Progress(*columns, console=console, transient=True) as progress:
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
    if result.projection_failed:
        what = "dropped" if on_projection_failure == "drop" else "kept with answer_start null"
        console.print(
            f"[yellow]warning:[/] {result.projection_failed} rows failed answer projection ({what}); "
            f"first ids: {', '.join(result.projection_failed_ids[:5])}",
            highlight=False, soft_wrap=True,
        )


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train() -> None:
    """Train a LoRA, FLARE, input-fusion or FLARE-MT adapter."""
    run_stage(lambda: _not_built("train", "the train stage"))


@app.command("eval", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def eval_() -> None:
    """Evaluate adapters and baselines on a task's target-language test set."""
    run_stage(lambda: _not_built("eval", "the eval stage"))


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

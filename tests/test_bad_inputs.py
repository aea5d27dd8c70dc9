"""Hostile input, one table: every row must end in ONE `error:` line with the right exit code,
no traceback, and leave every file that was there before byte-for-byte (and mode-for-mode) as it was."""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import pytest
from tiny_models import save_base
from typer.testing import CliRunner

from flare_cli.cli import app

runner = CliRunner()


def write_rows(path: Path, n: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    names, cities = ["Amina", "Baraka", "Chidi"], ["Dodoma", "Arusha", "Tanga"]
    with path.open("w", encoding="utf-8") as handle:
        for i in range(n):
            name, city = rng.choice(names), rng.choice(cities)
            handle.write(json.dumps({
                "id": f"r{i}", "context": f"{name} anaishi {city}.", "question": f"{name} anaishi wapi?",
                "answer": city, "pivot_context": f"{name} lives in {city}.",
                "pivot_question": f"Where does {name} live?",
            }) + "\n")
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """base/, base2/ (same shape, other weights), data, a trained adapter inside runs/x/, broken copies."""
    root = tmp_path_factory.mktemp("bad_inputs")
    save_base(root / "base", init_std=0.3)
    save_base(root / "base2", init_std=0.3, seed=7)
    write_rows(root / "train.jsonl", 16)
    (root / "afile").write_text("a user's file\n")
    (root / "adir.jsonl").mkdir()
    (root / "adir.jsonl" / "keep.txt").write_text("keep\n")
    adapter = root / "runs" / "x" / "adapter"
    result = runner.invoke(app, [
        "train", "--base", str(root / "base"), "-o", str(adapter), "--task", "qa", "--lang", "sw",
        "--data", str(root / "train.jsonl"), "--batch-size", "4", "--micro-batch-size", "4", "--max-steps", "2",
        "--r", "2",
    ])
    assert result.exit_code == 0, result.output
    (root / "runs" / "x" / "notes.md").write_text("my notes\n")
    import shutil

    shutil.copytree(adapter, root / "truncated_adapter")
    weights = root / "truncated_adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-40])
    shutil.copytree(root / "base", root / "truncated_base")
    shard = root / "truncated_base" / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[: len(shard.read_bytes()) // 2])
    return root


def tree_state(root: Path) -> dict[str, tuple]:
    """Every file and folder under root: content hash and mode (hidden lock files included)."""
    state = {}
    for path in sorted(root.rglob("*")):
        mode = path.stat().st_mode & 0o777
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        state[str(path.relative_to(root))] = (digest, mode)
    return state


def train(w: Path, *extra: str) -> list[str]:
    return ["train", "--base", str(w / "base"), "-o", str(w / "runs" / "new"), "--task", "qa", "--lang", "sw",
            "--data", str(w / "train.jsonl"), "--batch-size", "4", "--micro-batch-size", "4", "--max-steps", "2",
            "--r", "2", *extra]


def merge(w: Path, *extra: str) -> list[str]:
    return ["merge", "--adapter", str(w / "runs" / "x" / "adapter"), *extra]


def evaluate(w: Path, *extra: str) -> list[str]:
    return ["eval", "--adapter", str(w / "runs" / "x" / "adapter"), "--data", str(w / "train.jsonl"),
            "--limit", "2", *extra]


def translate(w: Path, *extra: str) -> list[str]:
    return ["translate", "-i", str(w / "train.jsonl"), "--lang", "sw", "--mt-model", str(w / "no-mt"), *extra]


# (id, argv builder, exit code, first words of the error line after "error: ")
CASES = [
    # output paths under a file or onto a folder, for every command that writes
    ("translate-out-under-file", lambda w: translate(w, "-o", str(w / "afile" / "o.jsonl")), 2, "--output"),
    ("translate-out-is-folder", lambda w: translate(w, "-o", str(w / "adir.jsonl")), 2, "--output"),
    ("translate-over-its-input", lambda w: translate(w, "-o", str(w / "train.jsonl")), 2, "--output"),
    ("translate-no-cuda", lambda w: translate(w, "-o", str(w / "o.jsonl"), "--device", "cuda"), 2, "--device cuda"),
    ("train-out-is-file", lambda w: train(w, "-o", str(w / "afile")), 2, "--output-dir"),
    ("train-out-under-file", lambda w: train(w, "-o", str(w / "afile" / "run")), 2, "--output-dir"),
    ("eval-out-is-file", lambda w: evaluate(w, "-o", str(w / "afile")), 2, "--output-dir"),
    ("eval-out-under-file", lambda w: evaluate(w, "-o", str(w / "afile" / "ev")), 2, "--output-dir"),
    ("merge-out-is-file", lambda w: merge(w, "-o", str(w / "afile")), 2, "--output-dir"),
    ("merge-out-under-file", lambda w: merge(w, "-o", str(w / "afile" / "m")), 2, "--output-dir"),
    ("demo-out-is-file", lambda w: ["demo", "--quick", "--workdir", str(w / "afile")], 2, "--workdir"),
    ("demo-out-under-file", lambda w: ["demo", "--quick", "--workdir", str(w / "afile" / "d")], 2, "--workdir"),
    # merge must never write over what it reads
    ("merge-into-adapter-parent", lambda w: merge(w, "-o", str(w / "runs" / "x"), "--overwrite"), 2, "--output-dir"),
    ("merge-into-adapter", lambda w: merge(w, "-o", str(w / "runs" / "x" / "adapter"), "--overwrite"), 2,
     "--output-dir"),
    ("merge-inside-adapter", lambda w: merge(w, "-o", str(w / "runs" / "x" / "adapter" / "m")), 2, "--output-dir"),
    ("merge-into-base", lambda w: merge(w, "-o", str(w / "base"), "--overwrite"), 2, "--output-dir"),
    ("merge-over-user-files", lambda w: merge(w, "-o", str(w / "adir.jsonl"), "--overwrite"), 2,
     "--overwrite replaces only a merged model folder"),
    ("merge-inside-base", lambda w: merge(w, "-o", str(w / "base" / "m")), 2, "--output-dir"),
    ("merge-other-base-same-shape", lambda w: merge(w, "-o", str(w / "m"), "--base", str(w / "base2")), 2,
     "{adapter} was trained on {root}/base, and the weights of {root}/base2 are not"),
    ("merge-truncated-base", lambda w: merge(w, "-o", str(w / "m"), "--base", str(w / "truncated_base")), 1,
     "cannot load base model"),
    # training settings that crashed or were accepted silently
    ("micro-batch-0", lambda w: train(w, "--micro-batch-size", "0"), 2, "--micro-batch-size must be positive"),
    ("max-steps-negative", lambda w: train(w, "--max-steps", "-5"), 2, "--max-steps must be positive"),
    ("max-steps-0", lambda w: train(w, "--max-steps", "0"), 2, "--max-steps must be positive"),
    ("epochs-negative", lambda w: train(w, "--max-steps", "1", "--epochs", "-1"), 2, "--epochs must be positive"),
    ("warmup-negative", lambda w: train(w, "--warmup-ratio", "-1"), 2, "--warmup-ratio must be in [0, 1)"),
    ("lora-alpha-negative", lambda w: train(w, "--lora-alpha", "-4"), 2, "--lora-alpha must be positive"),
    ("lora-dropout-2", lambda w: train(w, "--lora-dropout", "2"), 2, "--lora-dropout must be in [0, 1)"),
    ("fused-layers-letters", lambda w: train(w, "--method", "flare", "--fused-layers", "a,b"), 2, "--fused-layers"),
    ("fused-layers-out-of-range", lambda w: train(w, "--method", "flare", "--fused-layers", "0,9"), 2,
     "--fused-layers 9"),
    ("target-modules-nosuch", lambda w: train(w, "--target-modules", "nosuch"), 2, "target modules ['nosuch'] not found in LlamaForCausalLM"),
    ("train-data-typo", lambda w: train(w, "--data", str(w / "trian.jsonl")), 2, "{root}/trian.jsonl: no such file"),
    # eval
    ("eval-unknown-lang", lambda w: evaluate(w, "--lang", "xx"), 2, "unknown language code 'xx'"),
    ("eval-truncated-adapter",
     lambda w: ["eval", "--adapter", str(w / "truncated_adapter"), "--data", str(w / "train.jsonl")], 1,
     "{root}/truncated_adapter: cannot load adapter"),
    # usage errors: one line too, not click's box
    ("usage-bad-int", lambda w: train(w, "--r", "abc"), 2, "Invalid value for '--r'"),
    ("usage-unknown-option", lambda w: ["merge", "--adapterr", "x"], 2, "No such option: --adapterr"),
    ("usage-missing-option", lambda w: ["merge", "-o", str(w / "m")], 2, "Missing option '--adapter'"),
]


@pytest.mark.parametrize("case_id, argv, code, first_words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_touches_nothing(world, monkeypatch, case_id, argv, code, first_words):
    monkeypatch.setenv("FLARE_DEBUG", "0")  # "0" means off: still one line, no traceback
    monkeypatch.chdir(world)
    before = tree_state(world)
    result = runner.invoke(app, argv(world), env={"COLUMNS": "400"})
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    expected = first_words.replace("{adapter}", str(world / "runs" / "x" / "adapter")).replace("{root}", str(world))
    assert errors[0].startswith(f"error: {expected}"), errors[0]
    assert tree_state(world) == before  # nothing created, changed or removed


def test_second_train_into_a_busy_folder_is_refused(world, tmp_path):
    """A real second process holds the folder's lock: one line, exit 1, the folder untouched."""
    import subprocess
    import sys

    out = tmp_path / "busy"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom flare_cli.fsutil import run_lock\n"
         f"with run_lock({str(out)!r}, 'flare train'):\n    print('held', flush=True)\n    time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = tree_state(tmp_path)
        result = runner.invoke(app, train(world, "-o", str(out)), env={"COLUMNS": "400"})
        assert result.exit_code == 1, result.output
        assert result.stderr.strip().splitlines()[-1].startswith(f"error: {out} is in use by another flare train")
        assert tree_state(tmp_path) == before
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed: its OS lock is gone with it, so the next run goes ahead
    result = runner.invoke(app, train(world, "-o", str(out)))
    assert result.exit_code == 0, result.output


def test_flare_debug_only_for_true_values(world, monkeypatch):
    argv = train(world, "--max-steps", "-5")
    for value in ("0", "false", "no", ""):
        monkeypatch.setenv("FLARE_DEBUG", value)
        assert runner.invoke(app, argv).exit_code == 2
    for value in ("1", "true", "YES"):
        monkeypatch.setenv("FLARE_DEBUG", value)
        result = runner.invoke(app, argv)
        assert result.exit_code == 1 and type(result.exception).__name__ == "ConfigError"  # the traceback
    os.environ.pop("FLARE_DEBUG", None)


def test_os_errors_are_one_runtime_line(capsys, monkeypatch):
    """A full disk or a permission is the user's to fix: one line, exit 1, no traceback."""
    import errno

    import typer

    from flare_cli.cli import run_stage

    def full_disk():
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out/model.safetensors")

    monkeypatch.setenv("COLUMNS", "400")
    with pytest.raises(typer.Exit) as exited:
        run_stage(full_disk)
    assert exited.value.exit_code == 1
    assert capsys.readouterr().err.strip() == "error: No space left on device: /data/out/model.safetensors"

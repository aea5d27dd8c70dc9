"""Nothing of the user's is lost: --overwrite, resume, interrupts, killed merges, file modes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from fixtures_mt import FakeEngine
from test_bad_inputs import tree_state, write_rows
from tiny_models import save_base
from typer.testing import CliRunner

from flare_cli.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("no_data_loss")
    save_base(root / "base", init_std=0.3)
    write_rows(root / "train.jsonl", 32)
    return root


def train_argv(world, out, *extra):
    return ["train", "--base", str(world / "base"), "-o", str(out), "--task", "qa", "--lang", "sw",
            "--data", str(world / "train.jsonl"), "--lr", "5e-3", "--batch-size", "8", "--micro-batch-size", "4",
            "--max-steps", "6", "--r", "2", "--logging-steps", "1", "--save-steps", "2", "--seed", "3", *extra]


def invoke(argv, **kwargs):
    return runner.invoke(app, argv, env={"COLUMNS": "400"}, **kwargs)


def log_steps(out: Path) -> list[int]:
    return [r["step"] for r in map(json.loads, (out / "trainer_log.jsonl").read_text().splitlines()) if "loss" in r]


def assert_same_adapter(a: Path, b: Path) -> None:
    x, y = load_file(str(a / "adapter_model.safetensors")), load_file(str(b / "adapter_model.safetensors"))
    assert x.keys() == y.keys()
    for key in x:
        torch.testing.assert_close(x[key], y[key], atol=1e-6, rtol=1e-5)


@pytest.fixture(scope="module")
def finished(world):
    out = world / "finished"
    result = invoke(train_argv(world, out))
    assert result.exit_code == 0, result.output
    return out


# ------------------------------------------------------------------------------ train --overwrite


def test_overwrite_with_a_typo_keeps_the_finished_run(world, finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = tree_state(run)
    result = invoke(train_argv(world, run, "--overwrite", "--data", str(world / "trian.jsonl")))
    assert result.exit_code == 2 and "trian.jsonl: no such file" in result.stderr
    result = invoke(train_argv(world, run, "--overwrite", "--target-modules", "nosuch"))  # fails after loading
    assert result.exit_code == 2 and "target modules ['nosuch'] not found" in result.stderr
    assert tree_state(run) == before


def test_overwrite_removes_only_flares_files(world, finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "notes.md").write_text("my notes\n")
    (run / "plots").mkdir()
    (run / "plots" / "loss.png").write_bytes(b"png")
    (run / "checkpoints" / "checkpoint-999").mkdir()  # a stale checkpoint of the old run: flare's
    old_result = (run / "train_result.json").read_text()
    result = invoke(train_argv(world, run, "--overwrite", "--max-steps", "4"))
    assert result.exit_code == 0, result.output
    assert "--overwrite: removed the previous run's" in result.stderr
    assert (run / "notes.md").read_text() == "my notes\n" and (run / "plots" / "loss.png").read_bytes() == b"png"
    assert not (run / "checkpoints" / "checkpoint-999").exists()
    assert (run / "train_result.json").read_text() != old_result
    assert json.loads((run / "train_result.json").read_text())["steps"] == 4
    assert log_steps(run) == [1, 2, 3, 4]


def test_a_folder_of_foreign_files_is_refused_even_with_overwrite(world, tmp_path):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    before = tree_state(tmp_path)
    result = invoke(train_argv(world, out, "--overwrite"))
    assert result.exit_code == 2 and "holds other files (thesis.tex, ...)" in result.stderr
    assert tree_state(tmp_path) == before


# ------------------------------------------------------------------------------ resume


def _interrupted(world, out, stop_at_step=5):
    """A run killed (by an exception in the log callback) after step `stop_at_step`."""
    from flare_cli import train as train_stage
    from flare_cli.config import build_config

    class Killed(Exception):
        pass

    def kill(record):
        if record.get("step") == stop_at_step and "loss" in record:
            raise Killed

    flags = {"base": str(world / "base"), "output_dir": str(out), "task": "qa", "lang": "sw",
             "data": str(world / "train.jsonl"), "learning_rate": 5e-3, "batch_size": 8, "micro_batch_size": 4,
             "max_steps": 6, "r": 2, "logging_steps": 1, "save_steps": 2, "seed": 3}
    with pytest.raises(Killed):
        train_stage.run(build_config(train_stage.TrainConfig, {}, flags), on_log=kill)


def test_corrupt_latest_checkpoint_falls_back_to_the_one_before(world, finished, tmp_path):
    out = tmp_path / "run"
    _interrupted(world, out)
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["checkpoint-2", "checkpoint-4"]
    weights = out / "checkpoints" / "checkpoint-4" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-16])  # a write the OS never finished
    result = invoke(train_argv(world, out))
    assert result.exit_code == 0, result.output
    assert "checkpoint-4 is unreadable" in result.stderr and "falling back to the one before it" in result.stderr
    assert "resuming from" in result.stderr and "checkpoint-2" in result.stderr
    assert json.loads((out / "train_result.json").read_text())["resumed_from"] == 2
    assert_same_adapter(out, finished)  # deterministic resume: same as the uninterrupted run
    assert log_steps(out) == [1, 2, 3, 4, 5, 6]  # no duplicated steps after the resume


def test_resume_log_has_each_step_once(world, tmp_path):
    out = tmp_path / "run"
    _interrupted(world, out)
    assert log_steps(out) == [1, 2, 3, 4, 5]
    with (out / "trainer_log.jsonl").open("a") as handle:
        handle.write('{"step": 6, "lo')  # a line cut by the kill
    result = invoke(train_argv(world, out))
    assert result.exit_code == 0, result.output
    assert log_steps(out) == [1, 2, 3, 4, 5, 6]


def test_resume_with_changed_settings_is_refused(world, tmp_path):
    out = tmp_path / "run"
    _interrupted(world, out)
    before = tree_state(out)
    result = invoke(train_argv(world, out, "--lr", "1e-3", "--r", "4"))
    assert result.exit_code == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line == (f"error: --output-dir {out} holds a run to resume with other settings (r: 2 -> 4, "
                    "learning-rate: 0.005 -> 0.001); pass --overwrite to start over, or pick another folder")
    assert tree_state(out) == before
    # settings that do not change what is trained may change
    result = invoke(train_argv(world, out, "--logging-steps", "2"))
    assert result.exit_code == 0, result.output
    # a finished run with other settings is not "already trained"
    result = invoke(train_argv(world, out, "--max-steps", "8"))
    assert result.exit_code == 2 and "was trained with other settings (max-steps: 6 -> 8)" in result.stderr
    assert invoke(train_argv(world, out, "--max-steps", "8", "--overwrite")).exit_code == 0
    assert json.loads((out / "train_result.json").read_text())["steps"] == 8


def _flare(*args, **popen):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "COLUMNS": "400"}
    return subprocess.Popen([sys.executable, "-m", "flare_cli", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


@pytest.mark.slow  # > 20 s on a shared CPU (measured with --durations)
def test_sigterm_is_an_interrupt_that_keeps_partial_work(world, tmp_path):
    out = tmp_path / "run"
    argv = train_argv(world, out, "--max-steps", "200", "--save-steps", "1")
    proc = _flare(*argv)
    try:
        for line in proc.stderr:  # wait until training really runs
            if line.lstrip().startswith("step 3/200"):
                break
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "interrupted (SIGTERM); partial work is kept and resumable"
    assert "Traceback" not in err
    assert not (out / "train_result.json").exists()
    assert list((out / "checkpoints").glob("checkpoint-*"))
    result = invoke(argv)  # the next run picks the work up
    assert result.exit_code == 0, result.output
    resumed_from = json.loads((out / "train_result.json").read_text())["resumed_from"]
    assert resumed_from >= 2  # step 3 was logged; its checkpoint may or may not have been written
    assert log_steps(out) == list(range(1, 201))


# ------------------------------------------------------------------------------ merge


def test_merge_cleans_a_killed_merges_temp_folders_and_says_so(world, finished, tmp_path):
    out = tmp_path / "merged"
    dead = tmp_path / ".merged.abc123.tmp"  # flare_cli 0.1's name: no pid
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"x" * 100)
    dead_pid = tmp_path / ".merged.999999999.k2j3.tmp"
    dead_pid.mkdir()
    live = tmp_path / f".merged.{os.getpid()}.live.tmp"  # a merge still writing: not touched
    live.mkdir()
    (tmp_path / ".merged.old-999999999").mkdir()
    result = invoke(["merge", "--adapter", str(finished), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert not dead.exists() and not dead_pid.exists() and not (tmp_path / ".merged.old-999999999").exists()
    assert live.exists()
    assert ("warning: removed 3 unfinished folder(s) of an interrupted merge next to "
            f"{out} (.merged.999999999.k2j3.tmp, .merged.abc123.tmp, .merged.old-999999999)") in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".merged")) == [live.name]


def test_merge_accepts_its_own_base_in_another_dtype(world, finished, tmp_path):
    """The base fingerprint tolerates dtype rounding: a bf16 copy of the training base is that base."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    bf16 = tmp_path / "base-bf16"
    AutoModelForCausalLM.from_pretrained(world / "base", dtype=torch.bfloat16).save_pretrained(bf16)
    AutoTokenizer.from_pretrained(world / "base").save_pretrained(bf16)
    result = invoke(["merge", "--adapter", str(finished), "-o", str(tmp_path / "m"), "--base", str(bf16)])
    assert result.exit_code == 0, result.output
    fingerprint = json.loads((finished / "flare_config.json").read_text())["meta"]["base_fingerprint"]
    assert fingerprint["hidden_size"] == 32 and len(fingerprint["sample"]) == 64


# ------------------------------------------------------------------------------ file modes


class EchoEngine(FakeEngine):
    engine, model_id = "echo", "test/echo"

    def translate_batch(self, texts, src, tgt, num_beams, max_new_tokens):
        return [t.upper() for t in texts], sum(len(t.split()) for t in texts)


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_outputs_follow_the_umask(world, finished, tmp_path, umask, file_mode, dir_mode):
    from flare_cli import translate as tr

    old = os.umask(umask)
    try:
        run = tmp_path / "run"
        assert invoke(train_argv(world, run, "--max-steps", "2")).exit_code == 0
        ev = tmp_path / "ev"
        assert invoke(["eval", "--adapter", str(run), "--data", str(world / "train.jsonl"), "--limit", "2",
                       "-o", str(ev)]).exit_code == 0
        merged = tmp_path / "merged"
        assert invoke(["merge", "--adapter", str(run), "-o", str(merged)]).exit_code == 0
        (tmp_path / "nli.jsonl").write_text(json.dumps({"id": "1", "premise": "a b", "hypothesis": "c"}) + "\n")
        tr.run(tr.TranslateConfig(input=str(tmp_path / "nli.jsonl"), output=str(tmp_path / "t" / "nli.sw.jsonl"),
                                  lang="sw", direction="test", task="nli"), engine=EchoEngine())
    finally:
        os.umask(old)
    written = [run / n for n in ("adapter_model.safetensors", "adapter_config.json", "flare_config.json",
                                 "train_config.yaml", "trainer_log.jsonl", "train_result.json")]
    written += [ev / "predictions.jsonl", ev / "metrics.json", merged / "config.json", merged / "README.md",
                tmp_path / "t" / "nli.sw.jsonl", tmp_path / "t" / "nli.sw.jsonl.meta.json"]
    written += list(merged.glob("*.safetensors"))
    written += [run / "tokenizer_config.json"] + list((run / "checkpoints").glob("*/*"))
    for path in written:
        assert path.stat().st_mode & 0o777 == file_mode, path
    assert len(written) > 20
    for folder in (run, run / "checkpoints", *(run / "checkpoints").glob("checkpoint-*"), ev, merged,
                   tmp_path / "t"):
        assert folder.stat().st_mode & 0o777 == dir_mode, folder

"""`flare train` on the ecosystem's pieces: transformers' optimizer factory and schedules,
clipping, early stopping, --resume-from-checkpoint, accelerate's trackers (read back with
TensorBoard's and W&B's own formats), the progress bar."""

from __future__ import annotations

import glob
import io
import json
import math
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_bad_inputs import write_rows
from tiny_models import save_base
from typer.testing import CliRunner

from flare_cli import cli
from flare_cli import train as train_stage
from flare_cli.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    save_base(root / "base", init_std=0.3)
    write_rows(root / "train.jsonl", 16)
    write_rows(root / "dev.jsonl", 4, seed=1)
    return root


def argv(world, out, *extra):
    return ["train", "--base", str(world / "base"), "-o", str(out), "--task", "qa", "--lang", "sw",
            "--data", str(world / "train.jsonl"), "--lr", "5e-3", "--batch-size", "4", "--micro-batch-size", "2",
            "--max-steps", "6", "--r", "2", "--logging-steps", "1", "--seed", "3", *extra]


def invoke(args, env=None):
    result = runner.invoke(app, args, env={"COLUMNS": "300", **(env or {})})
    return result


def log_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]


def adapter(folder: Path) -> dict:
    return load_file(str(folder / "adapter_model.safetensors"))


def assert_same_adapter(a: Path, b: Path, tol=1e-6):
    wa, wb = adapter(a), adapter(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.allclose(wa[key], wb[key], atol=tol, rtol=0), key


# ------------------------------------------------------------------------ optimizers and schedules
def test_optimizers_are_transformers_own(world):
    from transformers.optimization import Adafactor

    params = [torch.nn.Parameter(torch.zeros(3))]

    def cfg(optim):
        return train_stage.TrainConfig(base="b", output_dir=str(world / "unused"), optim=optim, learning_rate=3e-4,
                                       weight_decay=0.01)

    adamw = train_stage.build_optimizer(cfg("adamw_torch"), params)
    assert type(adamw) is torch.optim.AdamW and not adamw.defaults["fused"]
    group = adamw.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (3e-4, (0.9, 0.999), 1e-8, 0.01)
    assert train_stage.build_optimizer(cfg("adamw_torch_fused"), params).defaults["fused"] is True
    adafactor = train_stage.build_optimizer(cfg("adafactor"), params)
    assert type(adafactor) is Adafactor
    assert adafactor.defaults["relative_step"] is False and adafactor.defaults["lr"] == 3e-4


def test_adafactor_trains(world, tmp_path):
    result = invoke(argv(world, tmp_path / "out", "--optim", "adafactor", "--max-steps", "2"))
    assert result.exit_code == 0, result.output
    state = torch.load(tmp_path / "out" / "checkpoints" / "checkpoint-2" / "optimizer.pt", weights_only=True)
    assert any("exp_avg_sq_row" in s or "exp_avg_sq" in s for s in state["state"].values())


@pytest.mark.parametrize("schedule", ["cosine", "constant_with_warmup"])
def test_schedules_follow_transformers(world, tmp_path, schedule):
    import transformers

    out = tmp_path / "out"
    result = invoke(argv(world, out, "--lr-scheduler-type", schedule, "--warmup-ratio", "0.34", "--max-steps", "6"))
    assert result.exit_code == 0, result.output
    # the same schedule built by its named transformers function, stepped alongside
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=5e-3)
    make = {"cosine": transformers.get_cosine_schedule_with_warmup,
            "constant_with_warmup": lambda o, w, t: transformers.get_constant_schedule_with_warmup(o, w)}[schedule]
    reference = make(opt, int(0.34 * 6), 6)
    expected = []
    for _ in range(6):
        opt.step()
        reference.step()
        expected.append(reference.get_last_lr()[0])
    logged = [r["lr"] for r in log_records(out) if "loss" in r]
    assert logged == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert len(set(logged)) > 1


@pytest.mark.parametrize("norm, expected", [("0", []), ("0.5", [0.5] * 3)])
def test_max_grad_norm(world, tmp_path, monkeypatch, norm, expected):
    from flare_cli.distributed import Dist

    seen = []
    real = Dist.clip_grad_norm_

    def spy(self, wrapped, params, max_norm):
        seen.append(max_norm)
        return real(self, wrapped, params, max_norm)

    monkeypatch.setattr(Dist, "clip_grad_norm_", spy)
    result = invoke(argv(world, tmp_path / "out", "--max-grad-norm", norm, "--max-steps", "3"))
    assert result.exit_code == 0, result.output
    assert seen == expected


# ------------------------------------------------------------------------------ early stopping
def test_early_stopping_keeps_the_best_adapter(world, tmp_path, monkeypatch):
    losses = iter([1.0, 0.5, 0.7, 0.8, 0.1, 0.1, 0.1, 0.1])
    monkeypatch.setattr(train_stage, "validation_loss", lambda *a, **k: next(losses))
    out = tmp_path / "out"
    args = argv(world, out, "--validation-data", str(world / "dev.jsonl"), "--eval-steps", "1",
                "--early-stopping-patience", "2", "--max-steps", "8", "--json")
    result = invoke(args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["steps"], summary["best_step"], summary["best_validation_loss"]) == (4, 2, 0.5)
    stop = [r for r in log_records(out) if r.get("event") == "early_stop"]
    assert stop == [{"event": "early_stop", "step": 4, "best_step": 2, "patience": 2}]
    assert_same_adapter(out, out / "checkpoints" / "checkpoint-2", tol=0)
    assert "early stop at step 4" in result.stderr
    assert "already trained (4 steps)" in invoke(args[:-1]).stdout  # a finished run, not resumed further


# ----------------------------------------------------------------------- --resume-from-checkpoint
def test_resume_from_a_named_checkpoint_reproduces_the_run(world, tmp_path):
    full = tmp_path / "full"
    assert invoke(argv(world, full, "--save-steps", "2", "--save-total-limit", "5")).exit_code == 0
    resumed = tmp_path / "resumed"
    result = invoke(argv(world, resumed, "--save-steps", "2", "--resume-from-checkpoint",
                         str(full / "checkpoints" / "checkpoint-2")))
    assert result.exit_code == 0, result.output
    assert f"resuming from {full / 'checkpoints' / 'checkpoint-2'}" in result.stderr
    assert [r["step"] for r in log_records(resumed) if "loss" in r] == [3, 4, 5, 6]
    assert_same_adapter(full, resumed)


def test_an_unreadable_named_checkpoint_is_one_line(world, tmp_path):
    run = tmp_path / "run"
    assert invoke(argv(world, run, "--save-steps", "2", "--max-steps", "2")).exit_code == 0
    ckpt = run / "checkpoints" / "checkpoint-2"
    (ckpt / "optimizer.pt").write_bytes(b"not a checkpoint")
    result = invoke(argv(world, tmp_path / "other", "--resume-from-checkpoint", str(ckpt)))
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and lines[-1].startswith(f"error: --resume-from-checkpoint {ckpt}: unreadable")


# ------------------------------------------------------------------------------------- trackers
def wandb_records(path: str):
    """A W&B transaction log (.wandb) record by record: a 7-byte header, then LevelDB-log blocks of
    32 KiB whose chunks carry (crc32, length, type); FIRST/MIDDLE/LAST chunks join into one record."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_trackers_log_what_trainer_log_holds(world, tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, wandb_dir, secret = tmp_path / "out", tmp_path / "wandb", "hf_DoNotLogThisToken123"
    wandb_dir.mkdir()
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir), "WANDB_SILENT": "true", "HF_TOKEN": secret}
    result = invoke(argv(world, out, "--report-to", "tensorboard,wandb", "--validation-data",
                         str(world / "dev.jsonl"), "--eval-steps", "3"), env=env)
    assert result.exit_code == 0, result.output
    records = log_records(out)
    assert not [r for r in records if r.get("event") == "progress"]  # the bar's ticks are not logged
    losses = {r["step"]: r["loss"] for r in records if "loss" in r}
    evals = {r["step"]: r["eval_loss"] for r in records if "eval_loss" in r}
    assert len(losses) == 6 and len(evals) == 2

    events = EventAccumulator(str(out / "runs" / "out"))
    events.Reload()
    tb = {e.step: e.value for e in events.Scalars("train/loss")}
    assert tb.keys() == losses.keys() and all(math.isclose(tb[s], losses[s], rel_tol=1e-6) for s in tb)
    tb_eval = {e.step: e.value for e in events.Scalars("eval/loss")}  # float32 in the event file
    assert tb_eval.keys() == evals.keys() and all(math.isclose(tb_eval[s], evals[s], rel_tol=1e-6) for s in evals)

    (run_file,) = glob.glob(str(wandb_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    history = [{(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for item in r.history.item}
               for r in wandb_records(run_file) if r.WhichOneof("record_type") == "history"]
    wb = {h["_step"]: h["train/loss"] for h in history if "train/loss" in h}
    assert wb == losses
    assert {h["_step"]: h["eval/loss"] for h in history if "eval/loss" in h} == evals

    for path in [*out.rglob("*"), *wandb_dir.rglob("*")]:
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_a_missing_tracker_package_is_one_line(world, tmp_path, monkeypatch):
    monkeypatch.setattr(train_stage, "_has_module", lambda name: name != "wandb")
    result = invoke(argv(world, tmp_path / "out", "--report-to", "wandb", "--dry-run"))
    assert result.exit_code == 2 and "--report-to wandb needs the wandb package" in result.stderr


# --------------------------------------------------------------------------------- progress bar
@pytest.mark.parametrize("terminal", [True, False])
def test_progress_bar_on_a_terminal_lines_in_a_pipe(monkeypatch, terminal):
    from rich.console import Console

    buffer = io.StringIO()
    monkeypatch.setattr(cli, "_stderr_console", lambda: Console(file=buffer, force_terminal=terminal, width=120))
    with cli._training_progress() as on_log:
        for step in (1, 2):
            on_log({"event": "progress", "step": step, "total_steps": 2})
            on_log({"step": step, "loss": 1.5, "lr": 1e-4, "epoch": 0.5, "elapsed": 1.0, "eta": 1.0, "total_steps": 2})
    text = buffer.getvalue()
    line = "step 2/2  loss 1.5000"
    if terminal:
        assert line not in text and "\x1b[" in text and "train" in text
    else:
        assert line in text and "\x1b[" not in text and "━" not in text


# ------------------------------------------------------------------------- FSDP / DeepSpeed
# (FSDP2 itself trains in tests/test_distributed.py; these are the settings refused before accelerate starts)
FSDP2 = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}


@pytest.mark.parametrize("settings, message", [
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, "flare train does not run under DeepSpeed ("),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, "flare train runs FSDP2 only; the accelerate config asks for fsdp_version 1"),
    ({"ACCELERATE_USE_FSDP": "true"}, "flare train runs FSDP2 only"),  # accelerate's default version is 1
    ({**FSDP2, "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"}, "fsdp_cpu_ram_efficient_loading: true is not supported"),
    ({**FSDP2, "FSDP_ACTIVATION_CHECKPOINTING": "true"}, "fsdp_activation_checkpointing: true is not supported"),
])
def test_sharded_settings_flare_cannot_run_are_refused_in_one_line(world, tmp_path, settings, message):
    # what `accelerate launch` puts in the environment for such a config
    env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", **settings}
    result = invoke(argv(world, tmp_path / "out"), env=env)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and lines == [lines[0]] and lines[0].startswith(f"error: {message}"), result.output
    assert not (tmp_path / "out").exists()


def test_example_accelerate_configs_say_their_status():
    root = Path(__file__).resolve().parent.parent / "examples" / "accelerate"
    import yaml

    fsdp = yaml.safe_load((root / "fsdp.yaml").read_text())
    assert fsdp["distributed_type"] == "FSDP" and "REFUSED" not in (root / "fsdp.yaml").read_text()
    assert fsdp["fsdp_config"]["fsdp_version"] == 2  # the settings flare train accepts
    assert fsdp["fsdp_config"]["fsdp_cpu_ram_efficient_loading"] is False
    assert fsdp["fsdp_config"]["fsdp_activation_checkpointing"] is False
    for name in ("deepspeed_zero2.yaml", "deepspeed_zero3.yaml"):
        text = (root / name).read_text()
        assert "STATUS: REFUSED" in text and yaml.safe_load(text)["distributed_type"] == "DEEPSPEED"

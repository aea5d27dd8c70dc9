"""`flare train` under torchrun: 2 CPU processes (gloo) give the adapter of 1 process, same global batch.

Each rank runs the unchanged CLI on its share of every global batch; DDP averages the gradients.
The 2-process adapter must match the 1-process one within TOLERANCE (float32; the only difference
is the order of the gradient summation, amplified a little by 12 Adam steps), and rank 1 must not
write a single file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train import write_rows
from tiny_models import save_base

# max |a - b| over every adapter tensor, relative to the tensor's scale (see docs/performance.md)
TOLERANCE = dict(atol=2e-5, rtol=1e-4)
ROOT = Path(__file__).resolve().parents[1]

# Runs the flare CLI in one rank and records, for ranks other than 0, every filesystem write under
# the output folder (Python audit events: open for writing, mkdir, rename/replace, remove, rmtree).
LAUNCHER = r'''
import json, os, sys
out, report = os.path.realpath(sys.argv[1]), sys.argv[2]
rank = int(os.environ.get("RANK", "0"))
writes = []

def under_out(path):
    try:
        real = os.path.realpath(os.fsdecode(path))
        return real == out or real.startswith(out + os.sep)
    except (TypeError, ValueError):
        return False

def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        mode, flags = args[1], args[2] or 0
        writing = (mode and any(c in mode for c in "wax+")) or (not mode and flags & (os.O_WRONLY | os.O_RDWR))
        if writing and under_out(args[0]):
            writes.append([event, os.fsdecode(args[0])])
    elif event in ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree", "os.truncate"):
        if args and isinstance(args[0], (str, bytes, os.PathLike)) and under_out(args[0]):
            writes.append([event, os.fsdecode(args[0])])

sys.addaudithook(hook)
from flare_cli.cli import app
try:
    app(sys.argv[3:], prog_name="flare")
finally:
    with open(f"{report}.rank{rank}.json", "w") as handle:
        json.dump({"rank": rank, "world": os.environ.get("WORLD_SIZE"), "writes": writes}, handle)
'''


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist_world")
    save_base(root / "base", init_std=0.3)
    # 44 rows, micro-batch 4: 11 micro-batches per epoch, so each epoch ends on a ragged group
    # of one, where rank 1 runs its zero-weight stand-in micro-batch
    write_rows(root / "train.jsonl", 44, seed=0)
    write_rows(root / "val.jsonl", 12, seed=1)
    (root / "launch.py").write_text(LAUNCHER)
    return root


def args(world, out, method):
    # --rank, not --r: torchrun's parser would take --r as an ambiguous abbreviation of its own options
    return ["train", "--base", str(world / "base"), "-o", str(out), "--task", "qa", "--lang", "sw",
            "--method", method, "--data", str(world / "train.jsonl"), "--validation-data", str(world / "val.jsonl"),
            "--lr", "1e-2", "--batch-size", "8", "--micro-batch-size", "4", "--max-steps", "14", "--rank", "4",
            "--logging-steps", "2", "--eval-steps", "7", "--seed", "3"]


def run(world, out, method, nproc, *extra):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    report = str(out) + ".report"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(world / "launch.py"), str(out), report, *args(world, out, method), *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reports = [json.loads(Path(f"{report}.rank{r}.json").read_text()) for r in range(nproc)]
    assert [r["world"] for r in reports] == [str(nproc)] * nproc
    return proc, reports


@pytest.mark.parametrize("method", ["flare"])
def test_two_processes_train_the_same_adapter_as_one(world, tmp_path, method):
    one, _ = run(world, tmp_path / "one", method, 1)
    two, reports = run(world, tmp_path / "two", method, 2)

    a = load_file(str(tmp_path / "one" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "two" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and len(a) == 28  # all-linear (the default): 7 modules x A, B x 2 layers
    assert any(v.abs().sum() > 0 for k, v in b.items() if "lora_B" in k)  # it trained
    for key in a:
        torch.testing.assert_close(b[key], a[key], **TOLERANCE)

    one_log = [json.loads(x) for x in (tmp_path / "one" / "trainer_log.jsonl").read_text().splitlines()]
    two_log = [json.loads(x) for x in (tmp_path / "two" / "trainer_log.jsonl").read_text().splitlines()]
    assert [sorted(r) for r in one_log] == [sorted(r) for r in two_log]  # one log, written once
    for r1, r2 in zip(one_log, two_log):  # train and validation losses are the global ones
        for key in ("loss", "eval_loss"):
            if key in r1:
                assert r2[key] == pytest.approx(r1[key], rel=1e-4, abs=1e-5), (key, r1, r2)
    res1 = json.loads((tmp_path / "one" / "train_result.json").read_text())
    res2 = json.loads((tmp_path / "two" / "train_result.json").read_text())
    assert res1["steps"] == res2["steps"] == 14 and res1["best_step"] == res2["best_step"]

    # rank 0 wrote everything, rank 1 nothing; only rank 0 printed the summary
    assert reports[0]["writes"]
    assert reports[1]["writes"] == [], reports[1]["writes"][:5]
    assert two.stdout.count("trained flare adapter") == 1, two.stdout

    # a finished run launched again is a no-op on every rank, and rank 1 still writes nothing
    before = (tmp_path / "two" / "adapter_model.safetensors").read_bytes()
    again, reports = run(world, tmp_path / "two", method, 2)
    assert again.stdout.count("already trained (14 steps)") == 1, again.stdout
    assert (tmp_path / "two" / "adapter_model.safetensors").read_bytes() == before
    assert reports[1]["writes"] == []



# ------------------------------------------------------------------------------------------- FSDP2
FSDP_CONFIG = ROOT / "examples" / "accelerate" / "fsdp.yaml"


def run_accelerate(world, out, method, *extra, config=FSDP_CONFIG, ok=True):
    """`accelerate launch --config_file examples/accelerate/fsdp.yaml --num_processes 2`: the shipped
    config as a user runs it (accelerate's launcher sets the FSDP environment; on CPU flare train
    asks accelerate for FSDP2 over gloo)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    report = str(out) + ".report"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--num_processes", "2",
           "--main_process_port", "0", str(world / "launch.py"), str(out), report, *args(world, out, method), *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if not ok:
        return proc, None
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, [json.loads(Path(f"{report}.rank{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="module")
def single(world, tmp_path_factory):
    """The 1-process run of a method (trained once per module), the reference for FSDP."""
    done = {}

    def get(method, *extra):
        if (method, extra) not in done:
            done[method, extra] = tmp_path_factory.mktemp(f"single_{method}") / "out"
            run(world, done[method, extra], method, 1, *extra)
        return done[method, extra]

    return get


def assert_same_adapter(one, two):
    a = load_file(str(one / "adapter_model.safetensors"))
    b = load_file(str(two / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    assert any(v.abs().sum() > 0 for k, v in b.items() if "lora_B" in k)  # it trained
    for key in a:
        torch.testing.assert_close(b[key], a[key], **TOLERANCE)
    return b


# lora with a global batch of 16: 2 micro-batches per rank and step, so FSDP's no_sync (gradient
# accumulation without the reduce-scatter) runs too
@pytest.mark.parametrize("method, extra", [("flare", ()), ("lora", ("--batch-size", "16"))])
def test_fsdp_two_processes_train_the_adapter_of_one(world, single, tmp_path, method, extra):
    import yaml
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from flare_cli.flare import load_flare_model

    assert yaml.safe_load(FSDP_CONFIG.read_text())["fsdp_config"]["fsdp_version"] == 2
    two, reports = run_accelerate(world, tmp_path / "two", method, *extra)
    result = json.loads((tmp_path / "two" / "train_result.json").read_text())
    assert (result["engine"], result["processes"], result["steps"]) == ("FSDP2", 2, 14)  # it really sharded
    saved = assert_same_adapter(single(method, *extra), tmp_path / "two")
    assert len(saved) == 28  # every LoRA tensor of both layers gathered, not rank 0's shard
    for name in ("checkpoint-7", "checkpoint-14"):  # the checkpoints hold the full adapter too
        ckpt = load_file(str(tmp_path / "two" / "checkpoints" / name / "adapter_model.safetensors"))
        assert {k: v.shape for k, v in ckpt.items()} == {k: v.shape for k, v in saved.items()}
    assert reports[1]["writes"] == [], reports[1]["writes"][:5]  # only rank 0 wrote
    assert two.stdout.count(f"trained {method} adapter") == 1, two.stdout

    # the saved adapter is an ordinary one: plain peft and load_flare_model read the gathered tensors
    base = AutoModelForCausalLM.from_pretrained(world / "base")
    peft_model = PeftModel.from_pretrained(base, tmp_path / "two")
    key = next(k for k in saved if "layers.1.self_attn.q_proj.lora_B" in k)
    loaded = dict(peft_model.named_parameters())[key.replace(".weight", ".default.weight")]
    torch.testing.assert_close(loaded, saved[key], atol=0, rtol=0)
    fm = load_flare_model(AutoModelForCausalLM.from_pretrained(world / "base"), tmp_path / "two")
    assert fm.flare_config.method == method


def test_fsdp_resumes_from_a_gathered_checkpoint(world, single, tmp_path):
    # checkpoint-7 of an FSDP run (full tensors on disk) resumed under FSDP (sharded again) and by
    # a single process reproduces the uninterrupted adapter
    run_accelerate(world, tmp_path / "fsdp", "flare", "--gradient-checkpointing")  # fusion survives recompute
    assert_same_adapter(single("flare"), tmp_path / "fsdp")
    for name, launch in (("again_fsdp", run_accelerate), ("again_single", lambda w, o, m: run(w, o, m, 1))):
        out = tmp_path / name
        shutil.copytree(tmp_path / "fsdp", out)
        config = out / "train_config.yaml"
        config.write_text(config.read_text().replace(str(tmp_path / "fsdp"), str(out)))
        shutil.rmtree(out / "checkpoints" / "checkpoint-14")
        for file in ("train_result.json", "adapter_model.safetensors"):
            (out / file).unlink()
        launch(world, out, "flare")
        assert json.loads((out / "train_result.json").read_text())["resumed_from"] == 7
        assert_same_adapter(single("flare"), out)


def test_fsdp_layer_class_of_another_base_is_one_line(world, tmp_path):
    # the example names LlamaDecoderLayer; a user with another base who forgets to change it gets
    # told which class to write (accelerate itself raises a traceback), and nothing is written
    config = tmp_path / "fsdp.yaml"
    config.write_text(FSDP_CONFIG.read_text().replace("LlamaDecoderLayer", "Qwen2DecoderLayer"))
    proc, _ = run_accelerate(world, tmp_path / "out", "flare", config=config, ok=False)
    errors = {line for line in proc.stderr.splitlines() if line.startswith("error:")}
    assert proc.returncode != 0 and errors == {
        "error: fsdp_transformer_layer_cls_to_wrap Qwen2DecoderLayer is not a module class of this base (its layers "
        "are LlamaDecoderLayer); set fsdp_transformer_layer_cls_to_wrap: LlamaDecoderLayer in the accelerate config"
    }, proc.stderr[-3000:]
    assert "]: Traceback" not in proc.stderr  # no rank raised (the launcher's own report of the exit follows)
    assert not (tmp_path / "out").exists()


def test_fsdp_refuses_flare_mt_in_one_line(world, tmp_path):
    # its MT projection (in a sharded layer) runs before that layer's forward: refused before loading
    proc, _ = run_accelerate(world, tmp_path / "out", "flare-mt", "--mt-model", str(tmp_path / "nllb"), ok=False)
    errors = {line for line in proc.stderr.splitlines() if line.startswith("error:")}
    assert errors == {"error: --method flare-mt does not run under FSDP (its MT projection sits in a sharded layer "
                      "but runs before that layer's forward); use DDP (examples/accelerate/ddp.yaml)"}, proc.stderr[-3000:]
    assert "]: Traceback" not in proc.stderr and not (tmp_path / "out").exists()

"""`flare train` end to end on a tiny local model: each method learns, saves, reloads, resumes."""

from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import save_base
from typer.testing import CliRunner

from flare_cli.cli import app
from flare_cli.flare import load_flare_model

runner = CliRunner()
NAMES = ["Amina", "Baraka", "Chidi", "Dalia", "Erasto", "Fumo"]
CITIES = ["Dodoma", "Arusha", "Mwanza", "Tanga", "Moshi", "Kigoma"]


def write_rows(path, n, seed=0, pivots=True):
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as handle:
        for i in range(n):
            name, city = rng.choice(NAMES), rng.choice(CITIES)
            row = {"id": f"r{i}", "context": f"{name} anaishi {city}.", "question": f"{name} anaishi wapi?",
                   "answer": city}
            if pivots:
                row.update(pivot_context=f"{name} lives in {city}.", pivot_question=f"Where does {name} live?")
            handle.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_world")
    save_base(root / "base", init_std=0.3)
    write_rows(root / "train.jsonl", 48, seed=0)
    write_rows(root / "val.jsonl", 8, seed=1)
    return root


def train_args(world, out, method, *extra):
    return ["train", "--base", str(world / "base"), "-o", str(out), "--task", "qa", "--lang", "sw",
            "--method", method, "--data", str(world / "train.jsonl"), "--validation-data", str(world / "val.jsonl"),
            "--lr", "3e-2", "--batch-size", "8", "--micro-batch-size", "4", "--max-steps", "12", "--r", "4",
            "--logging-steps", "1", "--eval-steps", "6", "--seed", "3", *extra]


def losses(out):
    return [r["loss"] for r in map(json.loads, (out / "trainer_log.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.mark.parametrize("method", ["lora", "flare", "input-fusion"])
def test_each_method_learns_saves_and_reloads(world, tmp_path, method):
    out = tmp_path / method
    result = runner.invoke(app, train_args(world, out, method, "--json"))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["steps"] == 12 and summary["method"] == method
    curve = losses(out)
    assert len(curve) == 12
    assert sum(curve[-3:]) / 3 < 0.85 * sum(curve[:3]) / 3  # it learns the toy
    for name in ("adapter_model.safetensors", "adapter_config.json", "flare_config.json", "train_config.yaml",
                 "trainer_log.jsonl", "train_result.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    flare_cfg = json.loads((out / "flare_config.json").read_text())
    assert flare_cfg["method"] == method and flare_cfg["meta"]["lang"] == "sw"
    log = [json.loads(x) for x in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert {"step", "loss", "lr", "epoch", "elapsed", "eta"} <= set(log[0])
    assert sum("eval_loss" in r for r in log) == 2
    from transformers import AutoModelForCausalLM

    fm = load_flare_model(AutoModelForCausalLM.from_pretrained(world / "base"), out)
    saved = load_file(str(out / "adapter_model.safetensors"))
    assert any(v.abs().sum() > 0 for k, v in saved.items() if "lora_B" in k)
    assert fm.flare_config.method == method
    assert bool(fm.fused_layers) == (method == "flare")


def test_gradient_checkpointing_trains_the_same_flare_adapter(world, tmp_path):
    """--gradient-checkpointing recomputes layers in backward; the fusion must stay on there, so
    the adapter equals the one trained without it (and differs from a pivot-less one)."""
    plain, ckpt = tmp_path / "plain", tmp_path / "ckpt"
    assert runner.invoke(app, train_args(world, plain, "flare", "--max-steps", "4")).exit_code == 0
    result = runner.invoke(app, train_args(world, ckpt, "flare", "--max-steps", "4", "--gradient-checkpointing"))
    assert result.exit_code == 0, result.output
    assert "gradient_checkpointing: true" in (ckpt / "train_config.yaml").read_text()
    a = load_file(str(plain / "adapter_model.safetensors"))
    b = load_file(str(ckpt / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4)
    assert losses(ckpt) == pytest.approx(losses(plain), abs=1e-5)


def test_rerun_of_a_finished_run_is_a_no_op(world, tmp_path):
    out = tmp_path / "done"
    assert runner.invoke(app, train_args(world, out, "lora")).exit_code == 0
    before = (out / "adapter_model.safetensors").read_bytes()
    again = runner.invoke(app, train_args(world, out, "lora"))
    assert again.exit_code == 0 and "already trained (12 steps)" in again.output
    assert (out / "adapter_model.safetensors").read_bytes() == before


def test_interrupted_run_resumes_to_the_same_adapter(world, tmp_path):
    from flare_cli import train as train_stage
    from flare_cli.config import build_config

    def cfg(out):
        return build_config(train_stage.TrainConfig, {}, {
            "base": str(world / "base"), "output_dir": str(out), "task": "qa", "lang": "sw", "method": "flare",
            "data": str(world / "train.jsonl"), "learning_rate": 5e-3, "batch_size": 8, "micro_batch_size": 4,
            "max_steps": 8, "r": 4, "logging_steps": 1, "save_steps": 2, "seed": 5})

    full = train_stage.run(cfg(tmp_path / "full"))

    class Killed(Exception):
        pass

    def kill_at_step_5(record):
        if record.get("step") == 5 and "loss" in record:
            raise Killed

    with pytest.raises(Killed):
        train_stage.run(cfg(tmp_path / "resumed"), on_log=kill_at_step_5)
    assert not (tmp_path / "resumed" / "train_result.json").exists()  # not mistaken for complete
    resumed = train_stage.run(cfg(tmp_path / "resumed"))
    assert resumed.resumed_from == 4 and resumed.steps == full.steps == 8
    a = load_file(str(tmp_path / "full" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)


def test_dry_run_prints_resolved_yaml_with_file_then_flags(world, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("base: some/model\noutput_dir: out\nlearning_rate: 0.001\nr: 16\n")
    result = runner.invoke(app, ["train", "-c", str(cfg), "--r", "4", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    resolved = json.loads(result.output)
    assert resolved["learning_rate"] == 0.001 and resolved["r"] == 4 and resolved["lora_alpha"] == 16


@pytest.mark.parametrize(
    "mutate, code, message",
    [
        (lambda a, w, t: a + ["--lang", "xx-nowhere"], 2, "unknown language"),
        (lambda a, w, t: a + ["--task", "summarize"], 2, "unknown task 'summarize'"),
        (lambda a, w, t: a + ["--method", "prefix"], 2, "unknown method 'prefix'"),
        (lambda a, w, t: a + ["--batch-size", "6"], 2, "must be a multiple of --micro-batch-size"),
        (lambda a, w, t: a + ["--base", str(t / "nope")], 1, "cannot load"),
        (lambda a, w, t: a + ["--data", str(t / "missing.jsonl")], 2, "missing.jsonl"),
    ],
)
def test_bad_input_gives_one_clear_line(world, tmp_path, mutate, code, message):
    args = mutate(train_args(world, tmp_path / "o", "flare"), world, tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_missing_pivot_names_file_row_and_column(world, tmp_path):
    data = write_rows(tmp_path / "nopivot.jsonl", 4, pivots=False)
    result = runner.invoke(app, train_args(world, tmp_path / "o", "flare") + ["--data", str(data)])
    assert result.exit_code == 2
    assert "nopivot.jsonl" in result.output and "'r0'" in result.output and "pivot_context" in result.output


def test_foreign_output_dir_is_refused(world, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    result = runner.invoke(app, train_args(world, out, "lora"))
    assert result.exit_code == 2 and "holds other files" in result.output
    assert (out / "thesis.tex").read_text() == "mine"


def test_unknown_yaml_key_is_rejected(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("base: m\noutput_dir: o\nlearnin_rate: 0.1\n")
    result = runner.invoke(app, ["train", "-c", str(cfg), "--dry-run"])
    assert result.exit_code == 2 and "unknown key 'learnin_rate'" in result.output


def test_truncated_rows_are_counted_logged_and_warned(world, tmp_path):
    """--max-length shorter than the prompts: every row is cut, and the answers (at the start of the
    context) go with it; the counts are in the JSON result, trainer_log.jsonl and one stderr line."""
    from transformers import AutoTokenizer

    out = tmp_path / "short"
    args = train_args(world, out, "lora", "--max-length", "6", "--max-steps", "2", "--json")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])["truncation"]
    tokenizer = AutoTokenizer.from_pretrained(world / "base")
    rows = [json.loads(line) for line in (world / "train.jsonl").read_text().splitlines()]
    prompts = [f"Context: {r['context']}\nQuestion: {r['question']}\nAnswer:" for r in rows]
    longer = sum(len(tokenizer(p)["input_ids"]) > 6 for p in prompts)
    assert (report["max_length"], report["n"], report["n_truncated"]) == (6, 48, longer) and longer == 48
    assert report["n_answer_cut"] == 48  # 6 tokens keep only "...wapi?\nAnswer:"
    logged = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert logged[0]["event"] == "truncation" and logged[0]["n_truncated"] == 48
    assert "warning: 48/48 training prompts were longer than --max-length 6" in result.stderr
    assert "the gold answer was cut away (first ids: r0, r1" in result.stderr


def test_default_max_length_is_per_task_and_custom_trains(world, tmp_path):
    result = runner.invoke(app, ["train", "--base", "b", "-o", "o", "--task", "nli", "--dry-run", "--json"])
    assert json.loads(result.output)["max_length"] == 256
    result = runner.invoke(app, ["train", "--base", "b", "-o", "o", "--dry-run", "--json"])
    assert json.loads(result.output)["max_length"] == 512
    out = tmp_path / "custom"
    args = train_args(world, out, "lora", "--task", "custom", "--fields", "question,context", "--max-steps", "2", "--json")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["truncation"]["n_truncated"] == 0

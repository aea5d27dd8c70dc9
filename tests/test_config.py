"""Typed configuration: one schema per command (the stage config), -c for every command, --no-
forms, HF's flag names, --help with every default and panels, docs/config.md generated."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flare_cli import train as train_stage
from flare_cli.cli import app, config_reference
from flare_cli.config import default_text

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent


def invoke(argv, **kwargs):
    return runner.invoke(app, argv, env={"COLUMNS": "400"}, **kwargs)


def dry_run(tmp_path, *argv, config=None):
    args = ["train", "--dry-run", "--json"]
    if config is not None:
        path = tmp_path / "cfg.yaml"
        path.write_text(config)
        args += ["-c", str(path)]
    else:
        args += ["--base", "b", "-o", str(tmp_path / "out")]
    return invoke([*args, *argv])


def one_error_line(result, code=2) -> str:
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.stderr
    return lines[0]


def test_yaml_values_are_typed_by_the_schema(tmp_path):
    # PyYAML reads 1e-4 as text and "8" is quoted: the schema makes them a float and an int
    result = dry_run(tmp_path, config=f"base: b\noutput_dir: {tmp_path / 'o'}\nlearning_rate: 1e-4\nr: \"8\"\n"
                                      "warmup_ratio: '0.1'\ngradient_checkpointing: yes\nfused_layers: [0, 1]\n")
    assert result.exit_code == 0, result.output
    cfg = json.loads(result.stdout)
    assert cfg["learning_rate"] == 1e-4 and isinstance(cfg["learning_rate"], float)
    assert cfg["r"] == 8 and isinstance(cfg["r"], int)
    assert cfg["warmup_ratio"] == 0.1 and cfg["gradient_checkpointing"] is True and cfg["fused_layers"] == [0, 1]


@pytest.mark.parametrize("line, key", [
    ("learning_rate: fast", "learning_rate"), ("r: 8.5", "r"), ("overwrite: maybe", "overwrite"),
    ("epochs: [1, 2]", "epochs"),
])
def test_a_wrong_type_is_one_line_naming_the_key(tmp_path, line, key):
    error = one_error_line(dry_run(tmp_path, config=f"base: b\noutput_dir: {tmp_path / 'o'}\n{line}\n"))
    assert f"cfg.yaml: {key}: " in error and line.split(": ")[1].strip("[]").split(",")[0] in error


def test_an_unknown_key_is_refused(tmp_path):
    error = one_error_line(dry_run(tmp_path, config=f"base: b\noutput_dir: {tmp_path / 'o'}\nlearnin_rate: 1\n"))
    assert "unknown key 'learnin_rate'" in error


@pytest.mark.parametrize("argv, message", [
    (["--task", "summarization"], "unknown task 'summarization'"),
    (["--fusion", "bogus"], "unknown fusion 'bogus'"),
    (["--method", "dpo"], "unknown method 'dpo'"),
    (["--align", "middle"], "unknown align 'middle'"),
    (["--lang", "xx-zz"], "unknown language code 'xx-zz'"),
    (["--optim", "sgd"], "unknown optim 'sgd'"),
    (["--lr-scheduler-type", "polynomial"], "unknown lr_scheduler_type 'polynomial'"),
    (["--report-to", "comet"], "unknown --report-to 'comet'"),
    (["--report-to", "none,tensorboard"], "'none' cannot be combined"),
    (["--max-grad-norm", "-1"], "--max-grad-norm must not be negative"),
    (["--early-stopping-patience", "2"], "give --validation-data"),
    (["--resume-from-checkpoint", "/no/such/ckpt"], "not a complete checkpoint folder"),
    (["--bf16", "--dtype", "fp16"], "--bf16 and --dtype fp16 contradict each other"),
])
def test_dry_run_validates(tmp_path, argv, message):
    assert message in one_error_line(dry_run(tmp_path, *argv))


def test_quantized_paths_refuse_in_one_line_without_bitsandbytes(tmp_path):
    pytest.importorskip("torch")
    if train_stage._has_module("bitsandbytes"):
        pytest.skip("bitsandbytes is installed here")
    assert "--load-in-4bit needs bitsandbytes" in one_error_line(dry_run(tmp_path, "--load-in-4bit"))
    assert "--optim paged_adamw_8bit needs bitsandbytes" in one_error_line(dry_run(tmp_path, "--optim",
                                                                                  "paged_adamw_8bit"))


def test_flags_override_yaml_and_booleans_have_no_forms(tmp_path):
    config = f"base: b\noutput_dir: {tmp_path / 'o'}\noverwrite: true\nload_in_4bit: false\nr: 4\n"
    cfg = json.loads(dry_run(tmp_path, "--no-overwrite", "--r", "16", config=config).stdout)
    assert cfg["overwrite"] is False and cfg["r"] == 16
    cfg = json.loads(dry_run(tmp_path, "--overwrite", "--no-load-in-4bit", "--no-gradient-checkpointing").stdout)
    assert cfg["overwrite"] is True and cfg["load_in_4bit"] is False and cfg["gradient_checkpointing"] is False


def test_hugging_face_spellings(tmp_path):
    cfg = json.loads(dry_run(tmp_path, "--per-device-train-batch-size", "2", "--gradient-accumulation-steps", "4",
                             "--num-train-epochs", "2", "--lora-r", "4", "--bf16").stdout)
    assert (cfg["micro_batch_size"], cfg["batch_size"], cfg["epochs"], cfg["r"], cfg["dtype"]) == (2, 8, 2.0, 4, "bf16")


def test_the_example_config_runs_with_dry_run(tmp_path):
    example = ROOT / "examples" / "train_qa_sw.yaml"
    assert example.read_text().splitlines()[0] == "# flare train -c examples/train_qa_sw.yaml"
    result = invoke(["train", "-c", str(example), "--dry-run", "--json", "-o", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    resolved = json.loads(result.stdout)
    for key, value in yaml.safe_load(example.read_text()).items():
        if key != "output_dir":
            assert resolved[key] == (float(value) if key == "learning_rate" else value), key
    readme = (ROOT / "README.md").read_text()
    assert "```yaml\n# flare train -c examples/train_qa_sw.yaml\n" in readme


def test_help_shows_every_default_in_panels():
    result = invoke(["train", "--help"])
    assert result.exit_code == 0
    text = re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", result.stdout))
    for panel in ("Model", "Data", "LoRA/FLARE", "Optimisation", "Output"):
        assert f"╭─ {panel} " in result.stdout
    for f in dataclasses.fields(train_stage.TrainConfig):
        shown = default_text(f)
        if shown not in ("none", "required"):
            assert f"(default: {shown})" in text, f.name
    for flag in ("--per-device-train-batch-size", "--gradient-accumulation-steps", "--num-train-epochs",
                 "--lora-r", "--bf16", "--no-overwrite", "--no-load-in-4bit", "--report-to", "--optim"):
        assert flag in text


def test_docs_config_md_is_generated_from_the_schemas():
    committed = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    assert committed == config_reference(), "regenerate: python -m flare_cli.config --markdown > docs/config.md"
    for cls in (train_stage.TrainConfig,):
        for f in dataclasses.fields(cls):
            assert f"| `{f.name}` |" in committed


def test_fusion_names_match_the_registry():
    from flare_cli.flare.fusion import FUSIONS

    assert tuple(FUSIONS) == train_stage.FUSION_NAMES


# -- -c for the other commands: YAML keys are the command's options, typed by its stage config --
def test_translate_takes_its_required_options_from_the_file_and_flags_win(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(f"input: {tmp_path / 'in.jsonl'}\noutput: {tmp_path / 'out.jsonl'}\nlang: sw\nnum_beams: '2'\n")
    assert "input file not found: " + str(tmp_path / "in.jsonl") in one_error_line(invoke(["translate", "-c", str(path)]))
    other = tmp_path / "other.jsonl"
    error = one_error_line(invoke(["translate", "-c", str(path), "--input", str(other)]))
    assert f"input file not found: {other}" in error
    path.write_text("input: a.jsonl\noutput: b.jsonl\nlang: sw\nnum_beams: two\n")
    assert "t.yaml: num_beams: Input should be a valid integer" in one_error_line(invoke(["translate", "-c", str(path)]))


@pytest.mark.parametrize("command, text, message", [
    ("merge", "adapter: a\noutput_dir: m\nbogus: 1\n", "unknown key 'bogus'"),
    ("push", "folder: f\nrepo_id: a/b\ndry_run: maybe\n", "dry_run: Input should be a valid boolean"),
    ("eval", "batch_size: big\n", "batch_size: Input should be a valid integer"),
    ("demo", "seed: x\n", "seed: Input should be a valid integer"),
])
def test_every_command_takes_a_typed_config_file(tmp_path, command, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert message in one_error_line(invoke([command, "-c", str(path)]))


def test_a_push_config_reaches_the_stage(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(f"folder: {tmp_path / 'missing'}\nrepo_id: a/b\ndry_run: yes\n")
    assert f"{tmp_path / 'missing'}" in one_error_line(invoke(["push", "-c", str(path)]))


@pytest.mark.parametrize("fields", ["[question, context]", "question,context"])
def test_a_list_field_behind_a_text_flag(tmp_path, fields):
    path = tmp_path / "t.yaml"
    path.write_text(f"input: {tmp_path / 'in.jsonl'}\noutput: {tmp_path / 'o.jsonl'}\nlang: sw\nfields: {fields}\n")
    rows = tmp_path / "in.jsonl"
    rows.write_text(json.dumps({"id": "1", "question": "q", "context": "c"}) + "\n")
    from flare_cli import translate as translate_stage

    seen = {}

    def fake_run(cfg, progress=None):
        seen["fields"] = cfg.fields
        raise translate_stage.ConfigError("stop here")

    import unittest.mock

    with unittest.mock.patch.object(translate_stage, "run", fake_run):
        one_error_line(invoke(["translate", "-c", str(path), "--quiet"]))
    assert seen["fields"] == ("question", "context")

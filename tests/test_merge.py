"""`flare merge`: parity with the adapter model, dtype, shards, tokenizer, refusals, model card."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from flare_cli.cli import app
from tiny_export import CHAT_TEMPLATE, logits, make_base, make_lora

IDS = torch.tensor([[1, 5, 9, 14, 22, 30, 41, 2]])
runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    base = make_base(root / "base")
    lora = make_lora(base, root / "lora", flare={"method": "lora", "task": "qa", "lang": "sw"})
    flare_add = make_lora(
        base, root / "flare_add", seed=2, flare_tensor=True,
        flare={"method": "flare", "fusion": "add", "task": "qa", "lang": "sw", "base_model": str(base)},
    )
    flare_relu = make_lora(
        base, root / "flare_relu", seed=3, flare_tensor=True, flare={"method": "flare", "fusion": "add_relu"}
    )
    return {"root": root, "base": base, "lora": lora, "flare_add": flare_add, "flare_relu": flare_relu}


def peft_logits(base, adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter)
    return logits(model.eval(), IDS)


def merge(*args):
    # A wide terminal, so rich does not wrap the one-line error.
    return runner.invoke(app, ["merge", *map(str, args)], env={"COLUMNS": "500"})


def err(res) -> str:
    """The last stderr line: the error (transformers' load progress comes before it)."""
    return res.stderr.strip().splitlines()[-1]


def test_lora_merge_matches_adapter_logits(world, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    res = merge("--adapter", world["lora"], "--output-dir", out, "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["method"] == "lora" and info["dtype"] == "float32" and not info["dropped_pivot"]

    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    got = logits(merged.eval(), IDS)
    want = peft_logits(world["base"], world["lora"])
    base_only = logits(AutoModelForCausalLM.from_pretrained(world["base"]).eval(), IDS)
    assert (want - base_only).abs().max() > 1e-2  # the adapter really changes the model
    assert (got - want).abs().max() < 1e-4

    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == CHAT_TEMPLATE
    assert tok.convert_tokens_to_ids("w7") == 11
    card = (out / "README.md").read_text()
    assert "library_name: transformers" in card and "- merged" in card
    assert "base_model" not in card and str(world["base"]) not in card  # a local path is no Hub id
    assert not list(tmp_path.glob(".merged.*"))  # no temp folder left behind


def test_merge_keeps_base_dtype_and_shards(world, tmp_path):
    from transformers import AutoModelForCausalLM

    base16 = make_base(tmp_path / "base16", dtype="bfloat16")
    adapter = make_lora(base16, tmp_path / "lora16")
    out = tmp_path / "merged16"
    res = merge("--adapter", adapter, "--output-dir", out, "--max-shard-size", "40KB")
    assert res.exit_code == 0, res.output
    assert "bfloat16" in res.stdout
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert {p.dtype for p in merged.parameters()} == {torch.bfloat16}


def test_flare_adapter_is_refused(world, tmp_path):
    out = tmp_path / "nope"
    res = merge("--adapter", world["flare_relu"], "--output-dir", out)
    assert res.exit_code == 2
    assert "is a FLARE adapter (method flare, fusion add_relu)" in err(res)
    assert "--drop-pivot" in err(res)
    assert not out.exists()


def test_drop_pivot_merges_plain_lora_part_with_warning(world, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "pivotless"
    res = merge("--adapter", world["flare_add"], "--output-dir", out, "--drop-pivot")
    assert res.exit_code == 0, res.output
    assert "warning:" in err(res) and "NOT the trained model" in err(res)
    got = logits(AutoModelForCausalLM.from_pretrained(out).eval(), IDS)
    # Plain peft ignores the lora_flare_* tensor: that is exactly the pivot-less model.
    assert (got - peft_logits(world["base"], world["flare_add"])).abs().max() < 1e-4
    card = (out / "README.md").read_text()
    assert "this is NOT the trained model" in card
    assert "reproduce (W + sBA)u exactly; the pivot term sBA h is what is dropped" in card


def test_drop_pivot_card_for_nonlinear_fusion(world, tmp_path):
    out = tmp_path / "pivotless_relu"
    res = merge("--adapter", world["flare_relu"], "--output-dir", out, "--drop-pivot")
    assert res.exit_code == 0, res.output
    card = (out / "README.md").read_text()
    assert "no part of the trained layer is reproduced exactly" in card


def test_drop_pivot_refused_for_plain_lora(world, tmp_path):
    res = merge("--adapter", world["lora"], "--output-dir", tmp_path / "x", "--drop-pivot")
    assert res.exit_code == 2 and "only for FLARE adapters" in err(res)


def test_quantized_base_refused_without_dequantize(world, tmp_path):
    import shutil

    qbase = tmp_path / "qbase"
    shutil.copytree(world["base"], qbase)
    config = json.loads((qbase / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True,
                                     "bnb_4bit_compute_dtype": "bfloat16"}
    (qbase / "config.json").write_text(json.dumps(config))
    res = merge("--adapter", world["lora"], "--output-dir", tmp_path / "m", "--base", qbase)
    assert res.exit_code == 2
    assert f"base model {qbase} is quantized" in err(res) and "--dequantize" in err(res)


@pytest.mark.slow  # > 20 s on a shared CPU (measured with --durations)
def test_offline_hub_base_is_one_line_error(world, tmp_path):
    res = merge("--adapter", world["lora"], "--output-dir", tmp_path / "m", "--base", "nobody/no-such-model")
    assert res.exit_code == 1
    assert err(res) == (
        "error: cannot load base model 'nobody/no-such-model' (HF_HUB_OFFLINE is set and it is not in the "
        "local cache); pass --base with a local folder"
    )


def test_existing_output_is_kept(world, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = merge("--adapter", world["lora"], "--output-dir", out)
    assert res.exit_code == 2 and "--overwrite" in err(res)
    assert (out / "keep.txt").read_text() == "mine"
    # --overwrite replaces a merged model, never a folder holding files flare merge did not write
    res = merge("--adapter", world["lora"], "--output-dir", out, "--overwrite")
    assert res.exit_code == 2 and "'keep.txt', which flare merge did not write" in err(res)
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    assert merge("--adapter", world["lora"], "--output-dir", out).exit_code == 0
    first = (out / "config.json").stat().st_ino
    res = merge("--adapter", world["lora"], "--output-dir", out, "--overwrite")
    assert res.exit_code == 0, res.output
    assert (out / "config.json").stat().st_ino != first  # a fresh folder swapped in


def test_bad_adapter_folders(world, tmp_path):
    import shutil

    res = merge("--adapter", tmp_path / "missing", "--output-dir", tmp_path / "m")
    assert res.exit_code == 2 and "does not exist" in err(res)
    broken = tmp_path / "broken"
    shutil.copytree(world["lora"], broken)
    (broken / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    res = merge("--adapter", broken, "--output-dir", tmp_path / "m")
    assert res.exit_code == 2 and "adapter_model.safetensors is corrupt" in err(res)
    assert not (tmp_path / "m").exists()


def test_model_card_metadata(world, tmp_path):
    import shutil

    from flare_cli.card import build_model_card

    folder = tmp_path / "adapter"
    shutil.copytree(world["flare_add"], folder)
    flare = json.loads((folder / "flare_config.json").read_text())
    flare["mt_model"] = "facebook/nllb-200-distilled-600M"
    (folder / "flare_config.json").write_text(json.dumps(flare))
    (folder / "metrics.json").write_text(json.dumps(
        [{"metric": "exact_match", "value": 0.61, "n": 500, "task": "qa", "lang": "sw", "method": "flare"}]
    ))
    card = build_model_card(folder, repo_id="me/flare-sw")
    data = card.data.to_dict()
    assert "base_model" not in data and str(world["base"]) not in str(card)  # a local path is no Hub id
    card = build_model_card(folder, repo_id="me/flare-sw", base_model="meta-llama/Llama-3.1-8B")
    data = card.data.to_dict()
    assert data["base_model"] == "meta-llama/Llama-3.1-8B" and data["base_model_relation"] == "adapter"
    assert data["library_name"] == "peft" and data["language"] == ["sw"]
    assert data["license"] == "cc-by-nc-4.0"
    assert set(data["tags"]) >= {"flare", "lora", "cross-lingual", "qa"}
    result = data["model-index"][0]["results"][0]
    assert result["task"]["type"] == "question-answering"
    assert result["metrics"][0] == {"type": "exact_match", "value": 0.61}
    assert "facebook/nllb-200-distilled-600M" in card.text and "non-commercial" in card.text
    assert "load_flare_model" in card.text and "pivot-less model" in card.text


def test_dequantize_without_bitsandbytes_is_one_line(world, tmp_path):
    import importlib.util
    import shutil

    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes installed: the dequantize path would really run")
    qbase = tmp_path / "qbase"
    shutil.copytree(world["base"], qbase)
    config = json.loads((qbase / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (qbase / "config.json").write_text(json.dumps(config))
    res = merge("--adapter", world["lora"], "--output-dir", tmp_path / "m", "--base", qbase, "--dequantize")
    assert res.exit_code == 1
    assert err(res).startswith(f"error: cannot load base model {qbase}: ")
    assert not (tmp_path / "m").exists()


def test_stage3_adapter_merges_on_top_of_its_stage1_task_adapter(world, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    stage1 = make_lora(world["base"], tmp_path / "stage1", seed=7)
    stage3 = make_lora(world["base"], tmp_path / "stage3", seed=8,
                       flare={"method": "lora", "meta": {"task": "qa", "lang": "sw", "task_adapter": str(stage1)}})
    res = merge("--adapter", stage3, "--output-dir", tmp_path / "merged", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["task_adapter"] == str(stage1)
    with_stage1 = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(world["base"]), stage1).merge_and_unload()
    want = logits(PeftModel.from_pretrained(with_stage1, stage3).eval(), IDS)
    got = logits(AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval(), IDS)
    assert (got - want).abs().max() < 1e-4
    card = (tmp_path / "merged" / "README.md").read_text()
    assert "The stage-1 English task adapter `stage1` was merged into the base first." in card
    assert str(tmp_path) not in card  # local paths are not published
    assert "for `qa` in `sw`" in card  # provenance read from flare_config.json's meta

    bare = merge("--adapter", stage3, "--output-dir", tmp_path / "bare", "--no-task-adapter")
    assert bare.exit_code == 0, bare.output
    bare_logits = logits(AutoModelForCausalLM.from_pretrained(tmp_path / "bare").eval(), IDS)
    assert (bare_logits - want).abs().max() > 1e-2  # stage 1 really is part of the merged model

    (tmp_path / "stage1" / "adapter_config.json").unlink()
    missing = merge("--adapter", stage3, "--output-dir", tmp_path / "m2")
    assert missing.exit_code == 2
    assert "which is not an adapter folder here; pass --task-adapter DIR" in err(missing)

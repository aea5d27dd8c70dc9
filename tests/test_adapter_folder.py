"""AdapterFolder, the one reader of a saved adapter folder, on folders written by the real writers
(FlareModel.save_pretrained, plain peft), on older hand-made ones, and on broken ones."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest
from peft import LoraConfig, get_peft_model
from tiny_models import tiny_causal_lm

from flare_cli.adapter_folder import _MATH_KEYS, AdapterFolder
from flare_cli.errors import ConfigError, DataError, ModelError
from flare_cli.flare import FlareConfig, get_flare_model


def test_math_keys_are_flareconfig_s_fields():
    assert _MATH_KEYS == {f.name for f in fields(FlareConfig)} | {"flare_cli_version"}


def test_reads_a_folder_flaremodel_saved(tmp_path):
    config = FlareConfig(method="flare", fusion="add", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                         meta={"task": "qa", "lang": "sw", "base_model": "org/base", "task_adapter": "runs/en",
                               "max_length": 96, "truncation_side": "left"})
    get_flare_model(tiny_causal_lm("llama"), config).save_pretrained(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({"metric": "f1", "value": 61.0}))
    folder = AdapterFolder.read(tmp_path)
    assert folder.method.fuses and folder.method_name == "flare" and not folder.method.mergeable
    assert folder.lora_config["peft_type"] == "LORA" and folder.lora_config["r"] == 4
    assert folder.meta["task"] == "qa" and folder.base_model == "org/base" and folder.task_adapter == "runs/en"
    assert folder.get("fusion") == "add" and folder.get("lang") == "sw"
    assert folder.flare_config() == FlareConfig.from_dict(json.loads((tmp_path / "flare_config.json").read_text()))
    assert folder.metrics() == [{"metric": "f1", "value": 61.0}]
    folder.check_weights()


def test_a_plain_peft_adapter_is_lora_with_its_base_from_adapter_config(tmp_path):
    get_peft_model(tiny_causal_lm("llama"), LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path)
    folder = AdapterFolder.read(tmp_path)
    assert folder.raw == {} and folder.method_name == "lora" and folder.method.mergeable
    assert folder.base_model == folder.lora_config["base_model_name_or_path"]
    with pytest.raises(ModelError, match="no flare_config.json"):
        folder.flare_config()


def test_top_level_provenance_is_read_but_the_strict_config_refuses_it(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (tmp_path / "flare_config.json").write_text(json.dumps({"method": "lora", "task": "nli", "lang": "sw"}))
    folder = AdapterFolder.read(tmp_path)
    assert folder.meta == {"task": "nli", "lang": "sw"}
    with pytest.raises(ConfigError, match=r"unknown keys \['lang', 'task'\]"):
        folder.flare_config()


def test_a_pushed_repo_s_bundled_or_folded_stage1(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "flare_config.json").write_text(json.dumps({"method": "flare", "meta": {
        "task_adapter": "me/en", "bundled_task_adapter": "task_adapter"}}))
    assert AdapterFolder.read(tmp_path).task_adapter == str(tmp_path / "task_adapter")
    (tmp_path / "flare_config.json").write_text(json.dumps({"method": "lora", "meta": {
        "task_adapter": "me/en", "task_adapter_folded": True}}))
    assert AdapterFolder.read(tmp_path).task_adapter is None


def test_broken_folders_are_one_line_errors(tmp_path):
    with pytest.raises(ModelError, match="not an adapter folder"):
        AdapterFolder.read(tmp_path)
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(DataError, match="adapter_config.json is not valid JSON"):
        AdapterFolder.read(tmp_path)
    (tmp_path / "adapter_config.json").write_text("[1]")
    with pytest.raises(DataError, match="must hold a JSON object"):
        AdapterFolder.read(tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (tmp_path / "flare_config.json").write_text(json.dumps({"method": "prefix"}))
    with pytest.raises(ConfigError, match="unknown method 'prefix'"):
        AdapterFolder.read(tmp_path).method
    with pytest.raises(DataError, match="missing adapter_model.safetensors"):
        AdapterFolder.read(tmp_path).check_weights()
    (tmp_path / "metrics.json").write_text(json.dumps([{"value": 1}]))
    with pytest.raises(DataError, match="each entry needs 'metric' and 'value'"):
        AdapterFolder.read(tmp_path).metrics()

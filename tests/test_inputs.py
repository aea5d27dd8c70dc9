"""Train and eval feed the model the same inputs for one row: the same prompt and pivot ids, cut by
the same policy (training's ``max_length`` read back from flare_config.json at eval)."""

from __future__ import annotations

import json

import pytest
import torch

from flare_cli.encode import build_examples, collate, encode_inputs, recorded_max_length, truncation_meta
from flare_cli.errors import ConfigError
from flare_cli.evaluate import evaluate_rows
from flare_cli.methods import METHODS, method_of
from flare_cli.tasks import get_task
from tiny_models import save_base, save_lora_adapter, tiny_tokenizer

LONG = " ".join(["Dodoma ni mji mkuu wa Tanzania na mji mkubwa."] * 12)
ROWS = [
    {"id": "short", "context": "Nairobi iko Kenya.", "question": "Nairobi iko wapi?", "answer": "Kenya",
     "pivot_context": "Nairobi is in Kenya.", "pivot_question": "Where is Nairobi?"},
    {"id": "long", "context": LONG, "question": "Mji mkuu ni upi?", "answer": "Dodoma",
     "pivot_context": " ".join(["Dodoma is the capital of Tanzania and a big city."] * 12),
     "pivot_question": "What is the capital?"},
]
MAX_LENGTH = 80


class Recorder(torch.nn.Module):
    """Stands in for the model at eval: records what generate() is given, answers EOS at once."""

    def __init__(self, eos_id: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.eos_id = eos_id
        self.calls: list[dict] = []

    def generate(self, **kwargs):
        self.calls.append(kwargs)
        ids = kwargs["input_ids"]
        return torch.cat([ids, torch.full((ids.shape[0], 1), self.eos_id)], dim=1)


def bos_tokenizer():
    """The tiny tokenizer, adding BOS as Llama's does (truncation keeps it)."""
    from tokenizers.processors import TemplateProcessing

    tokenizer = tiny_tokenizer()
    tokenizer._tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.bos_token_id)])
    return tokenizer


def unpadded(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    return [row[m.bool()].tolist() for row, m in zip(ids, mask)]


@pytest.mark.parametrize("method", ["flare", "lora", "input-fusion"])
def test_train_and_eval_build_the_same_prompt_and_pivot_ids(method):
    tokenizer, task = bos_tokenizer(), get_task("qa")
    train = collate(build_examples(tokenizer, task, ROWS, method, MAX_LENGTH), tokenizer.pad_token_id)  # right
    lengths = train["prompt_mask"].sum(1).tolist()
    train_prompts = [row[:n] for row, n in zip(unpadded(train["input_ids"], train["attention_mask"]), lengths)]

    model = Recorder(tokenizer.eos_token_id)
    result = evaluate_rows(model, tokenizer, task, ROWS, method=method, lang="sw", max_length=MAX_LENGTH, batch_size=8)
    (call,) = model.calls
    assert call["input_ids"][0, 0] == tokenizer.pad_token_id or call["attention_mask"][:, -1].all()  # left padding
    assert call["attention_mask"][:, -1].all()
    assert unpadded(call["input_ids"], call["attention_mask"]) == train_prompts
    if method_of(method).side_input == "pivot":
        assert unpadded(call["pivot_input_ids"], call["pivot_attention_mask"]) == \
            unpadded(train["pivot_input_ids"], train["pivot_attention_mask"])
    else:
        assert "pivot_input_ids" not in call and "pivot_input_ids" not in train

    # the long row was cut (BOS kept, the template's end kept), the short one was not
    full = [tokenizer(p)["input_ids"] for p in (task.input_fusion_prompt(r) if method == "input-fusion" else
                                                  task.prompt(r) for r in ROWS)]
    budget = MAX_LENGTH * method_of(method).prompt_length_factor
    assert full[0][0] == tokenizer.bos_token_id and len(full[0]) <= budget
    assert train_prompts[0] == full[0]
    assert len(full[1]) > budget and len(train_prompts[1]) == budget
    assert train_prompts[1][0] == tokenizer.bos_token_id and train_prompts[1][1:] == full[1][-(budget - 1):]
    assert result.metrics["truncation"]["n_truncated"] == 1


def test_every_method_s_texts_come_from_one_builder():
    tokenizer, task = bos_tokenizer(), get_task("qa")
    for name, method in METHODS.items():
        if method.reads_mt:
            continue  # needs an MT encoder: tests/test_flare_mt.py
        (short, long) = encode_inputs(tokenizer, task, ROWS, method, MAX_LENGTH)
        assert (short.pivot_ids is not None) == (method.side_input == "pivot"), name
        assert long.truncated and not short.truncated, name


def test_eval_reuses_the_max_length_training_recorded(tmp_path):
    """An adapter whose flare_config.json records max_length is evaluated with its prompts cut the same way."""
    from flare_cli.evaluate import EvalConfig, run

    base_model, _ = save_base(tmp_path / "base")
    save_lora_adapter(base_model, tmp_path / "adapter")
    (tmp_path / "adapter" / "flare_config.json").write_text(json.dumps(
        {"method": "lora", "meta": {"task": "qa", "lang": "sw", "base_model": str(tmp_path / "base"),
                                    **truncation_meta(MAX_LENGTH)}}))
    data = tmp_path / "test.sw.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    metrics = run(EvalConfig(adapter=str(tmp_path / "adapter"), data=str(data), output_dir=str(tmp_path / "eval"),
                             max_new_tokens=2)).metrics
    assert metrics["settings"]["max_length"] == MAX_LENGTH
    assert metrics["truncation"]["n_truncated"] == 1
    overridden = run(EvalConfig(adapter=str(tmp_path / "adapter"), data=str(data), max_length=1000,
                                output_dir=str(tmp_path / "eval2"), max_new_tokens=2)).metrics
    assert overridden["settings"]["max_length"] == 1000 and overridden["truncation"]["n_truncated"] == 0


def test_an_unknown_truncation_side_is_refused():
    assert recorded_max_length({"max_length": 64, "truncation_side": "left"}) == 64
    assert recorded_max_length({}) is None
    with pytest.raises(ConfigError, match="truncation_side 'right'"):
        recorded_max_length({"max_length": 64, "truncation_side": "right"})


def test_left_and_right_collate_hold_the_same_rows():
    tokenizer, task = bos_tokenizer(), get_task("qa")
    examples = build_examples(tokenizer, task, ROWS, "flare", MAX_LENGTH)
    right, left = collate(examples, 0, "right"), collate(examples, 0, "left")
    for key, mask in (("input_ids", "attention_mask"), ("labels", "attention_mask"), ("prompt_mask", "attention_mask"),
                      ("pivot_input_ids", "pivot_attention_mask")):
        assert unpadded(right[key], right[mask]) == unpadded(left[key], left[mask]), key
    assert left["attention_mask"][:, -1].all() and right["attention_mask"][:, 0].all()
    with pytest.raises(ValueError, match="padding side"):
        collate(examples, 0, "middle")

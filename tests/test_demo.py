"""`flare demo --quick` end to end on the quick toy world: every step runs, numbers are finite,
files load, the merged model equals base + stage 1 + LoRA, and a rerun reuses everything."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from flare_cli.cli import app

METHODS = ["zero-shot", "translate-test", "lora", "flare"]
pytestmark = pytest.mark.slow  # the module's demo run takes ~35 s (pytest --durations)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    args = ["demo", "--quick", "-o", str(root / "work"), "--world-root", str(root / "world"), "--json"]
    first = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert again.exit_code == 0, again.output
    return root, json.loads(first.stdout), json.loads(again.stdout), first.stderr


def test_every_method_has_a_finite_score_on_the_same_rows(demo):
    root, summary, again, _ = demo
    assert [row["method"] for row in summary["rows"]] == METHODS
    for row in summary["rows"]:
        assert row["n"] == 24
        for key in ("exact_match", "f1"):
            assert math.isfinite(row[key]) and 0.0 <= row[key] <= 100.0
    assert json.loads((root / "work" / "summary.json").read_text()) == again  # the last run's
    for method in METHODS:
        predictions = (root / "work" / "eval" / method / "predictions.jsonl").read_text().splitlines()
        assert len(predictions) == 24
        ids = [json.loads(line)["id"] for line in predictions]
        assert ids == [f"qa-test-{i:05d}" for i in range(24)]


def test_progress_shows_each_step_and_its_command(demo):
    _, summary, _, stderr = demo
    assert "[1/14] Build the toy world (quick)" in stderr
    assert "$ flare train --base " in stderr and "--method flare" in stderr
    assert "$ flare push --folder " in stderr and "--dry-run" in stderr
    assert "Loading weights" not in stderr  # library progress bars are silenced
    assert set(summary["timings"]) == {
        "world", "translate_train", "translate_validation", "translate_test", "train_stage1", "train_lora",
        "train_flare", "eval_english", "eval_zero-shot", "eval_translate-test", "eval_lora", "eval_flare", "merge", "push"}


def test_translations_come_from_the_worlds_mt_model(demo):
    root, _, _, _ = demo
    work, world = root / "work", root / "world"
    train_rows = [json.loads(x) for x in (work / "data" / "train.qtw.jsonl").read_text().splitlines()]
    english = {r["id"]: r for r in map(json.loads, (world / "data/qa/train.en.jsonl").read_text().splitlines())}
    assert train_rows and all(r["pivot_context"] == english[r["id"]]["context"] for r in train_rows)
    meta = json.loads((work / "data" / "test.qtw.jsonl.meta.json").read_text())
    assert (meta["mt_model"], meta["direction"], meta["src_lang"], meta["tgt_lang"]) == (
        str(world / "mt"), "test", "qtw_Latn", "eng_Latn")
    assert (meta["engine"], meta["compute_type"]) == ("ctranslate2", "float32")  # the faster engine, when installed


def test_the_pivots_mt_quality_is_sacrebleus_score_against_the_worlds_english(demo):
    """The demo reports how good its translate-test MT was: corpus chrF++ of every translated test
    field against the world's reference English, exactly as sacrebleu scores it."""
    import sacrebleu

    root, summary, again, _ = demo
    gold = [json.loads(x) for x in (root / "world" / "data/qa/test.qtw.jsonl").read_text().splitlines()][:24]
    pivots = {r["id"]: r for r in map(json.loads, (root / "work/data/test.qtw.jsonl").read_text().splitlines())}
    hyps = [pivots[r["id"]][f"pivot_{f}"] for r in gold for f in ("context", "question")]
    refs = [r[f"pivot_{f}"] for r in gold for f in ("context", "question")]
    quality = summary["mt_quality"]
    assert quality["n"] == 48 and quality["direction"] == "qtw->en"
    assert quality["chrf++"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs], word_order=2).score, abs=0.01)
    assert quality["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score, abs=0.01)
    assert again["mt_quality"] == quality  # a rerun reads it back from the translation's metadata
    english = summary["english"]
    assert english["method"] == "english" and english["n"] == 24 and 0 <= english["exact_match"] <= 100


def test_rerun_reuses_every_step_and_gives_the_same_table(demo):
    _, first, again, _ = demo
    assert again["rows"] == first["rows"]
    assert again["timings"]["world"] < 5 and again["timings"]["train_flare"] < 30


def test_adapters_load_and_the_merged_model_is_base_plus_stage1_plus_lora(demo):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from flare_cli.flare import load_flare_model

    root, _, _, _ = demo
    work, base = root / "work", root / "world" / "base"
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with_stage1 = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), work / "stage1-en")
    with_stage1 = with_stage1.merge_and_unload()
    reference = PeftModel.from_pretrained(with_stage1, work / "lora-qtw").eval()
    merged = AutoModelForCausalLM.from_pretrained(work / "merged-lora").eval()
    with torch.no_grad():
        diff = (merged(input_ids=ids).logits - reference(input_ids=ids).logits).abs().max().item()
    assert diff < 1e-4

    flare = load_flare_model(AutoModelForCausalLM.from_pretrained(base), work / "flare-qtw").eval()
    assert flare.flare_config.method == "flare" and flare.fused_layers == [0, 1, 2, 3]
    with torch.no_grad():
        out = flare(ids, pivot_input_ids=ids[:, :4])
    assert torch.isfinite(out.logits).all()

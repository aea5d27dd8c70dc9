"""Generation core, method inputs, scoring and the eval stage, on tiny offline models."""

import json

import pytest
import torch

from flare_cli.errors import ConfigError, DataError, ModelError
from flare_cli.evaluate import EvalConfig, build_inputs, evaluate_rows, generate_answers, run
from flare_cli.tasks import get_task
from tiny_models import save_base, save_lora_adapter, tiny_llama, tiny_tokenizer

PROMPTS = [
    "Context: Dodoma ni mji mkuu wa Tanzania.\nQuestion: Mji mkuu ni upi?\nAnswer:",
    "Context: Dodoma.\nAnswer:",
    "Text: apik tenan.\nIs the sentiment negative, neutral or positive?\nAnswer:",
]
PIVOTS = [
    "Context: Dodoma is the capital of Tanzania.\nQuestion: What is the capital?\nAnswer:",
    "Context: Dodoma is the capital.\nAnswer:",
    "Text: great.\nIs the sentiment negative, neutral or positive?\nAnswer:",
]
QA_ROWS = [
    {"id": "q1", "context": "Dodoma ni mji mkuu wa Tanzania.", "question": "Mji mkuu ni upi?", "answer": "Dodoma",
     "pivot_context": "Dodoma is the capital of Tanzania.", "pivot_question": "What is the capital?"},
    {"id": "q2", "context": "Nairobi iko Kenya.", "question": "Nairobi iko wapi?", "answer": "Kenya",
     "pivot_context": "Nairobi is in Kenya.", "pivot_question": "Where is Nairobi?"},
]


@pytest.fixture(scope="module")
def tiny():
    tokenizer = tiny_tokenizer()
    return tiny_llama(tokenizer), tokenizer


def greedy_reference(model, tokenizer, prompt, max_new_tokens, on_forward=None):
    """Unbatched, uncached greedy decoding: a full forward over prompt + generated tokens each step."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    n_prompt = ids.shape[1]
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        next_id = logits[0, -1].argmax().item()
        ids = torch.cat([ids, torch.tensor([[next_id]])], dim=1)
        if next_id == tokenizer.eos_token_id:
            break
    return tokenizer.decode(ids[0, n_prompt:], skip_special_tokens=True).split("\n", 1)[0]


def test_batched_left_padded_cached_generation_equals_uncached_reference(tiny):
    model, tokenizer = tiny
    expected = [greedy_reference(model, tokenizer, p, 10) for p in PROMPTS]
    assert generate_answers(model, tokenizer, PROMPTS, max_new_tokens=10, batch_size=3) == expected
    assert generate_answers(model, tokenizer, PROMPTS, max_new_tokens=10, batch_size=2) == expected
    assert tokenizer.padding_side == "right"  # restored


class PrefillFusedModel(torch.nn.Module):
    """A FLARE stand-in with FlareModel's generate signature: one no-grad pass over the pivot gives a
    per-example vector (mean pivot embedding) that is added to the *prompt* positions only; generated
    tokens are unfused. Its full forward over prompt + answer applies the same rule, so cached
    generation must match it token for token."""

    def __init__(self, lm, scale=4.0):
        super().__init__()
        self.lm, self.scale, self._pending = lm, scale, None
        lm.get_input_embeddings().register_forward_hook(self._fuse)

    def _fuse(self, module, args, output):
        if self._pending is None:
            return output
        bias, prompt_mask = self._pending  # (B, H), (B, L_prompt)
        n_prompt = prompt_mask.shape[1]
        if output.shape[1] < n_prompt:  # a cached decoding step: new tokens are unfused
            return output
        fused = output.clone()
        fused[:, :n_prompt] += self.scale * bias[:, None, :] * prompt_mask[..., None]
        return fused

    def pivot_vector(self, pivot_input_ids, pivot_attention_mask):
        with torch.no_grad():
            states = self.lm.get_input_embeddings()(pivot_input_ids) * pivot_attention_mask[..., None]
        return states.sum(1) / pivot_attention_mask.sum(1, keepdim=True)

    def forward(self, input_ids, n_prompt, pivot_input_ids, pivot_attention_mask):
        mask = torch.ones(input_ids.shape[0], n_prompt)
        self._pending = (self.pivot_vector(pivot_input_ids, pivot_attention_mask), mask)
        try:
            return self.lm(input_ids=input_ids)
        finally:
            self._pending = None

    def generate(self, input_ids, attention_mask, *, pivot_input_ids, pivot_attention_mask, **kwargs):
        self._pending = (self.pivot_vector(pivot_input_ids, pivot_attention_mask), attention_mask.float())
        try:
            return self.lm.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        finally:
            self._pending = None


def fused_reference(model, tokenizer, prompt, pivot, max_new_tokens):
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    pivot_ids = tokenizer(pivot, return_tensors="pt")["input_ids"]
    n_prompt = ids.shape[1]
    for _ in range(max_new_tokens):
        logits = model(ids, n_prompt, pivot_ids, torch.ones_like(pivot_ids)).logits
        next_id = logits[0, -1].argmax().item()
        ids = torch.cat([ids, torch.tensor([[next_id]])], dim=1)
        if next_id == tokenizer.eos_token_id:
            break
    return tokenizer.decode(ids[0, n_prompt:], skip_special_tokens=True).split("\n", 1)[0]


def test_fused_generation_equals_fused_full_forward(tiny):
    lm, tokenizer = tiny
    model = PrefillFusedModel(lm)
    expected = [fused_reference(model, tokenizer, p, v, 10) for p, v in zip(PROMPTS, PIVOTS)]
    got = generate_answers(model, tokenizer, PROMPTS, pivots=PIVOTS, max_new_tokens=10, batch_size=3)
    assert got == expected
    # The pivot really reaches the answers (otherwise the parity above would be vacuous).
    assert got != generate_answers(lm, tokenizer, PROMPTS, max_new_tokens=10, batch_size=3)


def test_pivot_count_must_match(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="1 pivots for 3 prompts"):
        generate_answers(model, tokenizer, PROMPTS, pivots=PIVOTS[:1])


def test_each_method_builds_its_inputs():
    task = get_task("qa")
    target = [task.prompt(r) for r in QA_ROWS]
    pivot = [task.prompt(r, pivot=True) for r in QA_ROWS]
    assert build_inputs(task, QA_ROWS, "zero-shot") == (target, None)
    assert build_inputs(task, QA_ROWS, "lora") == (target, None)
    assert build_inputs(task, QA_ROWS, "translate-test") == (pivot, None)
    assert build_inputs(task, QA_ROWS, "input-fusion") == ([task.input_fusion_prompt(r) for r in QA_ROWS], None)
    assert build_inputs(task, QA_ROWS, "flare") == (target, pivot)
    assert pivot[0] == "Context: Dodoma is the capital of Tanzania.\nQuestion: What is the capital?\nAnswer:"
    with pytest.raises(ConfigError, match="unknown method 'beam'"):
        build_inputs(task, QA_ROWS, "beam")


def test_translate_test_generates_on_the_pivot_prompt(tiny):
    model, tokenizer = tiny
    task = get_task("qa")
    result = evaluate_rows(model, tokenizer, task, QA_ROWS, method="translate-test", lang="sw", max_new_tokens=6)
    expected = generate_answers(model, tokenizer, [task.prompt(r, pivot=True) for r in QA_ROWS], max_new_tokens=6)
    assert [p["raw"] for p in result.predictions] == expected


def test_evaluate_rows_scores_what_the_model_said(tiny):
    model, tokenizer = tiny
    task = get_task("qa")
    said = generate_answers(model, tokenizer, [task.prompt(r) for r in QA_ROWS], max_new_tokens=6)
    assert all(s.strip() for s in said)
    rows = [dict(QA_ROWS[0], answer=said[0]), dict(QA_ROWS[1], answer="Kenya")]
    result = evaluate_rows(model, tokenizer, task, rows, method="lora", lang="sw", max_new_tokens=6)
    assert result.metrics["exact_match"] == 50.0
    assert result.metrics["n"] == 2 and result.metrics["metric"] == "exact_match"
    assert [p["correct"] for p in result.predictions] == [True, False]
    assert result.predictions[1] == {"id": "q2", "prediction": said[1].strip(), "raw": said[1], "gold": "Kenya",
                                     "correct": False}


def test_unparseable_labels_count_wrong_and_are_reported(tiny):
    model, tokenizer = tiny
    rows = [{"id": "s1", "text": "apik tenan", "label": "positive"}, {"id": "s2", "text": "ora enak", "label": "negative"}]
    result = evaluate_rows(model, tokenizer, get_task("sentiment"), rows, method="lora", lang="jv", max_new_tokens=4)
    parsed = [p["prediction"] for p in result.predictions]
    assert result.metrics["n_unparseable"] == parsed.count(None)
    expected_acc = 100 * sum(p == r["label"] for p, r in zip(parsed, rows)) / 2
    assert result.metrics["accuracy"] == expected_acc


def test_pivot_methods_need_pivot_columns(tiny):
    model, tokenizer = tiny
    rows = [{k: v for k, v in QA_ROWS[0].items() if not k.startswith("pivot_")}]
    with pytest.raises(DataError, match=r"test.sw.jsonl: row 'q1' has no 'pivot_context' column; run `flare translate"):
        evaluate_rows(model, tokenizer, get_task("qa"), rows, method="flare", lang="sw", source="test.sw.jsonl")


# -- the stage ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    base_model, _ = save_base(root / "base")
    save_lora_adapter(base_model, root / "adapter")
    (root / "adapter" / "flare_config.json").write_text(json.dumps(
        {"method": "lora", "task": "qa", "lang": "sw", "base_model": str(root / "base")}))
    save_base(root / "other_base", hidden=48)
    data = root / "test.sw.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in QA_ROWS))
    return root


def test_run_writes_predictions_and_metrics_matching_a_direct_peft_run(saved, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "eval"
    result = run(EvalConfig(adapter=str(saved / "adapter"), data=str(saved / "test.sw.jsonl"), output_dir=str(out),
                            max_new_tokens=6))
    tokenizer = AutoTokenizer.from_pretrained(saved / "base")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(saved / "base"), saved / "adapter").eval()
    direct = generate_answers(model, tokenizer, [get_task("qa").prompt(r) for r in QA_ROWS], max_new_tokens=6)
    written = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["raw"] for p in written] == direct
    assert [p["id"] for p in written] == ["q1", "q2"] and [p["gold"] for p in written] == ["Dodoma", "Kenya"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == result.metrics
    assert (metrics["task"], metrics["lang"], metrics["method"], metrics["n"]) == ("qa", "sw", "lora", 2)
    assert metrics["adapter"] == str(saved / "adapter") and metrics["settings"]["max_new_tokens"] == 6
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    # The adapter changes the answers: zero-shot on the same base gives different outputs.
    base_model = AutoModelForCausalLM.from_pretrained(saved / "base").eval()
    zero = run(EvalConfig(task="qa", lang="sw", base=str(saved / "base"), data=str(saved / "test.sw.jsonl"),
                          output_dir=str(tmp_path / "zs"), max_new_tokens=6))
    assert zero.metrics["method"] == "zero-shot" and zero.metrics["adapter"] is None
    assert [p["raw"] for p in zero.predictions] == generate_answers(
        base_model, tokenizer, [get_task("qa").prompt(r) for r in QA_ROWS], max_new_tokens=6)


def test_predict_mode_runs_without_gold(saved, tmp_path):
    raw = tmp_path / "raw.jsonl"
    raw.write_text(json.dumps({"id": "u1", "context": "Dodoma.", "question": "Mji mkuu?"}) + "\n")
    with pytest.raises(DataError, match="missing column 'answer'"):
        run(EvalConfig(adapter=str(saved / "adapter"), data=str(raw), output_dir=str(tmp_path / "o")))
    result = run(EvalConfig(adapter=str(saved / "adapter"), data=str(raw), output_dir=str(tmp_path / "p"),
                            predict=True, max_new_tokens=4))
    assert set(result.predictions[0]) == {"id", "prediction", "raw"}
    assert result.metrics["n"] == 1 and "exact_match" not in result.metrics


def test_adapter_base_mismatch_is_a_model_error(saved, tmp_path):
    with pytest.raises(ModelError, match=r"adapter: cannot load adapter onto this base \("):
        run(EvalConfig(adapter=str(saved / "adapter"), base=str(saved / "other_base"),
                       data=str(saved / "test.sw.jsonl"), output_dir=str(tmp_path / "o")))


def test_config_errors(saved, tmp_path):
    data = str(saved / "test.sw.jsonl")
    with pytest.raises(ConfigError, match="--method lora needs --adapter DIR"):
        run(EvalConfig(task="qa", lang="sw", base=str(saved / "base"), method="lora", data=data))
    with pytest.raises(ConfigError, match="--method flare needs an adapter trained with --method flare"):
        run(EvalConfig(adapter=str(saved / "adapter"), method="flare", data=data))
    with pytest.raises(ModelError, match="not an adapter folder"):
        run(EvalConfig(adapter=str(saved / "base"), data=data))
    with pytest.raises(ConfigError, match="which task"):
        run(EvalConfig(base=str(saved / "base"), lang="sw", data=data))


# -- the command --------------------------------------------------------------------------------
def test_cli_eval_json_and_compare_table(saved, tmp_path):
    from typer.testing import CliRunner

    from flare_cli.cli import app

    runner = CliRunner()
    data = str(saved / "test.sw.jsonl")
    single = runner.invoke(app, ["eval", "--adapter", str(saved / "adapter"), "--data", data, "-o",
                                 str(tmp_path / "one"), "--max-new-tokens", "4", "--json"])
    assert single.exit_code == 0, single.output
    metrics = json.loads(single.stdout)
    assert metrics == json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert "exact_match" in single.stderr  # the table goes to stderr

    compared = runner.invoke(app, ["eval", "--compare", str(saved / "adapter"), "--method", "lora", "--method",
                                   "input-fusion", "--data", data, "-o", str(tmp_path / "cmp"),
                                   "--max-new-tokens", "4", "--json"])
    assert compared.exit_code == 0, compared.output
    both = json.loads(compared.stdout)
    assert [m["method"] for m in both] == ["lora", "input-fusion"]
    assert (tmp_path / "cmp" / "adapter-lora" / "metrics.json").is_file()
    assert (tmp_path / "cmp" / "adapter-input-fusion" / "predictions.jsonl").is_file()
    assert both[0]["exact_match"] == metrics["exact_match"]


def test_cli_eval_bad_data_is_exit_2_with_one_line(saved, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from flare_cli.cli import app

    monkeypatch.setenv("COLUMNS", "400")  # rich wraps stderr at the terminal width

    missing = tmp_path / "nope.jsonl"
    result = CliRunner().invoke(app, ["eval", "--adapter", str(saved / "adapter"), "--data", str(missing)])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {missing}: no such file"
    assert result.stdout == ""


def test_flare_model_generation_equals_fused_full_forward(tiny):
    """The real FlareModel (flare_cli.flare, landing separately): cached, batched, left-padded
    generation equals an uncached full forward that fuses the prompt positions only."""
    flare = pytest.importorskip("flare_cli.flare")
    lm, tokenizer = tiny_llama(tiny_tokenizer()), tiny[1]
    model = flare.get_flare_model(lm, flare.FlareConfig(method="flare", r=4, lora_alpha=8))
    torch.manual_seed(3)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # B = 0 at init would make fusion invisible
            torch.nn.init.normal_(param, std=0.5)
    model.eval()
    expected = []
    for prompt, pivot in zip(PROMPTS, PIVOTS):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        pivot_ids = tokenizer(pivot, return_tensors="pt")["input_ids"]
        n_prompt = ids.shape[1]
        for _ in range(10):
            prompt_mask = torch.zeros_like(ids)
            prompt_mask[:, :n_prompt] = 1
            with torch.no_grad():
                logits = model(ids, torch.ones_like(ids), prompt_mask=prompt_mask, pivot_input_ids=pivot_ids,
                               pivot_attention_mask=torch.ones_like(pivot_ids)).logits
            next_id = logits[0, -1].argmax().item()
            ids = torch.cat([ids, torch.tensor([[next_id]])], dim=1)
            if next_id == tokenizer.eos_token_id:
                break
        expected.append(tokenizer.decode(ids[0, n_prompt:], skip_special_tokens=True).split("\n", 1)[0])
    got = generate_answers(model, tokenizer, PROMPTS, pivots=PIVOTS, max_new_tokens=10, batch_size=3)
    assert got == expected
    other_pivots = [PIVOTS[2], PIVOTS[0], PIVOTS[1]]
    assert got != generate_answers(model, tokenizer, PROMPTS, pivots=other_pivots, max_new_tokens=10, batch_size=3)


# -- pivots translated on the fly ---------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_mt(tmp_path_factory):
    from fixtures_mt import build_tiny_nllb

    return str(build_tiny_nllb(tmp_path_factory.mktemp("mt")))


def _without_pivots(rows):
    return [{k: v for k, v in r.items() if not k.startswith("pivot_")} for r in rows]


def test_missing_pivots_are_translated_on_the_fly_like_flare_translate(saved, tiny_mt, tmp_path):
    from flare_cli import translate

    mt = tiny_mt
    raw = tmp_path / "raw.sw.jsonl"
    raw.write_text("".join(json.dumps(r) + "\n" for r in _without_pivots(QA_ROWS)))
    # Reference: the two-step pipeline, `flare translate --direction test` then eval on its output.
    piv = tmp_path / "piv.sw.jsonl"
    translate.run(translate.TranslateConfig(input=str(raw), output=str(piv), lang="sw", direction="test",
                                            mt_model=mt, cache_dir=str(tmp_path / "ref_cache")))
    two_step = run(EvalConfig(task="qa", lang="sw", base=str(saved / "base"), method="translate-test",
                              data=str(piv), output_dir=str(tmp_path / "two"), max_new_tokens=6))
    one_step = run(EvalConfig(task="qa", lang="sw", base=str(saved / "base"), method="translate-test",
                              data=str(raw), output_dir=str(tmp_path / "one"), max_new_tokens=6, mt_model=mt))
    assert [p["raw"] for p in one_step.predictions] == [p["raw"] for p in two_step.predictions]
    assert one_step.metrics["settings"]["pivots"] == f"translated on the fly by {mt}"
    assert two_step.metrics["settings"]["pivots"] == "data"
    assert (tmp_path / "one" / ".flare_cache" / "translations.sqlite").is_file()


def test_translate_pivots_keeps_given_pivots_and_fills_only_missing_ones(tiny_mt, tmp_path):
    from flare_cli.translate import translate_pivots

    mt = tiny_mt
    rows = [dict(QA_ROWS[0]), _without_pivots(QA_ROWS[1:])[0]]
    given = dict(rows[0])
    n = translate_pivots(rows, ("context", "question"), lang="sw", mt_model=mt, cache_dir=tmp_path / "c")
    assert n == 2  # only row 2's context and question
    assert rows[0] == given
    assert rows[1]["pivot_context"].strip() and rows[1]["pivot_question"].strip()
    again = [dict(rows[0]), _without_pivots(QA_ROWS[1:])[0]]
    translate_pivots(again, ("context", "question"), lang="sw", mt_model=mt, cache_dir=tmp_path / "c")
    assert again == rows  # deterministic, served from the cache


@pytest.mark.slow  # > 20 s on a shared CPU (measured with --durations)
def test_missing_pivots_offline_is_a_one_line_model_error(saved, tmp_path):
    raw = tmp_path / "raw.sw.jsonl"
    raw.write_text("".join(json.dumps(r) + "\n" for r in _without_pivots(QA_ROWS)))
    with pytest.raises(ModelError, match=r"^cannot load the MT tokenizer 'facebook/nllb-200-3.3B': ") as err:
        run(EvalConfig(task="qa", lang="sw", base=str(saved / "base"), method="translate-test",
                       data=str(raw), output_dir=str(tmp_path / "o")))
    assert "\n" not in str(err.value)


def test_stage3_adapter_is_evaluated_on_its_recorded_task_adapter(saved, tmp_path):
    from transformers import AutoModelForCausalLM

    stage1 = tmp_path / "stage1"
    save_lora_adapter(AutoModelForCausalLM.from_pretrained(saved / "base"), stage1, seed=5)
    stage3 = tmp_path / "stage3"
    save_lora_adapter(AutoModelForCausalLM.from_pretrained(saved / "base"), stage3, seed=6)
    (stage3 / "flare_config.json").write_text(json.dumps({"method": "lora", "meta": {
        "task": "qa", "lang": "sw", "base_model": str(saved / "base"), "task_adapter": str(stage1)}}))
    data = str(saved / "test.sw.jsonl")
    implicit = run(EvalConfig(adapter=str(stage3), data=data, output_dir=str(tmp_path / "a"), max_new_tokens=6))
    explicit = run(EvalConfig(adapter=str(stage3), task_adapter=str(stage1), data=data,
                              output_dir=str(tmp_path / "b"), max_new_tokens=6))
    assert implicit.metrics["settings"]["task_adapter"] == str(stage1)
    assert [p["raw"] for p in implicit.predictions] == [p["raw"] for p in explicit.predictions]


def test_translate_test_qa_answers_are_back_translated_before_scoring(saved, tiny_mt, tmp_path):
    from flare_cli.translate import translate_texts

    cfg = dict(task="qa", lang="sw", base=str(saved / "base"), method="translate-test",
               data=str(saved / "test.sw.jsonl"), max_new_tokens=6, mt_model=tiny_mt)
    back = run(EvalConfig(output_dir=str(tmp_path / "back"), **cfg))
    plain = run(EvalConfig(output_dir=str(tmp_path / "plain"), back_translate_answers=False, **cfg))
    english = [p["raw"] for p in plain.predictions]
    assert [p["raw"] for p in back.predictions] == english  # the same English generation
    expected = translate_texts(english, lang="sw", direction="train", mt_model=tiny_mt, cache_dir=tmp_path / "c")
    assert [p["back_translated"] for p in back.predictions] == expected
    assert [p["prediction"] for p in back.predictions] == [get_task("qa").parse(t) for t in expected]
    assert back.metrics["settings"]["answers"] == f"back-translated by {tiny_mt}"
    assert "answers" not in plain.metrics["settings"] and "back_translated" not in plain.predictions[0]


def test_cli_eval_json_reports_the_qa_scheme_and_truncation(saved, tmp_path):
    """--max-length cuts prompts as training does; metrics.json counts the cut rows and those whose
    gold answer went (checked against the tokenizer's own decoding of what was kept)."""
    from transformers import AutoTokenizer
    from typer.testing import CliRunner

    from flare_cli.cli import app
    from flare_cli.encode import encode_prompt

    data = str(saved / "test.sw.jsonl")
    runner = CliRunner()
    plain = runner.invoke(app, ["eval", "--adapter", str(saved / "adapter"), "--data", data, "-o",
                                str(tmp_path / "plain"), "--max-new-tokens", "2", "--json"])
    assert plain.exit_code == 0, plain.output
    metrics = json.loads(plain.stdout)
    assert metrics["qa_metric"] == "squad"  # TyDiQA-style QA: SQuAD v1.1 scoring
    assert metrics["truncation"] == {"max_length": None, "n": 2, "n_truncated": 0, "n_pivot_truncated": 0,
                                     "n_answer_cut": 0, "answer_cut_ids": []}

    cut = runner.invoke(app, ["eval", "--adapter", str(saved / "adapter"), "--data", data, "-o",
                              str(tmp_path / "cut"), "--max-new-tokens", "2", "--max-length", "12",
                              "--qa-metric", "mlqa", "--json"])
    assert cut.exit_code == 0, cut.output
    metrics = json.loads(cut.stdout)
    assert metrics["qa_metric"] == "mlqa" and metrics["settings"]["max_length"] == 12
    assert metrics == json.loads((tmp_path / "cut" / "metrics.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(saved / "base")
    task = get_task("qa")
    prompts = [task.prompt(r) for r in QA_ROWS]
    truncated = [r["id"] for r, p in zip(QA_ROWS, prompts) if len(tokenizer(p)["input_ids"]) > 12]
    gone = [r["id"] for r, p in zip(QA_ROWS, prompts)
            if r["answer"] not in tokenizer.decode(encode_prompt(tokenizer, p, 12), skip_special_tokens=True)]
    assert truncated == ["q1", "q2"] and gone
    report = metrics["truncation"]
    assert (report["n_truncated"], report["n_answer_cut"], report["answer_cut_ids"]) == (2, len(gone), gone)
    assert f"warning: 2/2 evaluation prompts were longer than --max-length 12" in cut.stderr

    bad = runner.invoke(app, ["eval", "--adapter", str(saved / "adapter"), "--data", data, "--qa-metric", "bleu"])
    assert bad.exit_code == 2 and "unknown QA metric 'bleu' (choose from squad, mlqa, unicode)" in bad.stderr

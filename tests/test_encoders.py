"""FLARE on encoders (XLM-R): family detection, a hand-written reference of the fused forward and its
gradient, save/load (and plain peft), QA windows and offsets, and the CLI train -> eval -> merge."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from peft import PeftModel
from tiny_encoders import save_xlmr_base, tiny_xlmr, xlmr_tokenizer
from torch import nn
from typer.testing import CliRunner

from flare_cli.cli import app
from flare_cli.flare import FlareConfig, get_flare_model, load_flare_model
from flare_cli.flare.encoder import family_defaults, is_encoder, model_family

runner = CliRunner()
HEADS = ("sequence-classification", "question-answering")
ENC = dict(target_modules=["query", "value"], fused_modules=["query", "value"])


# -- family --------------------------------------------------------------------------------------
def test_family_from_config():
    from transformers import BertConfig, LlamaConfig, RobertaConfig, T5Config, XLMRobertaConfig

    assert model_family(XLMRobertaConfig()) == "encoder"
    assert model_family(RobertaConfig()) == "encoder"
    assert model_family(BertConfig()) == "encoder"
    assert model_family(LlamaConfig()) == "decoder"
    assert not is_encoder(T5Config())  # encoder-decoder: not this family
    assert not is_encoder(XLMRobertaConfig(is_decoder=True))  # XLM-R used as a causal LM
    assert family_defaults("encoder") == {"target_modules": "query,value", "fused_modules": "query,value",
                                          "align": "start"}
    assert family_defaults("decoder")["align"] == "end"


# -- the fused forward against a reference written here -------------------------------------------
def batch(seed=0):
    """Right-padded target (row 1 shorter) and right-padded pivot of another length (row 0 shorter)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 400, (2, 9), generator=gen)
    ids[:, 0] = 0  # <s>
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    ids[1, 6:] = 1  # <pad>
    piv = torch.randint(4, 400, (2, 7), generator=gen)
    piv[:, 0] = 0
    pmask = torch.ones(2, 7, dtype=torch.long)
    pmask[0, 4:] = 0
    piv[0, 4:] = 1
    return ids, mask, piv, pmask


def randomize_lora(fm, seed=1, std=0.3):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in fm.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def aligned_pivot(states, pmask, tmask, align):
    """Pure Python: for each real target token, the pivot state at the same rank from the start
    (or the end) of the real pivot tokens; zero where the pivot has no token of that rank."""
    out = torch.zeros(tmask.shape[0], tmask.shape[1], states.shape[-1])
    for b in range(tmask.shape[0]):
        tp = [t for t in range(tmask.shape[1]) if tmask[b, t]]
        pp = [j for j in range(pmask.shape[1]) if pmask[b, j]]
        if align == "end":
            tp, pp = tp[::-1], pp[::-1]
        for t, j in zip(tp, pp):
            out[b, t] = states[b, j]
    return out


class ReferenceFused(nn.Module):
    """y = W u + s * B(phi(A h, A u)) with W, A, B as plain tensors."""

    def __init__(self, linear, A, B, s, h, fusion, detach_pivot_A=False):
        super().__init__()
        self.linear, self.A, self.B, self.s, self.h, self.fusion = linear, A, B, s, h, fusion
        self.detach_pivot_A = detach_pivot_A

    def forward(self, u):
        T = u @ self.A.T
        S = self.h @ (self.A.detach() if self.detach_pivot_A else self.A).T
        phi = {"add_relu": torch.relu(S) + torch.relu(T), "add": S + T, "mul": S * T}[self.fusion]
        return self.linear(u) + self.s * (phi @ self.B.T)


def lora_factors(fm):
    """{(layer, 'query'|'value'): (A, B, s)} read from the FlareModel's fused modules."""
    found = {}
    for name, module in fm.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A and name.endswith(("query", "value")):
            layer = int(name.split(".layer.")[1].split(".")[0])
            found[(layer, name.rsplit(".", 1)[1])] = (
                module.lora_A["default"].weight, module.lora_B["default"].weight, module.scaling["default"]
            )
    return found


def reference_model(plain, fm, piv, pmask, mask, align, fusion, *, detach_pivot_A=False, leaf=False):
    """A copy of the plain base whose query/value compute the FLARE formula from hidden states
    taken here (output_hidden_states of the unadapted copy over the pivot)."""
    with torch.no_grad():
        hidden = plain(input_ids=piv, attention_mask=pmask, output_hidden_states=True).hidden_states
    ref = copy.deepcopy(plain)
    leaves = {}
    for (layer, proj), (A, B, s) in lora_factors(fm).items():
        if leaf:
            A, B = A.detach().clone().requires_grad_(True), B.detach().clone().requires_grad_(True)
        else:
            A, B = A.detach(), B.detach()
        leaves[(layer, proj)] = (A, B)
        h = aligned_pivot(hidden[layer], pmask, mask, align)  # hidden_states[i] enters layer i
        attention = ref.roberta.encoder.layer[layer].attention.self
        setattr(attention, proj, ReferenceFused(getattr(attention, proj), A, B, s, h, fusion, detach_pivot_A))
    return ref, leaves


def outputs(out, head):
    return out.logits if head == "sequence-classification" else torch.cat([out.start_logits, out.end_logits], -1)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("fusion", ["add_relu", "add", "mul"])
@pytest.mark.parametrize("align", ["start", "end"])
def test_fused_forward_matches_reference(head, fusion, align):
    plain = tiny_xlmr(head, init_std=0.3)
    base = copy.deepcopy(plain)
    fm = get_flare_model(base, FlareConfig(fusion=fusion, align=align, **ENC)).eval()
    randomize_lora(fm)
    ids, mask, piv, pmask = batch()
    with torch.no_grad():
        got = outputs(fm(ids, mask, pivot_input_ids=piv, pivot_attention_mask=pmask), head)
        pivotless = outputs(fm(ids, mask, no_pivot=True), head)
        ref, _ = reference_model(plain, fm, piv, pmask, mask, align, fusion)
        want = outputs(ref(input_ids=ids, attention_mask=mask), head)
    real = mask.bool() if head == "question-answering" else torch.ones(2, dtype=torch.bool)
    if head == "question-answering":
        real = torch.cat([real, real], -1)
    assert torch.allclose(got[real], want[real], atol=1e-5), (got - want).abs().max()
    assert (got - pivotless)[real].abs().max() > 1e-2  # the pivot visibly acts


@pytest.mark.parametrize("head", HEADS)
def test_gradient_flows_through_the_pivot_term(head):
    plain = tiny_xlmr(head, init_std=0.3)
    fm = get_flare_model(copy.deepcopy(plain), FlareConfig(fusion="add", align="start", **ENC))
    randomize_lora(fm)
    fm.train()
    ids, mask, piv, pmask = batch(seed=3)
    gold = {"labels": torch.tensor([0, 2])} if head == "sequence-classification" else {
        "start_positions": torch.tensor([1, 2]), "end_positions": torch.tensor([3, 4])}
    fm(ids, mask, pivot_input_ids=piv, pivot_attention_mask=pmask, **gold).loss.backward()
    factors = lora_factors(fm)

    def reference_grads(detach_pivot_A):
        ref, leaves = reference_model(plain, fm, piv, pmask, mask, "start", "add",
                                      detach_pivot_A=detach_pivot_A, leaf=True)
        ref.train()
        ref(input_ids=ids, attention_mask=mask, **gold).loss.backward()
        return {key: (A.grad, B.grad) for key, (A, B) in leaves.items()}

    full, no_pivot_path = reference_grads(False), reference_grads(True)
    for key, (A, B, _) in factors.items():
        assert torch.allclose(A.grad, full[key][0], atol=1e-5), key
        assert torch.allclose(B.grad, full[key][1], atol=1e-5), key
        # d loss / d A through S = A h is part of the gradient
        assert (A.grad - no_pivot_path[key][0]).abs().max() > 1e-4, key
    head_grads = [p.grad for n, p in fm.named_parameters() if "modules_to_save" in n]
    assert head_grads and all(g is not None and g.abs().sum() > 0 for g in head_grads)  # the head trains in full
    frozen = [n for n, p in fm.named_parameters() if p.requires_grad and "lora_" not in n and "modules_to_save" not in n]
    assert frozen == []


# -- saving and loading ------------------------------------------------------------------------------
@pytest.mark.parametrize("head", HEADS)
def test_save_load_identity_and_plain_peft(head, tmp_path):
    fm = get_flare_model(tiny_xlmr(head, init_std=0.3), FlareConfig(fusion="add", align="start", **ENC)).eval()
    randomize_lora(fm)
    with torch.no_grad():  # a trained head: it must come back from the adapter folder
        for name, p in fm.named_parameters():
            if "modules_to_save" in name:
                p.add_(0.5)
    ids, mask, piv, pmask = batch()
    with torch.no_grad():
        fused = outputs(fm(ids, mask, pivot_input_ids=piv, pivot_attention_mask=pmask), head)
        pivotless = outputs(fm(ids, mask, no_pivot=True), head)
    fm.save_pretrained(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == ("SEQ_CLS" if head == "sequence-classification" else "QUESTION_ANS")
    assert ("classifier" if head == "sequence-classification" else "qa_outputs") in config["modules_to_save"]

    again = load_flare_model(tiny_xlmr(head, init_std=0.3), tmp_path / "adapter").eval()
    with torch.no_grad():
        reloaded = outputs(again(ids, mask, pivot_input_ids=piv, pivot_attention_mask=pmask), head)
    assert torch.equal(reloaded, fused)
    # plain peft opens the folder: the pivot-less model (for fusion add exactly (W + sBA) u) with the trained head
    plain = PeftModel.from_pretrained(tiny_xlmr(head, init_std=0.3), str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        peft_out = outputs(plain(input_ids=ids, attention_mask=mask), head)
    assert torch.allclose(peft_out, pivotless, atol=1e-5)


# -- QA windows, offsets and spans ------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return xlmr_tokenizer(tmp_path_factory.mktemp("tok"))


def qa_row(i=0):
    filler = "Nairobi ni mji mkuu wa Kenya. " * 6
    context = filler + "Dodoma ni mji mkuu wa Tanzania. " + filler
    return {"id": f"q{i}", "context": context, "question": "Mji mkuu ni upi?", "answer": "Dodoma",
            "answer_start": context.index("Dodoma"),
            "pivot_context": "Dodoma is the capital of Tanzania.", "pivot_question": "What is the capital?"}


def test_qa_windows_label_the_answer_tokens(tokenizer):
    from flare_cli.encoder_tasks import build_encoder_examples
    from flare_cli.tasks import get_task

    row = qa_row()
    features = build_encoder_examples(tokenizer, get_task("qa"), [row], "flare", 32)
    assert len(features) > 3  # a long context becomes several overlapping windows
    holding = [f for f in features if f.start > 0]
    assert holding and len(holding) < len(features)
    for f in holding:
        assert tokenizer.decode(f.input_ids[f.start : f.end + 1]).strip() == "Dodoma"
        assert row["context"][f.offsets[f.start][0] : f.offsets[f.end][1]] == "Dodoma"
    assert all((f.start, f.end) == (0, 0) for f in features if f not in holding)
    assert all(len(f.input_ids) <= 32 and f.pivot_ids[0] == tokenizer.cls_token_id for f in features)


def test_qa_prediction_maps_spans_back_to_characters(tokenizer):
    """A stand-in model that points at the gold tokens of the window holding the answer: the
    prediction must be exactly the answer's characters of the context."""
    from flare_cli.encoder_tasks import build_encoder_examples, predict
    from flare_cli.tasks import get_task

    task = get_task("qa")
    other = "Habari za leo. " + qa_row(1)["context"]  # other windows: the stand-in tells rows apart by their ids
    rows = [qa_row(0), {**qa_row(1), "context": other, "answer": "Tanzania", "answer_start": other.index("Tanzania")}]
    gold = {tuple(f.input_ids): (f.start, f.end) for f in build_encoder_examples(tokenizer, task, rows, "lora", 32)}

    class Pointer(nn.Module):
        def __init__(self):
            super().__init__()
            self.anchor = nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask, **_):
            start = torch.zeros(input_ids.shape, dtype=torch.float)
            end = torch.zeros(input_ids.shape, dtype=torch.float)
            for b, row in enumerate(input_ids.tolist()):
                s, e = gold[tuple(row[: int(attention_mask[b].sum())])]
                if s > 0:
                    start[b, s] = end[b, e] = 10.0
            return type("Out", (), {"start_logits": start, "end_logits": end})()

    assert predict(Pointer(), tokenizer, task, rows, method="lora", max_length=32, batch_size=3) == ["Dodoma", "Tanzania"]


# -- the CLI end to end --------------------------------------------------------------------------------
NLI = [("Mvua inanyesha.", "Ni mvua.", "It is raining.", "It rains.", "entailment"),
       ("apik tenan.", "elek banget.", "the food was good.", "the food was bad.", "contradiction"),
       ("Dodoma ni mji mkuu.", "Nairobi ni mji mkuu wa Kenya.", "Dodoma is the capital.", "Nairobi is the capital of Kenya.",
        "neutral")]


def write_nli(path, n):
    with path.open("w", encoding="utf-8") as handle:
        for i in range(n):
            p, h, pp, ph, label = NLI[i % 3]
            handle.write(json.dumps({"id": f"n{i}", "premise": p, "hypothesis": h, "pivot_premise": pp,
                                     "pivot_hypothesis": ph, "label": label}) + "\n")
    return path


def write_qa(path, n):
    with path.open("w", encoding="utf-8") as handle:
        for i in range(n):
            handle.write(json.dumps(qa_row(i)) + "\n")
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoder_world")
    save_xlmr_base(root / "base")
    write_nli(root / "nli.jsonl", 12)
    write_qa(root / "qa.jsonl", 4)
    return root


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def train(world, out, task, method, *extra):
    return cli("train", "--base", world / "base", "-o", out, "--task", task, "--lang", "sw", "--method", method,
               "--data", world / f"{task}.jsonl", "--lr", "5e-3", "--batch-size", "4", "--micro-batch-size", "4",
               "--max-steps", "3", "--seed", "1", *extra)


def test_cli_classification_train_eval_merge(world, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from flare_cli.card import build_model_card

    flare = tmp_path / "flare"
    res = train(world, flare, "nli", "flare")
    assert res.exit_code == 0, res.output
    settings = json.loads((flare / "flare_config.json").read_text())
    assert settings["align"] == "start" and settings["fused_modules"] == ["query", "value"]
    assert settings["meta"]["head"] == "sequence-classification"
    assert settings["meta"]["labels"] == ["entailment", "neutral", "contradiction"]
    res = cli("eval", flare, "--data", world / "nli.jsonl", "-o", tmp_path / "ev-flare", "--json")
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.stdout[res.stdout.index("{"):])
    assert {"accuracy", "macro_f1"} <= set(metrics) and metrics["n"] == 12 and metrics["settings"]["decoding"] == "argmax"
    res = cli("merge", "--adapter", flare, "--output-dir", tmp_path / "no")
    assert res.exit_code == 2 and "is a FLARE adapter" in res.output
    card = str(build_model_card(flare))
    assert "pipeline_tag: text-classification" in card
    # the card loads the head with plain transformers, its labels named in training's order
    assert "AutoModelForSequenceClassification.from_pretrained(" in card
    assert "num_labels=3, id2label={0: 'entailment', 1: 'neutral', 2: 'contradiction'}" in card

    lora = tmp_path / "lora"
    assert train(world, lora, "nli", "lora").exit_code == 0
    assert cli("eval", lora, "--data", world / "nli.jsonl", "-o", tmp_path / "ev-lora").exit_code == 0
    predictions = [json.loads(line)["prediction"] for line in (tmp_path / "ev-lora" / "predictions.jsonl").open()]
    res = cli("merge", "--adapter", lora, "--output-dir", tmp_path / "merged")
    assert res.exit_code == 0, res.output
    # plain transformers reads the merged folder and predicts what `flare eval` predicted
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    rows = [json.loads(line) for line in (world / "nli.jsonl").open()]
    enc = tok([r["premise"] for r in rows], [r["hypothesis"] for r in rows], padding=True, return_tensors="pt")
    with torch.no_grad():
        ids = merged(**enc).logits.argmax(-1).tolist()
    assert [merged.config.id2label[i] for i in ids] == predictions
    assert "pipeline_tag: text-classification" in (tmp_path / "merged" / "README.md").read_text()
    # the merged model holds a trained head: zero-shot on it reproduces the adapter's predictions
    res = cli("eval", "--base", tmp_path / "merged", "--task", "nli", "--lang", "sw", "--method", "zero-shot",
              "--data", world / "nli.jsonl", "-o", tmp_path / "ev-merged")
    assert res.exit_code == 0, res.output
    again = [json.loads(line)["prediction"] for line in (tmp_path / "ev-merged" / "predictions.jsonl").open()]
    assert again == predictions
    # a head trained with the labels in another order is refused, not read as the wrong labels
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    config["id2label"] = {"0": "contradiction", "1": "neutral", "2": "entailment"}
    (tmp_path / "merged" / "config.json").write_text(json.dumps(config))
    res = cli("eval", "--base", tmp_path / "merged", "--task", "nli", "--lang", "sw", "--method", "zero-shot",
              "--data", world / "nli.jsonl", "-o", tmp_path / "ev-perm")
    assert res.exit_code == 2 and "has a classification head with labels ['contradiction'" in res.output
    # the bare base has no head: zero-shot would score a random one
    res = cli("eval", "--base", world / "base", "--task", "nli", "--lang", "sw", "--method", "zero-shot",
              "--data", world / "nli.jsonl", "-o", tmp_path / "ev-base")
    assert res.exit_code == 2 and "has no trained nli head" in res.output


def test_cli_qa_train_eval(world, tmp_path):
    from flare_cli.card import build_model_card

    out = tmp_path / "qa"
    res = train(world, out, "qa", "flare", "--max-length", "32")
    assert res.exit_code == 0, res.output
    res = cli("eval", out, "--data", world / "qa.jsonl", "-o", tmp_path / "ev", "--json")
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.stdout[res.stdout.index("{"):])
    assert metrics["metric"] == "exact_match" and {"exact_match", "f1"} <= set(metrics) and metrics["n"] == 4
    rows = {r["id"]: r for r in map(json.loads, (world / "qa.jsonl").open())}
    for line in (tmp_path / "ev" / "predictions.jsonl").open():
        record = json.loads(line)
        assert record["prediction"] is None or record["prediction"] in rows[record["id"]]["context"]
    assert "pipeline_tag: question-answering" in str(build_model_card(out))


def test_compare_puts_encoder_and_decoder_runs_in_one_table(world, tmp_path):
    from tiny_models import save_base

    save_base(tmp_path / "llama", init_std=0.3)
    decoder = tmp_path / "dec"
    res = cli("train", "--base", tmp_path / "llama", "-o", decoder, "--task", "nli", "--lang", "sw", "--method", "lora",
              "--data", world / "nli.jsonl", "--batch-size", "4", "--micro-batch-size", "4", "--max-steps", "1")
    assert res.exit_code == 0, res.output
    encoder = tmp_path / "enc"
    assert train(world, encoder, "nli", "lora").exit_code == 0
    res = cli("eval", encoder, decoder, "--compare", "--json", "--data", world / "nli.jsonl", "--limit", "3",
              "-o", tmp_path / "cmp")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout[res.stdout.index("["):])
    assert [r["adapter"] for r in rows] == [str(encoder), str(decoder)]
    assert all({"accuracy", "macro_f1", "n"} <= set(r) and r["n"] == 3 for r in rows)
    assert [r["settings"]["decoding"] for r in rows] == ["argmax", "greedy"]
    # each family got its own default targets and alignment
    settings = [json.loads((folder / "flare_config.json").read_text()) for folder in (encoder, decoder)]
    assert [(s["target_modules"], s["align"]) for s in settings] == [(["query", "value"], "start"),
                                                                    ("all-linear", "end")]


def test_decoder_only_options_are_refused_for_encoders(world, tmp_path):
    res = train(world, tmp_path / "mt", "nli", "flare-mt", "--mt-model", str(tmp_path / "nope"))
    assert res.exit_code == 2 and "flare-mt is for decoder bases" in res.output
    res = train(world, tmp_path / "norm", "nli", "flare", "--source-norm")
    assert res.exit_code == 2 and "a post-LN encoder (XLM-R) has none" in res.output


def test_translate_test_spans_come_from_the_english_context(tokenizer):
    """translate-test reads (pivot_question, pivot_context): the predicted span's characters are cut
    from the English context, whatever the target context holds at those offsets."""
    from flare_cli.encoder_tasks import build_encoder_examples, predict
    from flare_cli.tasks import get_task

    task = get_task("qa")
    row = {**qa_row(), "pivot_context": "It is raining. Dodoma is the capital of Tanzania."}
    features = build_encoder_examples(tokenizer, task, [row], "translate-test", 32, training=False)
    target = row["pivot_context"].index("Dodoma")
    points = {}
    for f in features:
        hits = [i for i, o in enumerate(f.offsets) if o is not None and o[0] <= target < o[1]]
        if hits:
            last = max(i for i, o in enumerate(f.offsets) if o is not None and o[1] <= target + len("Dodoma"))
            points[tuple(f.input_ids)] = (hits[0], last)

    class Pointer(nn.Module):
        def __init__(self):
            super().__init__()
            self.anchor = nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask, **_):
            start = torch.zeros(input_ids.shape)
            end = torch.zeros(input_ids.shape)
            for b, ids in enumerate(input_ids.tolist()):
                s, e = points.get(tuple(ids[: int(attention_mask[b].sum())]), (0, 0))
                start[b, s] += 10.0
                end[b, e] += 10.0
            return type("Out", (), {"start_logits": start, "end_logits": end})()

    assert points
    assert predict(Pointer(), tokenizer, task, [row], method="translate-test", max_length=32) == ["Dodoma"]


def test_flare_learns_what_only_the_pivot_carries(world, tmp_path):
    """Every target text is the same sentence; only the English pivot tells the label. Plain LoRA
    cannot beat the majority floor, FLARE (the pivot fused into query/value) can."""
    pivots = {"negative": "the food was bad.", "neutral": "the food was ok.", "positive": "the food was good."}
    data = tmp_path / "sentiment.jsonl"
    with data.open("w", encoding="utf-8") as handle:
        for i in range(24):
            label = list(pivots)[i % 3]
            handle.write(json.dumps({"id": str(i), "text": "apik tenan elek banget.", "label": label,
                                     "pivot_text": pivots[label]}) + "\n")
    scores, losses = {}, {}
    for method in ("lora", "flare"):
        out = tmp_path / method
        res = cli("train", "--base", world / "base", "-o", out, "--task", "sentiment", "--lang", "jv", "--method",
                  method, "--data", data, "--lr", "5e-2", "--batch-size", "8", "--micro-batch-size", "8",
                  "--max-steps", "80", "--seed", "42", "--json")
        assert res.exit_code == 0, res.output
        losses[method] = json.loads(res.stdout.strip().splitlines()[-1])["train_loss"]
        res = cli("eval", out, "--data", data, "-o", tmp_path / f"ev-{method}", "--json")
        assert res.exit_code == 0, res.output
        scores[method] = json.loads(res.stdout[res.stdout.index("{"):])["macro_f1"]
    assert losses["lora"] > 1.0 and scores["lora"] < 20  # one class for every row
    assert losses["flare"] < 0.7 and scores["flare"] > scores["lora"] + 25, (scores, losses)


def test_pushed_encoder_lora_on_stage1_is_one_plain_adapter_with_the_trained_head(world, tmp_path):
    """An encoder LoRA trained on base + a stage-1 adapter publishes as one peft adapter: the two
    LoRAs fold, and the head (modules_to_save) is stage 3's; plain transformers + peft rebuild
    the trained classifier from the base alone."""
    from transformers import AutoModelForSequenceClassification

    from flare_cli.modeling import load_base_model
    from flare_cli.publish import fold_loras
    from flare_cli.tasks.registry import get_task

    stage1, stage3 = tmp_path / "stage1", tmp_path / "stage3"
    assert train(world, stage1, "nli", "lora").exit_code == 0
    assert train(world, stage3, "nli", "lora", "--task-adapter", stage1, "--seed", "2").exit_code == 0
    folded = tmp_path / "folded"
    config = fold_loras(stage1, stage3, folded / "adapter_model.safetensors")
    (folded / "adapter_config.json").write_text(json.dumps(config))
    assert "classifier" in config["modules_to_save"]  # peft adds its SEQ_CLS head names

    trained, tokenizer = load_base_model(str(world / "base"), task_adapter=str(stage1), task=get_task("nli"))
    trained = PeftModel.from_pretrained(trained, str(stage3)).eval()
    labels = ["entailment", "neutral", "contradiction"]
    plain = AutoModelForSequenceClassification.from_pretrained(
        world / "base", num_labels=3, id2label=dict(enumerate(labels)), label2id={v: k for k, v in enumerate(labels)})
    plain = PeftModel.from_pretrained(plain, str(folded)).eval()
    batch = tokenizer(["Mvua inanyesha leo.", "Paka analala."], ["Kuna mvua.", "Mbwa anakimbia."],
                      return_tensors="pt", padding=True)
    with torch.no_grad():
        want, got = trained(**batch).logits, plain(**batch).logits
    assert (want - got).abs().max().item() < 1e-5
    assert want.abs().max().item() > 1e-3  # a real output, not two zero heads agreeing

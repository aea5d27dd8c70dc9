"""FLARE-MT proven by numbers: the frozen MT encoder reads the target prompt tagged with the
target's code, a trainable projection (saved as lora_flare_mtproj) turns its states into the pivot
states of every fused layer, gradients reach it under gradient checkpointing, save/load is exact,
and `flare train` / `flare eval` run it end to end without any pivot column."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from fixtures_mt import build_tiny_nllb
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file
from tiny_models import VOCAB, randomize_adapter, save_base, tiny_causal_lm, tiny_llama, tiny_tokenizer
from typer.testing import CliRunner

from flare_cli.cli import app
from flare_cli.errors import ConfigError, ModelError, PivotError
from flare_cli.flare import FlareConfig, get_flare_model, load_flare_model, load_mt_encoder
from flare_cli.flare.pivot import align_index

runner = CliRunner()
SW = "swh_Latn"


@pytest.fixture(scope="module")
def nllb_dir(tmp_path_factory):
    return build_tiny_nllb(tmp_path_factory.mktemp("nllb"))


@pytest.fixture()
def encoder(nllb_dir):
    return load_mt_encoder(str(nllb_dir))


def mt_fm(encoder, **kw):
    fm = get_flare_model(tiny_causal_lm("llama"), FlareConfig(method="flare-mt", r=4, **kw), mt_encoder=encoder)
    randomize_adapter(fm)
    return fm


def batch(encoder, seed=0):
    """A right-padded target batch and the MT-encoder ids of two target-language prompts."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (2, 12), generator=gen)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 9:] = 0
    rows = encoder.encode_texts(["The cat sat on the mat.", "Rain fell on the village."], "sw", 64)
    mt_ids, mt_mask = encoder.pad(rows)
    return ids, mask, mt_ids, mt_mask


def proj_params(fm):
    return {n: p for n, p in fm.named_parameters() if "lora_flare_mtproj" in n}


def grads(fm, ids, mask, mt_ids, mt_mask, **kw):
    fm.zero_grad(set_to_none=True)
    out = fm(ids, mask, labels=ids.masked_fill(mask == 0, -100), mt_input_ids=mt_ids, mt_attention_mask=mt_mask, **kw)
    out.loss.backward()
    return {n: p.grad.clone() for n, p in fm.named_parameters() if p.grad is not None}


# -- the language tag ---------------------------------------------------------------------------
def test_mt_input_is_tagged_with_the_target_language(encoder, tmp_path):
    tok = encoder.tokenizer
    sw_id, en_id = tok.convert_tokens_to_ids(SW), tok.convert_tokens_to_ids("eng_Latn")
    assert sw_id != en_id and sw_id != tok.unk_token_id
    rows = encoder.encode_texts(["The dog runs.", "Where is the river?"], "sw", 64)
    assert [r[0] for r in rows] == [sw_id, sw_id]
    assert all(r[-1] == tok.eos_token_id for r in rows)

    # the training path: build_examples + collate tag every row with the target code
    from flare_cli.encode import build_examples, collate
    from flare_cli.tasks import get_task

    task = get_task("qa")
    data = [{"id": "1", "context": "Paka ameketi.", "question": "Nani ameketi?", "answer": "Paka"},
            {"id": "2", "context": "Mvua ilinyesha kijijini siku tatu.", "question": "Nini?", "answer": "Mvua"}]
    llm_tok = tiny_tokenizer()
    examples = build_examples(llm_tok, task, data, "flare-mt", 128, mt_encoder=encoder, lang="sw")
    b = collate(examples, llm_tok.pad_token_id)
    assert b["mt_input_ids"][:, 0].tolist() == [sw_id, sw_id]
    assert b["mt_attention_mask"].sum(1).tolist() == [len(e.mt_ids) for e in examples]
    assert "pivot_input_ids" not in b

    # the evaluation path: the ids that reach the encoder start (after left padding) with the tag
    from flare_cli.evaluate import generate_answers

    fm = get_flare_model(tiny_llama(llm_tok), FlareConfig(method="flare-mt", r=4), mt_encoder=encoder)
    seen = []
    fm.mt_encoder.register_forward_pre_hook(lambda m, args: seen.append((args[0].clone(), args[1].clone())))
    generate_answers(fm, llm_tok, ["Paka ameketi.", "Mvua ilinyesha kijijini siku tatu."], mt_lang="sw",
                     max_new_tokens=2, batch_size=2)
    (ids, mask), = seen
    first_real = mask.long().argmax(1)
    assert ids[torch.arange(2), first_real].tolist() == [sw_id, sw_id]
    assert mask[0, 0] == 0 or mask[1, 0] == 0  # left padded


def test_language_without_a_code_in_the_mt_vocabulary_is_refused(encoder):
    from flare_cli import languages

    languages.register("qzz", "qzz_Latn", "Unknown to the MT model")
    with pytest.raises(ModelError, match="no language token for qzz_Latn"):
        encoder.encode_texts(["x"], "qzz", 8)


# -- the math -------------------------------------------------------------------------------------
def test_pivot_states_are_the_projected_aligned_encoder_states(encoder):
    fm = mt_fm(encoder)
    ids, mask, mt_ids, mt_mask = batch(encoder)
    prompt = mask.clone()
    prompt[0, 10:] = 0  # row 0: two answer tokens, absent
    session = fm.mt_session(mt_ids, mt_mask, prompt.bool())
    with torch.no_grad():
        enc = encoder.encoder(input_ids=mt_ids, attention_mask=mt_mask).last_hidden_state
        proj = fm.mt_projection(0)
        want = torch.zeros(2, 12, proj.out_features)
        for b in range(2):
            tp = [t for t in range(12) if prompt[b, t]]
            pp = [j for j in range(mt_ids.shape[1]) if mt_mask[b, j]]
            for k in range(min(len(tp), len(pp))):  # end alignment
                want[b, tp[-1 - k]] = proj.weight @ enc[b, pp[-1 - k]]
    assert sorted(session.states) == [0, 1]
    assert session.states[0] is session.states[1]  # shared projection: computed once
    torch.testing.assert_close(session.states[1].detach(), want, atol=1e-5, rtol=1e-5)
    _, present = align_index(mt_mask, prompt.bool())
    assert torch.equal(session.present, present) and not present[0, 10:].any()


def test_mt_input_changes_output_and_masked_mt_is_phi_zero(encoder):
    fm = mt_fm(encoder)
    ids, mask, mt_ids, mt_mask = batch(encoder)
    with torch.no_grad():
        fused = fm(ids, mask, mt_input_ids=mt_ids, mt_attention_mask=mt_mask).logits
        swapped = fm(ids, mask, mt_input_ids=mt_ids.flip(0), mt_attention_mask=mt_mask.flip(0)).logits
        masked = fm(ids, mask, mt_input_ids=mt_ids, mt_attention_mask=torch.zeros_like(mt_mask)).logits
        no_pivot = fm(ids, mask, no_pivot=True).logits
    assert (fused - swapped).abs().max() > 1e-3
    assert (fused - masked).abs().max() > 1e-3
    torch.testing.assert_close(masked, no_pivot, atol=1e-6, rtol=0)
    with pytest.raises(PivotError, match="needs mt_input_ids"):
        fm(ids, mask)


def test_zero_B_equals_base_model(encoder):
    base = tiny_causal_lm("llama")
    ids, mask, mt_ids, mt_mask = batch(encoder)
    with torch.no_grad():
        want = base(input_ids=ids, attention_mask=mask).logits
    fm = get_flare_model(base, FlareConfig(method="flare-mt"), mt_encoder=encoder)
    with torch.no_grad():
        got = fm(ids, mask, mt_input_ids=mt_ids, mt_attention_mask=mt_mask).logits
    assert (got - want).abs().max().item() < 1e-6


# -- gradients ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mt_projection", ["shared", "per-layer"])
def test_projection_gets_the_same_gradient_with_gradient_checkpointing(encoder, mt_projection):
    fm = mt_fm(encoder, mt_projection=mt_projection)
    fm.train()
    assert not fm.mt_encoder.training and not fm.mt_encoder.encoder.training  # frozen: eval mode always
    ids, mask, mt_ids, mt_mask = batch(encoder)
    names = sorted(proj_params(fm))
    assert len(names) == (1 if mt_projection == "shared" else 2)
    plain = grads(fm, ids, mask, mt_ids, mt_mask)
    assert all("lora_" in n for n in plain)  # nothing of the base or the MT encoder
    assert not any(p.requires_grad for p in fm.mt_encoder.parameters())
    for name in names:
        assert plain[name].abs().sum() > 1e-4, name

    fm.base_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert fm.base_model.model.layers[0].gradient_checkpointing
    recomputed = []
    hook = fm.base_model.model.layers[1].self_attn.v_proj.register_forward_hook(lambda *a: recomputed.append(1))
    checkpointed = grads(fm, ids, mask, mt_ids, mt_mask)
    hook.remove()
    assert len(recomputed) == 2  # forward + recomputation in backward: checkpointing really ran (fused)
    assert checkpointed.keys() == plain.keys()
    for name in names:
        assert checkpointed[name].abs().sum() > 1e-4
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)


# -- saving ---------------------------------------------------------------------------------------
def test_save_load_is_exact_and_keeps_the_encoder_out(encoder, nllb_dir, tmp_path):
    fm = mt_fm(encoder, mt_projection="per-layer")
    fm.flare_config.meta = {"task": "qa"}
    ids, mask, mt_ids, mt_mask = batch(encoder)
    with torch.no_grad():
        want = fm(ids, mask, mt_input_ids=mt_ids, mt_attention_mask=mt_mask).logits
    fm.save_pretrained(tmp_path / "adapter")
    saved = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    proj_keys = sorted(k for k in saved if "lora_flare_mtproj" in k)
    assert len(proj_keys) == 2 and all("lora_flare_" in k for k in proj_keys)
    assert saved[proj_keys[0]].shape == (32, encoder.hidden_size)
    assert all("lora_" in k for k in saved)  # no encoder / base tensors
    n_lora = 2 * 2 * 2  # A and B of q and v in 2 layers
    assert len(saved) == n_lora + 2
    config = json.loads((tmp_path / "adapter" / "flare_config.json").read_text())
    assert config["method"] == "flare-mt" and config["mt_model"] == str(nllb_dir)
    assert config["mt_hidden_size"] == encoder.hidden_size and config["mt_projection"] == "per-layer"
    assert config["mt_revision"] is None  # a local folder

    # load_flare_model loads the encoder from flare_config.json: bit-identical logits
    loaded = load_flare_model(tiny_causal_lm("llama"), tmp_path / "adapter")
    assert loaded.mt_encoder is not None and loaded.mt_encoder is not encoder
    with torch.no_grad():
        got = loaded(ids, mask, mt_input_ids=mt_ids, mt_attention_mask=mt_mask).logits
    assert (got - want).abs().max().item() == 0.0

    # the checkpoint-resume path (set_peft_model_state_dict on the safetensors file) restores it too
    fresh = get_flare_model(tiny_causal_lm("llama"), FlareConfig(method="flare-mt", r=4, mt_projection="per-layer"),
                            mt_encoder=encoder)
    set_peft_model_state_dict(fresh.peft_model, saved)
    with torch.no_grad():
        resumed = fresh(ids, mask, mt_input_ids=mt_ids, mt_attention_mask=mt_mask).logits
    assert (resumed - want).abs().max().item() == 0.0

    # plain peft opens the folder: the pivot-less model (LoRA on every target, projection ignored)
    plain = PeftModel.from_pretrained(tiny_causal_lm("llama"), str(tmp_path / "adapter"))
    with torch.no_grad():
        plain_logits = plain(input_ids=ids, attention_mask=mask).logits
    assert torch.isfinite(plain_logits).all()
    assert (plain_logits - want).abs().max().item() > 1e-3


def test_encoder_of_another_size_is_refused(encoder, tmp_path):
    fm = mt_fm(encoder)
    fm.save_pretrained(tmp_path / "adapter")
    raw = json.loads((tmp_path / "adapter" / "flare_config.json").read_text())
    raw["mt_hidden_size"] = 48
    (tmp_path / "adapter" / "flare_config.json").write_text(json.dumps(raw))
    with pytest.raises(ModelError, match="hidden size 32"):
        load_flare_model(tiny_causal_lm("llama"), tmp_path / "adapter")


@pytest.mark.slow  # > 20 s on a shared CPU (measured with --durations)
def test_offline_hub_encoder_is_one_line_error():
    with pytest.raises(ModelError) as info:
        load_mt_encoder("facebook/nllb-200-distilled-600M")
    assert "offline" in str(info.value) and "\n" not in str(info.value)


def test_config_errors():
    from flare_cli.train import TrainConfig

    with pytest.raises(ConfigError, match="needs --mt-model"):
        TrainConfig(base="b", output_dir="o", method="flare-mt")
    with pytest.raises(ConfigError, match="for --method flare-mt only"):
        TrainConfig(base="b", output_dir="o", method="flare", mt_model="m")
    with pytest.raises(ConfigError, match="mt_projection"):
        FlareConfig(method="flare-mt", mt_projection="each")
    with pytest.raises(ConfigError, match="needs its MT encoder"):
        get_flare_model(tiny_causal_lm("llama"), FlareConfig(method="flare-mt"))


def test_generation_equals_fused_full_forward(encoder):
    fm = mt_fm(encoder)
    randomize_adapter(fm, std=0.5)
    prompts = [torch.randint(3, VOCAB, (7,)), torch.randint(3, VOCAB, (4,))]
    mt_rows = encoder.encode_texts(["The cat sat on the mat.", "Rain."], "sw", 64)
    L = 7
    ids = torch.zeros(2, L, dtype=torch.long)
    mask = torch.zeros(2, L, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, L - len(p):], mask[i, L - len(p):] = p, 1
    mt_ids, mt_mask = encoder.pad(mt_rows, side="left")
    out = fm.generate(ids, mask, mt_input_ids=mt_ids, mt_attention_mask=mt_mask, max_new_tokens=5,
                      min_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=None)
    new = out[:, L:]
    for i, (prompt, row) in enumerate(zip(prompts, mt_rows)):
        full = torch.cat([prompt, new[i]])[None]
        prompt_mask = torch.zeros_like(full)
        prompt_mask[0, : len(prompt)] = 1
        with torch.no_grad():
            logits = fm(full, prompt_mask=prompt_mask, mt_input_ids=torch.tensor([row])).logits
        assert logits[0, len(prompt) - 1 : -1].argmax(-1).tolist() == new[i].tolist()
    plain = fm.generate(ids, mask, no_pivot=True, max_new_tokens=5, min_new_tokens=5, do_sample=False,
                        pad_token_id=0, eos_token_id=None)
    assert not torch.equal(plain, out)


# -- end to end -----------------------------------------------------------------------------------
NAMES = ["Amina", "Baraka", "Chidi", "Dalia", "Erasto", "Fumo"]
CITIES = ["Dodoma", "Arusha", "Mwanza", "Tanga", "Moshi", "Kigoma"]


def write_rows(path, n, seed=0):
    """Target-language QA rows with NO pivot_* columns: FLARE-MT needs none."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as handle:
        for i in range(n):
            name, city = rng.choice(NAMES), rng.choice(CITIES)
            row = {"id": f"r{i}", "context": f"{name} anaishi {city}.", "question": f"{name} anaishi wapi?",
                   "answer": city}
            handle.write(json.dumps(row) + "\n")
    return path


def test_cli_train_eval_and_merge_refusal(nllb_dir, tmp_path):
    save_base(tmp_path / "base", init_std=0.3)
    write_rows(tmp_path / "train.jsonl", 32, seed=0)
    write_rows(tmp_path / "val.jsonl", 8, seed=1)
    write_rows(tmp_path / "test.jsonl", 8, seed=2)
    out = tmp_path / "mt-adapter"
    args = ["train", "--base", str(tmp_path / "base"), "-o", str(out), "--task", "qa", "--lang", "sw",
            "--method", "flare-mt", "--mt-model", str(nllb_dir), "--data", str(tmp_path / "train.jsonl"),
            "--validation-data", str(tmp_path / "val.jsonl"), "--lr", "3e-2", "--batch-size", "8",
            "--micro-batch-size", "4", "--max-steps", "10", "--r", "4", "--logging-steps", "1", "--seed", "3",
            "--gradient-checkpointing", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["method"] == "flare-mt" and summary["steps"] == 10
    curve = [r["loss"] for r in map(json.loads, (out / "trainer_log.jsonl").read_text().splitlines()) if "loss" in r]
    assert all(math.isfinite(x) for x in curve)
    assert sum(curve[-3:]) / 3 < 0.85 * sum(curve[:3]) / 3  # it learns the toy
    saved = load_file(str(out / "adapter_model.safetensors"))
    proj = [v for k, v in saved.items() if "lora_flare_mtproj" in k]
    assert len(proj) == 1
    assert proj[0].shape == (32, 32)  # d_model x d_mt
    config = json.loads((out / "flare_config.json").read_text())
    assert config["method"] == "flare-mt" and config["mt_model"] == str(nllb_dir)
    assert config["fusion"] == "add_relu" and config["meta"]["lang"] == "sw"

    from flare_cli.card import build_model_card

    card = str(build_model_card(out))
    assert "FLARE-MT adapter" in card and f"frozen MT encoder, `{nllb_dir}`" in card

    ev = runner.invoke(app, ["eval", "--adapter", str(out), "--data", str(tmp_path / "test.jsonl"),
                             "-o", str(tmp_path / "ev"), "--json"])
    assert ev.exit_code == 0, ev.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["method"] == "flare-mt" and metrics["n"] == 8 and math.isfinite(metrics["value"])
    assert metrics["settings"]["mt_encoder"] == str(nllb_dir)
    assert len((tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()) == 8

    merged = runner.invoke(app, ["merge", "--adapter", str(out), "-o", str(tmp_path / "merged")])
    assert merged.exit_code == 2 and "FLARE adapter" in merged.output
    assert not (tmp_path / "merged").exists()
    dropped = runner.invoke(app, ["merge", "--adapter", str(out), "-o", str(tmp_path / "dropped"), "--drop-pivot"])
    assert dropped.exit_code == 0, dropped.output

    no_mt = runner.invoke(app, ["train", "--base", str(tmp_path / "base"), "-o", str(tmp_path / "x"), "--lang", "sw",
                                "--method", "flare-mt", "--data", str(tmp_path / "train.jsonl")])
    assert no_mt.exit_code == 2 and "needs --mt-model" in no_mt.output


@pytest.mark.slow
def test_toy_world_flare_mt_train_and_eval(tmp_path):
    from flare_cli import evaluate, train
    from flare_cli.toyworld import build

    world = build(tmp_path / "world", seed=0, size="quick")
    cfg = train.TrainConfig(
        base=str(world.base_dir), output_dir=str(tmp_path / "qa-mt"), task="qa", lang=world.target_lang,
        method="flare-mt", mt_model=str(world.mt_dir), data=str(world.data_file("qa", "train", world.target_lang)),
        learning_rate=1e-3, batch_size=8, micro_batch_size=8, max_steps=3, r=4, limit=24, logging_steps=1,
    )
    result = train.run(cfg)
    assert result.steps == 3 and math.isfinite(result.train_loss)
    rows = [json.loads(x) for x in world.data_file("qa", "test", world.target_lang).read_text().splitlines()[:6]]
    no_pivots = tmp_path / "test.jsonl"
    no_pivots.write_text("".join(json.dumps({k: v for k, v in r.items() if not k.startswith("pivot_")}) + "\n"
                                 for r in rows))
    ev = evaluate.run(evaluate.EvalConfig(adapter=cfg.output_dir, data=str(no_pivots), output_dir=str(tmp_path / "ev"),
                                          max_new_tokens=8))
    assert ev.metrics["method"] == "flare-mt" and ev.metrics["lang"] == "qtw" and ev.metrics["n"] == 6
    assert math.isfinite(ev.metrics["value"])


def test_uncached_and_beam_generation_keep_the_mt_states(encoder):
    """Issue 14 for FLARE-MT: use_cache=False and beams fuse the MT states like cached greedy."""
    fm = mt_fm(encoder)
    randomize_adapter(fm, std=0.5)
    L = 7
    ids = torch.randint(3, VOCAB, (2, L))
    mask = torch.ones(2, L, dtype=torch.long)
    ids[1, :3], mask[1, :3] = 0, 0
    mt_ids, mt_mask = encoder.pad(encoder.encode_texts(["The cat sat on the mat.", "Rain."], "sw", 64), side="left")
    common = dict(mt_input_ids=mt_ids, mt_attention_mask=mt_mask, max_new_tokens=4, min_new_tokens=4, do_sample=False,
                  pad_token_id=0, eos_token_id=None, output_logits=True, return_dict_in_generate=True)
    cached = fm.generate(ids, mask, **common)
    uncached = fm.generate(ids, mask, use_cache=False, **common)
    assert torch.equal(cached.sequences, uncached.sequences)
    assert (torch.stack(cached.logits) - torch.stack(uncached.logits)).abs().max().item() < 1e-5
    beams = fm.generate(ids, mask, num_beams=2, num_return_sequences=2, **common)
    assert beams.sequences.shape[0] == 4

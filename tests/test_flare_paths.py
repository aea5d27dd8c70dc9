"""FLARE stays one function on every path: training / full forward / cached and uncached decoding,
beam search, adapter names, fused modules per architecture (issue 14)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import VOCAB, left_pad, randomize_adapter, tiny_causal_lm

from flare_cli.flare import FlareConfig, get_flare_model


def loud_model(arch="llama", **kw):
    """A tiny model whose residual stream is large enough for A h to move the logits."""
    model = tiny_causal_lm(arch, **kw)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(50)
    return model


def prompts_and_pivots(seed=0, n=3):
    gen = torch.Generator().manual_seed(seed)
    # row 0: the whole prompt has a pivot partner (position 0 present); row 1: left-padded
    lengths = [(7, 8), (4, 6), (6, 3)][:n]
    prompts = [torch.randint(3, VOCAB, (lt,), generator=gen) for lt, _ in lengths]
    pivots = [torch.randint(3, VOCAB, (ls,), generator=gen) for _, ls in lengths]
    return prompts, pivots


GREEDY = dict(do_sample=False, pad_token_id=0, eos_token_id=None, max_new_tokens=6, min_new_tokens=6)


def fused_model(fusion, arch="llama", seed=1):
    fm = get_flare_model(loud_model(arch), FlareConfig(fusion=fusion, r=4, lora_alpha=8))
    randomize_adapter(fm, seed=seed)
    return fm


# -- 1. cross_attention: absent positions get T on every path ---------------------------------------
def test_cross_attention_absent_query_gets_T_exactly():
    from flare_cli.flare.fusion import FUSION_PARAMS, get_fusion

    gen = torch.Generator().manual_seed(0)
    S, T = torch.randn(2, 6, 4, generator=gen), torch.randn(2, 6, 4, generator=gen)
    present = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 0]], dtype=torch.bool)
    S = S * present[..., None]
    params = FUSION_PARAMS["cross_attention"](4)
    with torch.no_grad():
        params.weight.copy_(torch.randn(params.weight.shape, generator=gen))
    phi = get_fusion("cross_attention")(S, T, present, params)
    assert torch.equal(phi[~present], T[~present])  # answer/padding/generated positions: phi = T
    assert (phi[present] - T[present]).abs().min() > 0  # present ones do attend


@pytest.mark.parametrize("fusion", ["cross_attention", "add_relu", "mul"])
def test_cached_decoding_equals_full_forward_and_training_forward(fusion):
    """Logits of every generated step equal those of one full forward over prompt + answer with the
    answer absent (what training computes), within 1e-6."""
    fm = fused_model(fusion)
    prompts, pivots = prompts_and_pivots()
    ids, mask = left_pad(prompts)
    piv, pmask = left_pad(pivots)
    out = fm.generate(ids, mask, pivot_input_ids=piv, pivot_attention_mask=pmask, output_logits=True,
                      return_dict_in_generate=True, **GREEDY)
    step_logits = torch.stack(out.logits, 1)  # (B, new, V)
    full = out.sequences
    full_mask = torch.cat([mask, torch.ones_like(full[:, ids.shape[1]:])], 1)
    prompt_mask = torch.cat([mask, torch.zeros_like(full[:, ids.shape[1]:])], 1)
    n_new = full.shape[1] - ids.shape[1]
    with torch.no_grad():
        forward = fm(full, full_mask, prompt_mask=prompt_mask, pivot_input_ids=piv, pivot_attention_mask=pmask).logits
    want = forward[:, ids.shape[1] - 1 : -1]
    assert (step_logits - want).abs().max().item() < 1e-6
    # the training path: train mode (dropout 0), labels on the answer, same logits
    fm.train()
    labels = full.masked_fill(prompt_mask.bool(), -100)
    train_out = fm(full, full_mask, labels=labels, prompt_mask=prompt_mask, pivot_input_ids=piv,
                   pivot_attention_mask=pmask)
    fm.eval()
    assert (train_out.logits[:, ids.shape[1] - 1 : -1] - step_logits).abs().max().item() < 1e-6
    assert n_new == 6
    # not vacuous: the pivot moves these logits
    with torch.no_grad():
        unfused = fm(full, full_mask, no_pivot=True).logits[:, ids.shape[1] - 1 : -1]
    assert (unfused - want).abs().max().item() > 1e-3


# -- 2. uncached generation keeps the pivot -----------------------------------------------------------
@pytest.mark.parametrize("fusion", ["cross_attention", "add_relu"])
@pytest.mark.parametrize("how", ["kwarg", "generation_config"])
def test_uncached_generation_equals_cached(fusion, how):
    fm = fused_model(fusion)
    prompts, pivots = prompts_and_pivots()
    ids, mask = left_pad(prompts)
    piv, pmask = left_pad(pivots)
    pivot = dict(pivot_input_ids=piv, pivot_attention_mask=pmask)
    cached = fm.generate(ids, mask, **pivot, output_logits=True, return_dict_in_generate=True, **GREEDY)
    if how == "kwarg":
        uncached = fm.generate(ids, mask, **pivot, use_cache=False, output_logits=True,
                               return_dict_in_generate=True, **GREEDY)
    else:
        fm.base_model.generation_config.use_cache = False
        uncached = fm.generate(ids, mask, **pivot, output_logits=True, return_dict_in_generate=True, **GREEDY)
        fm.base_model.generation_config.use_cache = True
    assert uncached.past_key_values is None  # really uncached
    assert torch.equal(uncached.sequences, cached.sequences)
    diff = (torch.stack(uncached.logits, 1) - torch.stack(cached.logits, 1)).abs().max().item()
    assert diff < 1e-5
    # not vacuous: without the pivot the logits differ
    plain = fm.generate(ids, mask, no_pivot=True, output_logits=True, return_dict_in_generate=True, **GREEDY)
    assert (torch.stack(plain.logits, 1) - torch.stack(cached.logits, 1)).abs().max().item() > 1e-3


# -- 3. beam search and several return sequences ------------------------------------------------------
@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("fusion", ["cross_attention", "add_relu"])
def test_beam_search_equals_one_row_at_a_time(fusion, use_cache):
    fm = fused_model(fusion)
    prompts, pivots = prompts_and_pivots()
    # length_penalty 0: raw log-probability sums (HF normalizes by the padded length otherwise)
    beams = dict(num_beams=3, num_return_sequences=2, length_penalty=0.0, do_sample=False, pad_token_id=0, eos_token_id=None,
                 max_new_tokens=5, min_new_tokens=5, use_cache=use_cache, output_scores=True,
                 return_dict_in_generate=True)
    ids, mask = left_pad(prompts)
    piv, pmask = left_pad(pivots)
    batched = fm.generate(ids, mask, pivot_input_ids=piv, pivot_attention_mask=pmask, **beams)
    new = batched.sequences[:, ids.shape[1]:]
    assert new.shape[0] == 2 * len(prompts)
    for i, (prompt, pivot) in enumerate(zip(prompts, pivots)):
        alone = fm.generate(prompt[None], pivot_input_ids=pivot[None], **beams)
        assert alone.sequences[:, len(prompt):].tolist() == new[2 * i : 2 * i + 2].tolist()
        torch.testing.assert_close(batched.sequences_scores[2 * i : 2 * i + 2], alone.sequences_scores,
                                   atol=1e-5, rtol=0)
    # not vacuous: the pivot changes the beams' scores
    plain = fm.generate(ids, mask, no_pivot=True, **beams)
    assert (plain.sequences_scores - batched.sequences_scores).abs().max().item() > 1e-3


def test_sampling_with_several_return_sequences_keeps_each_rows_pivot():
    fm = fused_model("add_relu")
    prompts, pivots = prompts_and_pivots()
    ids, mask = left_pad(prompts)
    piv, pmask = left_pad(pivots)
    sample = dict(do_sample=True, num_return_sequences=2, pad_token_id=0, eos_token_id=None, max_new_tokens=4,
                  min_new_tokens=4, output_logits=True, return_dict_in_generate=True, top_k=0, top_p=1.0)
    torch.manual_seed(0)
    out = fm.generate(ids, mask, pivot_input_ids=piv, pivot_attention_mask=pmask, **sample)
    # the first step's logits are the fused prefill of each prompt, repeated for its two samples
    first = out.logits[0]
    greedy = fm.generate(ids, mask, pivot_input_ids=piv, pivot_attention_mask=pmask, output_logits=True,
                         return_dict_in_generate=True, **{**GREEDY, "max_new_tokens": 1, "min_new_tokens": 1})
    torch.testing.assert_close(first, greedy.logits[0].repeat_interleave(2, 0), atol=1e-6, rtol=0)


# -- 4. adapter names -------------------------------------------------------------------------------
def flare_tensors(fm):
    name = fm.adapter_name
    return {n.replace(f".{name}.", "."): p.detach().clone() for n, p in fm.named_parameters() if "lora_" in n}


@pytest.mark.parametrize("saved_as,loaded_as", [("other", "default"), ("default", "other"), ("first", "second")])
@pytest.mark.parametrize("fusion", ["cross_attention", "add_relu"])
def test_any_adapter_name_round_trips_every_tensor_exactly(tmp_path, fusion, saved_as, loaded_as):
    from safetensors import safe_open

    from flare_cli.flare import load_flare_model

    fm = get_flare_model(loud_model(), FlareConfig(fusion=fusion, r=4), adapter_name=saved_as)
    randomize_adapter(fm)
    prompts, pivots = prompts_and_pivots()
    ids, mask = left_pad(prompts)
    piv, pmask = left_pad(pivots)
    with torch.no_grad():
        want = fm(ids, mask, pivot_input_ids=piv, pivot_attention_mask=pmask).logits
    fm.save_pretrained(tmp_path / "adapter")
    names = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert names == ["README.md", "adapter_config.json", "adapter_model.safetensors", "flare_config.json"]
    with safe_open(str(tmp_path / "adapter" / "adapter_model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert not [k for k in keys if f".{saved_as}." in k]  # saved without the adapter name, as peft does for LoRA
    loaded = load_flare_model(loud_model(), tmp_path / "adapter", adapter_name=loaded_as)
    assert loaded.adapter_name == loaded_as
    got_tensors = {k.replace(f".{loaded_as}.", "."): v for k, v in flare_tensors(loaded).items()}
    saved_tensors = {k.replace(f".{saved_as}.", "."): v for k, v in flare_tensors(fm).items()}
    assert got_tensors.keys() == saved_tensors.keys()
    assert all(torch.equal(got_tensors[k], saved_tensors[k]) for k in saved_tensors)
    with torch.no_grad():
        got = loaded(ids, mask, pivot_input_ids=piv, pivot_attention_mask=pmask).logits
    assert torch.equal(got, want)


def test_missing_or_unexpected_flare_tensor_is_an_error(tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    from flare_cli.errors import ModelError
    from flare_cli.flare import load_flare_model

    fm = get_flare_model(loud_model(), FlareConfig(fusion="cross_attention", r=4))
    randomize_adapter(fm)
    folder = tmp_path / "adapter"
    fm.save_pretrained(folder)
    state = load_file(str(folder / "adapter_model.safetensors"))
    xattn = sorted(k for k in state if "lora_flare_xattn" in k)
    assert len(xattn) == 4  # q_proj and v_proj of two layers
    dropped = {k: v for k, v in state.items() if k != xattn[0]}
    save_file(dropped, str(folder / "adapter_model.safetensors"))
    with pytest.raises(ModelError, match=r"FLARE tensors do not match .*1 missing \(e.g. .*lora_flare_xattn.weight\)"):
        load_flare_model(loud_model(), folder)
    save_file(state, str(folder / "adapter_model.safetensors"))
    config = json.loads((folder / "flare_config.json").read_text())
    config["fusion"] = "add_relu"  # the folder's cross-attention tensors now have no place in the model
    (folder / "flare_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"4 unexpected"):
        load_flare_model(loud_model(), folder)


def test_folders_with_the_old_per_map_cross_attention_keys_still_load(tmp_path):
    """flare_cli 0.1.0 saved cross_attention as lora_flare_xattn.<adapter>.{q,k,v,o}.weight."""
    from safetensors.torch import load_file, save_file

    from flare_cli.flare import load_flare_model

    fm = get_flare_model(loud_model(), FlareConfig(fusion="cross_attention", r=4))
    randomize_adapter(fm)
    folder = tmp_path / "adapter"
    fm.save_pretrained(folder)
    state = load_file(str(folder / "adapter_model.safetensors"))
    for key in [k for k in state if "lora_flare_xattn" in k]:
        stacked = state.pop(key)
        for part, tensor in zip("qkvo", stacked):
            state[key.replace("lora_flare_xattn.weight", f"lora_flare_xattn.default.{part}.weight")] = tensor.clone()
    save_file(state, str(folder / "adapter_model.safetensors"))
    loaded = load_flare_model(loud_model(), folder, adapter_name="other")
    saved = flare_tensors(fm)
    got = flare_tensors(loaded)
    assert all(torch.equal(got[k], saved[k]) for k in saved)


# -- 5. fused modules per architecture ------------------------------------------------------------------
def arch_model(arch, loud=True, seed=0):
    """Tiny configs of every decoder family FLARE supports, Phi-3 and Gemma 3 included."""
    import transformers as tf

    if arch in ("llama", "mistral", "qwen2", "gemma2"):
        return loud_model(arch) if loud else tiny_causal_lm(arch)
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                  tie_word_embeddings=False)
    if arch == "phi3":
        config = tf.Phi3Config(**common)
    else:  # gemma3 (text)
        config = tf.Gemma3TextConfig(**common, head_dim=8, query_pre_attn_scalar=8, sliding_window=4)
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(config).eval()
    if loud:
        with torch.no_grad():
            model.get_input_embeddings().weight.mul_(50)
    return model


ALL_ARCHS = ("llama", "mistral", "qwen2", "gemma2", "gemma3", "phi3")


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_default_q_v_fusion_resolves_per_architecture(arch):
    from flare_cli.flare.layer import FlareLinear

    fm = get_flare_model(arch_model(arch), FlareConfig(target_modules="all-linear", r=4))
    fused = sorted({m.flare_name.rsplit(".", 1)[-1] for m in fm.modules() if isinstance(m, FlareLinear) and m.is_fused})
    assert fused == (["qkv_proj"] if arch == "phi3" else ["q_proj", "v_proj"])
    assert len(fm.fused_layers) == 2


def test_phi3_fuses_only_the_q_and_v_rows_of_qkv_proj():
    """y = W u + s [B_q phi(A h, A u); B_k A u; B_v phi(A h, A u)] against a hand-written reference."""
    from flare_cli.flare.pivot import positions_from_mask

    for targets, k_mode in (("all-linear", "plain"), ("q_proj,v_proj", "off")):
        fm = get_flare_model(arch_model("phi3"), FlareConfig(fusion="add_relu", r=4, target_modules=targets))
        randomize_adapter(fm)
        module = fm.base_model.model.layers[1].self_attn.qkv_proj
        prompts, pivots = prompts_and_pivots()
        ids, mask = left_pad(prompts)
        piv, pmask = left_pad(pivots)
        seen = {}
        hook = module.register_forward_hook(lambda m, a, o: seen.update(u=a[0].detach(), y=o.detach()))
        with torch.no_grad():
            fm(ids, mask, pivot_input_ids=piv, pivot_attention_mask=pmask)
        hook.remove()
        with fm.peft_model.disable_adapter(), torch.no_grad():
            hs = fm.base_model(input_ids=piv, attention_mask=pmask, position_ids=positions_from_mask(pmask),
                               output_hidden_states=True).hidden_states[1]
        u = seen["u"]
        h = torch.zeros_like(u)
        for b in range(len(prompts)):  # end alignment, by hand
            tp = [t for t in range(ids.shape[1]) if mask[b, t]]
            pp = [j for j in range(piv.shape[1]) if pmask[b, j]]
            for k in range(min(len(tp), len(pp))):
                h[b, tp[-1 - k]] = hs[b, pp[-1 - k]]
        A, B = module.lora_A["default"].weight, module.lora_B["default"].weight
        W, s = module.base_layer.weight, module.scaling["default"]
        with torch.no_grad():
            phi, T = torch.relu(h @ A.T) + torch.relu(u @ A.T), u @ A.T
            q, kv = 4 * 8, 2 * 8
            k_update = s * T @ B[q : q + kv].T if k_mode == "plain" else torch.zeros(*u.shape[:2], kv)
            expected = u @ W.T + torch.cat([s * phi @ B[:q].T, k_update, s * phi @ B[q + kv :].T], -1)
        torch.testing.assert_close(seen["y"], expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["phi3", "gemma3"])
def test_cached_generation_equals_full_forward_on_more_architectures(arch):
    fm = get_flare_model(arch_model(arch), FlareConfig(fusion="cross_attention", r=4, lora_alpha=8,
                                                       target_modules="all-linear"))
    randomize_adapter(fm)
    prompts, pivots = prompts_and_pivots()
    ids, mask = left_pad(prompts)
    piv, pmask = left_pad(pivots)
    out = fm.generate(ids, mask, pivot_input_ids=piv, pivot_attention_mask=pmask, output_logits=True,
                      return_dict_in_generate=True, **GREEDY)
    full = out.sequences
    n_new = full.shape[1] - ids.shape[1]
    full_mask = torch.cat([mask, torch.ones(len(prompts), n_new, dtype=torch.long)], 1)
    prompt_mask = torch.cat([mask, torch.zeros(len(prompts), n_new, dtype=torch.long)], 1)
    with torch.no_grad():
        want = fm(full, full_mask, prompt_mask=prompt_mask, pivot_input_ids=piv,
                  pivot_attention_mask=pmask).logits[:, ids.shape[1] - 1 : -1]
        unfused = fm(full, full_mask, no_pivot=True).logits[:, ids.shape[1] - 1 : -1]
    got = torch.stack(out.logits, 1)
    assert (got - want).abs().max().item() < 1e-5 * max(1.0, want.abs().max().item())
    assert (unfused - want).abs().max().item() > 1e-3


def test_phi3_save_load_and_plain_peft(tmp_path):
    from peft import PeftModel

    from flare_cli.flare import load_flare_model

    fm = get_flare_model(arch_model("phi3"), FlareConfig(fusion="add_relu", r=4))  # q_proj,v_proj targets
    randomize_adapter(fm)
    prompts, pivots = prompts_and_pivots()
    ids, mask = left_pad(prompts)
    piv, pmask = left_pad(pivots)
    with torch.no_grad():
        want = fm(ids, mask, pivot_input_ids=piv, pivot_attention_mask=pmask).logits
    fm.save_pretrained(tmp_path / "a")
    loaded = load_flare_model(arch_model("phi3"), tmp_path / "a")
    with torch.no_grad():
        assert torch.equal(loaded(ids, mask, pivot_input_ids=piv, pivot_attention_mask=pmask).logits, want)
    PeftModel.from_pretrained(arch_model("phi3"), str(tmp_path / "a"))  # plain peft opens it (qkv_proj target)


def test_modules_an_architecture_lacks_are_one_clear_line():
    from flare_cli.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^fused modules \['c_attn'\] not found in LlamaForCausalLM; its linear "
                       r"modules are: down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj$"):
        get_flare_model(arch_model("llama"), FlareConfig(target_modules="all-linear", fused_modules=["c_attn"]))
    with pytest.raises(ConfigError, match=r"^fused modules \['down_proj'\] of LlamaForCausalLM do not read the hidden "
                       r"state \(\d+ features\); FLARE fuses the layer's hidden state through the module's LoRA A, "
                       r"so only these can fuse: gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj$"):
        get_flare_model(arch_model("llama"), FlareConfig(target_modules="all-linear",
                                                         fused_modules=["q_proj", "down_proj"]))
    with pytest.raises(ConfigError, match=r"^target modules \['q_proj', 'v_proj'\] not found in Phi3ForCausalLM; its "
                       r"linear modules are: down_proj, gate_up_proj, o_proj, qkv_proj \(or all-linear\)$"):
        get_flare_model(arch_model("phi3"), FlareConfig(method="lora"))


def test_train_defaults_to_all_linear_targets_with_q_v_fusion():
    from flare_cli.flare.encoder import family_defaults
    from flare_cli.train import TrainConfig

    cfg = TrainConfig(base="b", output_dir="o")
    assert cfg.target_modules is None and cfg.fused_modules is None  # resolved per model family at load
    assert family_defaults("decoder") == {"target_modules": "all-linear", "fused_modules": "q_proj,v_proj",
                                          "align": "end"}


def test_peft_missing_key_warning_is_hidden_only_when_it_lists_flare_tensors_alone():
    import re

    from flare_cli.flare.model import _ONLY_FLARE_KEYS_MISSING

    only_flare = "Found missing adapter keys while loading the checkpoint: ['a.q_proj.lora_flare_xattn.other.weight', 'b.lora_flare_xattn.other.weight']."
    mixed = "Found missing adapter keys while loading the checkpoint: ['a.lora_flare_xattn.other.weight', 'a.q_proj.lora_A.other.weight']."
    assert re.match(_ONLY_FLARE_KEYS_MISSING, only_flare)
    assert not re.match(_ONLY_FLARE_KEYS_MISSING, mixed)  # a missing LoRA tensor still warns

"""The FLARE layer proven by numbers: parity with peft, a hand-written reference of
W u + s B phi(A h, A u) for every fusion, alignment, gradients, checkpointing, save/load, merge."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from tiny_models import ARCHS, VOCAB, left_pad, randomize_adapter, tiny_causal_lm

from flare_cli.errors import ConfigError, MergeError, PivotError
from flare_cli.flare import FlareConfig, get_flare_model, load_flare_model
from flare_cli.flare.layer import FlareLinear
from flare_cli.flare.pivot import align_index, positions_from_mask

FUSIONS = ("add_relu", "add", "mul", "cross_attention", "none")


def batch(seed=0):
    """A target batch (right-padded row 1) and a pivot batch (left-padded row 0)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (2, 9), generator=gen)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 7:] = 0
    ids[1, 7:] = 0
    piv = torch.randint(3, VOCAB, (2, 6), generator=gen)
    pmask = torch.ones(2, 6, dtype=torch.long)
    pmask[0, :2] = 0
    piv[0, :2] = 0
    return ids, mask, piv, pmask


def reference_alignment(pmask, tmask, align="end"):
    """Pure-Python alignment: list of (b, target_pos, pivot_pos)."""
    pairs = []
    for b in range(tmask.shape[0]):
        tp = [t for t in range(tmask.shape[1]) if tmask[b, t]]
        pp = [j for j in range(pmask.shape[1]) if pmask[b, j]]
        n = min(len(tp), len(pp))
        if align == "end":
            pairs += [(b, tp[len(tp) - 1 - k], pp[len(pp) - 1 - k]) for k in range(n)]
        else:
            pairs += [(b, tp[k], pp[k]) for k in range(n)]
    return pairs


def reference_phi(fusion, S, T, present, xattn):
    if fusion == "add_relu":
        return torch.relu(S) + torch.relu(T)
    if fusion == "add":
        return S + T
    if fusion == "mul":
        return S * T
    if fusion == "none":
        return T
    # cross_attention by explicit loops: a present query t attends present pivot slots j <= t;
    # an absent query (answer, padding) keeps T
    out = T.clone()
    B, L, r = T.shape
    wq, wk, wv, wo = xattn.weight
    for b in range(B):
        for t in range(L):
            if not present[b, t]:
                continue
            keys = [j for j in range(t + 1) if present[b, j]]
            q = wq @ T[b, t]
            scores = torch.stack([q @ (wk @ S[b, j]) / math.sqrt(r) for j in keys])
            w = torch.softmax(scores, 0)
            mix = sum(w[i] * (wv @ S[b, j]) for i, j in enumerate(keys))
            out[b, t] = T[b, t] + wo @ mix
    return out


@pytest.mark.parametrize("align", ["end", "start"])
def test_alignment_matches_pure_python(align):
    pmask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    tmask = torch.tensor([[1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    index, present = align_index(pmask, tmask, align)
    expected = {(b, t): j for b, t, j in reference_alignment(pmask, tmask, align)}
    for b in range(3):
        for t in range(6):
            assert bool(present[b, t]) == ((b, t) in expected)
            if (b, t) in expected:
                assert int(index[b, t]) == expected[(b, t)]
    # end alignment: last prompt tokens meet; row 1's first prompt token has no pivot partner left
    if align == "end":
        assert present[0].tolist() == [False, True, True, True, False, False]
        assert present[1].tolist() == [False, True, True, True, False, False]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("fusion", FUSIONS)
def test_fused_projection_matches_reference(arch, fusion):
    base = tiny_causal_lm(arch)
    fm = get_flare_model(base, FlareConfig(fusion=fusion, r=4, lora_alpha=8))
    randomize_adapter(fm)
    ids, mask, piv, pmask = batch()
    prompt_mask = mask.clone()
    prompt_mask[0, 7:] = 0  # row 0: the last two tokens are "answer" tokens, absent
    module = fm.base_model.model.layers[1].self_attn.v_proj
    assert isinstance(module, FlareLinear) and module.is_fused
    seen = {}
    hook = module.register_forward_hook(lambda m, a, o: seen.update(u=a[0].detach(), y=o.detach()))
    fm(ids, mask, prompt_mask=prompt_mask, pivot_input_ids=piv, pivot_attention_mask=pmask)
    hook.remove()

    # the pivot's state entering layer 1, from the frozen base, via HF's own hidden_states
    with fm.peft_model.disable_adapter(), torch.no_grad():
        hs = fm.base_model(
            input_ids=piv, attention_mask=pmask, position_ids=positions_from_mask(pmask), output_hidden_states=True
        ).hidden_states[1]
    u, d = seen["u"], hs.shape[-1]
    h = torch.zeros(u.shape[0], u.shape[1], d)
    present = torch.zeros(u.shape[:2], dtype=torch.bool)
    for b, t, j in reference_alignment(pmask, prompt_mask.bool()):
        h[b, t], present[b, t] = hs[b, j], True
    A, B = module.lora_A["default"].weight, module.lora_B["default"].weight
    W, s = module.base_layer.weight, module.scaling["default"]
    xattn = module.lora_flare_xattn["default"] if fusion == "cross_attention" else None
    with torch.no_grad():
        phi = reference_phi(fusion, h @ A.T, u @ A.T, present, xattn)
        expected = u @ W.T + (module.base_layer.bias if module.base_layer.bias is not None else 0) + s * phi @ B.T
    torch.testing.assert_close(seen["y"], expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_fusion_none_equals_peft_lora(arch):
    base_peft = get_peft_model(tiny_causal_lm(arch), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    fm = get_flare_model(tiny_causal_lm(arch), FlareConfig(fusion="none", r=4, lora_alpha=8))
    randomize_adapter(fm)
    fm_state = {k.removeprefix("peft_model."): v for k, v in fm.state_dict().items()}
    base_peft.load_state_dict(fm_state, strict=True)
    ids, mask, piv, pmask = batch()
    with torch.no_grad():
        want = base_peft(input_ids=ids, attention_mask=mask).logits
        got = fm(ids, mask, pivot_input_ids=piv, pivot_attention_mask=pmask).logits
    assert (got - want).abs().max().item() < 1e-6


@pytest.mark.parametrize("fusion", FUSIONS)
def test_zero_B_equals_base_model(fusion):
    base = tiny_causal_lm("llama")
    ids, mask, piv, pmask = batch()
    with torch.no_grad():
        want = base(input_ids=ids, attention_mask=mask).logits
    fm = get_flare_model(base, FlareConfig(fusion=fusion))  # peft init: B = 0
    with torch.no_grad():
        got = fm(ids, mask, pivot_input_ids=piv, pivot_attention_mask=pmask).logits
    assert (got - want).abs().max().item() < 1e-6


@pytest.mark.parametrize("fusion", ["add_relu", "add", "mul", "cross_attention"])
def test_pivot_changes_output_and_absent_pivot_is_phi_zero(fusion):
    fm = get_flare_model(tiny_causal_lm("llama"), FlareConfig(fusion=fusion, r=4))
    randomize_adapter(fm)
    ids, mask, piv, pmask = batch()
    with torch.no_grad():
        fused = fm(ids, mask, pivot_input_ids=piv, pivot_attention_mask=pmask).logits
        other = fm(ids, mask, pivot_input_ids=piv.flip(0), pivot_attention_mask=pmask.flip(0)).logits
        masked = fm(ids, mask, pivot_input_ids=piv, pivot_attention_mask=torch.zeros_like(pmask)).logits
        no_pivot = fm(ids, mask, no_pivot=True).logits
    assert (fused - other).abs().max() > 1e-3
    assert (fused - masked).abs().max() > 1e-3
    torch.testing.assert_close(masked, no_pivot, atol=1e-6, rtol=0)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_closed_form_absent_phi_equals_fusion_with_zero_pivot(fusion):
    from flare_cli.flare.fusion import FUSION_PARAMS, get_fusion, phi_absent

    T = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(3))
    params = FUSION_PARAMS[fusion](4) if fusion in FUSION_PARAMS else None
    if params is not None:
        with torch.no_grad():
            for p in params.parameters():
                p.copy_(torch.randn_like(p))
    want = get_fusion(fusion)(torch.zeros_like(T), T, torch.zeros(2, 5, dtype=torch.bool), params)
    got = phi_absent(fusion, T)
    if got is None:  # "no update": phi(0, T) must be exactly zero
        assert fusion == "mul" and torch.count_nonzero(want) == 0
    else:
        torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_layer_without_pivot_refuses_to_run():
    fm = get_flare_model(tiny_causal_lm("llama"), FlareConfig())
    ids, mask, _, _ = batch()
    with pytest.raises(PivotError, match="needs pivot_input_ids"):
        fm(ids, mask)
    fm.release()
    with pytest.raises(PivotError, match="ran without pivot states"):
        fm.peft_model(input_ids=ids, attention_mask=mask)


def test_previous_pivot_states_are_released_before_the_next_pivot_pass():
    """Otherwise two sets of pivot states are alive during every pivot pass (a memory peak)."""
    from flare_cli.flare.pivot import find_decoder_layers

    fm = get_flare_model(tiny_causal_lm("llama"), FlareConfig())
    ids, mask, piv, pmask = batch()
    fm(ids, mask, pivot_input_ids=piv, pivot_attention_mask=pmask)
    first = fm._fused[0].flare_session
    assert first is not None and first.states
    attached = []
    layer0 = find_decoder_layers(fm.base_model)[0]
    handle = layer0.register_forward_pre_hook(lambda module, args: attached.append(fm._fused[0].flare_session))
    try:
        fm(ids, mask, pivot_input_ids=piv, pivot_attention_mask=pmask)
    finally:
        handle.remove()
    # layer 0 runs twice: in the pivot pass (nothing attached any more), then in the target forward
    assert len(attached) == 2
    assert attached[0] is None
    assert attached[1] is not None and attached[1] is not first


def test_source_pass_skips_lm_head_and_later_layers():
    base = tiny_causal_lm("llama", layers=4)
    fm = get_flare_model(base, FlareConfig(fused_layers=[0, 1]))
    calls = []
    hooks = [base.lm_head.register_forward_hook(lambda *a: calls.append("lm_head"))]
    hooks += [
        layer.register_forward_hook(lambda *a, i=i: calls.append(f"layer{i}"))
        for i, layer in enumerate(base.model.layers)
    ]
    _, _, piv, pmask = batch()
    states = fm.encode_pivot(piv, pmask)
    for h in hooks:
        h.remove()
    assert sorted(states) == [0, 1]
    assert calls == ["layer0"]  # layer 1's input is layer 0's output; layer 1 itself never runs



def test_source_pass_stops_before_hooks_already_on_the_layer():
    # FSDP2 (fully_shard) puts a pre-hook on every layer that gathers its shard; the pivot pass
    # must stop before that hook on the layer it does not run, or the layer is left gathered
    # with its adapter frozen (then its LoRA weights get no gradient under FSDP)
    base = tiny_causal_lm("llama", layers=4)
    fm = get_flare_model(base, FlareConfig(fused_layers=[0, 1]))
    gathered = []
    hooks = [layer.register_forward_pre_hook(lambda *a, i=i: gathered.append(i))
             for i, layer in enumerate(base.model.layers)]
    _, _, piv, pmask = batch()
    states = fm.encode_pivot(piv, pmask)
    for h in hooks:
        h.remove()
    assert sorted(states) == [0, 1] and gathered == [0]


def test_source_norm_states_are_each_layers_input_norm_and_the_pass_stops_after_the_last():
    base = tiny_causal_lm("llama", layers=4)
    fm = get_flare_model(base, FlareConfig(fused_layers=[0, 2], source_norm=True))
    ran = []
    hooks = [layer.register_forward_pre_hook(lambda *a, i=i: ran.append(i)) for i, layer in enumerate(base.model.layers)]
    _, _, piv, pmask = batch()
    states = fm.encode_pivot(piv, pmask)
    for h in hooks:
        h.remove()
    assert ran == [0, 1, 2]  # the last fused layer runs (its norm's weights), the one after it does not
    with torch.no_grad(), fm.peft_model.disable_adapter():
        hidden = base(input_ids=piv, attention_mask=pmask, position_ids=positions_from_mask(pmask),
                      output_hidden_states=True).hidden_states
        for i in (0, 2):
            torch.testing.assert_close(states[i], base.model.layers[i].input_layernorm(hidden[i]))

def grads(fm, ids, mask, piv, pmask, **kw):
    fm.zero_grad(set_to_none=True)
    out = fm(ids, mask, labels=ids.masked_fill(mask == 0, -100), pivot_input_ids=piv, pivot_attention_mask=pmask, **kw)
    out.loss.backward()
    return {n: p.grad.clone() for n, p in fm.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("fusion", ["add_relu", "cross_attention"])
def test_gradients_reach_adapter_only_and_survive_checkpointing(fusion):
    fm = get_flare_model(tiny_causal_lm("llama"), FlareConfig(fusion=fusion, r=4))
    randomize_adapter(fm)
    fm.train()
    ids, mask, piv, pmask = batch()
    plain = grads(fm, ids, mask, piv, pmask)
    assert plain and all("lora_" in n for n in plain)
    assert any("lora_A" in n for n in plain) and any("lora_B" in n for n in plain)
    if fusion == "cross_attention":
        assert any("lora_flare_xattn" in n and g.abs().sum() > 0 for n, g in plain.items())
    fm.base_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert fm.base_model.is_gradient_checkpointing
    checkpointed = grads(fm, ids, mask, piv, pmask)
    assert checkpointed.keys() == plain.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)
    # not vacuous: without the pivot the gradients differ
    unfused = grads(fm, ids, mask, piv, pmask, no_pivot=True)
    assert any((unfused[n] - plain[n]).abs().max() > 1e-6 for n in plain)


def test_checkpointed_recompute_fuses_its_own_forwards_pivot_with_several_forwards_per_backward():
    """Two forwards (different pivots), one backward of the summed losses: with
    FlareModel.gradient_checkpointing_enable each recomputed layer gets its own forward's pivot."""

    def two_forward_grads(fm):
        fm.zero_grad(set_to_none=True)
        ids, mask, piv, pmask = batch()
        labels = ids.masked_fill(mask == 0, -100)
        first = fm(ids, mask, labels=labels, pivot_input_ids=piv, pivot_attention_mask=pmask).loss
        second = fm(ids, mask, labels=labels, pivot_input_ids=piv.flip(0), pivot_attention_mask=pmask.flip(0)).loss
        (first + second).backward()
        return {n: p.grad.clone() for n, p in fm.named_parameters() if p.grad is not None}

    fm = get_flare_model(tiny_causal_lm("llama"), FlareConfig(fusion="add_relu", r=4))
    randomize_adapter(fm)
    fm.train()
    want = two_forward_grads(fm)
    fm.gradient_checkpointing_enable()
    assert fm.base_model.is_gradient_checkpointing
    got = two_forward_grads(fm)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=1e-5)
    # not vacuous: checkpointing enabled on the base alone recomputes the first forward with the
    # second forward's pivot (the session attached last)
    fm.base_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    naive = two_forward_grads(fm)
    assert any((naive[n] - want[n]).abs().max() > 1e-5 for n in want)
    with pytest.raises(ConfigError, match="non-reentrant"):
        fm.gradient_checkpointing_enable({"use_reentrant": True})


def test_save_load_roundtrip_and_plain_peft_gives_pivotless_model(tmp_path):
    fm = get_flare_model(tiny_causal_lm("llama"), FlareConfig(fusion="cross_attention", r=4, meta={"task": "qa"}))
    randomize_adapter(fm)
    ids, mask, piv, pmask = batch()
    with torch.no_grad():
        want = fm(ids, mask, pivot_input_ids=piv, pivot_attention_mask=pmask).logits
    fm.save_pretrained(tmp_path / "adapter")
    files = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert files == ["README.md", "adapter_config.json", "adapter_model.safetensors", "flare_config.json"]
    saved = json.loads((tmp_path / "adapter" / "flare_config.json").read_text())
    assert saved["fusion"] == "cross_attention" and saved["meta"] == {"task": "qa"}

    loaded = load_flare_model(tiny_causal_lm("llama"), tmp_path / "adapter")
    with torch.no_grad():
        got = loaded(ids, mask, pivot_input_ids=piv, pivot_attention_mask=pmask).logits
    assert (got - want).abs().max().item() == 0.0

    # plain peft: the same LoRA weights without the pivot path = B A u on every target
    plain = PeftModel.from_pretrained(tiny_causal_lm("llama"), str(tmp_path / "adapter"))
    none_dir = tmp_path / "as_none"
    shutil.copytree(tmp_path / "adapter", none_dir)
    saved["fusion"] = "none"
    (none_dir / "flare_config.json").write_text(json.dumps(saved))
    # fusion none has no cross-attention tensors (a folder with unexpected ones is refused)
    state = load_file(str(none_dir / "adapter_model.safetensors"))
    save_file({k: v for k, v in state.items() if "lora_flare_" not in k}, str(none_dir / "adapter_model.safetensors"))
    as_none = load_flare_model(tiny_causal_lm("llama"), none_dir)
    with torch.no_grad():
        plain_logits = plain(input_ids=ids, attention_mask=mask).logits
        none_logits = as_none(ids, mask, no_pivot=True).logits
    assert (plain_logits - none_logits).abs().max().item() < 1e-6
    assert (plain_logits - want).abs().max().item() > 1e-3


def test_merging_a_fused_adapter_raises():
    fm = get_flare_model(tiny_causal_lm("llama"), FlareConfig(fusion="add_relu"))
    randomize_adapter(fm)
    with pytest.raises(MergeError, match="depends on the pivot"):
        fm.merge_and_unload()
    lora = get_flare_model(tiny_causal_lm("llama"), FlareConfig(method="lora"))
    merged = lora.merge_and_unload()
    assert not any("lora_" in n for n, _ in merged.named_parameters())


def test_generation_equals_fused_full_forward():
    fm = get_flare_model(tiny_causal_lm("llama"), FlareConfig(fusion="add_relu", r=4))
    randomize_adapter(fm, std=0.5)
    prompts = [torch.randint(3, VOCAB, (7,)), torch.randint(3, VOCAB, (4,))]
    pivots = [torch.randint(3, VOCAB, (5,)), torch.randint(3, VOCAB, (6,))]

    ids, mask = left_pad(prompts)
    piv, pmask = left_pad(pivots)
    out = fm.generate(ids, mask, pivot_input_ids=piv, pivot_attention_mask=pmask, max_new_tokens=5,
                      min_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=None)
    new = out[:, ids.shape[1]:]
    for i, (prompt, pivot) in enumerate(zip(prompts, pivots)):
        full = torch.cat([prompt, new[i]])[None]
        prompt_mask = torch.zeros_like(full)
        prompt_mask[0, : len(prompt)] = 1
        with torch.no_grad():
            logits = fm(full, prompt_mask=prompt_mask, pivot_input_ids=pivot[None]).logits
        greedy = logits[0, len(prompt) - 1 : -1].argmax(-1)
        assert greedy.tolist() == new[i].tolist()
    # and fusion mattered for generation
    plain = fm.generate(ids, mask, no_pivot=True, max_new_tokens=5, min_new_tokens=5, do_sample=False,
                        pad_token_id=0, eos_token_id=None)
    assert not torch.equal(plain, out)


def test_bf16_forward_tracks_fp32():
    fm32 = get_flare_model(tiny_causal_lm("llama"), FlareConfig(r=4))
    randomize_adapter(fm32, std=0.1)
    fm16 = get_flare_model(tiny_causal_lm("llama", dtype=torch.bfloat16), FlareConfig(r=4))
    fm16.load_state_dict({k: v.to(torch.bfloat16) for k, v in fm32.state_dict().items()})
    ids, mask, piv, pmask = batch()
    with torch.no_grad():
        a = fm32(ids, mask, pivot_input_ids=piv, pivot_attention_mask=pmask).logits
        b = fm16(ids, mask, pivot_input_ids=piv, pivot_attention_mask=pmask).logits
    assert b.dtype == torch.bfloat16
    assert torch.isfinite(b).all()
    assert (a - b.float()).abs().max().item() < 0.1


def test_all_linear_targets_fuse_only_q_v():
    fm = get_flare_model(tiny_causal_lm("llama"), FlareConfig(target_modules="all-linear", fused_layers=[1]))
    fused = sorted(m.flare_name.split("model.", 1)[-1] for m in fm.modules() if isinstance(m, FlareLinear) and m.is_fused)
    assert fused == ["layers.1.self_attn.q_proj", "layers.1.self_attn.v_proj"]
    plain = [m for m in fm.modules() if isinstance(m, FlareLinear) and not m.is_fused]
    assert len(plain) == 2 * 7 - 2  # q,k,v,o,gate,up,down in 2 layers, minus the fused two


def test_config_errors_are_clear():
    with pytest.raises(ConfigError, match="unknown fusion 'concat'"):
        FlareConfig(fusion="concat")
    with pytest.raises(ConfigError, match=r"fused modules \['k_proj'\] are not LoRA targets"):
        FlareConfig(fused_modules=["k_proj"])
    with pytest.raises(ConfigError, match="no module matches"):
        get_flare_model(tiny_causal_lm("llama"), FlareConfig(fused_layers=[7]))

"""FLARE stays one function on every path: training / full forward / cached and uncached decoding,
beam search, adapter names, fused modules per architecture (issue 14)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import VOCAB, tiny_causal_lm

from flare_cli.flare import FlareConfig, get_flare_model


def randomize_adapter(fm, seed=1, std=0.3):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in fm.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def loud_model(arch="llama", **kw):
    """A tiny model whose residual stream is large enough for A h to move the logits."""
    model = tiny_causal_lm(arch, **kw)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(50)
    return model


def left_pad(rows):
    L = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), L, dtype=torch.long)
    mask = torch.zeros(len(rows), L, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, L - len(r):], mask[i, L - len(r):] = r, 1
    return ids, mask


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

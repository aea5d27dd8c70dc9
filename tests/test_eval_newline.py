"""`flare eval` stops answers at a newline on every tokenizer (issue 14): transformers'
stop_strings check crashes on small vocabularies; the project's criterion must not, and must stop
where stop_strings stopped wherever that worked."""

from __future__ import annotations

import torch
from tiny_models import tiny_llama, tiny_tokenizer

from flare_cli.evaluate import _newline_stop, generate_answers

PROMPTS = ["xy:", "zzw x:", "w:"]


def char_tokenizer():
    """A character-level vocabulary that cannot encode transformers' stop-string probe ("abcdef")."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<s>", "</s>", "\n", "x", "y", "z", "w", ":", " "])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")


def reference_answers(model, tokenizer, prompts, max_new_tokens):
    """One prompt at a time, no stopping at all, cut at the first newline afterwards."""
    answers, had_newline = [], 0
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
        text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        had_newline += "\n" in text.rstrip("\n")
        answers.append(text.split("\n", 1)[0])
    return answers, had_newline


def test_small_vocabulary_stops_at_newline_without_crashing():
    tokenizer = char_tokenizer()
    model = tiny_llama(tokenizer, hidden=32, seed=3, init_std=0.5)
    with torch.no_grad():  # make "\n" a likely token so that stopping matters
        model.lm_head.weight[tokenizer.convert_tokens_to_ids("\n")] *= 3
    try:  # the crash this replaces: transformers' stop-string table for this vocabulary
        model.generate(tokenizer(PROMPTS[0], return_tensors="pt")["input_ids"], max_new_tokens=2,
                       stop_strings=["\n"], tokenizer=tokenizer)
        stop_strings_crash = False
    except ValueError:
        stop_strings_crash = True
    assert stop_strings_crash
    want, had_newline = reference_answers(model, tokenizer, PROMPTS, 12)
    assert had_newline >= 1  # some answer runs on past a newline: stopping is exercised
    calls = []
    hook = model.register_forward_hook(lambda *a: calls.append(1))
    got = generate_answers(model, tokenizer, PROMPTS, max_new_tokens=12, batch_size=1)
    hook.remove()
    assert got == want
    assert len(calls) < 12 * len(PROMPTS)  # and decoding ended early for the rows that hit a newline


def test_stops_exactly_where_stop_strings_stopped():
    tokenizer = tiny_tokenizer()
    model = tiny_llama(tokenizer, hidden=32, seed=0, init_std=0.5)
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        model.lm_head.weight[newline] *= 4
    prompts = ["Context: Dodoma\nQuestion: Mji?\nAnswer:", "Text: apik. Answer:", "Premise: Mvua"]
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    common = dict(max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    theirs = model.generate(**batch, stop_strings=["\n"], tokenizer=tokenizer, **common)
    ours = model.generate(**batch, stopping_criteria=_newline_stop(tokenizer, batch["input_ids"].shape[1]), **common)
    assert torch.equal(ours, theirs)
    assert theirs.shape[1] < batch["input_ids"].shape[1] + 16  # stop_strings did stop early here

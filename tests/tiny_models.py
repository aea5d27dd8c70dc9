"""Tiny offline models and tokenizers for tests, built locally in seconds (no Hub)."""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 96


def tiny_causal_lm(arch: str = "llama", *, layers: int = 2, hidden: int = 32, seed: int = 0, dtype=torch.float32):
    import transformers as tf

    common = dict(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    configs = {
        "llama": lambda: tf.LlamaConfig(**common),
        "mistral": lambda: tf.MistralConfig(**common, sliding_window=None),
        "qwen2": lambda: tf.Qwen2Config(**common),
        "gemma2": lambda: tf.Gemma2Config(**common, head_dim=hidden // 4, query_pre_attn_scalar=hidden // 4),
    }
    config = configs[arch]()
    torch.manual_seed(seed)
    # each architecture's default attention (SDPA where transformers supports it; Gemma 2 is eager)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


ARCHS = ("llama", "gemma2", "qwen2", "mistral")

CORPUS = [
    "Context: Dodoma ni mji mkuu wa Tanzania.\nQuestion: Mji mkuu ni upi?\nAnswer: Dodoma",
    "Context: Dodoma is the capital of Tanzania.\nQuestion: What is the capital?\nAnswer: Dodoma",
    "Premise: Mvua inanyesha. Hypothesis: Ni mvua. entailment neutral contradiction",
    "Text: apik tenan. Is the sentiment negative, neutral or positive? Answer: positive",
]


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def tiny_llama(tokenizer, hidden=32, seed=0, init_std=0.02):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False, initializer_range=init_std,
    )
    return LlamaForCausalLM(config).eval()


def save_base(folder: Path, hidden=32, seed=0, init_std=0.02):
    # init_std well above 0.02 lets a tiny model's LM head move its logits (a learnable toy)
    tokenizer = tiny_tokenizer()
    model = tiny_llama(tokenizer, hidden=hidden, seed=seed, init_std=init_std)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer


def save_lora_adapter(base_model, folder: Path, seed=1):
    """A plain LoRA adapter with B != 0 so that it changes the output."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base_model, config)
    peft_model.save_pretrained(folder)
    return peft_model


def randomize_adapter(fm, seed=1, std=0.3):
    """B != 0 (and random bottleneck attention) so the adapter visibly acts."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in fm.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def left_pad(rows):
    """(ids, attention mask) of 1-D id tensors left-padded with 0 to the longest."""
    length = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, length - len(r):], mask[i, length - len(r):] = r, 1
    return ids, mask

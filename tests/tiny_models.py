"""Tiny random causal LMs of several architectures, built locally (no Hub)."""

from __future__ import annotations

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

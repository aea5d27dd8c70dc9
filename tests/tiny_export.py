"""Tiny offline models and adapters for export tests (a 2-layer Llama, hidden size 32)."""

from __future__ import annotations

import json
from pathlib import Path

CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}"
WORDS = ["<unk>", "<s>", "</s>", "<pad>"] + [f"w{i}" for i in range(60)]


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def make_base(folder: Path, dtype: str = "float32", seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=1, eos_token_id=2, pad_token_id=3,
    )
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


def make_lora(base: Path, folder: Path, seed: int = 1, flare: dict | None = None, flare_tensor: bool = False) -> Path:
    """A peft LoRA adapter with B != 0; with `flare`, a real flare_cli folder: flare_config.json as
    FlareModel.save_pretrained writes it (FlareConfig's fields at the top level, the other keys of
    `flare` as provenance under meta), and with `flare_tensor` an extra lora_flare_* tensor that
    plain peft does not know."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(folder)
    if flare is not None:
        from dataclasses import fields

        from flare_cli.flare import FlareConfig

        known = {f.name for f in fields(FlareConfig)}
        meta = {**{k: v for k, v in flare.items() if k not in known}, **flare.get("meta", {})}
        math = {k: v for k, v in flare.items() if k in known and k != "meta"}
        config = FlareConfig(**{"fusion": "none" if math.get("method") == "lora" else "add_relu", **math},
                             target_modules=["q_proj", "v_proj"], r=4, lora_alpha=8, meta=meta)
        (folder / "flare_config.json").write_text(json.dumps(config.to_dict()))
    if flare_tensor:
        path = folder / "adapter_model.safetensors"
        state = load_file(str(path))
        state["base_model.model.model.layers.0.self_attn.q_proj.lora_flare_xattn.weight"] = torch.randn(4, 4)
        save_file(state, str(path))
    return folder


def logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=ids).logits.float()

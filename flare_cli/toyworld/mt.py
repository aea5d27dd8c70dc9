"""Train the tiny NLLB-architecture (M2M100) MT model on toy parallel text, both directions."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from flare_cli.toyworld.pretrain import lr_at, train_threads
from flare_cli.toyworld.tokenizer import ENGLISH_FLORES, TARGET_FLORES

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class MTSettings:
    d_model: int = 64
    layers: int = 2
    heads: int = 4
    ffn: int = 256
    steps: int = 600
    batch: int = 32
    lr: float = 5e-3
    warmup: int = 50
    # As for the base: at the default 0.02 the decoder learned the target grammar but ignored the
    # source for hundreds of steps (chrF ~40 after 500 steps, against ~97 with 0.1).
    init_std: float = 0.1
    # The world's MT-quality knob: the share of English word types the MT learns wrong (each swapped
    # for another of its kind in its parallel text; corpus.confusion_map), the systematic lexical
    # errors of a low-resource MT. 0 gives qtw->en chrF++ ~99; the default sits where NLLB-200 puts
    # low-resource languages into English (docs/toyworld.md).
    confusion: float = 0.6


def _encode(tokenizer, sources: list[str], targets: list[str], src: str, tgt: str):
    tokenizer.src_lang, tokenizer.tgt_lang = src, tgt
    enc = tokenizer(sources, text_target=targets, return_tensors="pt", padding=True)
    enc["labels"][enc["labels"] == tokenizer.pad_token_id] = -100
    return enc


def train_mt(
    out_dir: Path, tokenizer, pairs: Iterator[tuple[str, str]], settings: MTSettings, seed: int, progress: Progress | None
) -> float:
    """Train from scratch on (English, target) pairs, alternating directions step by step; save the
    model with its tokenizer. Returns the mean loss of the last 10% of steps."""
    import torch
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    torch.manual_seed(seed)
    config = M2M100Config(
        vocab_size=len(tokenizer),
        d_model=settings.d_model,
        encoder_layers=settings.layers,
        decoder_layers=settings.layers,
        encoder_attention_heads=settings.heads,
        decoder_attention_heads=settings.heads,
        encoder_ffn_dim=settings.ffn,
        decoder_ffn_dim=settings.ffn,
        max_position_embeddings=256,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        scale_embedding=True,
        init_std=settings.init_std,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        # NLLB starts decoding from </s>, then the forced target-language code.
        decoder_start_token_id=tokenizer.eos_token_id,
    )
    model = M2M100ForConditionalGeneration(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.01, betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, settings.steps, settings.warmup))
    model.train()
    tail: list[float] = []
    for step in range(settings.steps):
        if step % 50 == 0:  # other jobs come and go on a shared machine
            torch.set_num_threads(train_threads())
        batch = [next(pairs) for _ in range(settings.batch)]
        english, target = [b[0] for b in batch], [b[1] for b in batch]
        if step % 2 == 0:
            enc = _encode(tokenizer, english, target, ENGLISH_FLORES, TARGET_FLORES)
        else:
            enc = _encode(tokenizer, target, english, TARGET_FLORES, ENGLISH_FLORES)
        loss = model(**enc).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= settings.steps * 0.9:
            tail.append(loss.item())
        if progress and (step % 10 == 0 or step == settings.steps - 1):
            progress("train MT", step + 1, settings.steps)
    model.eval()
    model.save_pretrained(out_dir)
    tokenizer.src_lang, tokenizer.tgt_lang = ENGLISH_FLORES, TARGET_FLORES
    tokenizer.save_pretrained(out_dir)
    return sum(tail) / len(tail)


def translate(model, tokenizer, texts: list[str], src: str, tgt: str, max_new_tokens: int = 128) -> list[str]:
    """Greedy translation the way `flare translate` does it (src_lang + forced_bos_token_id)."""
    import torch

    tokenizer.src_lang = src
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(
            **enc,
            forced_bos_token_id=tokenizer.convert_tokens_to_ids(tgt),
            max_new_tokens=max_new_tokens,
            num_beams=1,
            do_sample=False,
        )
    return tokenizer.batch_decode(out, skip_special_tokens=True)

"""One sentencepiece model for both toy languages, opened as a Llama and as an NLLB tokenizer."""

from __future__ import annotations

import io
from pathlib import Path

from flare_cli.errors import ModelError

# NLLB-style language-code tokens the MT tokenizer adds on top of the sentencepiece vocabulary.
ENGLISH_FLORES = "eng_Latn"
TARGET_FLORES = "qtw_Latn"
PAD_TOKEN = "<pad>"


def train_sentencepiece(lines: list[str], vocab_size: int) -> bytes:
    """A BPE model (close to word-level at this vocabulary size) with byte fallback, so unseen
    characters never become <unk>; newline is its own piece, as the prompt templates use it."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=1.0,
        byte_fallback=True,
        user_defined_symbols=["\n"],
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        num_threads=1,  # deterministic merges
        minloglevel=2,
    )
    return model.getvalue()


def llama_tokenizer(sp_model: bytes, folder: Path):
    """A LlamaTokenizer over `sp_model`, written to `folder` (tokenizer.model + tokenizer.json)."""
    from transformers import LlamaTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(sp_model)
    # from_pretrained(dir) reads the whole vocabulary; LlamaTokenizer(vocab_file=...) would not.
    tokenizer = LlamaTokenizer.from_pretrained(folder, pad_token=PAD_TOKEN)
    _check_vocab(tokenizer, _piece_count(sp_model), "Llama")
    tokenizer.save_pretrained(folder)
    return tokenizer


def nllb_tokenizer(sp_model: bytes, folder: Path):
    """An NllbTokenizer over the same pieces plus the two language codes, written to `folder`."""
    from transformers import NllbTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sentencepiece.bpe.model").write_bytes(sp_model)
    tokenizer = NllbTokenizer.from_pretrained(
        folder, extra_special_tokens=[ENGLISH_FLORES, TARGET_FLORES], src_lang=ENGLISH_FLORES, tgt_lang=TARGET_FLORES
    )
    for code in (ENGLISH_FLORES, TARGET_FLORES):
        if tokenizer.convert_tokens_to_ids(code) == tokenizer.unk_token_id:
            raise ModelError(f"the toy MT tokenizer has no token for {code}")
    # fairseq layout: <s> <pad> </s> <unk>, the pieces shifted by one, then the language codes.
    _check_vocab(tokenizer, _piece_count(sp_model) + 1 + 2, "NLLB")
    tokenizer.save_pretrained(folder)
    return tokenizer


def _piece_count(sp_model: bytes) -> int:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_proto=sp_model).get_piece_size()


def _check_vocab(tokenizer, expected: int, kind: str) -> None:
    if len(tokenizer) != expected:
        raise ModelError(f"the toy {kind} tokenizer loaded {len(tokenizer)} tokens, expected {expected}")

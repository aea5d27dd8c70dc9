"""A tiny NLLB-architecture MT model (M2M100 config + NllbTokenizer) built offline, for tests and benchmarks.

The sentencepiece model is trained on a small English corpus; every NLLB-200 language code (plus the
toy world's ``qtw_Latn``) is a real special token. Weights are random with a large init scale so that
outputs depend on the input (a default init emits the same string for every input).
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "The cat sat on the mat.",
    "A dog runs in the park every morning!",
    "Where is the river that flows to the sea?",
    "Paris is the capital of France and a large city.",
    "The children read books at school in the afternoon.",
    "Rain fell on the village for three days.",
    "She answered the question with a short word.",
    "Fishermen sell their catch at the market near the harbour.",
]


def build_tiny_nllb(root: Path, seed: int = 0) -> Path:
    """Write a tiny NLLB-style model folder under ``root`` and return its path."""
    import sentencepiece as spm
    import torch
    from transformers import M2M100Config, M2M100ForConditionalGeneration, NllbTokenizer
    from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

    root = Path(root)
    spm_dir = root / "spm"
    spm_dir.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 10),
        model_prefix=str(spm_dir / "sentencepiece.bpe"),
        vocab_size=100,
        model_type="bpe",
        character_coverage=1.0,
        # fairseq/NLLB special-token layout.
        bos_id=0, pad_id=1, eos_id=2, unk_id=3,
        minloglevel=2,
    )
    tokenizer = NllbTokenizer.from_pretrained(
        str(spm_dir), extra_special_tokens=[*FAIRSEQ_LANGUAGE_CODES, "qtw_Latn"]
    )
    torch.manual_seed(seed)
    config = M2M100Config(
        vocab_size=len(tokenizer), d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_position_embeddings=512, init_std=1.0, scale_embedding=False,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.eos_token_id,
    )
    model = M2M100ForConditionalGeneration(config).eval()
    with torch.no_grad():  # a weaker EOS row (tied lm_head) so most inputs get a non-empty output
        model.get_input_embeddings().weight[tokenizer.eos_token_id] *= 0.3
    out = root / "tiny-nllb"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


class FakeEngine:
    """An MT engine without a model (flare_cli.mt_engines.MTEngine's interface): each test's
    subclass says how it translates, so the pipeline around the engine is tested on its own."""

    engine, model_id, device, compute_type = "fake", "test/fake", "cpu", "exact"

    def identity(self):
        return "v1"

    def lang_code(self, lang):
        return lang.flores

    def count_tokens(self, texts):
        return [len(t.split()) + 2 for t in texts]

    def translate_batch(self, texts, src, tgt, num_beams, max_new_tokens):
        raise NotImplementedError

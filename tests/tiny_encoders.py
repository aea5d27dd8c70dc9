"""Tiny offline XLM-R models and an XLM-R sentencepiece tokenizer for tests, built locally (no Hub)."""

from __future__ import annotations

import io
from pathlib import Path

import torch

ENCODER_CORPUS = [
    "Dodoma ni mji mkuu wa Tanzania. Mji mkuu ni upi? Dodoma",
    "Dodoma is the capital of Tanzania. What is the capital? Dodoma",
    "Mvua inanyesha. Ni mvua. It is raining. It rains.",
    "apik tenan. the food was good. elek banget. the food was bad.",
    "Nairobi ni mji mkuu wa Kenya. Nairobi is the capital of Kenya.",
]


def train_xlmr_sentencepiece(vocab_size: int = 400) -> bytes:
    """A BPE sentencepiece model with fairseq's special ids (<s>=0, <pad>=1, </s>=2, <unk>=3)."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(ENCODER_CORPUS * 3), model_writer=model, model_type="bpe", vocab_size=vocab_size,
        character_coverage=1.0, byte_fallback=True, bos_id=0, pad_id=1, eos_id=2, unk_id=3, num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def xlmr_tokenizer(folder: Path):
    """An XLMRobertaTokenizer read from ``folder/sentencepiece.bpe.model`` (pad id 1, as XLM-R)."""
    from transformers import XLMRobertaTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sentencepiece.bpe.model").write_bytes(train_xlmr_sentencepiece())
    return XLMRobertaTokenizer.from_pretrained(folder)


def xlmr_config(vocab_size: int, hidden: int = 32, layers: int = 2):
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=2 * hidden, max_position_embeddings=260, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        type_vocab_size=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )


def tiny_xlmr(head: str = "sequence-classification", *, vocab_size: int = 402, hidden: int = 32, layers: int = 2,
              num_labels: int = 3, seed: int = 0, embed_scale: float = 1.0):
    """A random tiny XLM-R with a classification or QA head; ``embed_scale`` multiplies the word
    embeddings (a random model's residual stream is ~0.02: x50 lets tests see the pivot's effect)."""
    from transformers import XLMRobertaForQuestionAnswering, XLMRobertaForSequenceClassification

    config = xlmr_config(vocab_size, hidden, layers)
    torch.manual_seed(seed)
    if head == "question-answering":
        model = XLMRobertaForQuestionAnswering(config)
    else:
        config.num_labels = num_labels
        model = XLMRobertaForSequenceClassification(config)
    if embed_scale != 1.0:
        with torch.no_grad():
            model.roberta.embeddings.word_embeddings.weight.mul_(embed_scale)
    return model.eval()


def save_xlmr_base(folder: Path, *, hidden: int = 32, layers: int = 2, seed: int = 0):
    """A tiny XLM-R *base* folder (an XLMRobertaForMaskedLM checkpoint, as FacebookAI/xlm-roberta-large
    ships) plus its tokenizer: the heads are new when flare_cli loads it for a task."""
    from transformers import XLMRobertaForMaskedLM

    folder = Path(folder)
    tokenizer = xlmr_tokenizer(folder)
    torch.manual_seed(seed)
    model = XLMRobertaForMaskedLM(xlmr_config(len(tokenizer), hidden, layers))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer

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


def xlmr_config(vocab_size: int, hidden: int = 32, layers: int = 2, init_std: float = 0.02):
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(initializer_range=init_std,
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=2 * hidden, max_position_embeddings=260, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        type_vocab_size=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )


def tiny_xlmr(head: str = "sequence-classification", *, vocab_size: int = 402, hidden: int = 32, layers: int = 2,
              num_labels: int = 3, seed: int = 0, init_std: float = 0.02):
    """A random tiny XLM-R with a classification or QA head. XLM-R is post-LN: its embeddings and
    block outputs are layer-normed, so scaling the embeddings (the decoders' x50 trick) changes
    nothing; ``init_std`` well above 0.02 makes the head and projections large enough for a test
    to see the pivot's effect on the logits."""
    from transformers import XLMRobertaForQuestionAnswering, XLMRobertaForSequenceClassification

    config = xlmr_config(vocab_size, hidden, layers, init_std)
    torch.manual_seed(seed)
    if head == "question-answering":
        model = XLMRobertaForQuestionAnswering(config)
    else:
        config.num_labels = num_labels
        model = XLMRobertaForSequenceClassification(config)
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

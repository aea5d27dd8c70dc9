"""The frozen MT encoder of FLARE-MT (method.md, "FLARE-MT").

An NLLB / M2M100 encoder reads the *target-language* prompt tagged with the target language's own
code (the reference code tags it English: a bug we do not copy). Its last hidden states, aligned to
the target prompt positions, go through a trainable linear map (d_mt -> d_model, owned by the fused
LoRA layers as ``lora_flare_mtproj``) and play the role of the pivot state ``h``.

Tokenization (ids only) happens where the data is prepared; the encoder itself runs batched inside
``FlareModel.forward`` on the model's device, under no_grad, always in eval mode. It is never saved
with the adapter: ``flare_config.json`` names it (``mt_model``, ``mt_revision``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from flare_cli.errors import ModelError
from flare_cli.mt_engines import mt_lang_code  # one owner: MT tokenizers' language codes


class MTEncoder(nn.Module):
    """A frozen NLLB/M2M100 encoder plus its tokenizer; ``forward`` returns (B, Ls, d_mt) states."""

    def __init__(self, encoder: nn.Module, tokenizer, model_id: str, revision: Optional[str] = None):
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.revision = revision
        self.encoder.requires_grad_(False)
        self.encoder.eval()

    @property
    def hidden_size(self) -> int:
        return int(self.encoder.config.d_model)

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.encoder.config.pad_token_id)

    def train(self, mode: bool = True) -> "MTEncoder":
        super().train(False)  # frozen: no dropout, ever
        return self

    def lang_code(self, lang) -> str:
        return mt_lang_code(self.tokenizer, lang, self.model_id)

    def encode_texts(self, texts: Sequence[str], lang, max_length: int = 512) -> list[list[int]]:
        """Token ids of ``texts`` tagged with ``lang``'s code (first token), ending with EOS.

        Longer inputs keep the language tag and their *end* (as the LLM prompt does), so the
        template tail still meets the LLM's under end alignment.
        """
        code = self.lang_code(lang)
        tok = self.tokenizer
        saved = getattr(tok, "src_lang", None)
        tok.src_lang = code
        try:
            rows = tok(list(texts), add_special_tokens=True)["input_ids"]
        finally:
            if saved is not None:
                tok.src_lang = saved
        tag = tok.get_lang_id(code) if hasattr(tok, "get_lang_id") else tok.convert_tokens_to_ids(code)
        out = []
        for ids in rows:
            if len(ids) > max_length:
                ids = ([ids[0]] + ids[-(max_length - 1):]) if ids[0] == tag else ids[-max_length:]
            out.append(ids)
        return out

    def pad(self, rows: Sequence[Sequence[int]], side: str = "right", device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask) padded with the encoder's pad id (its position ids are counted from it)."""
        L = max(len(r) for r in rows)
        ids = torch.full((len(rows), L), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(rows), L, dtype=torch.long)
        for i, r in enumerate(rows):
            span = slice(L - len(r), L) if side == "left" else slice(0, len(r))
            ids[i, span] = torch.tensor(list(r), dtype=torch.long)
            mask[i, span] = 1
        return ids.to(device) if device is not None else ids, mask.to(device) if device is not None else mask

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        device = next(self.encoder.parameters()).device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        # M2M100 counts positions over non-pad ids: whatever the caller padded with, make it the pad id
        input_ids = input_ids.masked_fill(attention_mask == 0, self.pad_token_id)
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state


def load_mt_encoder(
    model_id: str, revision: Optional[str] = None, *, dtype: Optional[torch.dtype] = None, device=None
) -> MTEncoder:
    """Load the encoder half of an NLLB/M2M100 model (local folder or Hub id) and freeze it."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from flare_cli.modeling import _describe_load_failure

    local = Path(model_id).is_dir()
    kwargs = {} if local else {"revision": revision}
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id, **kwargs)
        model = AutoModelForSeq2SeqLM.from_pretrained(model_id, dtype=dtype or torch.float32, **kwargs)
    except Exception as err:  # OSError / ValueError / hub errors, offline included
        raise ModelError(f"MT encoder: {_describe_load_failure(model_id, err)}") from None
    get_encoder = getattr(model, "get_encoder", None)
    if not callable(get_encoder) or not hasattr(model.config, "d_model"):
        raise ModelError(f"MT encoder: {model_id!r} is a {type(model).__name__}, not an NLLB/M2M100 encoder-decoder")
    encoder = get_encoder()
    del model  # the decoder and LM head are never used
    if device is not None:
        encoder = encoder.to(device)
    return MTEncoder(encoder, tokenizer, model_id, revision=None if local else revision)


def resolved_revision(model_id: str, revision: Optional[str]) -> Optional[str]:
    """What to record in flare_config.json: None for a local folder, else the Hub commit when cached."""
    if Path(model_id).is_dir():
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model_id, "config.json", revision=revision)
    except Exception:  # an odd id: keep what the user asked for
        return revision
    if isinstance(cached, str):
        return Path(cached).parent.name  # .../snapshots/<commit>/config.json
    return revision


__all__ = ["MTEncoder", "load_mt_encoder", "mt_lang_code", "resolved_revision"]

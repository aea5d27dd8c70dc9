"""Pivot states: the source pass over the English pivot, and its alignment to the target.

The source pass runs the same model with adapters disabled, under no_grad, and records the hidden
state *entering* each fused decoder layer (HF ``hidden_states[i]``; i = 0 is the embedding
output). It stops right after the last fused layer has been entered: no later layers, no LM head.

Alignment (method.md, where we differ from the reference code): target prompt positions meet
pivot positions counted from the end of each prompt (``align="end"``, so the shared English template
tail such as "Answer:" lines up) or from the start (``align="start"``). Every target position
without a pivot token (pivot shorter, padding, answer tokens, generated tokens) is *absent*: its
source state is zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from flare_cli.errors import PivotError


class _StopSourcePass(Exception):
    """Raised by a pre-hook once every needed layer input has been captured."""


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The layer stack of a HF causal LM (model.model.layers for Llama/Gemma/Qwen/Mistral), or of an
    encoder (model.roberta.encoder.layer for XLM-R)."""
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for _name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and (n_layers is None or len(module) == n_layers):
            return module
    raise PivotError(f"cannot find the decoder layers of {type(model).__name__}")


def _layer_input_norm(layer: nn.Module) -> Optional[nn.Module]:
    for name in ("input_layernorm", "ln_1", "pre_attention_layernorm"):
        if hasattr(layer, name):
            return getattr(layer, name)
    return None


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that ignore padding on either side: 0 at each row's first real token."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def capture_layer_inputs(
    model: nn.Module,
    layers: nn.ModuleList,
    wanted: list[int],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    source_norm: bool = False,
) -> dict[int, torch.Tensor]:
    """Run ``model`` on the pivot and return {layer index: hidden state entering it} (B, Ls, d).

    ``model`` is called as is: the caller disables adapters. The pass stops as soon as the last
    wanted layer's input is captured: that layer, the ones after it and the LM head never run
    (with ``source_norm`` the last wanted layer runs, its input norm needs its weights).

    The stop is a pre-hook put *first* on its layer (``prepend``), so it fires before any hook that
    FSDP or accelerate placed there: a sharded layer that is never run is never gathered, and no
    FSDP unit is left half-way through its forward (gathered, adapters frozen) by the stop.
    """
    wanted = sorted(set(wanted))
    captured: dict[int, torch.Tensor] = {}
    handles = []
    # without source_norm the last wanted layer's input is taken by the stop hook itself
    stop_at = wanted[-1] + 1 if source_norm else wanted[-1]

    def capture(index: int, module: nn.Module, args, kwargs) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        if source_norm:
            norm = _layer_input_norm(module)
            if norm is None:
                raise PivotError(f"source_norm: layer {index} has no input norm")
            hidden = norm(hidden)
        captured[index] = hidden

    def make_hook(index: int):
        def hook(module, args, kwargs):
            if index in wanted and index not in captured:
                capture(index, module, args, kwargs)
            if index == stop_at:
                raise _StopSourcePass  # everything we need is captured: this layer and the rest never run
            return None

        return hook

    for index in wanted:
        if index != stop_at:
            handles.append(layers[index].register_forward_pre_hook(make_hook(index), with_kwargs=True))
    if stop_at < len(layers):
        handles.append(layers[stop_at].register_forward_pre_hook(make_hook(stop_at), with_kwargs=True, prepend=True))
    try:
        from flare_cli.flare.encoder import encoder_body, is_encoder

        if is_encoder(getattr(model, "config", None)):
            # an encoder counts positions from its pad id itself (XLM-R: padding_idx + 1): no position_ids
            encoder_body(model)(input_ids=input_ids, attention_mask=attention_mask)
        else:
            body = getattr(model, "get_decoder", None)
            runner = body() if callable(body) else model
            runner(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=positions_from_mask(attention_mask),
                use_cache=False,
            )
    except _StopSourcePass:
        pass
    finally:
        for handle in handles:
            handle.remove()
    missing = [i for i in wanted if i not in captured]
    if missing:
        raise PivotError(f"source pass did not reach layers {missing}")
    return captured


def align_index(
    pivot_mask: torch.Tensor, target_mask: torch.Tensor, align: str = "end"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Map each target position to a pivot position.

    pivot_mask (B, Ls) and target_mask (B, Lt) are bool masks of real pivot tokens and of target
    *prompt* tokens (each a contiguous run; either side may be padded). Returns index (B, Lt) into
    the pivot sequence and present (B, Lt): True where a pivot token is aligned.
    """
    if align not in ("end", "start"):
        raise PivotError(f"unknown alignment {align!r} (use 'end' or 'start')")
    pivot_mask, target_mask = pivot_mask.bool(), target_mask.bool()
    B, Ls = pivot_mask.shape

    def rank(mask: torch.Tensor) -> torch.Tensor:
        # 0-based rank of each real token, counted from the start or from the end of its run
        counted = mask.flip(-1).long().cumsum(-1).flip(-1) if align == "end" else mask.long().cumsum(-1)
        return counted - 1

    pivot_rank = rank(pivot_mask)  # (B, Ls)
    target_rank = rank(target_mask)  # (B, Lt)
    # position_of_rank[b, k] = pivot position holding rank k; padded slots go to a spill column Ls
    spill = torch.full_like(pivot_rank, Ls)
    slot = torch.where(pivot_mask, pivot_rank, spill)
    position_of_rank = torch.zeros(B, Ls + 1, dtype=torch.long, device=pivot_mask.device)
    positions = torch.arange(Ls, device=pivot_mask.device).expand(B, Ls)
    position_of_rank.scatter_(1, slot, positions)
    n_pivot = pivot_mask.sum(-1, keepdim=True)  # (B, 1)
    present = target_mask & (target_rank >= 0) & (target_rank < n_pivot)
    index = torch.gather(position_of_rank[:, :Ls], 1, target_rank.clamp(0, max(Ls - 1, 0)))
    return index * present, present


def gather_aligned(states: torch.Tensor, index: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """states (B, Ls, d) -> aligned (B, Lt, d), zero at absent positions."""
    picked = torch.gather(states, 1, index[..., None].expand(-1, -1, states.shape[-1]))
    return picked * present[..., None].to(picked.dtype)


@dataclass
class PivotSession:
    """What every fused module reads during one forward (and its recomputation in backward).

    ``states`` maps layer index -> aligned pivot state (B, Lt, d); ``present`` is (B, Lt).
    ``states is None`` means "no pivot" (phi(0, T) everywhere).

    In generation (``for_generation``) every model call first sets ``offset`` (the tokens already in
    the KV cache) and the session serves the slice of the prompt-aligned states that call covers:
    the prefill and every uncached recomputation start at 0 and get the prompt's states, positions
    past the prompt (generated tokens) absent; a cached decoding step lies wholly past the prompt
    and gets none. A call whose batch is k times the session's (beam search, several return
    sequences: transformers repeats each row k times in place) gets each row's states repeated k
    times; beams never leave their row, so reordering them keeps each beam's pivot right.
    """

    states: Optional[dict[int, torch.Tensor]] = None
    present: Optional[torch.Tensor] = None
    for_generation: bool = False
    offset: int = 0

    def lookup(self, layer: int, x: torch.Tensor) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        if self.states is None:
            return None, None
        h = self.states.get(layer)
        if h is None:
            return None, None
        if not self.for_generation:
            if h.shape[:2] != x.shape[:2]:
                raise PivotError(
                    f"pivot states cover (batch, seq) = {tuple(h.shape[:2])} but layer {layer} got "
                    f"{tuple(x.shape[:2])}: the pivot was prepared for a different input"
                )
            return h, self.present
        return self._generation_view(layer, h, x)

    def _generation_view(self, layer: int, h: torch.Tensor, x: torch.Tensor):
        (B, L), (Bs, Ls) = x.shape[:2], h.shape[:2]
        start = self.offset
        if start >= Ls:  # a cached step past the prompt: generated tokens are absent
            return None, None
        if B % Bs != 0:
            raise PivotError(
                f"pivot states cover {Bs} rows but layer {layer} got {B}: the pivot was prepared for a different input"
            )
        h, present = h[:, start : start + L], self.present[:, start : start + L]
        if L > h.shape[1]:  # an uncached call over prompt + generated tokens: those are absent
            pad = L - h.shape[1]
            h = torch.cat([h, h.new_zeros(Bs, pad, h.shape[-1])], dim=1)
            present = torch.cat([present, present.new_zeros(Bs, pad)], dim=1)
        if B != Bs:
            h, present = h.repeat_interleave(B // Bs, dim=0), present.repeat_interleave(B // Bs, dim=0)
        return h, present

"""Fusion functions phi(S, T) of the FLARE bottleneck.

For a fused projection, S = A h (the pivot's state through the shared LoRA down-projection) and
T = A u (the target input through it), both (batch, seq, r). The adapter adds s * B phi(S, T).

``present`` (batch, seq) marks target positions that have an aligned pivot token. Elsewhere the
pivot is absent and S is zero there (callers zero it; functions here may rely on it), so every
function reduces to phi(0, T) at absent positions:

    add_relu        relu(S) + relu(T)      (default; best in the paper's ablation)
    add             S + T
    mul             S * T                  (absent -> 0: no update at all)
    cross_attention T + CA(T, S)           (CA: causal bottleneck attention from present target
                                           positions to present pivot positions; absent -> T)
    none            T                      (plain LoRA; the translate-train baseline)
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import nn

FusionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Optional[nn.Module]], torch.Tensor]


def fuse_add_relu(S, T, present, params=None):
    return torch.relu(S) + torch.relu(T)


def fuse_add(S, T, present, params=None):
    return S + T


def fuse_mul(S, T, present, params=None):
    return S * T


def fuse_none(S, T, present, params=None):
    return T


class BottleneckCrossAttention(nn.Module):
    """Single-head attention inside the r-dim bottleneck: target queries, pivot keys/values.

    A *present* query t attends the present pivot positions j <= t (causal over the target: with
    aligned sequences j is also the target position the pivot token sits at; t itself is one of
    them, so every present query has a key). An *absent* query (answer, padding or generated
    token) attends nothing and gets zero, so phi = T there: the same at every absent position in
    training, in a full forward and in cached or uncached decoding.

    The four r x r maps (q, k, v, o) are one stacked parameter ``weight`` (4, r, r): under peft's
    ``lora_flare_xattn.<adapter>`` the adapter name is then second to last in its state-dict key,
    so peft saves it without the name and loads it under any adapter name.
    """

    def __init__(self, r: int):
        super().__init__()
        weight = torch.empty(4, r, r)
        for i in range(3):
            nn.init.eye_(weight[i])  # q, k, v start as plain attention over the bottleneck states
        nn.init.normal_(weight[3], std=1.0 / math.sqrt(r))  # o
        self.weight = nn.Parameter(weight)

    def forward(self, S: torch.Tensor, T: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        wq, wk, wv, wo = self.weight.unbind(0)
        q, k, v = T @ wq.T, S @ wk.T, S @ wv.T  # (B, L, r) each
        L = T.shape[1]
        causal = torch.ones(L, L, dtype=torch.bool, device=T.device).tril()  # (Lq, Lk)
        allowed = causal[None] & present[:, None, :] & present[:, :, None]  # (B, Lq, Lk): present to present
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, Lq, Lk)
        scores = scores.masked_fill(~allowed, float("-inf"))
        has_key = allowed.any(-1, keepdim=True)  # (B, Lq, 1): False exactly at absent queries
        weights = torch.softmax(scores.masked_fill(~has_key, 0.0), dim=-1) * has_key
        return (weights @ v) @ wo.T


def fuse_cross_attention(S, T, present, params=None):
    if params is None:
        raise ValueError("cross_attention fusion needs its BottleneckCrossAttention parameters")
    return T + params(S, T, present)


FUSIONS: dict[str, FusionFn] = {
    "add_relu": fuse_add_relu,
    "add": fuse_add,
    "mul": fuse_mul,
    "cross_attention": fuse_cross_attention,
    "none": fuse_none,
}


def phi_absent(name: str, T: torch.Tensor) -> Optional[torch.Tensor]:
    """phi(0, T) in closed form, for a call where every position is absent (no pivot, or a decoding
    step after the fused prefill); None means "no update" (``mul``). Saves the zero S, the mask and
    the fusion's ops on every generated token; tests check it against the fusion functions."""
    if name == "add_relu":
        return torch.relu(T)
    if name == "mul":
        return None
    if name in ("add", "cross_attention", "none"):  # cross_attention: an absent query attends nothing
        return T
    return get_fusion(name)(torch.zeros_like(T), T, torch.zeros(T.shape[:2], dtype=torch.bool, device=T.device), None)


# Fusions with learned parameters of their own: name -> factory(r) -> nn.Module.
FUSION_PARAMS: dict[str, Callable[[int], nn.Module]] = {"cross_attention": BottleneckCrossAttention}


def get_fusion(name: str) -> FusionFn:
    try:
        return FUSIONS[name]
    except KeyError:
        from flare_cli.errors import ConfigError

        raise ConfigError(f"unknown fusion {name!r}; choose one of: {', '.join(FUSIONS)}") from None


__all__ = ["FUSIONS", "FUSION_PARAMS", "BottleneckCrossAttention", "get_fusion", "phi_absent"]

"""Fusion functions phi(S, T) of the FLARE bottleneck.

For a fused projection, S = A h (the pivot's state through the shared LoRA down-projection) and
T = A u (the target input through it), both (batch, seq, r). The adapter adds s * B phi(S, T).

``present`` (batch, seq) marks target positions that have an aligned pivot token. Elsewhere the
pivot is absent and S is zero there (callers zero it; functions here may rely on it), so every
function reduces to phi(0, T) at absent positions:

    add_relu        relu(S) + relu(T)      (default; best in the paper's ablation)
    add             S + T
    mul             S * T                  (absent -> 0: no update at all)
    cross_attention T + CA(T, S)           (CA: causal, masked bottleneck attention; absent -> T)
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

    Query t may attend pivot position j only if j <= t (causal over the target: with aligned
    sequences j is also the target position the pivot token sits at) and j is present. Rows
    with no key to attend (absent positions, or before the first pivot token) get zero.
    """

    def __init__(self, r: int):
        super().__init__()
        self.q = nn.Linear(r, r, bias=False)
        self.k = nn.Linear(r, r, bias=False)
        self.v = nn.Linear(r, r, bias=False)
        self.o = nn.Linear(r, r, bias=False)
        for lin in (self.q, self.k, self.v):
            nn.init.eye_(lin.weight)  # start as plain attention over the bottleneck states
        nn.init.normal_(self.o.weight, std=1.0 / math.sqrt(r))

    def forward(self, S: torch.Tensor, T: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(T), self.k(S), self.v(S)  # (B, L, r) each
        L = T.shape[1]
        causal = torch.ones(L, L, dtype=torch.bool, device=T.device).tril()  # (Lq, Lk)
        allowed = causal[None] & present[:, None, :]  # (B, Lq, Lk)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, Lq, Lk)
        scores = scores.masked_fill(~allowed, float("-inf"))
        has_key = allowed.any(-1, keepdim=True)  # (B, Lq, 1)
        weights = torch.softmax(scores.masked_fill(~has_key, 0.0), dim=-1) * has_key
        return self.o(weights @ v)


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
    if name in ("add", "cross_attention", "none"):  # cross_attention: no key to attend, o(0) = 0
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

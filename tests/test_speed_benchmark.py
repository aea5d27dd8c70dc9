"""The measuring instruments of benchmarks/speed.py: the CPU peak-memory tracker and the FLOP
count, checked on computations whose figures are known by hand (the benchmark's memory and
FLOP ratios in docs/performance.md rest on them)."""

from __future__ import annotations

import pytest
import torch
from benchmark_scripts import load_benchmark

MiB = 2**20


@pytest.fixture(scope="module")
def speed():
    return load_benchmark("speed")


def test_peak_tracker_counts_live_bytes_forward_and_backward(speed):
    n = 512  # one n x n float32 matrix = 1 MiB
    x = torch.randn(n, n, requires_grad=True)
    w = torch.randn(n, n)
    with speed.PeakTracker(torch, [x, w]) as tracker:
        assert tracker.peak == 2 * MiB  # the pre-existing tensors start the count
        y = (x @ w).relu()  # x @ w dies once relu has its output; relu keeps its output for backward
        z = y @ w
        z.sum().backward()
    # alive at the peak: x, w, y, z, then in backward grad_y and grad_pre (threshold_backward);
    # grad_y is dead by the time x.grad is written: 6 matrices, plus the 4-byte scalars of sum's
    # backward (the loss and its gradient)
    assert tracker.peak == 6 * MiB + 8
    del y, z
    assert x.grad is not None


def test_peak_tracker_sees_frees_of_preexisting_tensors(speed):
    big = torch.ones(256, 1024)  # 1 MiB
    holder = [big]
    del big
    with speed.PeakTracker(torch, holder) as tracker:
        holder.clear()  # freed inside the block: the next allocation reuses its room in the count
        fresh = torch.zeros(256, 1024) + 1
    assert tracker.peak == 2 * MiB  # zeros then + 1: two live MiB at once, the freed one not added
    assert tracker.now == MiB and fresh.sum() == 256 * 1024


def test_counted_flops_match_the_analytic_formula_on_a_tiny_llama(speed):
    from flare_cli.flare import FlareConfig, get_flare_model

    args = speed.parse_args(["--preset", "tiny", "--layers", "2", "--vocab", "1000", "--batch", "1",
                             "--prompt-len", "16", "--answer-len", "4"])
    model, config = speed.build_model(args, torch)
    fm = get_flare_model(model, FlareConfig(method="lora", r=4, lora_alpha=8))
    plain, _, _ = speed.make_batches(args, torch, config.vocab_size)
    params = [p for p in fm.parameters() if p.requires_grad]
    counted = speed.counted_flops(torch, fm, torch.optim.AdamW(params), params, plain)
    seq, r, layers = 16 + 4 + 1, 4, config.num_hidden_layers
    d = config.hidden_size
    kv = config.num_key_value_heads * (d // config.num_attention_heads)
    analytic = speed.step_flops(config, 1, seq)
    attention = 2 * seq * seq * d * layers * 3  # in the formula; the counter does not see CPU flash attention
    # the formula's one simplification: layer 0's input (the embedding) needs no gradient, so the
    # backward skips the input gradients of layer 0's q, k and v projections
    layer0_qkv = 2 * seq * (d * d + 2 * d * kv)
    # LoRA on q (d -> r -> d) and v (d -> r -> kv): forward, then weight and input gradients in
    # backward, except A's input gradient in layer 0 (same reason)
    lora_forward = 2 * seq * r * (d + d + d + kv)
    lora = 3 * lora_forward * layers - 2 * seq * r * d * 2
    assert counted == analytic - attention - layer0_qkv + lora

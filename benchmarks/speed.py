"""FLARE against plain LoRA and input-level fusion: step time, memory and eval time, side by side.

One run builds a Llama-shaped model with random weights (nothing downloaded), wraps one copy with
plain LoRA and one with FLARE (same seed: identical base weights), and times, interleaving the
methods (A B C A B C ...) so that load from other processes hits all of them alike:

  * a training step (forward + backward + clip + AdamW step) of LoRA, FLARE and input-level fusion
    (plain LoRA on the pivot prompt and the target prompt concatenated) on the same batch;
  * the same with gradient checkpointing on;
  * greedy generation of exactly --new-tokens tokens (LoRA vs FLARE's fused prefill; this folds the
    former benchmarks/eval_speed.py).

and prints medians, ratios against the targets of issue #9, tokens/s and (on CUDA) model FLOP
utilisation. Per step it also counts the FLOPs really executed (torch.utils.flop_counter) and
measures peak memory: weights, optimizer state and activations, torch.cuda.max_memory_allocated on
CUDA and a dispatch-mode tracker of live tensor bytes elsewhere (PeakTracker); plus the activation
memory alone, i.e. the bytes of distinct tensor storages saved for backward (weights excluded) and
the pivot states FLARE keeps alive for the step. docs/performance.md has the figures.

    python benchmarks/speed.py                                   # CPU, preset small
    python benchmarks/speed.py --device cuda --dtype bf16 --preset llama-3.1-8b --batch 8
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

PRESETS = {
    # hidden, intermediate, layers, heads, kv heads, vocab, rope theta
    "tiny": (256, 688, 4, 4, 2, 32000, 10000.0),
    "small": (512, 1376, 8, 8, 2, 32000, 10000.0),
    "llama-3.2-1b": (2048, 8192, 16, 32, 8, 128256, 500000.0),
    "llama-3.1-8b": (4096, 14336, 32, 32, 8, 128256, 500000.0),
}
# dense bf16 peak of common accelerators, TFLOP/s (for MFU; override with --peak-tflops)
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "RTX 4090": 165.0}
# The memory target is about peak memory (weights and optimizer state included, as a GPU's
# max_memory_allocated counts it); the activation-only ratio is the stricter figure, shown against it.
TARGETS = {"flare/lora step": 1.30, "flare/lora peak memory": 1.10, "flare/lora activation memory": 1.10,
           "flare/input-fusion step": 0.80, "flare/lora eval": 1.25}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--hidden", type=int, help="override the preset's hidden size")
    parser.add_argument("--layers", type=int, help="override the preset's layer count")
    parser.add_argument("--vocab", type=int, help="override the preset's vocabulary size")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--batch", type=int, default=2, help="micro-batch (sequences per step)")
    parser.add_argument("--prompt-len", type=int, default=256, help="target and pivot prompt tokens")
    parser.add_argument("--answer-len", type=int, default=16, help="answer tokens (training)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per method (median)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--targets", default="q_proj,v_proj", help="LoRA (and fused) modules")
    parser.add_argument("--fused-layers", help="FLARE's fused layers, comma-separated (default: all)")
    parser.add_argument("--checkpointing", choices=["off", "on", "both"], default="both")
    parser.add_argument("--new-tokens", type=int, default=32, help="generated tokens per prompt (eval)")
    parser.add_argument("--eval-batch", type=int, default=8)
    parser.add_argument("--eval-repeats", type=int, default=3)
    parser.add_argument("--no-eval", action="store_true")
    parser.add_argument("--no-input-fusion", action="store_true")
    parser.add_argument("--peak-tflops", type=float, help="accelerator peak for MFU (default: by device name)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clock", choices=["auto", "wall", "cpu"], default="auto",
                        help="what a step's time is: auto = wall on CUDA, process CPU time / threads on CPU "
                             "(robust to other jobs; use wall on a quiet machine)")
    return parser.parse_args(argv)


def build_model(args, torch):
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, inter, layers, heads, kv, vocab, theta = PRESETS[args.preset]
    hidden, layers, vocab = args.hidden or hidden, args.layers or layers, args.vocab or vocab
    if args.hidden:
        inter = int(round(hidden * 8 / 3 / 64)) * 64
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=8192, rope_theta=theta,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    torch.manual_seed(args.seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(args.device):  # built in place: an 8B model never passes through host memory
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    return model.train(), config


def make_batches(args, torch, vocab):
    """Same rows for every method: target prompt + answer, the pivot prompt, and the input-fusion row
    (pivot prompt then target prompt, then the answer: about twice the prompt length)."""
    from flare_cli.encode import Example, collate

    g = torch.Generator().manual_seed(args.seed + 1)

    def ids(n):
        return torch.randint(3, vocab, (n,), generator=g).tolist()

    rows = [(ids(args.prompt_len), ids(args.answer_len) + [2], ids(args.prompt_len)) for _ in range(args.batch)]
    target = collate([Example(p + a, len(p), piv) for p, a, piv in rows], pad_id=0)
    plain = {k: v for k, v in target.items() if not k.startswith("pivot_")}
    fusion = collate([Example(piv + p + a, len(piv) + len(p)) for p, a, piv in rows], pad_id=0)
    move = lambda batch: {k: v.to(args.device) for k, v in batch.items()}  # noqa: E731
    return move(plain), move(target), move(fusion)


class Clock:
    """Seconds of one call, both ways: ``wall`` (between synchronisations on CUDA) and ``cpu``, this
    process's CPU time (all its threads) divided by its thread count, i.e. wall time as if it had its
    cores to itself. ``seconds`` is the one --clock chose: on a machine shared with other jobs wall
    time mostly measures their load; on a quiet one CPU time under-counts sections where a thread
    waits (single-threaded ops), so wall time is the truer figure there."""

    def __init__(self, torch, device, kind="wall"):
        self.torch, self.cuda, self.kind = torch, str(device).startswith("cuda"), kind

    def __enter__(self):
        if self.cuda:
            self.torch.cuda.synchronize()
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.torch.cuda.synchronize()
        self.wall_s = time.perf_counter() - self.wall
        self.cpu_s = (time.process_time() - self.cpu) / self.torch.get_num_threads()
        self.seconds = self.wall_s if self.kind == "wall" else self.cpu_s


def train_step(torch, fm, optimizer, params, batch):
    loss = fm(**batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def activation_bytes(torch, fm, batch) -> int:
    """Bytes of distinct storages saved for backward (weights excluded) + FLARE's pivot states."""
    weights = {p.untyped_storage().data_ptr() for p in fm.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights and storage.device.type != "meta":
            seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fm(**batch).loss
    session = fm._fused[0].flare_session if getattr(fm, "_fused", None) else None
    if session is not None and session.states:
        for h in list(session.states.values()) + [session.present]:
            storage = h.untyped_storage()
            seen.setdefault(storage.data_ptr(), storage.nbytes())
    loss.backward()
    fm.zero_grad(set_to_none=True)
    return sum(seen.values())


class PeakTracker:
    """Peak bytes of live tensor storages over a block, on any device: the CPU stand-in for
    torch.cuda.max_memory_allocated (torch keeps no allocation peak on CPU).

    A TorchDispatchMode sees every op, autograd's backward and checkpoint recomputation included;
    after each op it adds the op's new output storages and drops the ones that have died (weak
    references). ``preexisting`` tensors (weights, optimizer state, the batch, last step's pivot
    states) start the count, so their frees during the block are seen too. Scratch space inside
    one kernel is not seen; it is the same for every method."""

    def __init__(self, torch, preexisting):
        from torch.multiprocessing.reductions import StorageWeakRef
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        tracker, live = self, {}
        self.now = self.peak = 0

        def add(tensor) -> None:
            storage = tensor.untyped_storage()
            if storage.device.type != "meta" and storage._cdata not in live:
                live[storage._cdata] = (StorageWeakRef(storage), storage.nbytes())
                tracker.now += storage.nbytes()

        def sweep() -> None:
            for key in [k for k, (ref, _) in live.items() if ref.expired()]:
                tracker.now -= live.pop(key)[1]

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                sweep()
                for t in tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor):
                        add(t)
                tracker.peak = max(tracker.peak, tracker.now)
                return out

        for tensor in preexisting:
            add(tensor)
        self.peak = self.now
        self.mode, self._sweep = Mode(), sweep

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)
        self._sweep()  # ``now``: what is still alive at the end


def live_tensors(fm, optimizer, batch) -> list:
    """What is allocated before a training step starts: weights, buffers, optimizer state, the
    batch, and (FLARE) the pivot states the previous step left attached."""
    out = list(fm.parameters()) + list(fm.buffers()) + list(batch.values())
    out += [t for state in optimizer.state.values() for t in state.values() if hasattr(t, "untyped_storage")]
    for module in getattr(fm, "_fused", [])[:1]:
        session = module.flare_session
        if session is not None and session.states:
            out += list(session.states.values()) + [session.present]
    return out


def cpu_peak(torch, fm, optimizer, params, batch) -> int:
    with PeakTracker(torch, live_tensors(fm, optimizer, batch)) as tracker:
        train_step(torch, fm, optimizer, params, batch)
    return tracker.peak


def counted_flops(torch, fm, optimizer, params, batch) -> int:
    """FLOPs one training step really executes, counted op by op (torch.utils.flop_counter: matmuls,
    and attention where the counter knows the kernel; on CPU it does not know the flash kernel).
    Deterministic: it shows whether a method does more work than its analytic cost (a recomputed
    pivot pass would show here), independently of how noisy the clock is."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        train_step(torch, fm, optimizer, params, batch)
    return counter.get_total_flops()


def cuda_peak(torch, fm, optimizer, params, batch) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    train_step(torch, fm, optimizer, params, batch)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def step_flops(config, batch, seq, pivot_seq=0, pivot_layers=0, recompute=False) -> float:
    """Model FLOPs of one LoRA-style step with a frozen base: forward (2 per weight per token, plus
    causal attention) and the backward's input gradients (the same again; no weight gradients for
    frozen weights, attention backward counted twice); FLARE adds the no-grad pivot forward through
    the layers it needs (no LM head). ``recompute``: gradient checkpointing reruns every decoder
    layer's forward (not the LM head) in backward. LoRA's own r-dim matmuls are negligible and left
    out."""
    d, i, kv = config.hidden_size, config.intermediate_size, config.num_key_value_heads
    head = d // config.num_attention_heads
    per_layer = d * d * 2 + 2 * d * kv * head + 3 * d * i
    L = config.num_hidden_layers

    def forward(tokens, length, layers, lm_head):
        linear = 2 * tokens * (per_layer * layers + (d * config.vocab_size if lm_head else 0))
        attention = 2 * tokens * length * d * layers  # QK^T and AV, causal (half of 2 x 2 x L x d)
        return linear, attention

    lin, att = forward(batch * seq, seq, L, True)
    total = lin + att + lin + 2 * att
    if recompute:
        total += sum(forward(batch * seq, seq, L, False))
    if pivot_seq:
        p_lin, p_att = forward(batch * pivot_seq, pivot_seq, pivot_layers, False)
        total += p_lin + p_att
    return float(total)


def set_checkpointing(fm, on: bool) -> None:
    """Non-reentrant activation checkpointing of every decoder layer, as `flare train` does."""
    if on:
        fm.gradient_checkpointing_enable()
        return
    lm = fm.base_model
    disable = getattr(lm, "activation_checkpointing_disable", None) or lm.gradient_checkpointing_disable
    disable()


def median_of(times):
    return statistics.median(times) if times else float("nan")


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    from flare_cli.flare import FlareConfig, get_flare_model

    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    lora_lm, config = build_model(args, torch)
    flare_lm, _ = build_model(args, torch)  # same seed: identical base weights
    lora = get_flare_model(lora_lm, FlareConfig(method="lora", r=args.r, lora_alpha=2 * args.r,
                                                target_modules=targets, fused_modules=targets))
    fused_layers = [int(x) for x in args.fused_layers.split(",")] if args.fused_layers else None
    flare = get_flare_model(flare_lm, FlareConfig(method="flare", r=args.r, lora_alpha=2 * args.r,
                                                  target_modules=targets, fused_modules=targets,
                                                  fused_layers=fused_layers))
    plain, fused, fusion = make_batches(args, torch, config.vocab_size)
    models = {"lora": lora, "flare": flare}
    optimizers = {}
    params = {}
    for name, fm in models.items():
        params[name] = [p for p in fm.parameters() if p.requires_grad]
        optimizers[name] = torch.optim.AdamW(params[name], lr=1e-5)
        fm.train()
    runs = {"lora": ("lora", plain), "flare": ("flare", fused)}
    if not args.no_input_fusion:
        runs["input-fusion"] = ("lora", fusion)  # plain LoRA on the concatenated sequence

    cuda = str(args.device).startswith("cuda")
    if args.clock == "auto":
        args.clock = "wall" if cuda else "cpu"
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in device_name), None)
    print(f"device={device_name} dtype={args.dtype} preset={args.preset} hidden={config.hidden_size} "
          f"layers={config.num_hidden_layers} vocab={config.vocab_size} batch={args.batch} "
          f"prompt={args.prompt_len} answer={args.answer_len} r={args.r} targets={','.join(targets)} "
          f"threads={torch.get_num_threads()} steps={args.steps} (medians; methods interleaved; "
          f"{'wall' if args.clock == 'wall' else 'process CPU time / threads'}; other clock in brackets) "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"fused layers={len(flare.fused_layers)} of {config.num_hidden_layers}; pivot pass runs "
          f"{max(flare.fused_layers) if flare.fused_layers else 0} layers, no LM head")

    seq = args.prompt_len + args.answer_len + 1
    lora_flops = step_flops(config, args.batch, seq)
    flare_flops = step_flops(config, args.batch, seq, args.prompt_len, max(flare.fused_layers or [0]))
    fusion_flops = step_flops(config, args.batch, seq + args.prompt_len)
    print(f"analytic model FLOPs per step (no checkpointing): flare/lora {flare_flops / lora_flops:.3f}, "
          f"flare/input-fusion {flare_flops / fusion_flops:.3f}")
    ck = {name: step_flops(config, args.batch, n, p, max(flare.fused_layers or [0]), recompute=True)
          for name, n, p in (("lora", seq, 0), ("flare", seq, args.prompt_len), ("fusion", seq + args.prompt_len, 0))}
    print(f"analytic model FLOPs per step (checkpointing):    flare/lora {ck['flare'] / ck['lora']:.3f}, "
          f"flare/input-fusion {ck['flare'] / ck['fusion']:.3f}")
    ratios: dict[str, float] = {}
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.checkpointing]
    for checkpointing in modes:
        for fm in models.values():
            set_checkpointing(fm, checkpointing)
            fm.train()
        times: dict[str, list[float]] = {name: [] for name in runs}
        other: dict[str, list[float]] = {name: [] for name in runs}  # the other clock, for comparison
        for i in range(args.warmup + args.steps):
            for name, (model_name, batch) in runs.items():
                fm = models[model_name]
                with Clock(torch, args.device, args.clock) as clock:
                    train_step(torch, fm, optimizers[model_name], params[model_name], batch)
                if i >= args.warmup:
                    times[name].append(clock.seconds)
                    other[name].append(clock.cpu_s if args.clock == "wall" else clock.wall_s)
        act = {name: activation_bytes(torch, models[m], batch) for name, (m, batch) in runs.items()}
        flops_done = {name: counted_flops(torch, models[m], optimizers[m], params[m], batch) for name, (m, batch) in runs.items()}
        measure_peak = cuda_peak if cuda else cpu_peak
        peaks = {name: measure_peak(torch, models[m], optimizers[m], params[m], batch) for name, (m, batch) in runs.items()}
        tag = "gradient checkpointing ON" if checkpointing else "gradient checkpointing off"
        print(f"\n== training step, {tag}")
        print(f"{'method':>13} {'median s':>9} {'(other)':>9} {'tokens/s':>9} {'GFLOP':>8} {'act MiB':>9} {'peak MiB':>9}"
              + (f" {'MFU':>6}" if cuda else ""))
        for name, (_, batch) in runs.items():
            med = median_of(times[name])
            tokens = int(batch["attention_mask"].sum())
            line = (f"{name:>13} {med:9.4f} {'(' + format(median_of(other[name]), '.4f') + ')':>9} {tokens / med:9.0f} "
                    f"{flops_done[name] / 1e9:8.2f} "
                    f"{act[name] / 2**20:9.1f} {peaks[name] / 2**20:9.1f}")
            if cuda:
                seq = batch["input_ids"].shape[1]
                flops = step_flops(config, args.batch, seq,
                                   args.prompt_len if name == "flare" else 0, max(flare.fused_layers or [0]))
                mfu = f"{flops / med / (peak * 1e12):6.1%}" if peak else "   n/a"
                line += f" {mfu}"
            print(line)
        suffix = " (checkpointing)" if checkpointing else ""
        ratios[f"flare/lora step{suffix}"] = median_of(times["flare"]) / median_of(times["lora"])
        ratios[f"  same, other clock{suffix}"] = median_of(other["flare"]) / median_of(other["lora"])
        ratios[f"flare/lora counted FLOPs{suffix}"] = flops_done["flare"] / flops_done["lora"]
        ratios[f"flare/lora peak memory{suffix}"] = peaks["flare"] / peaks["lora"]
        ratios[f"flare/lora activation memory{suffix}"] = act["flare"] / act["lora"]
        if "input-fusion" in runs:
            ratios[f"flare/input-fusion step{suffix}"] = median_of(times["flare"]) / median_of(times["input-fusion"])
            ratios[f"flare/input-fusion counted FLOPs{suffix}"] = flops_done["flare"] / flops_done["input-fusion"]
            ratios[f"flare/input-fusion peak memory{suffix}"] = peaks["flare"] / peaks["input-fusion"]

    for fm in models.values():
        set_checkpointing(fm, False)
    if not args.no_eval:
        ratios["flare/lora eval"] = eval_ratio(args, torch, models, config)

    print("\n== ratios (target)")
    for key, value in ratios.items():
        base = key.replace(" (checkpointing)", "")
        target = TARGETS.get(base)
        verdict = "" if target is None else f"(<= {target:.2f}: {'met' if value <= target else 'MISSED'})"
        print(f"{key:>42}  {value:6.3f}  {verdict}")


def eval_ratio(args, torch, models, config) -> float:
    """Greedy generation of exactly --new-tokens tokens: FLARE (pivot prefill + fused prompt) / LoRA."""
    g = torch.Generator().manual_seed(args.seed + 2)
    shape = (args.eval_batch, args.prompt_len)
    ids = torch.randint(3, config.vocab_size, shape, generator=g).to(args.device)
    pivot = torch.randint(3, config.vocab_size, shape, generator=g).to(args.device)
    mask = torch.ones_like(ids)
    common = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)
    runs = {
        "lora": lambda: models["lora"].generate(ids, mask, **common),
        "flare": lambda: models["flare"].generate(ids, mask, pivot_input_ids=pivot, pivot_attention_mask=mask, **common),
    }
    for fm in models.values():
        fm.eval()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(1 + args.eval_repeats):
        for name, fn in runs.items():
            with Clock(torch, args.device, args.clock) as clock:
                out = fn()
            assert out.shape[1] == args.prompt_len + args.new_tokens, out.shape
            if i:
                times[name].append(clock.seconds)
    print(f"\n== eval: greedy, {args.eval_batch} prompts x {args.prompt_len} tokens, {args.new_tokens} new tokens")
    for name in runs:
        med = median_of(times[name])
        print(f"{name:>13} {med:9.4f} s  {args.eval_batch * args.new_tokens / med:9.1f} new tokens/s")
    return median_of(times["flare"]) / median_of(times["lora"])


if __name__ == "__main__":
    main()

"""Length-sorted token-budget batching vs naive fixed-size batching, on mixed-length input (CPU, tiny MT).

Both runs use the same engine (`flare_cli.translate.HFTranslator`), greedy decoding and the same
texts; the script checks the outputs are identical and prints throughput side by side.

    python benchmarks/translate_batching.py [--rows 256] [--batch-size 16] [--batch-tokens 4096]

The default token budget (4096) is below the naive run's largest padded batch (printed), so the
sorted run never needs more memory than the naive one.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fixtures_mt import CORPUS, build_tiny_nllb  # noqa: E402
from flare_cli import translate as tr  # noqa: E402
from flare_cli.languages import resolve  # noqa: E402


def mixed_texts(n: int, seed: int) -> list[str]:
    """Mostly short texts with some long ones, like QA questions mixed with contexts."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        k = rng.choice([1, 1, 1, 2, 2, 3, 8, 12])
        texts.append(" ".join(rng.choice(CORPUS) for _ in range(k)))
    return texts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16, help="naive batching: rows per batch, input order")
    ap.add_argument("--batch-tokens", type=int, default=4096, help="sorted batching: token budget per batch")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    model_dir = build_tiny_nllb(Path(tempfile.mkdtemp()))
    engine = tr.HFTranslator(str(model_dir), device="cpu")
    src, tgt = resolve("en"), resolve("sw")
    texts = mixed_texts(args.rows, seed=0)
    engine.translate_batch(texts[:4], src, tgt, 1, 4)  # warm-up

    def naive():
        out = []
        for i in range(0, len(texts), args.batch_size):
            out += engine.translate_batch(texts[i:i + args.batch_size], src, tgt, 1, args.max_new_tokens)[0]
        return out

    def sorted_budget():
        lengths = dict(zip(texts, engine.count_tokens(texts)))
        ordered = sorted(set(texts), key=lambda t: (-lengths[t], t))
        done = {}
        for batch in tr.batch_by_tokens(ordered, lengths, args.batch_tokens):
            done.update(zip(batch, engine.translate_batch(batch, src, tgt, 1, args.max_new_tokens)[0]))
        return [done[t] for t in texts]

    results = {}
    for name, fn in (("naive fixed-size", naive), ("length-sorted", sorted_budget)):
        start = time.perf_counter()
        results[name] = (fn(), time.perf_counter() - start)
    (a, ta), (b, tb) = results.values()
    lengths = engine.count_tokens(texts)
    print(f"rows={len(texts)} source tokens: min={min(lengths)} max={max(lengths)} mean={sum(lengths) / len(lengths):.1f}")
    print(f"{'naive fixed-size':>18} (batch {args.batch_size}): {ta:7.2f}s  {len(texts) / ta:7.1f} rows/s")
    print(f"{'length-sorted':>18} ({args.batch_tokens} tok):  {tb:7.2f}s  {len(texts) / tb:7.1f} rows/s")
    naive_peak = max(max(lengths[i:i + args.batch_size]) * len(lengths[i:i + args.batch_size])
                     for i in range(0, len(lengths), args.batch_size))
    print(f"largest padded batch: naive {naive_peak} tokens, sorted <= {args.batch_tokens} tokens")
    print(f"speed-up: {ta / tb:.2f}x   identical outputs: {a == b}")


if __name__ == "__main__":
    main()

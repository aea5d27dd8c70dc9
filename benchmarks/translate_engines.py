"""CTranslate2 beside transformers on the toy world's MT model: throughput and agreement, one run.

    python benchmarks/translate_engines.py [--texts 1000] [--threads 1] [--repeats 3] [--mt-model DIR]

Translates the toy world's target-language test inputs (QA contexts and questions) into English,
greedy, with flare translate's own batching (length-sorted, `--batch-tokens` budget), through each
engine's `translate_batch`: transformers float32 (the reference), ctranslate2 float32 and
ctranslate2 int8. Each engine is warmed up, then the whole batch loop is timed `--repeats` times,
the engines alternating; the median is reported. Agreement is the share of texts whose translation
equals the transformers one exactly.

Without `--mt-model`, the toy world's MT model is used (`flare_cli.toyworld`, full size, seed 0:
built, or copied from the package, on first use). The figures in docs/performance.md were measured
with the earlier near-perfect toy MT (chrF ~97); the shipped one is deliberately worse.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flare_cli import translate as tr  # noqa: E402
from flare_cli.languages import resolve  # noqa: E402
from flare_cli.mt_engines import CT2Translator, HFTranslator  # noqa: E402


def toy_mt_model() -> Path:
    """The full toy world's MT model folder (the world is built, or copied from the package, on first use)."""
    from flare_cli import toyworld

    return toyworld.build(seed=0, size="full").mt_dir


def toy_texts(n: int) -> list[str]:
    """Target-language QA test inputs (contexts and questions) of the full toy world, seed 0."""
    from flare_cli.toyworld.build import SIZES, task_rows
    from flare_cli.toyworld.language import Lexicon, Renderer

    rows = task_rows("qa", 0, SIZES["full"].data, Renderer(Lexicon.generate(0)))["test.qtw.jsonl"]
    texts = [t for row in rows for t in (row["context"], row["question"])]
    return list(dict.fromkeys(texts))[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mt-model", help="an NLLB/M2M100 folder (default: the toy world's MT model)")
    ap.add_argument("--texts", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--num-beams", type=int, default=1)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from flare_cli import toyworld

    model_dir = Path(args.mt_model) if args.mt_model else toy_mt_model()
    texts = toy_texts(args.texts)
    src, tgt = resolve(toyworld.TARGET_LANG), resolve("en")

    engines = {"transformers float32": HFTranslator(str(model_dir), device="cpu")}
    started = time.perf_counter()
    engines["ctranslate2 float32"] = CT2Translator(str(model_dir), device="cpu", compute_type="float32", threads=args.threads)
    engines["ctranslate2 float32"].translator  # converts once (cached under $FLARE_HOME/ct2) and loads
    convert_s = time.perf_counter() - started
    engines["ctranslate2 int8"] = CT2Translator(str(model_dir), device="cpu", compute_type="int8", threads=args.threads)

    reference = engines["transformers float32"]
    lengths = dict(zip(texts, reference.count_tokens(texts)))
    ordered = sorted(texts, key=lambda s: (-lengths[s], s))  # as flare translate orders them
    batches = list(tr.batch_by_tokens(ordered, lengths, args.batch_tokens))

    def run(engine) -> tuple[dict[str, str], int, float]:
        out, tokens = {}, 0
        start = time.perf_counter()
        for batch in batches:
            translations, generated = engine.translate_batch(batch, src, tgt, args.num_beams, args.max_new_tokens)
            out.update(zip(batch, translations))
            tokens += generated
        return out, tokens, time.perf_counter() - start

    for engine in engines.values():  # warm-up: load the model, first-call allocations
        engine.translate_batch(ordered[-8:], src, tgt, args.num_beams, args.max_new_tokens)
    seconds: dict[str, list[float]] = {name: [] for name in engines}
    outputs: dict[str, tuple[dict[str, str], int]] = {}
    for _ in range(args.repeats):  # alternate engines so load on the shared machine hits all alike
        for name, engine in engines.items():
            out, tokens, secs = run(engine)
            seconds[name].append(secs)
            outputs[name] = (out, tokens)

    ref_out, _ = outputs["transformers float32"]
    ref_s = statistics.median(seconds["transformers float32"])
    print(f"MT model: {model_dir} ({sum(p.numel() for p in reference.model.parameters()) / 1e6:.1f}M parameters)")
    print(f"{len(texts)} texts {src.flores} -> {tgt.flores}, {len(batches)} batches (--batch-tokens {args.batch_tokens}), "
          f"beams {args.num_beams}, {args.threads} thread(s), median of {args.repeats}; ctranslate2 conversion + load "
          f"{convert_s:.1f}s (once)")
    print(f"{'engine':<22}{'seconds':>9}{'texts/s':>10}{'tokens/s':>10}{'speed-up':>10}{'agreement':>11}")
    for name in engines:
        out, tokens = outputs[name]
        secs = statistics.median(seconds[name])
        agree = sum(out[t] == ref_out[t] for t in texts) / len(texts)
        print(f"{name:<22}{secs:>9.2f}{len(texts) / secs:>10.1f}{tokens / secs:>10.0f}{ref_s / secs:>9.2f}x{agree:>10.1%}")


if __name__ == "__main__":
    main()

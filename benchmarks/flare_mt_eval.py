"""FLARE-MT eval time against FLARE and plain LoRA on the same target-language inputs.

What each method costs at inference, on top of greedy generation with the adapted LLM:
- lora:              nothing;
- flare (pivots given): one no-grad LLM prefill over the English pivot (pivots precomputed, e.g.
                     by `flare translate --direction test`);
- flare (+ MT):      the same, plus translating the inputs to English first (MT decoding), which
                     is what FLARE needs for any input that has no pivot yet;
- flare-mt:          one no-grad pass of the MT *encoder* over the target prompt: no MT decoding,
                     no English LLM pass.

Every run decodes exactly --new-tokens tokens (newline tokens banned, EOS suppressed) and MT
decoding exactly --mt-new-tokens, so answers of different lengths do not skew the comparison.
Models are random (speed only); runs alternate so that other load on the machine hits all alike.

    OMP_NUM_THREADS=1 python benchmarks/flare_mt_eval.py [--prompts 64] [--batch-size 16] [--new-tokens 16]
        [--hidden 256] [--layers 4] [--mt-hidden 128] [--mt-layers 2] [--mt-new-tokens 16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval_speed import build  # noqa: E402
from fixtures_mt import build_tiny_nllb  # noqa: E402


def build_mt(root: Path, hidden: int, layers: int) -> Path:
    """The tiny NLLB tokenizer with an M2M100 of the asked size (random weights)."""
    import torch
    from transformers import AutoTokenizer, M2M100Config, M2M100ForConditionalGeneration

    tiny = build_tiny_nllb(root)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    torch.manual_seed(0)
    config = M2M100Config(
        vocab_size=len(tokenizer), d_model=hidden, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=4 * hidden, decoder_ffn_dim=4 * hidden,
        max_position_embeddings=1024, scale_embedding=True, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,
    )
    out = root / "mt"
    M2M100ForConditionalGeneration(config).eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--mt-hidden", type=int, default=128)
    parser.add_argument("--mt-layers", type=int, default=2)
    parser.add_argument("--mt-new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForSeq2SeqLM

    from flare_cli.evaluate import generate_answers
    from flare_cli.flare import FlareConfig, get_flare_model, load_mt_encoder

    tmp = Path(tempfile.mkdtemp(prefix="flare_mt_bench."))
    mt_dir = build_mt(tmp, args.mt_hidden, args.mt_layers)
    models = {}
    tokenizer = None
    for name in ("lora", "flare", "flare-mt"):
        lm, tokenizer = build(args.hidden, args.layers)  # same seed: identical base weights
        lm.generation_config.suppress_tokens = [i for i in range(len(tokenizer)) if "\n" in tokenizer.decode([i])]
        lm.generation_config.min_new_tokens = args.new_tokens
        kw = {"mt_encoder": load_mt_encoder(str(mt_dir))} if name == "flare-mt" else {}
        models[name] = get_flare_model(lm, FlareConfig(method=name, r=8, lora_alpha=16), **kw).eval()
    mt_model = AutoModelForSeq2SeqLM.from_pretrained(mt_dir).eval()
    mt_tok = models["flare-mt"].mt_encoder.tokenizer

    contexts = [f"Dodoma ni mji mkuu wa Tanzania namba {i}." for i in range(args.prompts)]
    prompts = [f"Context: {c}\nQuestion: Mji mkuu ni upi?\nAnswer:" for c in contexts]
    pivots = [f"Context: Dodoma is the capital of Tanzania number {i}.\nQuestion: What is the capital?\nAnswer:"
              for i in range(args.prompts)]

    def translate(texts):  # translate-test of the inputs: what FLARE needs when no pivot is given
        out = []
        mt_tok.src_lang = "swh_Latn"
        for start in range(0, len(texts), args.batch_size):
            enc = mt_tok(texts[start : start + args.batch_size], return_tensors="pt", padding=True)
            with torch.inference_mode():
                ids = mt_model.generate(**enc, forced_bos_token_id=mt_tok.convert_tokens_to_ids("eng_Latn"),
                                        min_new_tokens=args.mt_new_tokens, max_new_tokens=args.mt_new_tokens,
                                        do_sample=False, num_beams=1)
            out += mt_tok.batch_decode(ids, skip_special_tokens=True)
        return out

    def flare_with_mt():
        english = translate(contexts)
        built = [f"Context: {e}\nQuestion: What is the capital?\nAnswer:" for e in english]
        return generate_answers(models["flare"], tokenizer, prompts, pivots=built, max_new_tokens=args.new_tokens,
                                batch_size=args.batch_size)

    gen = dict(max_new_tokens=args.new_tokens, batch_size=args.batch_size)
    runs = {
        "lora": lambda: generate_answers(models["lora"], tokenizer, prompts, **gen),
        "flare (pivots given)": lambda: generate_answers(models["flare"], tokenizer, prompts, pivots=pivots, **gen),
        "flare (+ MT decoding)": flare_with_mt,
        "flare-mt": lambda: generate_answers(models["flare-mt"], tokenizer, prompts, mt_lang="sw", **gen),
    }
    timings: dict[str, list[float]] = {name: [] for name in runs}
    for fn in runs.values():
        fn()  # warm-up
    for _ in range(args.repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            timings[name].append(time.perf_counter() - start)

    median = {name: statistics.median(t) for name, t in timings.items()}
    print(f"prompts={args.prompts} batch={args.batch_size} new_tokens={args.new_tokens} hidden={args.hidden} "
          f"layers={args.layers} mt_hidden={args.mt_hidden} mt_layers={args.mt_layers} "
          f"mt_new_tokens={args.mt_new_tokens} threads={torch.get_num_threads()} repeats={args.repeats}")
    print(f"| {'method':<22} | {'eval s (median)':>15} | {'x lora':>7} | {'x flare (pivots given)':>22} |")
    print(f"|{'-' * 24}|{'-' * 16}:|{'-' * 8}:|{'-' * 23}:|")
    for name, seconds in median.items():
        print(f"| {name:<22} | {seconds:15.3f} | {seconds / median['lora']:7.3f} | "
              f"{seconds / median['flare (pivots given)']:22.3f} |")


if __name__ == "__main__":
    main()

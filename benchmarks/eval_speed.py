"""FLARE eval time over plain-LoRA eval time on the same inputs (target: at most 1.25x).

FLARE should cost one extra no-grad prefill over the pivot batch, not a second generation. Both
runs decode exactly --new-tokens tokens (newline tokens banned, EOS suppressed) so that the
comparison is not skewed by answers of different lengths.

    python benchmarks/eval_speed.py [--prompts 64] [--batch-size 16] [--new-tokens 32] [--hidden 256]
"""

from __future__ import annotations

import argparse
import statistics
import time


def build(hidden: int, layers: int):
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = ["Context: Dodoma ni mji mkuu wa Tanzania. Question: Mji mkuu ni upi? Answer: Dodoma",
              "Context: Dodoma is the capital of Tanzania. Question: What is the capital? Answer: Dodoma"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=500, special_tokens=["<pad>", "<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                        bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)).eval()
    return model, tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from flare_cli.evaluate import generate_answers
    from flare_cli.flare import FlareConfig, get_flare_model

    lm_lora, tokenizer = build(args.hidden, args.layers)
    lm_flare, _ = build(args.hidden, args.layers)  # same seed: identical base weights
    for lm in (lm_lora, lm_flare):
        lm.generation_config.suppress_tokens = [i for i in range(len(tokenizer)) if "\n" in tokenizer.decode([i])]
        lm.generation_config.min_new_tokens = args.new_tokens
    prompts = [f"Context: Dodoma ni mji mkuu wa Tanzania namba {i}.\nQuestion: Mji mkuu ni upi?\nAnswer:"
               for i in range(args.prompts)]
    pivots = [f"Context: Dodoma is the capital of Tanzania number {i}.\nQuestion: What is the capital?\nAnswer:"
              for i in range(args.prompts)]
    lora = get_flare_model(lm_lora, FlareConfig(method="lora", r=8, lora_alpha=16)).eval()
    flare = get_flare_model(lm_flare, FlareConfig(method="flare", r=8, lora_alpha=16)).eval()
    runs = {
        "lora": lambda: generate_answers(lora, tokenizer, prompts, max_new_tokens=args.new_tokens,
                                         batch_size=args.batch_size),
        "flare": lambda: generate_answers(flare, tokenizer, prompts, pivots=pivots, max_new_tokens=args.new_tokens,
                                          batch_size=args.batch_size),
    }
    timings: dict[str, list[float]] = {name: [] for name in runs}
    for fn in runs.values():
        fn()  # warm-up
    # Alternate the two so that load from other processes on the machine hits both alike.
    for _ in range(args.repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            timings[name].append(time.perf_counter() - start)

    lora_s, flare_s = statistics.median(timings["lora"]), statistics.median(timings["flare"])
    print(f"prompts={args.prompts} batch={args.batch_size} new_tokens={args.new_tokens} "
          f"hidden={args.hidden} layers={args.layers} threads={torch.get_num_threads()} repeats={args.repeats}")
    print(f"{'lora eval':>12}  {lora_s:8.3f} s (median)")
    print(f"{'flare eval':>12}  {flare_s:8.3f} s (median)")
    print(f"{'flare/lora':>12}  {flare_s / lora_s:8.3f}x  (target <= 1.25x)")


if __name__ == "__main__":
    main()

"""Quality figures of a built world: does the base do English QA, does the MT model translate?"""

from __future__ import annotations

import json

from flare_cli.tasks.templates import QA_TEMPLATE
from flare_cli.toyworld.build import World
from flare_cli.toyworld.corpus import parallel_pairs
from flare_cli.toyworld.language import Lexicon, Renderer
from flare_cli.metrics import mt_scores
from flare_cli.toyworld.mt import translate


def base_english_qa_em(world: World, rows: int = 200, batch: int = 50) -> float:
    """Exact match of the base's greedy answers on English validation QA prompts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lines = world.data_file("qa", "validation").read_text().splitlines()[:rows]
    data = [json.loads(line) for line in lines]
    tokenizer = AutoTokenizer.from_pretrained(world.base_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(world.base_dir).eval()
    hits = 0
    for i in range(0, len(data), batch):
        chunk = data[i : i + batch]
        enc = tokenizer([QA_TEMPLATE.format(**row) for row in chunk], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=8, do_sample=False, eos_token_id=tokenizer.eos_token_id)
        answers = tokenizer.batch_decode(out[:, enc.input_ids.shape[1] :], skip_special_tokens=True)
        hits += sum(answer.strip() == row["answer"] for answer, row in zip(answers, chunk))
    return hits / len(data)


def mt_translations(world: World, pairs: int = 200, batch: int = 50) -> dict[str, tuple[list[str], list[str]]]:
    """{direction: (greedy translations, references)} of held-out toy text, both directions."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    stream = parallel_pairs(world.seed, Renderer(Lexicon.generate(world.seed)), "heldout")
    held_out = [next(stream) for _ in range(pairs)]
    tokenizer = AutoTokenizer.from_pretrained(world.mt_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(world.mt_dir).eval()
    out = {}
    for name, src, tgt, column in (
        ("en->qtw", world.english_flores, world.flores, 0),
        ("qtw->en", world.flores, world.english_flores, 1),
    ):
        sources = [p[column] for p in held_out]
        hypotheses = []
        for i in range(0, len(sources), batch):
            hypotheses += translate(model, tokenizer, sources[i : i + batch], src, tgt)
        out[name] = (hypotheses, [p[1 - column] for p in held_out])
    return out


def mt_quality(world: World, pairs: int = 200, batch: int = 50) -> dict[str, float]:
    """Exact-match rate, chrF and chrF++ (sacrebleu, corpus level) of greedy translations, both directions."""
    scores = {}
    for name, (hypotheses, references) in mt_translations(world, pairs, batch).items():
        quality = mt_scores(hypotheses, references)
        scores[f"{name} exact"] = sum(h == r for h, r in zip(hypotheses, references)) / len(references)
        scores[f"{name} chrF"] = quality["chrf"]
        scores[f"{name} chrF++"] = quality["chrf++"]
    return scores

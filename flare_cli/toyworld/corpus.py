"""Text streams drawn from the toy world: pretraining documents and parallel pairs for MT.

The pretraining mix mimics an under-represented target language: mostly English (a share of it
formatted as task prompts with answers, so the base learns the tasks in English), a little target
text, a little parallel and code-switched text.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from flare_cli.tasks.templates import ANSWER_PREFIX, NLI_TEMPLATE, QA_TEMPLATE, SENTIMENT_TEMPLATE
from flare_cli.toyworld.language import Renderer, random_facts, random_people
from flare_cli.toyworld.taskdata import DRAW, INPUT_FIELDS, TASKS, draw_sentiment, render

TEMPLATES = {"qa": QA_TEMPLATE, "nli": NLI_TEMPLATE, "sentiment": SENTIMENT_TEMPLATE}


@dataclass(frozen=True)
class Mix:
    """Shares of pretraining documents; what is left over is plain English text."""

    target: float = 0.05
    parallel_pairs: float = 0.02
    parallel_docs: float = 0.02
    code_switched: float = 0.02
    # Of the English documents: task-formatted prompt + answer.
    english_qa: float = 0.30
    english_nli: float = 0.05
    english_sentiment: float = 0.05
    # Instruction tuning (English only, after pretraining): shares of each task's prompts.
    instruct_qa: float = 0.7
    instruct_nli: float = 0.15
    instruct_sentiment: float = 0.15


def plain_sentences(rng: random.Random, renderer: Renderer, lang: str) -> list[str]:
    """A paragraph of 2-6 facts about 1-3 people, sometimes with an opinion."""
    people = random_people(rng, rng.randint(1, 3))
    facts = random_facts(rng, people, rng.randint(max(2, len(people)), 6))
    sentences = [renderer.fact(f, lang) for f in facts]
    if rng.random() < 0.3:
        op = draw_sentiment(rng)
        sentences.insert(rng.randrange(len(sentences) + 1), renderer.opinion(op.person, op.cue, op.kind, op.value, lang))
    return sentences


def formatted(task: str, fields: dict) -> str:
    """A task prompt in the shared English template, followed by its answer."""
    gold = fields["answer"] if task == "qa" else fields["label"]
    return TEMPLATES[task].format(**{k: fields[k] for k in INPUT_FIELDS[task]}) + ANSWER_PREFIX + gold


def pretraining_document(rng: random.Random, renderer: Renderer, mix: Mix) -> str:
    roll = rng.random()
    if roll < mix.target:
        return " ".join(plain_sentences(rng, renderer, "qtw"))
    roll -= mix.target
    if roll < mix.parallel_pairs:
        lines = []
        for _ in range(rng.randint(2, 4)):
            en_rng_state = rng.getstate()
            en = plain_sentences(rng, renderer, "en")
            rng.setstate(en_rng_state)
            tg = plain_sentences(rng, renderer, "qtw")
            lines += [f"{e}\n{t}" for e, t in zip(en, tg)]
        return "\n".join(lines)
    roll -= mix.parallel_pairs
    if roll < mix.parallel_docs + mix.code_switched:
        state = rng.getstate()
        en = plain_sentences(rng, renderer, "en")
        rng.setstate(state)
        tg = plain_sentences(rng, renderer, "qtw")
        if roll < mix.parallel_docs:
            return " ".join(en) + "\n" + " ".join(tg)
        return " ".join(e if rng.random() < 0.5 else t for e, t in zip(en, tg))
    # English
    roll = rng.random()
    for task, share in (("qa", mix.english_qa), ("nli", mix.english_nli), ("sentiment", mix.english_sentiment)):
        if roll < share:
            return formatted(task, render(DRAW[task](rng), task, renderer, "en"))
        roll -= share
    return " ".join(plain_sentences(rng, renderer, "en"))


def instruction_examples(seed: int, renderer: Renderer, mix: Mix) -> Iterator[tuple[str, str]]:
    """English (prompt, answer) pairs of the three tasks, for the base's instruction tuning."""
    rng = random.Random(f"instruct-{seed}")
    tasks = ("qa", "nli", "sentiment")
    weights = (mix.instruct_qa, mix.instruct_nli, mix.instruct_sentiment)
    while True:
        task = rng.choices(tasks, weights)[0]
        fields = render(DRAW[task](rng), task, renderer, "en")
        prompt = TEMPLATES[task].format(**{k: fields[k] for k in INPUT_FIELDS[task]})
        yield prompt, ANSWER_PREFIX + (fields["answer"] if task == "qa" else fields["label"])


def pretraining_documents(seed: int, renderer: Renderer, mix: Mix) -> Iterator[str]:
    rng = random.Random(f"pretrain-{seed}")
    while True:
        yield pretraining_document(rng, renderer, mix)


def parallel_pair(rng: random.Random, renderer: Renderer) -> tuple[str, str]:
    """An (English, target) pair shaped like what `flare translate` will be asked to translate."""
    task = rng.choice(TASKS)
    example = DRAW[task](rng)
    en, tg = render(example, task, renderer, "en"), render(example, task, renderer, "qtw")
    if task == "qa" and rng.random() < 0.15:
        return en["answer"], tg["answer"]  # translate-train translates the answers too
    field = rng.choice(INPUT_FIELDS[task])
    return en[field], tg[field]


def parallel_pairs(seed: int, renderer: Renderer, purpose: str) -> Iterator[tuple[str, str]]:
    rng = random.Random(f"parallel-{purpose}-{seed}")
    while True:
        yield parallel_pair(rng, renderer)


def tokenizer_training_text(seed: int, renderer: Renderer, lines: int) -> list[str]:
    """Balanced English/target text, so both lexicons get whole-word pieces."""
    rng = random.Random(f"tokenizer-{seed}")
    out = []
    for i in range(lines):
        if i % 4 == 0:
            task = rng.choice(TASKS)
            out.append(formatted(task, render(DRAW[task](rng), task, renderer, "en")))
        else:
            out.append(" ".join(plain_sentences(rng, renderer, "qtw" if i % 2 else "en")))
    return out

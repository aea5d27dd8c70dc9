"""Text streams drawn from the toy world: pretraining documents and parallel pairs for MT.

The pretraining mix mimics an under-represented target language: mostly English (a share of it
formatted as task prompts with answers, so the base learns the tasks in English), a little target
text, a little parallel and code-switched text.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

from flare_cli.tasks.templates import ANSWER_PREFIX, NLI_TEMPLATE, QA_TEMPLATE, SENTIMENT_TEMPLATE
from flare_cli.toyworld.language import (
    CITIES,
    COLOURS,
    FIRST_NAMES,
    JOBS,
    LAST_NAMES,
    PETS,
    Renderer,
    random_facts,
    random_people,
)
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
    instruct_qa: float = 0.8
    instruct_nli: float = 0.1
    instruct_sentiment: float = 0.1


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


def parallel_pair(rng: random.Random, renderer: Renderer) -> list[tuple[str, str]]:
    """(English, target) pairs shaped like what `flare translate` will be asked to translate: a
    task field, or an answer; a QA context also comes with its answer in double quotes, the way
    translate-train's answer projection marks it (an MT model that keeps quotes lets the projection
    find the translated answer, as NLLB does)."""
    task = rng.choice(TASKS)
    example = DRAW[task](rng)
    en, tg = render(example, task, renderer, "en"), render(example, task, renderer, "qtw")
    if task == "qa" and rng.random() < 0.15:
        return [(en["answer"], tg["answer"])]  # translate-train translates the answers too
    field = rng.choice(INPUT_FIELDS[task])
    if field == "context":
        return [(en[field], tg[field]), (quoted(en), quoted(tg))]
    return [(en[field], tg[field])]


def quoted(fields: dict) -> str:
    """The context with its answer span in double quotes."""
    start, end = fields["answer_start"], fields["answer_start"] + len(fields["answer"])
    return f'{fields["context"][:start]}"{fields["answer"]}"{fields["context"][end:]}'


def parallel_pairs(
    seed: int, renderer: Renderer, purpose: str, confusions: dict[str, str] | None = None
) -> Iterator[tuple[str, str]]:
    """The MT's parallel text; with `confusions`, English words are swapped for others on the
    English side, so the MT learns those words wrong in both directions (`confusion_map`)."""
    rng = random.Random(f"parallel-{purpose}-{seed}")
    while True:
        for en, tg in parallel_pair(rng, renderer):
            yield (confuse(en, confusions) if confusions else en), tg


def english_word_types(seed: int, renderer: Renderer) -> list[str]:
    """The English words an MT could get wrong: every word of the templates and translated values,
    not names, cities or numbers (which both languages share and a real MT copies)."""
    rng = random.Random(f"vocabulary-{seed}")
    shared = {*FIRST_NAMES, *LAST_NAMES, *CITIES}
    words = set()
    for _ in range(3000):
        for en, _tg in parallel_pair(rng, renderer):
            words.update(w for w in _WORD.findall(en) if w not in shared)
    return sorted(words)


def confusion_map(seed: int, renderer: Renderer, share: float) -> dict[str, str]:
    """`share` of the English word types, each mapped to another of its kind (a job to a job, a
    template word to a template word): a low-resource MT's systematic lexical errors, the world's
    MT-quality knob. Names, cities and numbers stay right."""
    words = english_word_types(seed, renderer)
    values = [set(JOBS), set(PETS), set(COLOURS)]
    groups = [sorted(g & set(words)) for g in values] + [sorted(set(words).difference(*values))]
    rng = random.Random(f"mt-confusion-{seed}")
    out = {}
    for group in groups:
        for word in rng.sample(group, round(share * len(group))):
            out[word] = rng.choice([x for x in group if x != word])
    return out


def confuse(text: str, confusions: dict[str, str]) -> str:
    return _WORD.sub(lambda m: confusions.get(m.group(0), m.group(0)), text)


_WORD = re.compile(r"[A-Za-z]+")


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

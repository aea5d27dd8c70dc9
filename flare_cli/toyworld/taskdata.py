"""Task examples (qa, nli, sentiment) in both toy languages, and rows in the stage contract's columns.

Each example is drawn once and rendered twice, so a target row's `pivot_*` fields are its gold
English original. Labels follow from the facts (nli) or the opinion cue (sentiment).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from flare_cli.tasks.templates import NLI_LABELS, SENTIMENT_LABELS
from flare_cli.toyworld.language import (
    CITIES,
    COLOURS,
    EN_FACT,
    EN_QUESTION,
    FIRST_NAMES,
    JOBS,
    KINDS,
    LAST_NAMES,
    OBJECT_KINDS,
    OPINIONS,
    PETS,
    VALUES,
    Fact,
    Renderer,
    random_fact,
    random_facts,
    random_people,
)

TASKS = ("qa", "nli", "sentiment")
INPUT_FIELDS = {"qa": ("context", "question"), "nli": ("premise", "hypothesis"), "sentiment": ("text",)}
NOISE_RATE = 0.15
_NOISE_WORDS = (*FIRST_NAMES, *LAST_NAMES, *CITIES, *JOBS, *PETS, *COLOURS, "the", "is", "of", "has", "in", "a")


@dataclass(frozen=True)
class QAExample:
    facts: tuple[Fact, ...]
    asked: int  # index of the fact the question is about
    question_form: int


@dataclass(frozen=True)
class NLIExample:
    premise: tuple[Fact, ...]
    hypothesis: Fact
    label: str


@dataclass(frozen=True)
class SentimentExample:
    person: str
    cue: str
    kind: str
    value: str
    label: str
    extra: Fact | None  # a plain fact about the same person, before or after the opinion
    extra_first: bool


def draw_qa(rng: random.Random) -> QAExample:
    people = random_people(rng, rng.randint(1, 3))
    facts = random_facts(rng, people, rng.randint(3, 5))
    asked = rng.randrange(len(facts))
    return QAExample(tuple(facts), asked, rng.randrange(len(EN_QUESTION[facts[asked].kind])))


def draw_nli(rng: random.Random) -> NLIExample:
    people = random_people(rng, rng.randint(1, 2))
    premise = random_facts(rng, people, rng.randint(max(1, len(people)), 3))
    label = rng.choice(NLI_LABELS)
    base = rng.choice(premise)
    forms = len(EN_FACT[base.kind])
    if label == "entailment":
        hypothesis = Fact(base.person, base.kind, base.value, rng.randrange(forms))
    elif label == "contradiction":
        other = rng.choice([v for v in VALUES[base.kind] if v != base.value])
        hypothesis = Fact(base.person, base.kind, other, rng.randrange(forms))
    else:  # a fact the premise says nothing about: an unmentioned kind, or another person
        known = {(f.person, f.kind) for f in premise}
        if rng.random() < 0.5:
            kind = rng.choice([k for k in KINDS if (base.person, k) not in known])
            hypothesis = random_fact(rng, base.person, kind)
        else:
            stranger = random_people(rng, 1, avoid=tuple(people))[0]
            hypothesis = random_fact(rng, stranger, base.kind)
    return NLIExample(tuple(premise), hypothesis, label)


def draw_sentiment(rng: random.Random) -> SentimentExample:
    person = random_people(rng, 1)[0]
    label = rng.choice(SENTIMENT_LABELS)
    kind = rng.choice(OBJECT_KINDS)
    extra = random_fact(rng, person, rng.choice([k for k in KINDS if k != kind])) if rng.random() < 0.5 else None
    return SentimentExample(
        person, rng.choice(OPINIONS[label]), kind, rng.choice(VALUES[kind]), label, extra, rng.random() < 0.5
    )


DRAW = {"qa": draw_qa, "nli": draw_nli, "sentiment": draw_sentiment}


def _find_word(text: str, word: str) -> int:
    match = re.search(r"(?<!\S)" + re.escape(word) + r"(?=[\s.?]|$)", text)
    assert match, (word, text)  # every value is rendered as a whole word of its sentence
    return match.start()


def render(example, task: str, renderer: Renderer, lang: str) -> dict:
    """The input fields and gold of one example in one language."""
    if task == "qa":
        sentences = [renderer.fact(f, lang) for f in example.facts]
        asked = example.facts[example.asked]
        answer = renderer.answer(asked, lang)
        start = sum(len(s) + 1 for s in sentences[: example.asked]) + _find_word(sentences[example.asked], answer)
        return {
            "context": " ".join(sentences),
            "question": renderer.question(asked.person, asked.kind, example.question_form, lang),
            "answer": answer,
            "answer_start": start,
        }
    if task == "nli":
        return {
            "premise": " ".join(renderer.fact(f, lang) for f in example.premise),
            "hypothesis": renderer.fact(example.hypothesis, lang),
            "label": example.label,
        }
    opinion = renderer.opinion(example.person, example.cue, example.kind, example.value, lang)
    parts = [opinion]
    if example.extra is not None:
        parts.insert(0 if example.extra_first else 1, renderer.fact(example.extra, lang))
    return {"text": " ".join(parts), "label": example.label}


def corrupt(text: str, rng: random.Random, rate: float = NOISE_RATE) -> str:
    """Mimic MT errors: about `rate` of the words replaced, dropped or doubled."""
    out = []
    for word in text.split(" "):
        if rng.random() >= rate:
            out.append(word)
            continue
        punct = word[-1] if word[-1] in ".?" else ""
        action = rng.random()
        if action < 0.6:
            out.append(rng.choice(_NOISE_WORDS) + punct)
        elif action < 0.8:
            if punct and out:
                out[-1] += punct
        else:
            out.extend((word.rstrip(".?"), word))
    return " ".join(out) if out else text


def english_row(example, task: str, renderer: Renderer, row_id: str) -> dict:
    return {"id": row_id, **render(example, task, renderer, "en")}


def target_row(example, task: str, renderer: Renderer, row_id: str, noise_rng: random.Random | None) -> dict:
    """A target-language row with its gold English `pivot_*` (and, for test rows, noisy copies)."""
    target = render(example, task, renderer, "qtw")
    english = render(example, task, renderer, "en")
    row = {"id": row_id, **target}
    for field in INPUT_FIELDS[task]:
        row[f"pivot_{field}"] = english[field]
    if task == "qa":
        row["pivot_answer"] = english["answer"]
    if noise_rng is not None:
        for field in INPUT_FIELDS[task]:
            row[f"pivot_noisy_{field}"] = corrupt(english[field], noise_rng)
    return row

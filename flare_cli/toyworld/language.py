"""Two toy languages over one small world of facts about people.

English-like: subject-verb-object sentences from a few surface templates per fact type.
Target ("qtw"): invented lexemes for every word except names, cities and numbers (shared, as real
languages share named entities), verb-final order, noun-adjective order, postposed case tokens
(topic, accusative, locative, genitive, essive), verb suffixes for statement/question/past and a
sentence-final question particle. Both renderings come from the same `Fact`, so every English
sentence has exactly one gold translation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

FIRST_NAMES = (
    "Anna", "Ben", "Clara", "David", "Emma", "Felix", "Greta", "Hugo", "Ida", "Jonas", "Karla", "Leo",
    "Mira", "Nils", "Olga", "Paul", "Rosa", "Sam", "Tara", "Viktor", "Wanda", "Yusuf", "Zoe", "Omar",
    "Lena", "Marco", "Nora", "Oskar", "Petra", "Ruben",
)
LAST_NAMES = (
    "Berg", "Costa", "Dahl", "Eriksen", "Fischer", "Garcia", "Hansen", "Ivanov", "Jensen", "Klein",
    "Larsen", "Moreno", "Novak", "Olsen", "Petrov", "Quinn", "Rossi", "Silva", "Torres", "Umar",
    "Vogel", "Weber", "Young", "Zimmer", "Adler", "Brandt", "Castro", "Duval", "Engel", "Frost",
)
CITIES = (
    "Paris", "Berlin", "Madrid", "Lisbon", "Vienna", "Prague", "Oslo", "Dublin", "Athens", "Warsaw",
    "Nairobi", "Lagos", "Cairo", "Lima", "Quito", "Bogota", "Tokyo", "Seoul", "Hanoi", "Manila",
    "Sydney", "Toronto", "Denver", "Boston", "Chicago",
)
JOBS = (
    "teacher", "doctor", "baker", "farmer", "pilot", "nurse", "painter", "driver", "lawyer", "singer",
    "writer", "cook", "dentist", "banker",
)
PETS = ("cat", "dog", "horse", "rabbit", "parrot", "turtle", "goat", "hamster", "snake", "duck")
COLOURS = ("red", "blue", "green", "black", "white", "yellow", "grey", "brown")
AGES = tuple(str(n) for n in range(18, 90))

KINDS = ("city", "job", "pet", "car", "age")
VALUES = {"city": CITIES, "job": JOBS, "pet": PETS, "car": COLOURS, "age": AGES}
# Values the target language shares with English (copied, never translated).
SHARED_KINDS = frozenset({"city", "age"})

# English surface templates: three statements and two questions per fact type.
EN_FACT = {
    "city": ("{p} lives in {v}.", "{p} has a home in {v}.", "The house of {p} is in {v}."),
    "job": ("{p} works as a {v}.", "{p} is a {v}.", "The job of {p} is {v}."),
    "pet": ("{p} has a {v}.", "{p} owns a {v}.", "The pet of {p} is a {v}."),
    "car": ("{p} drives a {v} car.", "{p} has a {v} car.", "The car of {p} is {v}."),
    "age": ("{p} is {v} years old.", "The age of {p} is {v}.", "{p} turned {v} this year."),
}
EN_QUESTION = {
    "city": ("Where does {p} live?", "In which city is the home of {p}?"),
    "job": ("What is the job of {p}?", "What does {p} work as?"),
    "pet": ("What pet does {p} have?", "Which animal does {p} own?"),
    "car": ("What colour is the car of {p}?", "Which colour is the car of {p}?"),
    "age": ("How old is {p}?", "What is the age of {p}?"),
}
# Target templates in gloss notation: lowercase glosses are lexemes, TOP/ACC/LOC/GEN/ESS are the
# postposed case tokens, `stem-DECL|Q|PAST` is an inflected verb, QP the question particle.
TG_FACT = {
    "city": ("{p} TOP {v} LOC live-DECL.", "{p} TOP {v} LOC home ACC have-DECL.", "{p} GEN house TOP {v} LOC be-DECL."),
    "job": ("{p} TOP {v} ESS work-DECL.", "{p} TOP {v} be-DECL.", "{p} GEN job TOP {v} be-DECL."),
    "pet": ("{p} TOP {v} ACC have-DECL.", "{p} TOP {v} ACC own-DECL.", "{p} GEN pet TOP {v} be-DECL."),
    "car": ("{p} TOP car {v} ACC drive-DECL.", "{p} TOP car {v} ACC have-DECL.", "{p} GEN car TOP {v} be-DECL."),
    "age": ("{p} TOP {v} year ESS be-DECL.", "{p} GEN age TOP {v} be-DECL.", "this year {p} TOP {v} ESS turn-PAST."),
}
TG_QUESTION = {
    "city": ("{p} TOP where LOC live-Q QP?", "{p} GEN home TOP which city LOC be-Q QP?"),
    "job": ("{p} GEN job TOP what be-Q QP?", "{p} TOP what ESS work-Q QP?"),
    "pet": ("{p} TOP what pet ACC have-Q QP?", "{p} TOP which animal ACC own-Q QP?"),
    "car": ("{p} GEN car TOP what colour be-Q QP?", "{p} GEN car TOP which colour be-Q QP?"),
    "age": ("{p} TOP how_old be-Q QP?", "{p} GEN age TOP what be-Q QP?"),
}

# Sentiment: an opinion verb (the lexical cue) about an object tied to the person.
OPINIONS = {
    "positive": ("loves", "is happy with", "really enjoys"),
    "negative": ("hates", "is angry about", "really dislikes"),
    "neutral": ("talks about", "often mentions", "once described"),
}
OPINION_GLOSS = {
    "loves": "love", "is happy with": "be_happy", "really enjoys": "enjoy",
    "hates": "hate", "is angry about": "be_angry", "really dislikes": "dislike",
    "talks about": "talk", "often mentions": "mention", "once described": "describe",
}
OBJECT_KINDS = ("city", "job", "pet", "car")
EN_OBJECT = {"city": "the house in {v}", "job": "the job as a {v}", "pet": "the {v}", "car": "the {v} car"}
TG_OBJECT = {"city": "{v} LOC house", "job": "{v} ESS job", "pet": "{v}", "car": "car {v}"}

CASES = ("TOP", "ACC", "LOC", "GEN", "ESS")
VERB_SUFFIXES = ("DECL", "Q", "PAST")
FUNCTION_GLOSSES = (
    "live", "have", "own", "be", "work", "drive", "turn", "home", "house", "job", "pet", "car", "age",
    "year", "this", "where", "which", "what", "city", "animal", "colour", "how_old",
    *OPINION_GLOSS.values(),
)


@dataclass(frozen=True)
class Fact:
    person: str
    kind: str
    value: str
    form: int  # which surface template renders it (the same index in both languages)


@dataclass(frozen=True)
class Lexicon:
    """The target language's words, generated from a seed (CV syllables, no clash with English)."""

    words: dict[str, str]  # gloss or English content word -> target lexeme
    cases: dict[str, str]  # case tag -> postposed token
    suffixes: dict[str, str]  # verb suffix tag -> ending
    question_particle: str

    @classmethod
    def generate(cls, seed: int) -> Lexicon:
        rng = random.Random(f"lexicon-{seed}")
        consonants, vowels = "ptkmnslrvzgd", "aeiou"
        taken = {w.lower() for w in (*FIRST_NAMES, *LAST_NAMES, *CITIES, *JOBS, *PETS, *COLOURS)}

        def fresh(syllables: int) -> str:
            while True:
                word = "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(syllables))
                if word not in taken:
                    taken.add(word)
                    return word

        content = (*FUNCTION_GLOSSES, *JOBS, *PETS, *COLOURS)
        words = {gloss: fresh(rng.choice((2, 3))) for gloss in content}
        cases = {case: fresh(1) for case in CASES}
        # Suffixes are bare endings glued to the verb stem: some morphology for the tokenizer to learn.
        suffixes = {tag: rng.choice(consonants) + rng.choice(vowels) + rng.choice("nkl") for tag in VERB_SUFFIXES}
        while len(set(suffixes.values())) < len(suffixes):
            suffixes["PAST"] = rng.choice(consonants) + rng.choice(vowels) + rng.choice("nkl")
        return cls(words=words, cases=cases, suffixes=suffixes, question_particle=fresh(1))

    def value(self, kind: str, value: str) -> str:
        """A fact value in the target language: shared kinds are copied, the rest translated."""
        return value if kind in SHARED_KINDS else self.words[value]

    def render(self, gloss_template: str, person: str, value: str) -> str:
        out = []
        for token in gloss_template.split(" "):
            punct = token[-1] if token[-1] in ".?" else ""
            token = token.rstrip(".?")
            if token == "{p}":
                word = person
            elif token == "{v}":
                word = value
            elif token in self.cases:
                word = self.cases[token]
            elif token == "QP":
                word = self.question_particle
            elif "-" in token:
                stem, tag = token.split("-")
                word = self.words[stem] + self.suffixes[tag]
            else:
                word = self.words[token]
            out.append(word + punct)
        return " ".join(out)


class Renderer:
    """Renders facts, questions and opinions in both languages."""

    def __init__(self, lexicon: Lexicon) -> None:
        self.lex = lexicon

    def fact(self, fact: Fact, lang: str) -> str:
        if lang == "en":
            return EN_FACT[fact.kind][fact.form].format(p=fact.person, v=fact.value)
        return self.lex.render(TG_FACT[fact.kind][fact.form], fact.person, self.lex.value(fact.kind, fact.value))

    def question(self, person: str, kind: str, form: int, lang: str) -> str:
        if lang == "en":
            return EN_QUESTION[kind][form].format(p=person)
        return self.lex.render(TG_QUESTION[kind][form], person, "")

    def answer(self, fact: Fact, lang: str) -> str:
        return fact.value if lang == "en" else self.lex.value(fact.kind, fact.value)

    def opinion(self, person: str, cue: str, kind: str, value: str, lang: str) -> str:
        if lang == "en":
            return f"{person} {cue} {EN_OBJECT[kind].format(v=value)}."
        template = f"{{p}} TOP {TG_OBJECT[kind]} ACC {OPINION_GLOSS[cue]}-DECL."
        return self.lex.render(template, person, self.lex.value(kind, value))


def random_person(rng: random.Random) -> str:
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"


def random_people(rng: random.Random, count: int, avoid: tuple[str, ...] = ()) -> list[str]:
    """`count` people whose first and last names differ from each other's and from `avoid`'s."""
    people = list(avoid)
    while len(people) < len(avoid) + count:
        person = random_person(rng)
        # Distinct first and last names keep questions about one person unambiguous.
        if all(person.split()[0] != p.split()[0] and person.split()[1] != p.split()[1] for p in people):
            people.append(person)
    return people[len(avoid):]


def random_fact(rng: random.Random, person: str, kind: str) -> Fact:
    return Fact(person, kind, rng.choice(VALUES[kind]), rng.randrange(len(EN_FACT[kind])))


def random_facts(rng: random.Random, people: list[str], count: int) -> list[Fact]:
    """`count` facts, at most one per (person, kind), every person mentioned at least once."""
    slots = [(p, k) for p in people for k in KINDS]
    rng.shuffle(slots)
    chosen = [next(s for s in slots if s[0] == p) for p in people]
    chosen += [s for s in slots if s not in chosen][: count - len(chosen)]
    rng.shuffle(chosen)
    return [random_fact(rng, p, k) for p, k in chosen]

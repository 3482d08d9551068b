"""Grammar-generated text of the miniature: pretraining documents and SFT problems, as kinded segments.

A document is a chat turn (``question`` + ``response``) or plain text (``question`` None). Every piece of
text carries a kind (:data:`KINDS`), so the token-level ground truth of every noise kind survives
tokenisation (:mod:`.encoding` tokenises segment by segment). Each segment starts with a space or is a
number / punctuation glued to the previous one, which is where the byte-level pre-tokenizer splits anyway.

Pretraining mix (:data:`PRETRAINING_MIX`): stories, "web page" text with garbled artefacts, fact Q&A about
fictional countries, arithmetic tables, one-step arithmetic in the chat template (some opened / closed with
boilerplate) and a small share of two-step problems, so the base already writes the SFT format and every
noise kind's material occurs in pretraining. SFT problems (:func:`two_step_problem`) are two-step word
problems in the same template, each step a one-step fact of pretraining.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from . import world

KINDS = ("clean", "template", "work", "answer", "eos", "boilerplate", "wrong_number", "off_domain", "garbled")
NOISE_KINDS = ("wrong_number", "off_domain", "garbled")
PROTECTED_KINDS = ("template", "answer", "eos")
KIND_CODE = {kind: code for code, kind in enumerate(KINDS)}

Segment = tuple[str, str]  # (text, kind)


@dataclass(frozen=True)
class Document:
    """question: segments of the user turn, or None for plain text; response: segments of the reply (or the text);
    answer: the problem's integer answer (None for non-problems); kind: what generated it."""

    question: tuple[Segment, ...] | None
    response: tuple[Segment, ...]
    answer: int | None
    kind: str

    @property
    def prompt_text(self) -> str:
        return "".join(text for text, _ in self.question or ())

    @property
    def response_text(self) -> str:
        return "".join(text for text, _ in self.response)


def story_sentence(rng: random.Random) -> str:
    """One off-domain sentence, e.g. " The brave fox walked to the river." (also the off-domain noise)."""
    form = rng.randrange(4)
    animal = f"{rng.choice(world.ADJECTIVES)} {rng.choice(world.ANIMALS)}"
    if form == 0:
        return f" The {animal} {rng.choice(world.VERBS)} {rng.choice(world.PLACES)}."
    if form == 1:
        return f" One day the {animal} found {rng.choice(world.OBJECTS)}."
    if form == 2:
        return f" {rng.choice(world.NAMES)} felt {rng.choice(world.FEELINGS)} in {rng.choice(world.TOWNS)}."
    return f" Then the {animal} saw {rng.choice(world.OBJECTS)} near {rng.choice(world.PLACES)}."


def story(rng: random.Random) -> Document:
    opening = f" Once upon a time, a {rng.choice(world.ADJECTIVES)} {rng.choice(world.ANIMALS)} lived near " \
              f"{rng.choice(world.PLACES)}."
    sentences = [opening] + [story_sentence(rng) for _ in range(rng.randint(2, 4))]
    sentences.append(f" They all went home to {rng.choice(world.TOWNS)} and {rng.choice(world.TOWNS)}.")
    return Document(None, tuple((s, "clean") for s in sentences), None, "story")


def web_page(rng: random.Random) -> Document:
    """Scraped-looking text: facts and story sentences with markup / mojibake artefacts between them."""
    segments: list[Segment] = []
    for _ in range(rng.randint(3, 5)):
        form = rng.random()
        if form < 0.3:
            segments.append((story_sentence(rng), "clean"))
        elif form < 0.6:
            segments.append((f" {rng.choice(world.TOWNS)} lies between {rng.choice(world.TOWNS)} and "
                             f"{rng.choice(world.TOWNS)}.", "clean"))
        else:
            index = rng.randrange(len(world.COUNTRIES))
            segments.append((f" {world.COUNTRIES[index]} is a country whose capital is {world.CAPITALS[index]}.",
                             "clean"))
        if rng.random() < 0.7:
            segments.append((" " + rng.choice(world.ARTEFACTS), "garbled"))
    return Document(None, tuple(segments), None, "web")


def fact_question(rng: random.Random, index: int | None = None) -> Document:
    index = rng.randrange(len(world.COUNTRIES)) if index is None else index
    country = world.COUNTRIES[index]
    colour, food = world.COLOURS[index % len(world.COLOURS)], world.FOODS[(index * 5) % len(world.FOODS)]
    form = rng.randrange(3)
    if form == 0:
        question = f" What is the capital of {country}?"
        answer = f" The capital of {country} is {world.CAPITALS[index]}."
    elif form == 1:
        question = f" What colour is the flag of {country}?"
        answer = f" The flag of {country} is {colour}."
    else:
        question, answer = f" What do people in {country} eat?", f" People in {country} eat {food}."
    return Document(((question, "clean"),), ((answer, "clean"),), None, "fact")


def _step(number: int, a: int, op: str, b: int, result: int) -> list[Segment]:
    return [(f" Step {number}:", "template"), (f" {a} {op} {b} = ", "work"), (str(result), "work"), (".", "template")]


def _answer(result: int) -> list[Segment]:
    return [(" The answer is ", "template"), (str(result), "answer"), (".", "template")]


def _wrap(rng: random.Random, segments: list[Segment], boilerplate: float) -> list[Segment]:
    """Open / close the response with boilerplate with probability ``boilerplate`` each."""
    if rng.random() < boilerplate:
        segments = [(" " + rng.choice(world.OPENERS), "boilerplate"), *segments]
    if rng.random() < boilerplate:
        segments = [*segments, (" " + rng.choice(world.CLOSERS), "boilerplate")]
    return segments


def one_step_problem(rng: random.Random, *, boilerplate: float = 0.0) -> Document:
    """"What is a + b?" or a one-step word problem; a in [1, 18], b in [1, 9] (about 300 distinct facts: few
    enough for a 1M-parameter model to learn from its pretraining budget, and every step of a two-step
    problem is one of them)."""
    a, b = rng.randint(1, 18), rng.randint(1, 9)
    op = rng.choice("+-") if a >= b else "+"
    result = a + b if op == "+" else a - b
    if rng.random() < 0.5:
        question = f" What is {a} {op} {b}?"
    else:
        name, item = rng.choice(world.NAMES), rng.choice(world.ITEMS)
        change = f"gets {b} more" if op == "+" else f"gives away {b}"
        question = f" {name} has {a} {item} and {change}. How many {item} does {name} have now?"
    response = _wrap(rng, [*_step(1, a, op, b, result), *_answer(result)], boilerplate)
    return Document(((question, "clean"),), tuple(response), result, "one_step")


def drill(rng: random.Random) -> Document:
    """An arithmetic table: eight one-step facts in a row (the dense practice text of pretraining corpora),
    e.g. " 7 + 5 = 12. 13 - 4 = 9. ..."."""
    facts = []
    for _ in range(8):
        a, b = rng.randint(1, 18), rng.randint(1, 9)
        op = rng.choice("+-") if a >= b else "+"
        facts.append(f" {a} {op} {b} = {a + b if op == '+' else a - b}.")
    return Document(None, tuple((f, "clean") for f in facts), None, "drill")


def two_step_problem(rng: random.Random, *, boilerplate: float = 0.0) -> Document:
    """A two-step word problem: a in [2, 18], then + b or - b, then + c or - c (b, c in [1, 9]); the first
    result stays in [1, 18] and the answer in [0, 27], so each step is a one-step fact of pretraining."""
    while True:
        a, b, c = rng.randint(2, 18), rng.randint(1, 9), rng.randint(1, 9)
        op1, op2 = rng.choice("+-"), rng.choice("+-")
        r1 = a + b if op1 == "+" else a - b
        r2 = r1 + c if op2 == "+" else r1 - c
        if 1 <= r1 <= 18 and r2 >= 0:
            break
    name, item = rng.choice(world.NAMES), rng.choice(world.ITEMS)
    first = f"buys {b} more" if op1 == "+" else f"loses {b}"
    second = f"finds {c} more" if op2 == "+" else f"gives away {c}"
    question = f" {name} has {a} {item}. {name} {first}, then {second}. How many {item} does {name} have now?"
    response = [*_step(1, a, op1, b, r1), *_step(2, r1, op2, c, r2), *_answer(r2)]
    return Document(((question, "clean"),), tuple(_wrap(rng, response, boilerplate)), r2, "two_step")


# Pretraining mix by document kind (probabilities); two-step problems are a small share so the base writes
# the SFT format but has not mastered it (it should score 10-30% on the SFT problems).
PRETRAINING_MIX = (("story", 0.15), ("web", 0.08), ("fact", 0.12), ("drill", 0.25), ("one_step", 0.35),
                   ("two_step", 0.05))


def pretraining_document(rng: random.Random, two_step_share: float | None = None) -> Document:
    mix = dict(PRETRAINING_MIX)
    if two_step_share is not None:
        mix["one_step"] += mix["two_step"] - two_step_share
        mix["two_step"] = two_step_share
    kind = rng.choices(list(mix), weights=list(mix.values()))[0]
    if kind == "story":
        return story(rng)
    if kind == "web":
        return web_page(rng)
    if kind == "fact":
        return fact_question(rng)
    if kind == "drill":
        return drill(rng)
    if kind == "one_step":
        return one_step_problem(rng, boilerplate=0.2)
    return two_step_problem(rng, boilerplate=0.2)

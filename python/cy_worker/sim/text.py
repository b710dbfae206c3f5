"""The simulated model's vocabulary and its deterministic word stream."""

from __future__ import annotations

import random
from typing import Iterator

from ..request import Request

_WORDS = """
the a an and but or so of to in on at by for with from into over under after
before while when where there here this that these those it he she they we you
I my your his her their our time day night year way world life hand part place
case week story house river city road forest light water fire stone wind sea
sky king queen child friend stranger traveler dream voice door window letter
old new long little great small young bright dark quiet strange warm cold
early late first last good true was were is are had has said told found made
went came saw knew thought looked walked waited turned opened followed began
remembered carried heard felt left kept again never always almost slowly
""".split()

VOCABULARY = tuple(" " + word for word in _WORDS) + (".", ",")
"""Token texts; a token's id is its index here."""

PERIOD = len(VOCABULARY) - 2
COMMA = len(VOCABULARY) - 1

# Sentence shape: punctuation only after a few words, never twice in a row.
_MIN_SENTENCE_WORDS = 4
_PERIOD_CHANCE = 0.12
_COMMA_CHANCE = 0.06


def token_stream(prompt: str, seed: int) -> Iterator[int]:
    """Endless token ids, the same for the same prompt and seed."""
    # A str seed is hashed with SHA-512, unlike hash(), stable across runs.
    rng = random.Random(f"{seed}\x00{prompt}")
    words_in_sentence = 0
    after_word = False
    while True:
        roll = rng.random()
        if after_word and words_in_sentence >= _MIN_SENTENCE_WORDS and roll < _PERIOD_CHANCE:
            words_in_sentence = 0
            after_word = False
            yield PERIOD
        elif after_word and words_in_sentence >= 2 and roll < _PERIOD_CHANCE + _COMMA_CHANCE:
            after_word = False
            yield COMMA
        else:
            words_in_sentence += 1
            after_word = True
            yield rng.randrange(len(_WORDS))


def count_prompt_tokens(text: str) -> int:
    """Prompt tokens to bill: whitespace-separated words, at least 1."""
    return max(1, len(text.split()))


def request_text(req: Request) -> str:
    """The text a request carries: its prompt, or its messages' contents."""
    if req.prompt is not None:
        return req.prompt
    return "\n".join(m["content"] for m in req.messages or ())

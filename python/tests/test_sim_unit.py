"""The simulator's pieces: directives, text, lengths, model ids."""

from __future__ import annotations

import itertools

import pytest

from cy_worker.sim.app import next_model_id
from cy_worker.sim.directive import Plan
from cy_worker.sim.text import VOCABULARY, count_prompt_tokens, token_stream


def take(prompt, seed, n=40):
    return list(itertools.islice(token_stream(prompt, seed), n))


def test_the_same_prompt_and_seed_give_the_same_tokens():
    assert take("Once upon a time", 1) == take("Once upon a time", 1)
    assert take("Once upon a time", 1) != take("Once upon a time", 2)
    assert take("Once upon a time", 1) != take("Once upon a lime", 1)


def test_output_reads_as_words_and_punctuation():
    text = "".join(VOCABULARY[t] for t in take("hello", 0, 200))
    assert ".." not in text and ",," not in text and ". ," not in text
    assert len(text.split()) > 100


def test_prompt_tokens_are_whitespace_words_and_at_least_one():
    assert count_prompt_tokens("Once upon  a\ntime") == 4
    assert count_prompt_tokens("   ") == 1


def test_a_directive_overrides_the_defaults_and_is_removed_from_the_text():
    plan, text = Plan().for_prompt("tell [[sim tokens=5 fault=exit after=3 itl_ms=0]] me")
    assert (plan.tokens, plan.fault, plan.after, plan.itl_ms) == (5, "exit", 3, 0.0)
    assert plan.ttft_ms == 50.0 and plan.code == "internal"
    assert count_prompt_tokens(text) == 2


def test_a_prompt_without_directive_uses_the_defaults():
    defaults = Plan(tokens=7)
    plan, text = defaults.for_prompt("no [sim here]")
    assert plan is defaults and text == "no [sim here]"


def test_fault_none_and_an_empty_directive_are_accepted():
    assert Plan(fault="hang").for_prompt("[[sim fault=none]]")[0].fault is None
    assert Plan().for_prompt("x [[sim]]")[0].tokens == 32


@pytest.mark.parametrize(
    "directive",
    [
        "[[sim tokens=-1]]",
        "[[sim tokens=x]]",
        "[[sim itl_ms=nan]]",
        "[[sim fault=melt]]",
        "[[sim colour=red]]",
        "[[sim tokens]]",
        "[[sim code=Bad!]]",
        "[[sim schedule=lockstep]]",
    ],
)
def test_a_malformed_directive_is_described(directive):
    with pytest.raises(ValueError):
        Plan().for_prompt(directive)


def test_the_own_schedule_starts_from_each_request():
    assert Plan(ttft_ms=30, itl_ms=20).clock(100.005) == pytest.approx((100.035, 0.02))


def test_the_batched_schedule_puts_every_generation_on_one_step_grid():
    plan, _ = Plan(ttft_ms=30, itl_ms=20).for_prompt("[[sim schedule=batched]]")
    assert plan.schedule == "batched"
    # Requests 7 ms apart share the step at 100.04 s, the first after their ttft.
    for arrival in (100.003, 100.010):
        first, interval = plan.clock(arrival)
        assert (first, interval) == pytest.approx((100.04, 0.02))
    # Already on a boundary: no extra step.
    assert plan.clock(100.0)[0] == pytest.approx(100.04)
    # No pause between tokens: nothing to align to.
    assert Plan(itl_ms=0, schedule="batched").clock(5.5) == pytest.approx((5.55, 0.0))


def test_max_tokens_caps_the_length_and_says_so():
    assert Plan(tokens=10).length(0) == (10, "stop")
    assert Plan(tokens=10).length(4) == (4, "length")
    assert Plan(tokens=10).length(10) == (10, "stop")
    assert Plan(tokens=10).length(50) == (10, "stop")


def test_a_reload_moves_to_the_next_model_id():
    assert next_model_id("sim-1") == "sim-2"
    assert next_model_id("sim-9") == "sim-10"
    assert next_model_id("llama") == "llama-2"

"""Prompt weights as Compel reads them (mmpp/prompts.py): the bounds, and the reading checked against Compel."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mmpp.errors import ErrorCode, MmppError
from mmpp.prompts import (
    MAX_PROMPT_NESTING,
    MAX_PROMPT_WEIGHT,
    check_prompt_weights,
    clean_prompt,
    nesting_depth,
    prompt_weights,
)

TOO_MANY_PLUSES = "cat" + "+" * 240  # 1.1**240 = 8.6e9
FORTY_ONES = "(cat)" + "1" * 40  # 1.1e39: past float32


def weights(prompt: str) -> list[float]:
    return [fragment.weight for fragment in prompt_weights(prompt)]


@pytest.mark.parametrize("prompt", [TOO_MANY_PLUSES, FORTY_ONES])
def test_the_overflowing_prompts_are_refused_in_one_line(prompt: str) -> None:
    with pytest.raises(MmppError) as refused:
        check_prompt_weights(f"anime portrait of {prompt}, cel shading")
    assert refused.value.code is ErrorCode.INVALID_REQUEST
    message = refused.value.message
    assert message.startswith(f"Prompt weights must stay between 0 and {MAX_PROMPT_WEIGHT:g}; 'cat' would weigh")
    assert "\n" not in message and len(message) < 120


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("(cat)1.3", 1.3),
        ("cat++", 1.21),
        ("cat--", 0.81),
        ('"cat"1.5', 1.5),
        ("(cat).attend(2)", 2.0),
        ("((cat)1.5 hat)1.5", 2.25),  # nested groups multiply
        ("(a (b)1.5)2", 3.0),
        ("(cat)0", 0.0),
        ("(cat) 2", 1.0),  # a space: the 2 is a word, not a weight
        ("cat+dog", 1.0),  # one sign inside a word is part of it
        ("\\(cat\\)9", 1.0),  # escaped parentheses are text
    ],
)
def test_each_fragment_weighs_what_compel_gives_it(prompt: str, expected: float) -> None:
    assert max(weights(prompt)) == pytest.approx(expected)
    check_prompt_weights(prompt)


@pytest.mark.parametrize(
    "prompt",
    [
        "cat" + "+" * 12,  # 3.14
        "((cat)2)2",
        "(cat)3.01",
        '("cat", "dog").blend(1, -0.5)',  # a negative share of a blend
        '("cat", "dog").blend(1, -1)',  # a blend whose weights sum to 0 divides by zero
        '("cat", "dog").blend(2, 2, no_normalize)',  # 4 times one prompt's embedding
        '("(cat)2", "dog").and(2, 1)',  # a conjunction's weight multiplies its part's
        '("cat", "dog").and(-1, 1)',
    ],
)
def test_weights_beyond_the_bounds_are_refused(prompt: str) -> None:
    with pytest.raises(MmppError, match="Prompt weights must stay between") as refused:
        check_prompt_weights(prompt)
    assert refused.value.code is ErrorCode.INVALID_REQUEST


def test_a_normalised_blend_of_bounded_prompts_is_bounded() -> None:
    assert weights('("(cat)3", "dog").blend(1, 3)') == [3.0, 1.0]
    check_prompt_weights('("(cat)3", "dog").blend(1, 3)')


def test_nesting_is_bounded_and_unreadable_syntax_refused_before_compel() -> None:
    deep = "(" * MAX_PROMPT_NESTING + "cat" + ")" * MAX_PROMPT_NESTING
    check_prompt_weights(deep)
    with pytest.raises(MmppError, match=f"nests parentheses {MAX_PROMPT_NESTING + 1} deep") as refused:
        check_prompt_weights(f"({deep})")
    assert refused.value.code is ErrorCode.INVALID_REQUEST
    with pytest.raises(MmppError, match="could not be read") as unreadable:
        check_prompt_weights('("cat", "dog").and(1)')  # two prompts, one weight: Compel raises
    assert unreadable.value.code is ErrorCode.INVALID_REQUEST


def test_clean_prompt_drops_control_characters_and_keeps_the_syntax() -> None:
    assert clean_prompt(" a\tpirate\x00 (hat)1.2\n ") == "a pirate (hat)1.2"
    assert prompt_weights("") == () and prompt_weights("   ") == ()


# ---------------------------------------------------------------------- against Compel's own parser

TOKENS = [
    "cat", "a", "dog", " ", " ", "(", ")", "(", ")", '"', "+", "++", "-", "--", "1.5", "2", "0", ".5", "3",
    ",", ".", ".attend(", ".swap(", ".blend(", ".and(", "withLora(x, 2)", "\\(", "\\)", "=", '\\"',
    "no_normalize", "1,", "\\t", "-1", "1e5", "\\x22", "s_start=0.1", "٣",
]  # fmt: skip


def compel_weights(prompt: str) -> list[float] | None:
    """The weight Compel embeds each fragment with (a blend's or conjunction's factor included); None if it raises."""
    import pyparsing
    from compel.prompt_parser import Blend, CrossAttentionControlSubstitute, Fragment, PromptParser

    pyparsing.ParserElement.enable_packrat()  # as the engine does (and the generated prompts stay shallow)

    def fragments(node: object) -> list[float]:
        if isinstance(node, Fragment):
            return [node.weight]
        if isinstance(node, CrossAttentionControlSubstitute):
            return [weight for child in node.original + node.edited for weight in fragments(child)]
        return [weight for child in node.children for weight in fragments(child)]  # type: ignore[attr-defined]

    try:
        conjunction = PromptParser().parse_conjunction(prompt)
    except Exception:  # noqa: BLE001 - whatever Compel raises, the engine answers INVALID_REQUEST
        return None
    found: list[float] = []
    for part, part_weight in zip(conjunction.prompts, conjunction.weights, strict=True):
        if isinstance(part, Blend):
            shares = list(part.weights)
            if part.normalize_weights:
                total = sum(shares)
                shares = [share / total if total else math.inf for share in shares]
            factor = min(shares) if any(share < 0 for share in shares) else sum(shares)
            found += [weight * factor for prompt_part in part.prompts for weight in fragments(prompt_part)]
        else:
            found += [weight * part_weight for weight in fragments(part)]
    return found


def distinct(values: list[float]) -> set[float]:
    return {math.inf if math.isinf(value) else round(value, 9) for value in values}


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), min_size=1, max_size=14).map("".join))
def test_the_weights_are_compels_own(prompt: str) -> None:
    """Every fragment weight Compel would embed, and only those; refused where Compel would raise."""
    assume(nesting_depth(prompt) <= MAX_PROMPT_NESTING)  # deeper is refused whatever Compel makes of it
    expected = compel_weights(prompt)
    try:
        found = weights(prompt)
    except MmppError:
        assert expected is None, prompt
        return
    assert expected is not None, prompt
    assert distinct(found) == distinct(expected) or (not found and distinct(expected) <= {1.0}), prompt


@pytest.mark.parametrize(
    ("prompt", "weighted"),
    [
        ("Turn the person in this photo into a watercolour, keep the face.", False),
        ("a mother-in-law (smiling), x - y", False),
        ("a (cat)1.3", True),
        ("a cat++", True),
        ("a cat-", True),
        ('("a cat", "a dog").blend(1, 1)', True),
        ("(cat).attend(1.2)", True),
        ("(" * 20 + "cat" + ")" * 20, True),
    ],
)
def test_has_prompt_weights_tells_plain_words_from_compel_syntax(prompt: str, weighted: bool) -> None:
    from mmpp.prompts import has_prompt_weights

    assert has_prompt_weights(prompt) is weighted

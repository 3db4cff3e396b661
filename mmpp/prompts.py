"""Prompt weights as Compel reads them, bounded before any job exists.

The engine hands each prompt to Compel, whose syntax weights words:
``word+`` (×1.1 per sign), ``word-`` (×0.9), ``(words)1.3``, ``"words"++``,
``(words).attend(1.3)``, nested groups multiplying, and at the top level
``("a", "b").blend(1, 1)`` and ``("a", "b").and(1, 2)``.  A weight scales how
far a token's embedding lies from the empty prompt's, so ``cat`` with 240
plus signs (1.1**240 = 8.8e9) pushes the embeddings past float16's range
(a black or garbage picture on most GPUs), and ``(cat)`` followed by forty
ones past float32's.  The bot and the worker therefore refuse any prompt
in which one fragment's effective weight, every factor multiplied, leaves
:data:`MIN_PROMPT_WEIGHT`..:data:`MAX_PROMPT_WEIGHT`.

This module is torch-free (the bot has neither torch nor Compel), so it
reads the syntax itself: :class:`_CompelSyntax` follows Compel 2.5's
pyparsing grammar (``compel/prompt_parser.py``) rule for rule, ordered
choices and whitespace included, with a memo per position as pyparsing's
packrat cache would keep.  ``tests/mmpp/test_prompts.py`` checks it against
Compel's own parser on generated prompts.  Compel's grammar is exponential
in the nesting depth of parentheses without that cache (six levels take
seconds), so nesting is bounded too.
"""

from __future__ import annotations

import functools
import math
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from mmpp.errors import ErrorCode, MmppError

#: The effective weight of every fragment of a prompt stays within these bounds.  Above about 2 a weight
#: already burns its word into the picture; 3 leaves room for a nested emphasis and stays far inside
#: float16 for every text encoder's output.  Below 0 a down-weighting turns into a division by zero.
MIN_PROMPT_WEIGHT = 0.0
MAX_PROMPT_WEIGHT = 3.0
#: Parentheses nested deeper than this are refused (Compel's parser slows down exponentially with depth).
MAX_PROMPT_NESTING = 8

#: Compel's syntax characters (``syntactic_symbols``) and its signs' bases.
_SYNTAX = frozenset('()",.+-=')
_PLUS_BASE, _MINUS_BASE = 1.1, 0.9
#: pyparsing skips these between tokens (``ParserElement.DEFAULT_WHITE_CHARS``) and ``White()`` matches them.
_SKIPPED = frozenset(" \n\t\r")
#: A word's characters exclude these (``CharsNotIn(string.whitespace + syntactic_chars)``).
_WORD_BREAKS = frozenset(string.whitespace) | _SYNTAX
#: ``pyparsing_common.real`` (``\d`` as Python reads it, so other scripts' digits count) and ``-?\d+`` of ASCII.
_REAL = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+)")
_INTEGER = re.compile(r"-?[0-9]+")
_KEYWORD = re.compile(r"[A-Za-z0-9_-]+")
#: ``QuotedString('"', esc_quote='\\"')`` and its unquoting of pyparsing 3.3 (quirks kept: ``\x?2``, ``\u?4``).
_QUOTED = re.compile(r'"(?:(?:\\")|(?:[^"\n\r]))*"')
_UNQUOTE = re.compile(r"(\\t|\\n|\\f|\\r)|(\\[0-7]3|\\0|\\x[0-9a-fA-F]2|\\u[0-9a-fA-F]4)|(.)|(\n|.)")
_UNQUOTED_SPACES = {"\\t": "\t", "\\n": "\n", "\\f": "\f", "\\r": "\r"}

#: Compel's operators on a group (``("a", "b").blend(1, 1)``, ``.and()``, ``(word).attend(1.2)``, ``.swap()``).
_COMPEL_OPERATOR = re.compile(r"\)\s*\.\s*(?:blend|and|attend|swap)\s*\(")

T = TypeVar("T")


def clean_prompt(prompt: str) -> str:
    """Drop control characters and squeeze whitespace; Compel syntax stays."""
    return " ".join("".join(ch if ch.isprintable() else " " for ch in prompt).split())


@dataclass(frozen=True)
class WeightedText:
    """One fragment of a prompt and its weight, every factor that applies to it multiplied."""

    text: str
    weight: float


class _UnreadableError(Exception):
    """Compel would raise on this prompt instead of embedding it."""


Fragments = tuple[WeightedText, ...]
#: A rule's outcome: where it stopped and the fragments it read, or None where it does not match.
Match = tuple[int, Fragments] | None


class _CompelSyntax:
    """Compel's ``build_parser_syntax`` over one string; each method is the grammar rule of the same name."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._memo: dict[tuple[str, int], object] = {}

    def _remember(self, rule: str, position: int, compute: Callable[[], T]) -> T:
        key = (rule, position)
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]  # type: ignore[return-value]

    def skip(self, position: int) -> int:
        while position < len(self.text) and self.text[position] in _SKIPPED:
            position += 1
        return position

    def literal(self, position: int, word: str) -> int | None:
        """Where ``word`` ends if it follows (after skipped whitespace), else None."""
        position = self.skip(position)
        return position + len(word) if self.text.startswith(word, position) else None

    # ------------------------------------------------------------------ tokens

    def number(self, position: int) -> tuple[int, float] | None:
        position = self.skip(position)
        found = _REAL.match(self.text, position) or _INTEGER.match(self.text, position)
        return (found.end(), float(found.group())) if found else None

    def signs(self, position: int, sign: str) -> int | None:
        """``Word('+')`` or ``Word('-')`` right at ``position``: where the run of signs ends."""
        end = position
        while end < len(self.text) and self.text[end] == sign:
            end += 1
        return end if end > position else None

    def operator(self, position: int) -> tuple[int, float] | None:
        """``attention_weight_operator``: a run of ``+``, a run of ``-`` or a number, in that order of preference."""
        for sign, base in (("+", _PLUS_BASE), ("-", _MINUS_BASE)):
            end = self.signs(position, sign)
            if end is not None:
                return end, base ** (end - position)
        return self.number(position)

    def keyword(self, position: int) -> tuple[int, str] | None:
        position = self.skip(position)
        found = _KEYWORD.match(self.text, position)
        return (found.end(), found.group()) if found else None

    def word(self, start: int) -> Match:
        """``non_syntax_word``: escaped symbols, a sign before an ordinary character, other ordinary characters."""
        return self._remember("word", start, lambda: self._word(self.skip(start)))

    def _word(self, start: int) -> Match:
        text, end = self.text, start
        while end < len(text):
            character = text[end]
            if character == "\\" and end + 1 < len(text) and text[end + 1] in _SYNTAX:
                end += 2
            elif character in "+-":
                following = text[end + 1] if end + 1 < len(text) else None
                if following is None or following in _SKIPPED or following in _SYNTAX:
                    break
                end += 1
            elif character in _WORD_BREAKS:
                break
            else:
                end += 1
        return (end, (WeightedText(text[start:end], 1.0),)) if end > start else None

    def free_word(self, start: int) -> Match:
        """``CharsNotIn(string.whitespace)``, which skips no whitespace before it."""
        end = start
        while end < len(self.text) and self.text[end] not in string.whitespace:
            end += 1
        return (end, (WeightedText(self.text[start:end], 1.0),)) if end > start else None

    def white(self, start: int) -> int | None:
        end = start
        while end < len(self.text) and self.text[end] in _SKIPPED:
            end += 1
        return end if end > start else None

    # ------------------------------------------------------------------ fragments

    def quoted(self, start: int, as_prompt: bool = False) -> Match:
        """``quoted_fragment`` (its content read as a fragment) or, ``as_prompt``, ``quoted_prompt``."""
        return self._remember(f"quoted{as_prompt}", start, lambda: self._quoted(self.skip(start), as_prompt))

    def _quoted(self, start: int, as_prompt: bool) -> Match:
        found = _QUOTED.match(self.text, start)
        if found is None:
            return None
        content = unquote(found.group()[1:-1]).replace('"', '\\"')
        if not content.strip():
            return found.end(), (WeightedText("", 1.0),)
        inner = _CompelSyntax(content.expandtabs())
        if as_prompt:
            end, fragments = inner.prompt(0)
        else:
            end, fragments = inner.fragment(0, commas=True)
        if inner.skip(end) != len(inner.text):  # `+ StringEnd()`: the whole content or no quoted fragment
            return None
        return found.end(), fragments

    def parenthesized(self, start: int) -> Match:
        return self._remember("parenthesized", start, lambda: self._parenthesized(start))

    def _parenthesized(self, start: int) -> Match:
        opened = self.literal(start, "(")
        if opened is None:
            return None
        end, fragments = self.fragment(opened, commas=True)
        closed = self.literal(end, ")")
        return (closed, fragments) if closed is not None else None

    def target(self, start: int) -> Match:
        """``potential_operator_target``: a quoted fragment, a parenthesized one, or a bare word."""
        return self.quoted(start) or self.parenthesized(start) or self.word(start)

    def attention(self, start: int) -> Match:
        return self._remember("attention", start, lambda: self._explicit(start) or self._implicit(start))

    def _explicit(self, start: int) -> Match:
        """``target.attend(weight)``, whitespace allowed around each token."""
        target = self.target(start)
        if target is None:
            return None
        end = self.literal(target[0], ".attend")
        end = None if end is None else self.literal(end, "(")
        if end is None:
            return None
        operator = self.operator(self.skip(end))
        closed = None if operator is None else self.literal(operator[0], ")")
        if operator is None or closed is None:
            return None
        return closed, scaled(target[1], operator[1])

    def _implicit(self, start: int) -> Match:
        """``(words)1.3``, ``"words"+`` (no space before the weight), or ``word++``."""
        group = self.quoted(start) or self.parenthesized(start)
        if group is not None:
            operator = self.operator(group[0]) if self._adjacent(group[0]) else None
            if operator is not None:
                return operator[0], scaled(group[1], operator[1])
            # (MatchFirst: a group without a weight falls through to the bare-word form, which it is not.)
        word = self.word(start)
        if word is None or not self._adjacent(word[0]):
            return None
        for sign, base in (("+", _PLUS_BASE), ("-", _MINUS_BASE)):
            end = self.signs(word[0], sign)
            if end is not None:
                return end, scaled(word[1], base ** (end - word[0]))
        return None

    def _adjacent(self, position: int) -> bool:
        """``NotAny(White())``: no whitespace right here."""
        return not (position < len(self.text) and self.text[position] in _SKIPPED)

    def swap(self, start: int) -> Match:
        """``cross_attention_substitute``: ``target.swap(replacement, options)``; both sides keep their weights."""
        return self._remember("swap", start, lambda: self._swap(start))

    def _swap(self, start: int) -> Match:
        target = self.target(start)
        if target is None:
            return None
        end = self.literal(target[0], ".swap")
        end = None if end is None else self.literal(end, "(")
        if end is None:
            return None
        end, replacement = self.fragment(end, commas=False)
        comma = self.literal(end, ",")
        if comma is not None:
            end = self.options(comma)[0]
        closed = self.literal(end, ")")
        return (closed, target[1] + replacement) if closed is not None else None

    def lora(self, start: int) -> Match:
        """``withLora(name, weight)``: a LoRA request, which Compel reports but never applies to the embeddings."""
        end = self.literal(start, "useLora") or self.literal(start, "withLora")
        end = None if end is None else self.literal(end, "(")
        name = None if end is None else self.keyword(end)
        if name is None:
            return None
        end = name[0]
        comma = self.literal(end, ",")
        weight = None if comma is None else self.number(comma)
        if weight is not None:
            end = weight[0]
        closed = self.literal(end, ")")
        return (closed, ()) if closed is not None else None

    def fragment(self, start: int, commas: bool) -> tuple[int, Fragments]:
        """``fragment_including_commas_or_periods`` (or ``_excluding_commas``): zero or more parts."""
        return self._remember(f"fragment{commas}", start, lambda: self._fragment(start, commas))

    def _fragment(self, position: int, commas: bool) -> tuple[int, Fragments]:
        fragments: list[WeightedText] = []
        while True:
            part = (
                self.lora(position)
                or self.attention(position)
                or self.swap(position)
                or self.parenthesized(position)
                or self.quoted(position)
                or self.word(position)
            )
            if part is None and commas:
                mark = self.skip(position)
                if mark < len(self.text) and self.text[mark] in ",.":
                    part = mark + 1, (WeightedText(self.text[mark], 1.0),)
            if part is None:
                return position, tuple(fragments)
            position = part[0]
            fragments.extend(part[1])

    def prompt(self, position: int) -> tuple[int, Fragments]:
        """``prompt``: the top level, where anything else is a plain word up to the next whitespace."""
        fragments: list[WeightedText] = []
        while position < len(self.text):
            part = (
                self.swap(position)
                or self.lora(position)
                or self.attention(position)
                or self.quoted(position)
                or self.parenthesized(position)
                or self.free_word(position)
            )
            if part is None:
                space = self.white(position)
                if space is None:
                    break
                position = space
                continue
            position = part[0]
            fragments.extend(part[1])
        return position, tuple(fragments)

    # ------------------------------------------------------------------ the whole prompt

    def options(self, start: int) -> tuple[int, list[str]]:
        """``options``: ``name=value``, a number or a flag, separated by commas; each one's first token."""
        values: list[str] = []
        position = start
        while True:
            option = self._option(position if not values else self.literal(position, ","))
            if option is None:
                return position, values
            position, first = option
            values.append(first)

    def _option(self, position: int | None) -> tuple[int, str] | None:
        if position is None:
            return None
        name = self.keyword(position)
        if name is not None:
            equals = self.literal(name[0], "=")
            value = None if equals is None else (self.number(equals) or self.keyword(equals))
            if value is not None:
                return value[0], name[1]
        number = self.number(position)
        if number is not None:
            return number[0], str(number[1])
        return name

    def operands(self, start: int, operator: str | tuple[str, ...]) -> tuple[int, list[Fragments], list[str]] | None:
        """``(target, target, ...).operator(options)`` for ``.blend`` and ``.and``: each target's fragments."""
        opened = self.literal(start, "(")
        targets: list[Fragments] = []
        position = following = opened
        while following is not None:  # DelimitedList: a comma only counts when a target follows it
            target = self.target(following) or self.quoted(following, as_prompt=True)
            if target is None:
                break
            targets.append(target[1])
            position = target[0]
            following = self.literal(position, ",")
        if not targets or position is None:
            return None
        position = self.literal(position, ")")
        names = (operator,) if isinstance(operator, str) else operator
        after = (
            None
            if position is None
            else next((end for name in names if (end := self.literal(position, name)) is not None), None)
        )
        opened = None if after is None else self.literal(after, "(")
        if opened is None:
            return None
        end, values = self.options(opened)
        closed = self.literal(end, ")")
        return (closed, targets, values) if closed is not None else None

    def conjunction(self) -> Fragments:
        """Every fragment of the whole prompt with the weight it is embedded with (``parse_conjunction``)."""
        explicit = self.operands(0, (".and", ".add"))
        if explicit is not None:  # (trailing text after it is ignored, as parse_string ignores it)
            _, targets, values = explicit
            return weighted_parts(targets, [_option_weight(value) for value in values])
        position = self._loras(0)
        blend = self.operands(position, ".blend")
        if blend is not None:
            end, targets, values = blend
            if self.skip(self._loras(end)) != len(self.text):
                raise _UnreadableError("a blend followed by more text")
            normalize = not values or values[-1] != "no_normalize"
            weights = [_option_weight(value) for value in (values if normalize else values[:-1])]
            if not weights:
                weights = [1.0] * len(targets)
            if len(weights) != len(targets):
                raise _UnreadableError("a blend with as many weights as prompts")
            if normalize:
                total = sum(weights)
                if total == 0:
                    return tuple(WeightedText(item.text, math.inf) for target in targets for item in target)
                weights = [weight / total for weight in weights]
            if any(weight < 0 for weight in weights):
                return tuple(WeightedText(item.text, min(weights)) for target in targets for item in target)
            factor = sum(weights)  # the blend is a weighted sum of its prompts' embeddings
            return tuple(WeightedText(item.text, item.weight * factor) for target in targets for item in target)
        end, fragments = self.prompt(position)
        if self.skip(self._loras(end)) != len(self.text):
            raise _UnreadableError("text after the prompt")
        return fragments

    def _loras(self, position: int) -> int:
        while (lora := self.lora(position)) is not None:
            position = lora[0]
        return position


def _option_weight(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise _UnreadableError(f"a weight {value!r}") from None


def weighted_parts(parts: list[Fragments], weights: list[float]) -> Fragments:
    """``.and()``: each part embedded with its weight (all 1 when none is given)."""
    if not weights:
        weights = [1.0] * len(parts)
    if len(weights) != len(parts):
        raise _UnreadableError("a conjunction with as many weights as prompts")
    return tuple(
        WeightedText(item.text, item.weight * weight)
        for part, weight in zip(parts, weights, strict=True)
        for item in part
    )


def scaled(fragments: Fragments, weight: float) -> Fragments:
    return tuple(WeightedText(item.text, item.weight * weight) for item in fragments)


def unquote(content: str) -> str:
    """What pyparsing's ``QuotedString`` makes of a quoted fragment's content (then ``\\"`` becomes ``"``)."""

    def convert(found: re.Match[str]) -> str:
        if found.group(1):
            return _UNQUOTED_SPACES[found.group(1)]
        if found.group(2):
            escaped = found.group(2)[1:]
            if escaped == "0":
                return "\0"
            if escaped.isdigit() and len(escaped) == 3:
                return chr(int(escaped, 8))
            if escaped.startswith(("u", "x")):
                return chr(int(escaped[1:], 16))
            return escaped
        return found.group(3) or found.group(4)

    return _UNQUOTE.sub(convert, content).replace('\\"', '"')


def nesting_depth(prompt: str) -> int:
    """How deep parentheses nest (escaped ones aside), matched or not: what Compel's parser pays for."""
    depth = deepest = 0
    escaped = False
    for character in prompt:
        if escaped:
            escaped = False
        elif character == "\\":
            escaped = True
        elif character == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif character == ")":
            depth = max(0, depth - 1)
    return deepest


def prompt_weights(prompt: str) -> tuple[WeightedText, ...]:
    """Every fragment of ``prompt`` with the weight Compel embeds it with; raises INVALID_REQUEST where
    Compel could not read the prompt at all, or would take too long to."""
    depth = nesting_depth(prompt)
    if depth > MAX_PROMPT_NESTING:
        raise MmppError(
            ErrorCode.INVALID_REQUEST,
            f"The prompt nests parentheses {depth} deep; the limit is {MAX_PROMPT_NESTING}.",
        )
    prompt = re.sub(r",(\S)", r", \1", prompt)  # as Compel does before parsing
    if not prompt.strip():
        return ()
    try:
        return _CompelSyntax(prompt.expandtabs()).conjunction()
    except _UnreadableError:
        raise MmppError(
            ErrorCode.INVALID_REQUEST, "The prompt's weighting syntax could not be read; check its parentheses."
        ) from None


@functools.lru_cache(maxsize=4096)
def _first_fragment_out_of_bounds(prompt: str) -> WeightedText | None:
    """Memoised: most orders carry no prompt of their own, so the same few rendered style prompts are read on
    every command, on the bot's event loop before the platform is answered (about 3 ms a read)."""
    for fragment in prompt_weights(prompt):
        if not MIN_PROMPT_WEIGHT <= fragment.weight <= MAX_PROMPT_WEIGHT:
            return fragment
    return None


def has_prompt_weights(prompt: str) -> bool:
    """Whether Compel would weight any part of ``prompt`` (or could not read it): families that read prompts as
    plain words (FLUX.2 [klein]'s Qwen3) would take its signs and parentheses literally."""
    if _COMPEL_OPERATOR.search(prompt):
        return True
    try:
        return any(fragment.weight != 1.0 for fragment in prompt_weights(prompt))
    except MmppError:
        return True


def check_prompt_weights(prompt: str) -> None:
    """Refuse (INVALID_REQUEST, one line) a prompt with a fragment weighted outside the bounds."""
    fragment = _first_fragment_out_of_bounds(prompt)
    if fragment is not None:
        words = " ".join(fragment.text.split())
        shown = words if len(words) <= 30 else words[:29] + "…"
        raise MmppError(
            ErrorCode.INVALID_REQUEST,
            f"Prompt weights must stay between {MIN_PROMPT_WEIGHT:g} and {MAX_PROMPT_WEIGHT:g}; "
            f"'{shown}' would weigh {fragment.weight:.3g}.",
        )

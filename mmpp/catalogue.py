"""The style catalogue: its schema, and loading and validating ``styles.toml``.

Styles are data so that operators can add one without touching code; the
price is validation at load time, with errors that name the style and the
field, because a typo found by the first user who asks for that style is a
bad way to learn about it.  Part of the torch-free kernel: the bot reads the
same catalogue through the same code for its menus and its early
``UNKNOWN_STYLE`` answers, and the worker for generating, so the two can
never disagree about what a style is.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mmpp.contract import Mode
from mmpp.errors import ErrorCode, MmppError
from mmpp.prompts import check_prompt_weights, clean_prompt, has_prompt_weights

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
SUBJECT_PLACEHOLDER = "{subject}"
#: The variant that is the style exactly as its table is written; every style has it.
BASE_VARIANT = "base"
DEFAULT_SUBJECT = "a person"

#: Bounds for per-request overrides, per mode.  LCM degrades above guidance 2
#: and gains nothing past 8 steps; DPM-Solver++ needs at least ~15 steps.
STEP_BOUNDS = {Mode.FAST: (4, 8), Mode.QUALITY: (15, 50)}
GUIDANCE_BOUNDS = {Mode.FAST: (1.0, 2.0), Mode.QUALITY: (3.0, 12.0)}
SCALE_BOUNDS = {
    "style_scale": (0.0, 2.0),
    "portrait_scale": (0.0, 2.0),
    "ip_adapter_scale": (0.0, 1.5),
    "klein_lora_scale": (0.0, 2.0),
}
#: The engine families a worker runs, as ``mmpp eval --family`` and ``MMPP_FAMILY_QUEUES`` name them.  A variant
#: may name one (``family = "flux2-klein"``): its jobs then go to the workers of that family only.
FAMILIES = ("sd15", "sdxl", "flux2-klein")
#: The instruction-editing family (engine/klein.py): it paints the photo from ``edit_instruction``.
KLEIN_FAMILY = "flux2-klein"
#: Families whose text encoder reads plain words: a prompt with Compel's weighting is refused by their workers.
FAMILIES_WITHOUT_WEIGHTING = frozenset({KLEIN_FAMILY})
#: What each family does not read of a style, and why: a variant of that family overriding one of these would
#: change nothing in its pictures (and an experiment would compare a variant with itself), so it is refused.
_KLEIN_NO_ADAPTERS = "it has no portrait LoRA or IP-Adapter: the reference photo carries the person"
_KLEIN_NO_PROMPT = "it paints from edit_instruction (plain words; Compel's weighting is read by the SD families only)"
_KLEIN_OWN_STEPS = "it takes its own steps and guidance (engine/klein.py)"
FIELDS_FAMILY_IGNORES: dict[str, dict[str, str]] = {
    KLEIN_FAMILY: {
        "portrait_scale": _KLEIN_NO_ADAPTERS,
        "ip_adapter_scale": _KLEIN_NO_ADAPTERS,
        "prompt": _KLEIN_NO_PROMPT,
        "negative_prompt": _KLEIN_NO_PROMPT,
        "style_scale": "its style LoRA's weight is klein_lora_scale",
        **dict.fromkeys(("fast_steps", "fast_guidance", "quality_steps", "quality_guidance"), _KLEIN_OWN_STEPS),
    },
    **{
        family: dict.fromkeys(
            ("edit_instruction", "klein_lora_scale"), f"only {KLEIN_FAMILY} reads it; {family} paints from the prompt"
        )
        for family in ("sd15", "sdxl")
    },
}


def default_catalogue_path() -> Path:
    """The catalogue shipped with the code; ``MMPP_STYLES_FILE`` names another."""
    return Path(__file__).with_name("styles.toml")


class CatalogueError(ValueError):
    """The catalogue file is wrong; the message names the style and field."""


@dataclass(frozen=True)
class Style:
    name: str
    display_name: str
    emoji: str
    description: str
    prompt: str
    negative_prompt: str
    lora: str | None
    style_scale: float
    portrait_scale: float
    ip_adapter_scale: float
    mode: Mode
    fast_steps: int
    fast_guidance: float
    quality_steps: int
    quality_guidance: float
    #: What instruction-editing families (FLUX.2 [klein]) are told to do to the photo: plain words, no
    #: weighting syntax (only Compel reads it).  Empty: the style is unavailable on those workers.
    edit_instruction: str = ""
    #: The klein family's own style LoRA and its weight (an SD LoRA cannot load into a FLUX transformer).
    klein_lora: str | None = None
    klein_lora_scale: float = 1.0
    #: Which of the style's variants this is: ``base`` for the table as written.
    variant: str = BASE_VARIANT
    #: The engine family that must render it (one of :data:`FAMILIES`), set by a variant only; "" is whatever
    #: family the workers of the bot's own queue (``MMPP_QUEUE``) run, as every style as written.
    family: str = ""
    #: The style's other variants, each a whole validated style that differs in the fields it overrides.
    #: Only the base style carries them, so that a variant cannot name variants of its own.
    other_variants: Mapping[str, Style] = field(default_factory=dict, compare=False, repr=False)

    @property
    def variant_names(self) -> tuple[str, ...]:
        """``base`` first, then the catalogue's variants in file order."""
        return (BASE_VARIANT, *self.other_variants)

    def with_variant(self, name: str | None) -> Style:
        """This style with a variant's overrides applied; ``None``, ``""`` and ``base`` are the style as written.

        The bot names the variant in the job and the worker resolves it here, against the same catalogue,
        so both agree on what the variant's scales and steps are without the job carrying them."""
        if not name or name == BASE_VARIANT:
            return self
        try:
            return self.other_variants[name]
        except KeyError:
            raise MmppError(
                ErrorCode.INVALID_REQUEST,
                f"The style '{self.name}' has no variant '{name[:40]}'; it has: {', '.join(self.variant_names)}.",
            ) from None

    def render_prompt(self, subject: str) -> str:
        return self.prompt.replace(SUBJECT_PLACEHOLDER, subject.strip() or DEFAULT_SUBJECT)

    def compose_prompt(self, subject: str) -> str:
        """The prompt Compel embeds for a person's ``subject`` (cleaned) in this style, checked as a whole:
        the template's weights multiply the subject's where it sits inside a weighted group.  Raises
        INVALID_REQUEST when a weight leaves the bounds of :mod:`mmpp.prompts`; the bot asks this before a
        job exists, the worker again before it embeds anything."""
        prompt = self.render_prompt(clean_prompt(subject))
        check_prompt_weights(prompt)
        return prompt

    def default_steps(self, mode: Mode) -> int:
        return self.fast_steps if mode is Mode.FAST else self.quality_steps

    def default_guidance(self, mode: Mode) -> float:
        return self.fast_guidance if mode is Mode.FAST else self.quality_guidance


class Catalogue:
    """The styles, by name, in file order."""

    def __init__(self, styles: list[Style]) -> None:
        self._styles = {style.name: style for style in styles}

    def __iter__(self) -> Iterator[Style]:
        return iter(self._styles.values())

    def __len__(self) -> int:
        return len(self._styles)

    def __contains__(self, name: object) -> bool:
        return name in self._styles

    @property
    def names(self) -> list[str]:
        return list(self._styles)

    def get(self, name: str) -> Style:
        key = name.strip().lower()
        if key in self._styles:
            return self._styles[key]
        raise MmppError(
            ErrorCode.UNKNOWN_STYLE,
            f"There is no style called '{name[:40]}'; choose one of: {', '.join(self._styles)}.",
        )


def load_catalogue(path: Path | None = None) -> Catalogue:
    path = path or default_catalogue_path()
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CatalogueError(f"{path}: the style catalogue does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise CatalogueError(f"{path}: not valid TOML: {error}") from None
    return parse_catalogue(document, source=str(path))


def parse_catalogue(document: dict[str, Any], source: str = "styles.toml") -> Catalogue:
    defaults = document.get("defaults", {})
    if not isinstance(defaults, dict):
        raise CatalogueError(f"{source}: [defaults] must be a table")
    unknown_tables = set(document) - {"defaults", "styles"}
    if unknown_tables:
        raise CatalogueError(f"{source}: unknown top-level tables {sorted(unknown_tables)}")
    styles_table = document.get("styles")
    if not isinstance(styles_table, dict) or not styles_table:
        raise CatalogueError(f"{source}: no [styles.NAME] tables found")
    styles = [_parse_style(name, table, defaults, source) for name, table in styles_table.items()]
    return Catalogue(styles)


_KNOWN_FIELDS = {
    "display_name",
    "emoji",
    "description",
    "prompt",
    "negative_prompt",
    "lora",
    "style_scale",
    "portrait_scale",
    "ip_adapter_scale",
    "mode",
    "fast_steps",
    "fast_guidance",
    "quality_steps",
    "quality_guidance",
    "edit_instruction",
    "klein_lora",
    "klein_lora_scale",
    "variants",
}
#: What a variant may change: the settings that decide how the picture looks, not how the style is
#: presented or which LoRA file it loads (a different LoRA is a different style).
VARIANT_FIELDS = frozenset(
    {
        "prompt",
        "negative_prompt",
        "style_scale",
        "portrait_scale",
        "ip_adapter_scale",
        "fast_steps",
        "fast_guidance",
        "quality_steps",
        "quality_guidance",
        "edit_instruction",
        "klein_lora_scale",
        "family",
    }
)


def _parse_style(name: str, table: Any, defaults: dict[str, Any], source: str) -> Style:
    """A style and its variants; a variant is the style's table with its overrides, validated the same way."""

    def fail(field: str, problem: str) -> CatalogueError:
        return CatalogueError(f"{source}: style '{name}', field '{field}': {problem}")

    if not NAME_PATTERN.match(name):
        raise fail("name", "use 1-32 lower-case letters, digits and '-'")
    if not isinstance(table, dict):
        raise fail("name", "must be a table")
    if "family" in table:
        raise fail("family", "is set per variant ([styles.NAME.variants.VARIANT]); the style as written runs on "
                   "whatever family the workers of MMPP_QUEUE run")  # fmt: skip
    unknown = set(table) - _KNOWN_FIELDS
    if unknown:
        raise fail(sorted(unknown)[0], f"unknown field (known: {', '.join(sorted(_KNOWN_FIELDS))})")
    variants_table = table.get("variants", {})
    if not isinstance(variants_table, dict):
        raise fail("variants", "must be a table of [styles.NAME.variants.VARIANT] tables")
    table = {key: value for key, value in table.items() if key != "variants"}
    base = _parse_fields(name, table, defaults, source, fail)
    variants: dict[str, Style] = {}
    for variant_name, overrides in variants_table.items():

        def fail_variant(field: str, problem: str, variant_name: str = variant_name) -> CatalogueError:
            return CatalogueError(f"{source}: style '{name}', variant '{variant_name}', field '{field}': {problem}")

        if not NAME_PATTERN.match(variant_name) or variant_name == BASE_VARIANT:
            raise fail_variant("name", f"use 1-32 lower-case letters, digits and '-', other than '{BASE_VARIANT}'")
        if not isinstance(overrides, dict) or not overrides:
            raise fail_variant("name", "must be a table that overrides at least one field")
        not_variable = set(overrides) - VARIANT_FIELDS
        if not_variable:
            raise fail_variant(
                sorted(not_variable)[0], f"a variant may override only: {', '.join(sorted(VARIANT_FIELDS))}"
            )
        variant = _parse_fields(name, {**table, **overrides}, defaults, source, fail_variant)
        variant = replace(variant, family=_variant_family(overrides, variant, fail_variant))
        if variant == base:
            raise fail_variant(sorted(overrides)[0], "changes nothing: every override equals the style's own value")
        variants[variant_name] = replace(variant, variant=variant_name)
    return replace(base, other_variants=variants)


def _variant_family(overrides: dict[str, Any], variant: Style, fail: Callable[[str, str], CatalogueError]) -> str:
    """A variant's ``family``, checked against what that family can honour: a known family, no override of a
    field it does not read (:data:`FIELDS_FAMILY_IGNORES`), and for klein an edit instruction to paint from."""
    family = overrides.get("family")
    if family is None:
        return ""
    if not isinstance(family, str) or family not in FAMILIES:
        raise fail("family", f"must be one of {', '.join(FAMILIES)}, not {str(family)[:40]!r}")
    ignored = FIELDS_FAMILY_IGNORES.get(family, {})
    unread = sorted(set(overrides) & set(ignored))
    if unread:
        raise fail(unread[0], f"a {family} variant cannot override it: {ignored[unread[0]]}")
    if family == KLEIN_FAMILY and not variant.edit_instruction:
        raise fail("family", f"a {family} variant needs an edit_instruction (its style's or its own) to paint from")
    return family


def _parse_fields(
    name: str,
    table: dict[str, Any],
    defaults: dict[str, Any],
    source: str,
    fail: Callable[[str, str], CatalogueError],
) -> Style:
    """One style's fields, validated; shared by a style and each of its variants so a variant is held to
    exactly the bounds its style is."""
    merged = {**defaults, **table}

    def text(field: str, *, required: bool = True, max_length: int = 400) -> str:
        value = merged.get(field)
        if value is None:
            if required:
                raise fail(field, "is missing")
            return ""
        if not isinstance(value, str) or (required and not value.strip()):
            raise fail(field, "must be a non-empty string")
        if len(value) > max_length:
            raise fail(field, f"is longer than {max_length} characters")
        return value.strip()

    def number(field: str, low: float, high: float, *, integer: bool = False) -> float:
        value = merged.get(field)
        if value is None:
            raise fail(field, "is missing")
        if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
            raise fail(field, f"must be {'an integer' if integer else 'a number'}")
        if not low <= value <= high:
            raise fail(field, f"must lie between {low:g} and {high:g}, not {value}")
        return value

    prompt = text("prompt")
    if SUBJECT_PLACEHOLDER not in prompt:
        raise fail("prompt", f"must contain the placeholder {SUBJECT_PLACEHOLDER}")
    negative_prompt = text("negative_prompt", required=False)
    for field_name, template in (
        ("prompt", prompt.replace(SUBJECT_PLACEHOLDER, DEFAULT_SUBJECT)),
        ("negative_prompt", negative_prompt),
    ):
        try:
            check_prompt_weights(template)
        except MmppError as error:
            raise fail(field_name, error.message) from None
    mode_text = text("mode")
    try:
        mode = Mode(mode_text)
    except ValueError:
        raise fail("mode", f"must be 'fast' or 'quality', not '{mode_text}'") from None
    lora = merged.get("lora")
    if lora is not None and (not isinstance(lora, str) or not lora.strip()):
        raise fail("lora", "must be 'hub/repo:file.safetensors' or a local path")
    klein_lora = merged.get("klein_lora")
    if klein_lora is not None and (not isinstance(klein_lora, str) or not klein_lora.strip()):
        raise fail("klein_lora", "must be 'hub/repo:file.safetensors' or a local path")
    edit_instruction = text("edit_instruction", required=False, max_length=600)
    if edit_instruction and has_prompt_weights(edit_instruction):
        raise fail("edit_instruction", "must be plain words: weighting syntax like 'word++' or '(word)1.2' is read "
                   "only by the SD families' Compel")  # fmt: skip
    return Style(
        name=name,
        display_name=text("display_name", max_length=40),
        emoji=text("emoji", max_length=8),
        description=text("description", max_length=120),
        prompt=prompt,
        negative_prompt=negative_prompt,
        lora=lora.strip() if lora else None,
        style_scale=float(number("style_scale", *SCALE_BOUNDS["style_scale"])),
        portrait_scale=float(number("portrait_scale", *SCALE_BOUNDS["portrait_scale"])),
        ip_adapter_scale=float(number("ip_adapter_scale", *SCALE_BOUNDS["ip_adapter_scale"])),
        mode=mode,
        fast_steps=int(number("fast_steps", *STEP_BOUNDS[Mode.FAST], integer=True)),
        fast_guidance=float(number("fast_guidance", *GUIDANCE_BOUNDS[Mode.FAST])),
        quality_steps=int(number("quality_steps", *STEP_BOUNDS[Mode.QUALITY], integer=True)),
        quality_guidance=float(number("quality_guidance", *GUIDANCE_BOUNDS[Mode.QUALITY])),
        edit_instruction=edit_instruction,
        klein_lora=klein_lora.strip() if klein_lora else None,
        klein_lora_scale=float(number("klein_lora_scale", *SCALE_BOUNDS["klein_lora_scale"]))
        if "klein_lora_scale" in merged
        else 1.0,
    )

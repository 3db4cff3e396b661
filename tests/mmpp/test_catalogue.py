"""The style catalogue: the shipped file is valid, and mistakes are named."""

from __future__ import annotations

import tomllib

import pytest

from mmpp.catalogue import CatalogueError, default_catalogue_path, load_catalogue, parse_catalogue
from mmpp.contract import Mode
from mmpp.errors import ErrorCode, MmppError

ASKED_FOR = [
    "anime",
    "watercolor",
    "oil-painting",
    "3d-cartoon",
    "pixel-art",
    "pencil-sketch",
    "cyberpunk",
    "pop-art",
    "headshot",
    "fantasy",
]


def test_the_shipped_catalogue_has_the_styles_people_ask_for() -> None:
    catalogue = load_catalogue()
    assert len(catalogue) >= 10
    for name in ASKED_FOR:
        style = catalogue.get(name)
        assert style.display_name and style.emoji and style.description
        assert "{subject}" not in style.render_prompt("a person") and "a person" in style.render_prompt("")
        assert style.negative_prompt
        assert style.mode in (Mode.FAST, Mode.QUALITY)


def test_every_shipped_style_tells_instruction_editing_families_to_keep_the_person() -> None:
    catalogue = load_catalogue()
    assert len(catalogue) == 12
    for style in catalogue:
        instruction = style.edit_instruction.lower()
        assert "person in this photo" in instruction or "this photo" in instruction, style.name
        for kept in ("face", "hair", "expression", "glasses"):
            assert kept in instruction, (style.name, kept)
    assert len({style.edit_instruction for style in catalogue}) == 12
    assert catalogue.get("anime").klein_lora is None and catalogue.get("anime").klein_lora_scale == 1.0


def test_lookup_is_case_insensitive_and_unknown_names_list_the_choices() -> None:
    catalogue = load_catalogue()
    assert catalogue.get(" Anime ").name == "anime"
    with pytest.raises(MmppError) as raised:
        catalogue.get("building")
    assert raised.value.code is ErrorCode.UNKNOWN_STYLE
    assert "anime" in raised.value.message


def shipped() -> dict:
    return tomllib.loads(default_catalogue_path().read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("field", "value", "complaint"),
    [
        ("style_scale", 5.0, "between"),
        ("ip_adapter_scale", "high", "number"),
        ("mode", "turbo", "fast' or 'quality"),
        ("prompt", "a portrait without placeholder", "{subject}"),
        ("prompt", "portrait of {subject}, (soft glow)5", "Prompt weights must stay between 0 and 3"),
        ("negative_prompt", "blurry" + "+" * 40, "Prompt weights must stay between 0 and 3"),
        ("fast_steps", 4.5, "integer"),
        ("colour", "red", "unknown field"),
        ("edit_instruction", "Turn the person into (anime)1.3", "plain words"),
        ("edit_instruction", "Turn the person into anime++", "plain words"),
        ("edit_instruction", 7, "non-empty string"),
        ("klein_lora_scale", 3.0, "between"),
        ("klein_lora", "", "local path"),
    ],
)
def test_a_bad_field_is_named_with_its_style(field: str, value: object, complaint: str) -> None:
    document = shipped()
    document["styles"]["watercolor"][field] = value
    with pytest.raises(CatalogueError) as raised:
        parse_catalogue(document)
    message = str(raised.value)
    assert "'watercolor'" in message and f"'{field}'" in message and complaint in message


def test_a_missing_field_and_a_bad_name_are_reported() -> None:
    document = shipped()
    del document["styles"]["anime"]["description"]
    with pytest.raises(CatalogueError, match="'anime', field 'description': is missing"):
        parse_catalogue(document)
    document = shipped()
    document["styles"]["Bad Name"] = document["styles"].pop("anime")
    with pytest.raises(CatalogueError, match="'Bad Name', field 'name'"):
        parse_catalogue(document)


def test_defaults_fill_in_and_a_style_may_override_them() -> None:
    catalogue = parse_catalogue(shipped())
    assert catalogue.get("watercolor").negative_prompt == shipped()["defaults"]["negative_prompt"]
    assert catalogue.get("anime").negative_prompt.startswith("photo")
    assert catalogue.get("anime").fast_steps == shipped()["defaults"]["fast_steps"]


def test_a_broken_file_is_reported_with_its_path(tmp_path) -> None:
    broken = tmp_path / "styles.toml"
    broken.write_text("[styles.anime\n")
    with pytest.raises(CatalogueError, match="not valid TOML"):
        load_catalogue(broken)
    with pytest.raises(CatalogueError, match="does not exist"):
        load_catalogue(tmp_path / "missing.toml")


def test_a_variant_is_its_style_with_only_its_overrides_changed() -> None:
    anime = load_catalogue().get("anime")
    assert anime.variant == "base" and anime.variant_names == ("base", "more-likeness")
    variant = anime.with_variant("more-likeness")
    assert (variant.name, variant.variant) == ("anime", "more-likeness")
    assert (variant.style_scale, variant.ip_adapter_scale) == (0.7, 0.7)
    assert (anime.style_scale, anime.ip_adapter_scale) == (0.8, 0.6)
    assert (variant.prompt, variant.portrait_scale, variant.lora) == (anime.prompt, anime.portrait_scale, anime.lora)
    assert anime.with_variant("") is anime and anime.with_variant("base") is anime
    assert variant.variant_names == ("base",)  # a variant names no variants of its own
    with pytest.raises(MmppError) as raised:
        anime.with_variant("louder")
    assert raised.value.code is ErrorCode.INVALID_REQUEST
    assert "more-likeness" in raised.value.message


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"style_scale": 3.0}, "between"),
        ({"lora": "other/repo:x.safetensors"}, "may override only"),
        ({"display_name": "Louder"}, "may override only"),
        ({}, "at least one field"),
        ({"style_scale": 0.7}, "changes nothing"),
        ({"prompt": "anime of a cat"}, "{subject}"),
    ],
)
def test_a_bad_variant_is_named_with_its_style_and_field(overrides: dict, complaint: str) -> None:
    document = shipped()
    document["styles"]["watercolor"]["variants"] = {"louder": overrides}
    with pytest.raises(CatalogueError) as raised:
        parse_catalogue(document)
    message = str(raised.value)
    assert "style 'watercolor', variant 'louder'" in message and complaint in message


def test_a_variant_cannot_be_called_base() -> None:
    document = shipped()
    document["styles"]["watercolor"]["variants"] = {"base": {"style_scale": 0.5}}
    with pytest.raises(CatalogueError, match="other than 'base'"):
        parse_catalogue(document)


def test_a_variant_may_name_the_engine_family_that_paints_it() -> None:
    headshot = load_catalogue().get("headshot")
    assert headshot.family == "" and headshot.variant_names == ("base", "photo-edit")
    edit = headshot.with_variant("photo-edit")
    assert edit.family == "flux2-klein" and edit.edit_instruction == headshot.edit_instruction
    # The family alone makes it a variant: the same settings painted by another model.
    assert edit != headshot


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"family": "flux3"}, "must be one of sd15, sdxl, flux2-klein"),
        ({"family": 2}, "must be one of"),
        ({"family": "flux2-klein", "portrait_scale": 0.3}, "has no portrait LoRA or IP-Adapter"),
        ({"family": "flux2-klein", "prompt": "a {subject}"}, "paints from edit_instruction"),
        ({"family": "flux2-klein", "fast_steps": 6}, "its own steps"),
        ({"family": "sd15", "edit_instruction": "Make it blue, keep the face."}, "sd15 paints from the prompt"),
        ({"family": "sdxl", "klein_lora_scale": 0.5}, "only flux2-klein reads it"),
    ],
)
def test_a_family_variant_may_override_only_what_its_family_reads(overrides: dict, complaint: str) -> None:
    document = shipped()
    document["styles"]["watercolor"]["variants"] = {"other-model": overrides}
    with pytest.raises(CatalogueError) as raised:
        parse_catalogue(document)
    message = str(raised.value)
    assert "style 'watercolor', variant 'other-model'" in message and complaint in message


def test_a_klein_variant_needs_an_instruction_and_a_style_itself_names_no_family() -> None:
    document = shipped()
    del document["styles"]["watercolor"]["edit_instruction"]
    document["styles"]["watercolor"]["variants"] = {"other-model": {"family": "flux2-klein"}}
    with pytest.raises(CatalogueError, match="needs an edit_instruction"):
        parse_catalogue(document)
    document = shipped()
    document["styles"]["watercolor"]["family"] = "flux2-klein"
    with pytest.raises(CatalogueError, match="is set per variant"):
        parse_catalogue(document)
    # A klein variant may change what klein reads.
    document = shipped()
    document["styles"]["watercolor"]["variants"] = {
        "other-model": {"family": "flux2-klein", "klein_lora_scale": 0.6, "edit_instruction": "Paint it softer."}
    }
    variant = parse_catalogue(document).get("watercolor").with_variant("other-model")
    assert (variant.family, variant.klein_lora_scale) == ("flux2-klein", 0.6)

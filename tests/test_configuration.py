"""Every setting is documented in .env.example, and the deployment files parse."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from bot.settings import BotSettings
from engine.settings import EngineSettings
from mmpp.errors import ErrorCode, MmppError

REPO = Path(__file__).resolve().parents[1]


def documented() -> set[str]:
    text = (REPO / ".env.example").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE))


def variable_names(settings_class: type) -> set[str]:
    names = set()
    for name, field in settings_class.model_fields.items():
        alias = field.validation_alias
        choices = getattr(alias, "choices", None)
        names.add(str(choices[0]) if choices else f"MMPP_{name.upper()}")
    return names


def test_every_setting_is_in_env_example() -> None:
    missing = (variable_names(EngineSettings) | variable_names(BotSettings)) - documented()
    assert not missing, f"document these in .env.example: {sorted(missing)}"


def test_docker_compose_has_the_services_and_gpu_reservation() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "worker", "discord-bot", "telegram-bot", "flower"} <= set(services)
    assert "--appendonly" in services["redis"]["command"] and "noeviction" in services["redis"]["command"]
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert services["flower"]["profiles"] == ["monitoring"]
    # PostgreSQL only with its profile; the bots wait for it when it runs and start without it otherwise.
    assert services["postgres"]["profiles"] == ["postgres"]
    bot_waits_for = services["discord-bot"]["depends_on"]["postgres"]
    assert bot_waits_for == {"condition": "service_healthy", "required": False}
    for bot in ("discord-bot", "telegram-bot"):
        assert services[bot]["build"]["dockerfile"] == "docker/bot.Dockerfile"
    assert "torch" not in (REPO / "requirements-bot.txt").read_text().replace("no torch", "")


def test_the_weights_setting_reads_its_old_name_for_one_release(monkeypatch) -> None:
    from engine.settings import EngineSettings

    monkeypatch.delenv("MMPP_WEIGHTS", raising=False)
    monkeypatch.setenv("MMPP_MODEL_PROFILE", "tiny-sdxl")
    assert EngineSettings(_env_file=None).weights == "tiny-sdxl"
    monkeypatch.setenv("MMPP_WEIGHTS", "tiny")
    assert EngineSettings(_env_file=None).weights == "tiny", "the new name wins"
    assert EngineSettings(_env_file=None, weights="default").weights == "default"


def test_the_compose_worker_serves_flux2_klein_with_one_line_uncommented() -> None:
    """The documented switch to FLUX.2 [klein] 4B is one commented line of the worker's environment, naming the
    Hub id the README's download line and .env.example name; as shipped, the worker keeps .env's SD default."""
    from engine.models import KLEIN_4B_HUB_ID

    text = (REPO / "docker-compose.yml").read_text()
    switch = f"# MMPP_BASE_MODEL: {KLEIN_4B_HUB_ID}"
    assert text.count(switch) == 1
    shipped = yaml.safe_load(text)["services"]
    klein = yaml.safe_load(text.replace(switch, switch.removeprefix("# ")))["services"]
    assert "MMPP_BASE_MODEL" not in shipped["worker"]["environment"]
    assert klein["worker"]["environment"].pop("MMPP_BASE_MODEL") == KLEIN_4B_HUB_ID
    assert klein == shipped  # nothing else changed, in the worker or elsewhere
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert f"hf download {KLEIN_4B_HUB_ID} " in readme and f"MMPP_BASE_MODEL={KLEIN_4B_HUB_ID} " in readme
    env_example = (REPO / ".env.example").read_text(encoding="utf-8")
    assert f"hf download {KLEIN_4B_HUB_ID} " in env_example and f"MMPP_BASE_MODEL={KLEIN_4B_HUB_ID}\n" in env_example


def test_the_database_is_the_sqlite_file_unless_a_postgresql_url_is_set() -> None:
    assert BotSettings(_env_file=None, database=Path("var/x.sqlite3")).database_location == Path("var/x.sqlite3")
    url = "postgresql://mmpp:s3cret@db-host:5432/mmpp"
    settings = BotSettings(_env_file=None, database_url=f" {url} ")
    assert settings.database_location == url and "s3cret" in settings.secrets()  # kept out of every log line
    with pytest.raises(MmppError) as refused:
        _ = BotSettings(_env_file=None, database_url="sqlite:///var/mmpp.sqlite3").database_location
    assert refused.value.code is ErrorCode.INVALID_REQUEST and "MMPP_DATABASE_URL must be a postgresql://" in (
        refused.value.message
    )

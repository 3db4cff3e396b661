"""Regenerate the vendored API-specification subsets from the full files in ``../shared/specs``.

Why a subset: the full Discord OpenAPI file is 1.2 MB and the Telegram one 0.9 MB, and the fakes need only the
routes and methods they implement (and what those reference). The suite must run on a fresh clone without
``../shared``, so the subsets are committed; this script is how they were made, so that a newer upstream file
can replace them with one command::

    .venv/bin/python tests/fakes/specs/vendor.py [--shared ../shared/specs]

Kept from Discord's file: for each route below, the path-level parameters and, for each method below, the
operation's ``operationId``, ``parameters``, ``requestBody`` and ``security``, with every schema they reference
through ``$ref`` (transitively). Responses are dropped: the fakes check what the bot sends, not what they answer.
Kept from Telegram's file: the methods below and every type their fields name (transitively, with subtypes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_SHARED = HERE.parents[3] / "shared" / "specs"

#: The Discord routes (OpenAPI path templates) and methods that tests/fakes/discord_api.py implements.
DISCORD_ROUTES: dict[str, tuple[str, ...]] = {
    "/gateway": ("get",),
    "/gateway/bot": ("get",),
    "/users/@me": ("get",),
    "/users/{user_id}": ("get",),
    "/users/@me/channels": ("post",),
    "/oauth2/applications/@me": ("get",),
    "/applications/@me": ("get",),
    "/applications/{application_id}/commands": ("get", "put"),
    "/applications/{application_id}/guilds/{guild_id}/commands": ("get", "put"),
    "/interactions/{interaction_id}/{interaction_token}/callback": ("post",),
    "/webhooks/{webhook_id}/{webhook_token}": ("post",),
    "/webhooks/{webhook_id}/{webhook_token}/messages/@original": ("get", "patch", "delete"),
    "/webhooks/{webhook_id}/{webhook_token}/messages/{message_id}": ("get", "patch", "delete"),
    "/guilds/{guild_id}": ("get",),
    "/channels/{channel_id}": ("get",),
    "/channels/{channel_id}/typing": ("post",),
    "/channels/{channel_id}/messages": ("get", "post"),
    "/channels/{channel_id}/messages/{message_id}": ("get", "patch", "delete"),
    "/channels/{channel_id}/messages/{message_id}/reactions/{emoji_name}/@me": ("put", "delete"),
}

#: The Bot API methods that tests/fakes/telegram_api.py implements.
TELEGRAM_METHODS: tuple[str, ...] = (
    "getMe", "getUpdates", "deleteWebhook", "getWebhookInfo", "setMyCommands", "getMyCommands",
    "deleteMyCommands", "getFile", "sendMessage", "editMessageText", "editMessageCaption",
    "editMessageReplyMarkup", "editMessageMedia", "sendPhoto", "sendDocument", "sendMediaGroup",
    "sendChatAction", "answerCallbackQuery", "setMessageReaction", "deleteMessage", "getChatMember",
    "getChatAdministrators", "getChatMember",
    "getChatAdministrators",
)  # fmt: skip

_OPERATION_KEYS = ("operationId", "parameters", "requestBody", "security")


def _schema_refs(node: Any) -> set[str]:
    """Names of the ``#/components/schemas/...`` entries a piece of the document points at."""
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            found.add(ref.removeprefix("#/components/schemas/"))
        for value in node.values():
            found |= _schema_refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= _schema_refs(value)
    return found


def discord_subset(full: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document cut down to :data:`DISCORD_ROUTES` and the schemas they reference."""
    paths: dict[str, Any] = {}
    for template, methods in DISCORD_ROUTES.items():
        source = full["paths"][template]
        kept: dict[str, Any] = {}
        if "parameters" in source:
            kept["parameters"] = source["parameters"]
        for method in methods:
            operation = source[method]
            kept[method] = {key: operation[key] for key in _OPERATION_KEYS if key in operation}
        paths[template] = kept
    all_schemas = full["components"]["schemas"]
    wanted = _schema_refs(paths)
    done: set[str] = set()
    while wanted - done:
        name = sorted(wanted - done)[0]
        done.add(name)
        wanted |= _schema_refs(all_schemas[name])
    return {
        "openapi": full["openapi"],
        "info": full["info"],
        "externalDocs": full.get("externalDocs"),
        "servers": full.get("servers"),
        "paths": paths,
        "components": {
            "schemas": {name: all_schemas[name] for name in sorted(done)},
            "securitySchemes": full["components"].get("securitySchemes", {}),
        },
    }


def _type_names(type_expression: str) -> str:
    """The type an expression names: ``Array of Array of InlineKeyboardButton`` names InlineKeyboardButton."""
    while type_expression.startswith("Array of "):
        type_expression = type_expression.removeprefix("Array of ")
    return type_expression


def telegram_subset(full: dict[str, Any]) -> dict[str, Any]:
    """The Bot API description cut down to :data:`TELEGRAM_METHODS` and the types they reference."""
    types = full["types"]
    methods = {name: full["methods"][name] for name in TELEGRAM_METHODS}
    pending = [
        _type_names(type_expression)
        for method in methods.values()
        for spec_field in method.get("fields", [])
        for type_expression in spec_field["types"]
    ]
    kept: set[str] = set()
    while pending:
        name = pending.pop()
        if name in kept or name not in types:
            continue  # a scalar (Integer, String, ...) or already kept
        kept.add(name)
        pending += [_type_names(t) for spec_field in types[name].get("fields", []) for t in spec_field["types"]]
        pending += types[name].get("subtypes", [])
    return {
        "version": full["version"],
        "release_date": full["release_date"],
        "changelog": full["changelog"],
        "methods": methods,
        "types": {name: types[name] for name in sorted(kept)},
    }


def _write(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path} ({path.stat().st_size:,} bytes)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="folder holding discord/ and telegram/")
    args = parser.parse_args(argv)
    discord_file = args.shared / "discord" / "openapi.json"
    telegram_file = args.shared / "telegram" / "api.json"
    if not discord_file.is_file() or not telegram_file.is_file():
        print(f"error: {discord_file} or {telegram_file} is missing", file=sys.stderr)
        return 2
    _write(HERE / "discord_openapi.json", discord_subset(json.loads(discord_file.read_text(encoding="utf-8"))))
    _write(HERE / "telegram_api.json", telegram_subset(json.loads(telegram_file.read_text(encoding="utf-8"))))
    for platform in ("discord", "telegram"):
        target = HERE / f"LICENSE-{platform}"
        target.write_text((args.shared / platform / "LICENSE").read_text(encoding="utf-8"), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

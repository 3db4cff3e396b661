"""Every request the fakes receive, checked against the platforms' own API descriptions.

Why: a fake that accepts what the real platform refuses lets a bug pass every test and fail on the first day of a
real deployment. The fakes model the platforms' behaviour by hand; this module adds the platforms' *published*
request contracts on top, so that a route, field, type or limit the bot gets wrong is refused in tests the way
Discord or Telegram refuses it:

* Discord: the official OpenAPI 3.1 description of the v10 HTTP API (``specs/discord_openapi.json``). A request
  must name a known route and method; path and query parameters, the JSON body (or a multipart body's
  ``payload_json`` and its ``files[n]`` parts) must match the operation's schemas: required fields, types with
  ``null``, ``oneOf``/``anyOf``/``allOf``, ``enum``/``const``, string and array length limits, number ranges,
  patterns. A violation is answered as Discord does: ``400 {"code": 50035, "message": "Invalid Form Body",
  "errors": {...}}`` with the errors nested at the field's path; an unknown route ``404`` (code 0), a known route
  with another method ``405``.
* Telegram: the Bot API 10.1 description (``specs/telegram_api.json``: every method's fields, their types and
  whether they are required, and every type). A method must be known; required parameters present; each
  parameter of one of its listed types (``Integer``, ``String``, ``Boolean``, ``Float``, ``Array of X``,
  ``InputFile`` uploads, JSON-serialised objects checked field by field); limits the documentation states in a
  field's description ("1-64 bytes", "must include 2-10 items", "must be photo") are enforced too. A violation
  is answered ``{"ok": false, "error_code": 400, "description": "Bad Request: ..."}``.

Both checkers refuse fields the specification does not list (where a schema lists its properties). The real
platforms mostly *ignore* unknown fields, which is exactly how a misspelled or misplaced field goes unnoticed
(the bot thinks it set something, the platform drops it), so the fakes are stricter there on purpose.

Where a specification file is known to differ from what the platform accepts, the exception is written below
next to the rule it relaxes, with its reason; nothing is relaxed to make a test pass.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "DiscordSpec",
    "Refusal",
    "TelegramSpec",
    "discord_refusal",
    "discord_spec",
    "telegram_refusal",
    "telegram_spec",
]

SPECS = Path(__file__).resolve().parent / "specs"

Json = dict[str, Any]
_ErrorPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Refusal:
    """A request the platform would refuse: the HTTP status and JSON body it answers with."""

    status: int
    body: Json

    @property
    def reason(self) -> str:
        """One line for logs and assertion messages."""
        return json.dumps(self.body, ensure_ascii=False)[:500]


# ==============================================================================================================
# Discord: OpenAPI 3.1
# ==============================================================================================================

#: Exception (spec gap): the OpenAPI file types every snowflake as a decimal *string* (Discord *returns* them as
#: strings), but Discord reads snowflakes sent as JSON integers too, and discord.py sends several that way
#: (``attachments[].id``, ``message_reference.message_id``, ``allowed_mentions.users``). Integers in the snowflake
#: range (0 to 2**64 - 1) are accepted where the format is ``snowflake``.
_SNOWFLAKE_MAX = 2**64 - 1

#: Exception (spec gap): the multipart schemas of ``POST /webhooks/{id}/{token}`` (execute, used for
#: interaction follow-ups) and ``POST /interactions/{id}/{token}/callback`` list no ``files[n]`` parts, although
#: both take uploads (Discord's documentation of both routes lists ``files[n]`` parts, as for channel messages).
#: Where a multipart schema lists no file parts, ``files[0]`` ... ``files[9]`` are what is accepted; where it
#: lists them, only those are.
_DEFAULT_FILE_PARTS = frozenset(f"files[{index}]" for index in range(10))

#: Exceptions: fields accepted beyond what the OpenAPI file's request schemas list, each added to its schema when
#: the description is loaded.
_NOT_TTS: Json = {"type": ["boolean", "null"], "enum": [False, None]}
_DISCORD_EXTRA_FIELDS: dict[str, dict[str, Json]] = {
    # Spec lag: ``nsfw`` (whether the command is age-restricted) is a documented parameter of Create / Bulk
    # Overwrite Application Command, and the file's own ApplicationCommandResponse has it; discord.py sends it.
    "ApplicationCommandUpdateRequest": {"nsfw": {"type": ["boolean", "null"]}},
    "ApplicationCommandCreateRequest": {"nsfw": {"type": ["boolean", "null"]}},
    # discord.py puts ``"tts": false`` into every message edit it sends (http.handle_message_parameters); Discord
    # ignores tts on edits, so only false (the no-op) is let through, and a bot asking for tts on an edit is not.
    "MessageEditRequestPartial": {"tts": _NOT_TTS},
    "IncomingWebhookUpdateRequestPartial": {"tts": _NOT_TTS},
    "IncomingWebhookUpdateForInteractionCallbackRequestPartial": {"tts": _NOT_TTS},
    # discord.py puts ``"flags": 0`` into every embed it sends (Embed.to_dict); the request schema has no embed
    # flags, so only 0 (none asked for) is let through.
    "RichEmbed": {"flags": {"type": ["integer", "null"], "enum": [0, None]}},
}

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_QUERY_TRUE = frozenset({"true", "1"})
_QUERY_FALSE = frozenset({"false", "0"})


@dataclass(frozen=True)
class _FormError:
    path: _ErrorPath
    code: str
    message: str


@dataclass(frozen=True)
class _Operation:
    method: str
    template: str
    pattern: re.Pattern[str]
    parameters: tuple[Json, ...]
    request_body: Json | None
    literal_segments: int


def _template_pattern(template: str) -> re.Pattern[str]:
    regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
    return re.compile(f"^{regex}$")


class DiscordSpec:
    """The request side of Discord's OpenAPI description, as a checker of one request at a time."""

    def __init__(self, document: Json) -> None:
        self.document = document
        self._schemas: Json = {name: dict(schema) for name, schema in document["components"]["schemas"].items()}
        for name, fields in _DISCORD_EXTRA_FIELDS.items():
            if name in self._schemas:
                self._schemas[name]["properties"] = {**self._schemas[name].get("properties", {}), **fields}
        operations: list[_Operation] = []
        for template, item in document["paths"].items():
            shared = tuple(item.get("parameters", ()))
            for method, operation in item.items():
                if method == "parameters":
                    continue
                own = tuple(operation.get("parameters", ()))
                names = {p["name"] for p in own}
                operations.append(
                    _Operation(
                        method=method.upper(),
                        template=template,
                        pattern=_template_pattern(template),
                        parameters=tuple(p for p in shared if p["name"] not in names) + own,
                        request_body=operation.get("requestBody"),
                        literal_segments=sum(1 for part in template.split("/") if part and "{" not in part),
                    )
                )
        # A literal segment wins over a template one (``messages/@original`` before ``messages/{message_id}``),
        # as OpenAPI's path matching says.
        self._operations = sorted(operations, key=lambda op: -op.literal_segments)

    # ------------------------------------------------------------------------------------------- routes

    def routes(self) -> set[tuple[str, str]]:
        """Every (METHOD, path template) the description holds."""
        return {(op.method, op.template) for op in self._operations}

    def operation(self, method: str, path: str) -> tuple[_Operation, dict[str, str]] | Refusal:
        """The operation a request names, with its path parameters; or Discord's 404 / 405."""
        path_known = False
        for candidate in self._operations:
            match = candidate.pattern.match(path)
            if match is None:
                continue
            path_known = True
            if candidate.method == method.upper():
                return candidate, match.groupdict()
        if path_known:
            return Refusal(405, {"message": "405: Method Not Allowed", "code": 0})
        return Refusal(404, {"message": "404: Not Found", "code": 0})

    # ------------------------------------------------------------------------------------------- requests

    def check(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        content_type: str | None = None,
        body: Any = None,
        file_parts: Iterable[str] = (),
    ) -> Refusal | None:
        """None when Discord would accept the request as far as its description says, else its refusal.

        ``path`` is the path below ``/api/v10``, percent-decoded; ``body`` the parsed JSON body, or for a
        multipart request the parsed ``payload_json`` part (None when absent); ``file_parts`` the names of a
        multipart request's file parts.
        """
        found = self.operation(method, path)
        if isinstance(found, Refusal):
            return found
        operation, path_values = found
        errors: list[_FormError] = []
        self._check_parameters(operation, path_values, dict(query or {}), errors)
        self._check_body(operation, (content_type or "").split(";")[0].strip().lower(), body, list(file_parts), errors)
        if not errors:
            return None
        return Refusal(400, {"code": 50035, "message": "Invalid Form Body", "errors": _error_tree(errors)})

    def _check_parameters(
        self, operation: _Operation, path_values: Mapping[str, str], query: dict[str, str], errors: list[_FormError]
    ) -> None:
        for parameter in operation.parameters:
            name, where = parameter["name"], parameter["in"]
            if where == "path":
                value: str | None = path_values.get(name)
            elif where == "query":
                value = query.pop(name, None)
            else:
                continue
            if value is None:
                if parameter.get("required"):
                    errors.append(_FormError((name,), "BASE_TYPE_REQUIRED", "This field is required"))
                continue
            coerced = self._coerce_text(parameter.get("schema", {}), value)
            self.validate(parameter.get("schema", {}), coerced, (name,), errors)
        for unknown in sorted(query):
            errors.append(_FormError((unknown,), "UNKNOWN_FIELD", "This query parameter is not part of the route"))

    def _coerce_text(self, schema: Json, text: str) -> Any:
        """A path or query value (always text on the wire) as the JSON value its schema expects."""
        schema = self._resolve(schema)
        types = _types_of(schema)
        if "boolean" in types:
            if text.lower() in _QUERY_TRUE:
                return True
            if text.lower() in _QUERY_FALSE:
                return False
        if "integer" in types and re.fullmatch(r"-?\d+", text):
            return int(text)
        if "number" in types:
            try:
                return float(text)
            except ValueError:
                pass
        return text

    def _check_body(
        self, operation: _Operation, content_type: str, body: Any, file_parts: list[str], errors: list[_FormError]
    ) -> None:
        request_body = operation.request_body
        if request_body is None:
            if body is not None or file_parts:
                errors.append(_FormError((), "BASE_TYPE_INVALID", "This route takes no request body"))
            return
        content: Json = request_body.get("content", {})
        multipart = content_type.startswith("multipart/")
        if multipart and "multipart/form-data" not in content:
            errors.append(_FormError((), "CONTENT_TYPE_INVALID", f"Expected one of {', '.join(content)}"))
            return
        if body is None and not multipart:
            if request_body.get("required"):
                errors.append(_FormError((), "BASE_TYPE_REQUIRED", "This field is required"))
            return
        json_schema = content.get("application/json", {}).get("schema", {})
        self.validate(json_schema, {} if body is None else body, (), errors)
        if multipart:
            allowed = self._file_parts(content["multipart/form-data"].get("schema", {})) or _DEFAULT_FILE_PARTS
            for part in file_parts:
                if part in allowed:
                    continue
                if re.fullmatch(r"files\[\d+\]", part):  # one file more than a message may carry
                    message = f"Must be {len(allowed)} or fewer in length."
                    errors.append(_FormError(("attachments",), "BASE_TYPE_MAX_LENGTH", message))
                else:
                    errors.append(_FormError((part,), "UNKNOWN_FIELD", "This file part is not part of the request"))

    def _file_parts(self, schema: Json) -> frozenset[str]:
        """The binary parts (``files[n]``) a multipart schema declares."""
        schema = self._resolve(schema)
        names = {
            name
            for name, prop in schema.get("properties", {}).items()
            if self._resolve(prop).get("contentEncoding") == "binary"
        }
        for branch in schema.get("allOf", ()):
            names |= self._file_parts(branch)
        return frozenset(names)

    # ------------------------------------------------------------------------------------------- schemas

    def _resolve(self, schema: Json) -> Json:
        while "$ref" in schema:
            schema = self._schemas[schema["$ref"].removeprefix("#/components/schemas/")]
        return schema

    def _known_properties(self, schema: Json) -> set[str]:
        """Properties a schema and its ``allOf`` branches list (what an object may hold)."""
        schema = self._resolve(schema)
        names = set(schema.get("properties", {}))
        for branch in schema.get("allOf", ()):
            names |= self._known_properties(branch)
        return names

    def validate(
        self,
        schema: Json,
        value: Any,
        path: _ErrorPath,
        errors: list[_FormError],
        also_known: frozenset[str] = frozenset(),
    ) -> None:
        """Append to ``errors`` what makes ``value`` not match ``schema``."""
        schema = self._resolve(schema)
        types = _types_of(schema)
        if types:
            if not any(_is_json_type(value, kind, schema) for kind in types):
                errors.append(_type_error(path, types, value))
                return
            if value is None:
                return  # null is one of the listed types; no other keyword applies to it
        if ("const" in schema and value != schema["const"]) or ("enum" in schema and value not in schema["enum"]):
            choices = [schema["const"]] if "const" in schema else schema["enum"]
            errors.append(_FormError(path, "BASE_TYPE_CHOICES", f"Value must be one of {_choices(choices)}."))
            return
        if "allOf" in schema:
            known = frozenset(self._known_properties(schema)) | also_known
            for branch in schema["allOf"]:
                self.validate(branch, value, path, errors, also_known=known)
        for keyword in ("oneOf", "anyOf"):
            if keyword in schema:
                self._check_union(schema[keyword], keyword, value, path, errors, also_known)
        if isinstance(value, str):
            self._check_string(schema, value, path, errors)
        elif isinstance(value, bool):
            pass
        elif isinstance(value, int | float):
            self._check_number(schema, value, path, errors)
        elif isinstance(value, list):
            self._check_array(schema, value, path, errors)
        elif isinstance(value, dict):
            self._check_object(schema, value, path, errors, also_known)

    def _check_union(
        self,
        branches: Sequence[Json],
        keyword: str,
        value: Any,
        path: _ErrorPath,
        errors: list[_FormError],
        also_known: frozenset[str],
    ) -> None:
        # Branches whose ``type`` const/enum the value does not carry cannot match: skipping them is the same
        # verdict, found without walking every component schema (this runs on every request of the busy bench).
        if isinstance(value, dict) and any(self._discriminator_matches(branch, value) for branch in branches):
            branches = [b for b in branches if not self._discriminator(b) or self._discriminator_matches(b, value)]
        outcomes: list[list[_FormError]] = []
        for branch in branches:
            branch_errors: list[_FormError] = []
            self.validate(branch, value, path, branch_errors, also_known)
            outcomes.append(branch_errors)
        matches = sum(1 for outcome in outcomes if not outcome)
        # anyOf marked ``x-discord-union: oneOf`` is still "at least one": its branches overlap (the webhook
        # create and update bodies), and Discord reads the body as whichever fits.
        if matches == 1 or (matches > 1 and keyword == "anyOf"):
            return
        if matches > 1:
            errors.append(_FormError(path, "UNION_TYPE_CHOICES", "Value matches more than one of the allowed types."))
            return
        # Report the errors of the branch the value was meant for: the one whose discriminator (a ``type``
        # const/enum) it carries, else the one that failed deepest inside the value (a branch of another type
        # fails at the value itself), with the fewest errors.
        meant = [i for i, branch in enumerate(branches) if self._discriminator_matches(branch, value)]
        candidates = meant or range(len(branches))
        best = min(candidates, key=lambda i: (all(e.path == path for e in outcomes[i]), len(outcomes[i])))
        if meant or len(branches) == 1:
            errors.extend(outcomes[best])
            return
        if isinstance(value, dict) and any(self._discriminator(branch) for branch in branches):
            if "type" not in value:
                errors.append(_FormError((*path, "type"), "BASE_TYPE_REQUIRED", "This field is required"))
                return
            allowed = sorted({c for branch in branches for c in self._discriminator(branch)}, key=str)
            errors.append(
                _FormError((*path, "type"), "UNION_TYPE_CHOICES", f"Value must be one of {_choices(allowed)}.")
            )
            return
        errors.extend(outcomes[best])

    def _discriminator(self, branch: Json) -> list[Any]:
        branch = self._resolve(branch)
        kind = branch.get("properties", {}).get("type")
        if kind is None:
            return []
        kind = self._resolve(kind)
        if "const" in kind:
            return [kind["const"]]
        return list(kind.get("enum", []))

    def _discriminator_matches(self, branch: Json, value: Any) -> bool:
        return isinstance(value, dict) and "type" in value and value["type"] in self._discriminator(branch)

    def _check_string(self, schema: Json, value: str, path: _ErrorPath, errors: list[_FormError]) -> None:
        length = len(value)
        if "maxLength" in schema and length > schema["maxLength"]:
            errors.append(
                _FormError(path, "BASE_TYPE_MAX_LENGTH", f"Must be {schema['maxLength']} or fewer in length.")
            )
        if "minLength" in schema and length < schema["minLength"]:
            errors.append(_FormError(path, "BASE_TYPE_MIN_LENGTH", f"Must be {schema['minLength']} or more in length."))
        if "pattern" in schema and not re.search(schema["pattern"], value):
            if schema.get("format") == "snowflake":
                errors.append(_FormError(path, "NUMBER_TYPE_COERCE", f'Value "{value}" is not snowflake.'))
            else:
                errors.append(_FormError(path, "STRING_TYPE_REGEX", "String value did not match validation regex."))
        if schema.get("format") == "uri" and not _is_uri(value):
            errors.append(_FormError(path, "URL_TYPE_INVALID_URL", "Not a well formed URL."))

    def _check_number(self, schema: Json, value: float, path: _ErrorPath, errors: list[_FormError]) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            errors.append(_FormError(path, "NUMBER_TYPE_COERCE", f"Value {value!r} is not a valid number."))
            return
        if schema.get("format") == "snowflake":
            if not 0 <= value <= _SNOWFLAKE_MAX or not isinstance(value, int):
                errors.append(_FormError(path, "NUMBER_TYPE_COERCE", f'Value "{value}" is not snowflake.'))
            return
        low, high = schema.get("minimum"), schema.get("maximum")
        bounds = {"int32": _INT32, "int64": _INT64}.get(schema.get("format", ""))
        if bounds is not None:
            low = bounds[0] if low is None else max(low, bounds[0])
            high = bounds[1] if high is None else min(high, bounds[1])
        if high is not None and value > high:
            errors.append(_FormError(path, "NUMBER_TYPE_MAX", f"int value should be less than or equal to {high}."))
        if low is not None and value < low:
            errors.append(_FormError(path, "NUMBER_TYPE_MIN", f"int value should be greater than or equal to {low}."))

    def _check_array(self, schema: Json, value: list[Any], path: _ErrorPath, errors: list[_FormError]) -> None:
        low, high = schema.get("minItems"), schema.get("maxItems")
        if (low is not None and len(value) < low) or (high is not None and len(value) > high):
            if low is not None and high is not None:
                errors.append(_FormError(path, "BASE_TYPE_BAD_LENGTH", f"Must be between {low} and {high} in length."))
            elif high is not None:
                errors.append(_FormError(path, "BASE_TYPE_MAX_LENGTH", f"Must be {high} or fewer in length."))
            else:
                errors.append(_FormError(path, "BASE_TYPE_MIN_LENGTH", f"Must be {low} or more in length."))
        if schema.get("uniqueItems"):
            seen = [json.dumps(item, sort_keys=True) for item in value]
            if len(set(seen)) != len(seen):
                errors.append(_FormError(path, "LIST_ITEM_VALUE_DUPLICATE", "List items must be unique."))
        if "items" in schema:
            for index, item in enumerate(value):
                self.validate(schema["items"], item, (*path, index), errors)

    def _check_object(
        self, schema: Json, value: Json, path: _ErrorPath, errors: list[_FormError], also_known: frozenset[str]
    ) -> None:
        properties: Json = schema.get("properties", {})
        for name in schema.get("required", ()):
            if name not in value:
                errors.append(_FormError((*path, name), "BASE_TYPE_REQUIRED", "This field is required"))
        extra_schema = schema.get("additionalProperties")
        for name, item in value.items():
            if name in properties:
                self.validate(properties[name], item, (*path, name), errors)
            elif isinstance(extra_schema, dict):
                self.validate(extra_schema, item, (*path, name), errors)
            elif extra_schema is True or name in also_known:
                continue
            elif properties or extra_schema is False or also_known:
                errors.append(_FormError((*path, name), "UNKNOWN_FIELD", "This field is not part of the request"))
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            errors.append(_FormError(path, "BASE_TYPE_BAD_LENGTH", f"Must be {schema['maxProperties']} or fewer."))


def _types_of(schema: Json) -> list[str]:
    kind = schema.get("type")
    if kind is None:
        return []
    return [kind] if isinstance(kind, str) else list(kind)


def _is_json_type(value: Any, kind: str, schema: Json) -> bool:
    if kind == "null":
        return value is None
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "string":
        if isinstance(value, int) and not isinstance(value, bool) and schema.get("format") == "snowflake":
            return True  # see _SNOWFLAKE_MAX: Discord takes integer snowflakes
        return isinstance(value, str)
    if kind == "array":
        return isinstance(value, list)
    if kind == "object":
        return isinstance(value, dict)
    return False


def _type_error(path: _ErrorPath, types: list[str], value: Any) -> _FormError:
    wanted = [kind for kind in types if kind != "null"]
    if wanted == ["integer"] or wanted == ["number"]:
        return _FormError(path, "NUMBER_TYPE_COERCE", f'Value "{value}" is not {wanted[0][:3]}.')
    if wanted == ["boolean"]:
        return _FormError(path, "BOOLEAN_TYPE_CONVERT", "Must be either true or false.")
    if wanted == ["array"]:
        return _FormError(path, "LIST_TYPE_CONVERT", "Only iterables may be used in a ListType")
    if wanted == ["object"]:
        return _FormError(path, "MODEL_TYPE_CONVERT", "Only dictionaries may be used in a ModelType")
    if wanted == ["string"]:
        return _FormError(path, "STRING_TYPE_CONVERT", f"Could not interpret {value!r} as string.")
    return _FormError(path, "BASE_TYPE_INVALID", f"Expected one of {', '.join(types)}.")


def _choices(values: Iterable[Any]) -> str:
    return "(" + ", ".join(json.dumps(v) for v in values) + ")"


def _is_uri(value: str) -> bool:
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return bool(parts.scheme) and (bool(parts.netloc) or parts.scheme == "attachment")


def _error_tree(errors: Iterable[_FormError]) -> Json:
    """Discord's nested ``errors`` object: each error under its field path, in ``_errors`` lists."""
    tree: Json = {}
    for error in errors:
        node = tree
        for key in error.path:
            node = node.setdefault(str(key), {})
        entry = {"code": error.code, "message": error.message}
        if entry not in node.setdefault("_errors", []):
            node["_errors"].append(entry)
    return tree


# ==============================================================================================================
# Telegram: the Bot API description
# ==============================================================================================================

_RANGE_TEXT = re.compile(r"(?<![\w-])(\d+)-(\d+) (characters|bytes)(?! after entit)")
_RANGE_ITEMS = re.compile(r"must include (\d+)-(\d+) items")
_RANGE_VALUES = re.compile(r"[Vv]alues between (\d+)-(\d+) are accepted|; (\d+)-(\d+)\. ")
_TYPE_CONST = re.compile(r"(?:must be|always)\s+[\"“]?(\w+)[\"”]?\s*$")
_INTEGER_TEXT = re.compile(r"-?\d+")
_FLOAT_TEXT = re.compile(r"-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_ATTACH = "attach://"

#: How Telegram itself words a broken documented limit, where that is known (the MTProto error it passes on),
#: so that a client's handling of the real message is what the tests exercise; other limits get a plain text.
_LIMIT_WORDING: dict[tuple[str, str], str] = {
    ("InlineKeyboardButton", "callback_data"): "BUTTON_DATA_INVALID",
    ("answerCallbackQuery", "text"): "MESSAGE_TOO_LONG",
    ("BotCommand", "command"): "BOT_COMMAND_INVALID",
    ("BotCommand", "description"): "BOT_COMMAND_INVALID",
    ("sendMediaGroup", "media"): "wrong number of media in the album",
}


class _TelegramError(Exception):
    """One violation, worded as the Bot API words its 400s (after the "Bad Request: " prefix)."""


@dataclass(frozen=True)
class _Field:
    name: str
    types: tuple[str, ...]
    required: bool
    check: Callable[[Any, str], None] | None


class TelegramSpec:
    """The Bot API description, as a checker of one method call at a time."""

    def __init__(self, document: Json) -> None:
        self.document = document
        self.version: str = document["version"]
        self._types: Json = document["types"]
        self._methods: dict[str, str] = {name.lower(): name for name in document["methods"]}
        self._fields: dict[str, tuple[_Field, ...]] = {}
        for name, method in document["methods"].items():
            self._fields[name] = tuple(_field(name, spec_field) for spec_field in method.get("fields", ()))
        for name, type_spec in self._types.items():
            if "fields" in type_spec:
                self._fields[name] = tuple(_field(name, spec_field) for spec_field in type_spec["fields"])

    def methods(self) -> set[str]:
        """Every method name the description holds."""
        return set(self._methods.values())

    def check(self, method: str, params: Mapping[str, Any], file_parts: Iterable[str] = ()) -> Refusal | None:
        """None when Telegram would accept the call as far as its description says, else its refusal.

        ``params`` are the parameters as the fake parsed them (JSON values from JSON bodies, form fields that
        parse as JSON as those values); ``file_parts`` the names of a multipart request's file parts.
        """
        name = self._methods.get(method.lower())
        if name is None:
            return Refusal(404, {"ok": False, "error_code": 404, "description": "Not Found"})
        try:
            self._check_fields(name, self._fields[name], params, frozenset(file_parts), "")
        except _TelegramError as error:
            return Refusal(400, {"ok": False, "error_code": 400, "description": f"Bad Request: {error}"})
        return None

    def _check_fields(
        self, owner: str, fields: Sequence[_Field], values: Mapping[str, Any], files: frozenset[str], prefix: str
    ) -> None:
        """The fields of a method call (``prefix`` empty) or of one object inside it (``prefix`` its path)."""
        by_name = {spec_field.name: spec_field for spec_field in fields}
        for unknown in sorted(set(values) - set(by_name)):
            raise _TelegramError(f'parameter "{prefix}{unknown}" is not a field of {owner}')
        for spec_field in fields:
            label = f'parameter "{prefix}{spec_field.name}"'
            present = spec_field.name in values and values[spec_field.name] is not None
            uploaded = not prefix and "InputFile" in spec_field.types and spec_field.name in files
            if not present:
                if spec_field.required and not uploaded:
                    raise _TelegramError(f"{label} is required")
                continue
            value = values[spec_field.name]
            self._check_value(spec_field.types, value, f"{prefix}{spec_field.name}", files)
            if spec_field.check is not None:
                spec_field.check(value, label)

    def _check_value(self, types: Sequence[str], value: Any, path: str, files: frozenset[str]) -> None:
        """``value`` must be of one of ``types``; else the error of the type it was most likely meant as."""
        failures: list[tuple[int, str]] = []
        for type_expression in types:
            try:
                self._check_type(type_expression, value, path, files)
            except _TelegramError as error:
                failures.append((self._affinity(type_expression, value), str(error)))
            else:
                return
        raise _TelegramError(max(failures, key=lambda failure: failure[0])[1])

    def _affinity(self, type_expression: str, value: Any) -> int:
        """How well ``value`` fits a type's shape: its ``type`` discriminator, then how many field names match."""
        while type_expression.startswith("Array of ") and isinstance(value, list) and value:
            type_expression, value = type_expression.removeprefix("Array of "), value[0]
        if not isinstance(value, dict):
            return 0
        spec = self._types.get(type_expression, {})
        if "subtypes" in spec:
            return max((self._affinity(subtype, value) for subtype in spec["subtypes"]), default=0)
        fields = self._fields.get(type_expression, ())
        names = {spec_field.name for spec_field in fields}
        discriminator = next((f.check for f in fields if f.name == "type" and f.check is not None), None)
        score = len(names & set(value))
        if discriminator is not None and "type" in value:
            try:
                discriminator(value["type"], "")
            except _TelegramError:
                return 0
            score += 100
        return score

    def _type_const(self, type_name: str) -> str | None:
        """The value a type's ``type`` field must have ("must be photo"), when its description says."""
        for spec_field in self._types.get(type_name, {}).get("fields", ()):
            if spec_field["name"] == "type":
                const = _TYPE_CONST.search(spec_field.get("description", ""))
                return const[1] if const else None
        return None

    def _check_type(self, type_expression: str, value: Any, path: str, files: frozenset[str]) -> None:
        label = f'parameter "{path}"'
        if type_expression.startswith("Array of "):
            if not isinstance(value, list):
                raise _TelegramError(f"{label} must be a JSON-serialized array ({type_expression})")
            item_type = type_expression.removeprefix("Array of ")
            for index, item in enumerate(value):
                self._check_type(item_type, item, f"{path}[{index}]", files)
            return
        scalar = _SCALARS.get(type_expression)
        if scalar is not None:
            if not scalar(value):
                raise _TelegramError(f"{label} must be of type {type_expression}, not {json.dumps(value)[:60]}")
            return
        if type_expression == "InputFile":
            # An upload in the request itself: "attach://<part>" naming a file part of this multipart request.
            if not (isinstance(value, str) and value.startswith(_ATTACH) and value[len(_ATTACH) :] in files):
                raise _TelegramError(f"{label} must be an uploaded file (multipart/form-data)")
            return
        type_spec = self._types.get(type_expression)
        if type_spec is None:
            raise _TelegramError(f"{label} has type {type_expression}, which the description does not define")
        if not isinstance(value, dict):
            raise _TelegramError(f"{label} must be a JSON-serialized {type_expression} object")
        if "subtypes" in type_spec:
            kinds = {subtype: self._type_const(subtype) for subtype in type_spec["subtypes"]}
            if (
                "type" in value
                and all(kind is not None for kind in kinds.values())
                and value["type"] not in kinds.values()
            ):
                allowed = ", ".join(f'"{kind}"' for kind in kinds.values())
                raise _TelegramError(
                    f"{label} is a {type_expression} of unknown type {json.dumps(value['type'])}, not {allowed}"
                )
            self._check_value(type_spec["subtypes"], value, path, files)
            return
        self._check_fields(type_expression, self._fields.get(type_expression, ()), value, files, f"{path}.")


def _is_integer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, str) and _INTEGER_TEXT.fullmatch(value) is not None)


def _is_float(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return math.isfinite(value)
    return isinstance(value, str) and _FLOAT_TEXT.fullmatch(value) is not None


def _is_boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return value in (0, 1)
    return isinstance(value, str) and value.lower() in {"true", "false", "1", "0"}


def _is_string(value: Any) -> bool:
    # The Bot API reads every parameter as text, so a number given for a String (a chat_id, a text "42") is
    # that number's text; objects, arrays and booleans are not strings.
    return isinstance(value, str) or (isinstance(value, int | float) and not isinstance(value, bool))


_SCALARS: dict[str, Callable[[Any], bool]] = {
    "Integer": _is_integer,
    "Float": _is_float,
    "Boolean": _is_boolean,
    "String": _is_string,
    "True": lambda value: value is True or (isinstance(value, str) and value.lower() == "true"),
}


def _field(owner: str, spec_field: Json) -> _Field:
    """One field of a method or type, with the limits its description states."""
    name: str = spec_field["name"]
    wording = _LIMIT_WORDING.get((owner, name))
    types = tuple(spec_field["types"])
    description: str = spec_field.get("description", "")
    checks: list[Callable[[Any, str], None]] = []
    if types == ("String",):
        text_range = _RANGE_TEXT.search(description)
        if text_range is not None:
            checks.append(_length_check(int(text_range[1]), int(text_range[2]), text_range[3], wording))
        if name == "type":
            const = _TYPE_CONST.search(description)
            if const is not None:
                checks.append(_const_check(const[1]))
    if types == ("Integer",):
        values = _RANGE_VALUES.search(description)
        if values is not None:
            low, high = (values[1], values[2]) if values[1] is not None else (values[3], values[4])
            checks.append(_range_check(int(low), int(high)))
    if all(t.startswith("Array of ") for t in types):
        items = _RANGE_ITEMS.search(description)
        if items is not None:
            checks.append(_items_check(int(items[1]), int(items[2]), wording))
    if not checks:
        return _Field(name, types, bool(spec_field.get("required")), None)

    def check(value: Any, label: str) -> None:
        for one in checks:
            one(value, label)

    return _Field(name, types, bool(spec_field.get("required")), check)


def _length_check(low: int, high: int, unit: str, wording: str | None) -> Callable[[Any, str], None]:
    def check(value: Any, label: str) -> None:
        text = str(value)
        # Telegram counts characters in UTF-16 code units (an emoji outside the BMP counts two).
        size = len(text.encode("utf-8")) if unit == "bytes" else len(text.encode("utf-16-le")) // 2
        if not low <= size <= high:
            raise _TelegramError(wording or f"{label} must be {low}-{high} {unit} long, got {size}")

    return check


def _const_check(expected: str) -> Callable[[Any, str], None]:
    def check(value: Any, label: str) -> None:
        if value != expected:
            raise _TelegramError(f'{label} must be "{expected}", not {json.dumps(value)}')

    return check


def _range_check(low: int, high: int) -> Callable[[Any, str], None]:
    def check(value: Any, label: str) -> None:
        if not low <= int(value) <= high:
            raise _TelegramError(f"{label} must be between {low} and {high}, got {value}")

    return check


def _items_check(low: int, high: int, wording: str | None) -> Callable[[Any, str], None]:
    def check(value: Any, label: str) -> None:
        if not low <= len(value) <= high:
            raise _TelegramError(wording or f"{label} must include {low}-{high} items, got {len(value)}")

    return check


# ==============================================================================================================
# The vendored descriptions, loaded once
# ==============================================================================================================


@cache
def discord_spec() -> DiscordSpec:
    """Discord's description as vendored in ``specs/discord_openapi.json``."""
    return DiscordSpec(json.loads((SPECS / "discord_openapi.json").read_text(encoding="utf-8")))


@cache
def telegram_spec() -> TelegramSpec:
    """The Bot API description as vendored in ``specs/telegram_api.json``."""
    return TelegramSpec(json.loads((SPECS / "telegram_api.json").read_text(encoding="utf-8")))


def discord_refusal(
    method: str,
    path: str,
    query: Mapping[str, str],
    content_type: str | None,
    body: Any,
    file_parts: Iterable[str],
) -> Refusal | None:
    """What Discord answers a request its description refuses (None when it would take it)."""
    return discord_spec().check(method, path, query=query, content_type=content_type, body=body, file_parts=file_parts)


def telegram_refusal(method: str, params: Mapping[str, Any], file_parts: Iterable[str]) -> Refusal | None:
    """What Telegram answers a call its description refuses (None when it would take it)."""
    return telegram_spec().check(method, params, file_parts)

"""The bot-worker contract survives JSON and refuses what it cannot trust."""

from __future__ import annotations

import json

import pytest

from mmpp.contract import MAX_UPLOAD_BYTES, GenerateRequest, GenerateResult, Mode, Picture
from mmpp.errors import ErrorCode, MmppError


def test_request_round_trips_through_json() -> None:
    request = GenerateRequest(
        selfie=b"\x89PNG\0bytes",
        style="anime",
        prompt="(red)1.2 hair",
        mode=Mode.QUALITY,
        count=3,
        seed=9,
        steps=20,
        guidance=6.5,
        job_id="abc",
    )
    assert GenerateRequest.from_payload(json.loads(json.dumps(request.to_payload()))) == request


def test_result_round_trips_through_json() -> None:
    result = GenerateResult(
        pictures=[Picture(png=b"png-bytes", seed=5)],
        style="anime",
        mode="fast",
        steps=4,
        guidance=1.5,
        scales={"style_lora": 0.8},
        timings={"total": 1.0},
        model="tiny",
        test_sized_model=True,
        job_id="x",
    )
    assert GenerateResult.from_payload(json.loads(json.dumps(result.to_payload()))) == result
    failure = GenerateResult.failure(MmppError(ErrorCode.NO_FACE, "No face\nhere."), job_id="y")
    back = GenerateResult.from_payload(json.loads(json.dumps(failure.to_payload())))
    assert back.error_code is ErrorCode.NO_FACE and back.error_message == "No face here." and not back.ok
    with pytest.raises(MmppError):
        back.raise_for_error()


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"selfie": b""}, ErrorCode.NOT_AN_IMAGE),
        ({"selfie": b"x" * (MAX_UPLOAD_BYTES + 1)}, ErrorCode.IMAGE_TOO_LARGE),
        ({"style": ""}, ErrorCode.UNKNOWN_STYLE),
        ({"prompt": "p" * 501}, ErrorCode.PROMPT_TOO_LONG),
        ({"count": 0}, ErrorCode.INVALID_REQUEST),
        ({"count": 5}, ErrorCode.INVALID_REQUEST),
        ({"seed": -1}, ErrorCode.INVALID_REQUEST),
    ],
)
def test_validation_codes(fields: dict, code: ErrorCode) -> None:
    arguments = {"selfie": b"jpeg", "style": "anime", **fields}
    with pytest.raises(MmppError) as raised:
        GenerateRequest(**arguments).validate()
    assert raised.value.code is code
    assert raised.value.as_line().startswith(f"error[{code.value}]: ")


def test_error_messages_are_one_line() -> None:
    assert MmppError(ErrorCode.INTERNAL, "a\nb\tc").message == "a b c"


def test_contracts_import_neither_torch_nor_diffusers() -> None:
    import subprocess
    import sys

    code = "import sys, mmpp.contract; print(sorted(m for m in ('torch','diffusers','PIL') if m in sys.modules))"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


def upscale_source(width: int, height: int) -> bytes:
    """A real PNG of that size (the header is what the contract reads)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 40, 10)).save(buffer, "PNG")
    return buffer.getvalue()


def test_an_upscale_round_trips_without_a_selfie() -> None:
    request = GenerateRequest(selfie=b"", style="anime", seed=4, upscale_source=upscale_source(64, 96))
    request.validate()
    payload = json.loads(json.dumps(request.to_payload()))
    assert GenerateRequest.from_payload(payload) == request
    plain = GenerateRequest(selfie=b"x", style="anime")
    assert GenerateRequest.from_payload(plain.to_payload()).upscale_source is None


@pytest.mark.parametrize(
    ("source", "fields", "code"),
    [
        (b"", {}, ErrorCode.NOT_AN_IMAGE),
        (b"\xff\xd8\xff\xe0 a JPEG is no picture of ours", {}, ErrorCode.NOT_AN_IMAGE),
        (upscale_source(1032, 64), {}, ErrorCode.IMAGE_TOO_LARGE),
        (upscale_source(60, 64), {}, ErrorCode.INVALID_REQUEST),
        (upscale_source(68, 64), {}, ErrorCode.INVALID_REQUEST),
        (upscale_source(64, 64), {"count": 2}, ErrorCode.INVALID_REQUEST),
        (upscale_source(64, 64), {"seed": None}, ErrorCode.INVALID_REQUEST),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * (MAX_UPLOAD_BYTES), {}, ErrorCode.IMAGE_TOO_LARGE),
    ],
)
def test_a_bad_upscale_source_is_refused_before_the_queue(source: bytes, fields: dict[str, object], code) -> None:
    options: dict[str, object] = {"seed": 4, **fields}
    with pytest.raises(MmppError) as raised:
        GenerateRequest(selfie=b"", style="anime", upscale_source=source, **options).validate()  # type: ignore[arg-type]
    assert raised.value.code is code


def test_an_upscale_source_that_is_not_base64_is_refused() -> None:
    payload = GenerateRequest(selfie=b"", style="anime", seed=4, upscale_source=upscale_source(64, 64)).to_payload()
    with pytest.raises(MmppError) as raised:
        GenerateRequest.from_payload({**payload, "upscale_source_b64": "not base64!"})
    assert raised.value.code is ErrorCode.NOT_AN_IMAGE

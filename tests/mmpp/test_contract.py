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

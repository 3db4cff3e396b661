"""Prompt weights on the worker: refused before anything is embedded (the kernel's bound, in the task and in a real
Celery worker), and the engine's own guard after Compel, on the tiny pipeline."""

from __future__ import annotations

import pyparsing
import pytest
import torch

from engine import tasks
from engine.pipeline import EMBEDDING_LIMIT, Engine, embedding_in_range
from mmpp.contract import GENERATE_TASK_NAME, GenerateRequest, GenerateResult, Mode
from mmpp.errors import ErrorCode, MmppError

TOO_MANY_PLUSES = "cat" + "+" * 240
FORTY_ONES = "(cat)" + "1" * 40


def payload(selfie: bytes, prompt: str) -> dict[str, object]:
    return GenerateRequest(selfie=selfie, style="anime", prompt=prompt, mode=Mode.FAST, seed=3).to_payload()


@pytest.mark.parametrize("prompt", [TOO_MANY_PLUSES, FORTY_ONES])
def test_the_task_refuses_overflowing_weights_before_embedding_them(
    tiny_engine: Engine, selfie_bytes: bytes, monkeypatch: pytest.MonkeyPatch, prompt: str
) -> None:
    embedded: list[str] = []
    encode = tiny_engine.encode_prompt
    monkeypatch.setattr(tasks, "get_engine", lambda: tiny_engine)
    monkeypatch.setattr(tiny_engine, "encode_prompt", lambda *args: embedded.append(args[0]) or encode(*args))
    result = GenerateResult.from_payload(tasks.run_job(payload(selfie_bytes, prompt), "job-7"))
    assert result.error_code is ErrorCode.INVALID_REQUEST
    assert result.error_message.startswith("Prompt weights must stay between 0 and 3; 'cat' would weigh")
    assert embedded == []  # refused by the plan, not by the guard after Compel


def test_a_real_worker_refuses_them_and_paints_a_moderate_weight(redis_worker: str, selfie_bytes: bytes) -> None:
    from engine.celery_app import make_celery
    from engine.settings import EngineSettings
    from tests.conftest import REDIS_URL

    app = make_celery(EngineSettings(_env_file=None, redis_url=REDIS_URL, queue=redis_worker))
    prompts = [TOO_MANY_PLUSES, FORTY_ONES, "(red)1.3 hat, cat++"]
    sent = [app.send_task(GENERATE_TASK_NAME, args=[payload(selfie_bytes, p)], queue=redis_worker) for p in prompts]
    results = [GenerateResult.from_payload(async_result.get(timeout=180)) for async_result in sent]
    for refused in results[:2]:
        assert refused.error_code is ErrorCode.INVALID_REQUEST
        assert refused.error_message.startswith("Prompt weights must stay between 0 and 3")
    assert results[2].ok and len(results[2].pictures) == 1


def test_moderate_weights_pass_the_guard_and_change_the_embedding(tiny_engine: Engine) -> None:
    def embedding(prompt: str) -> torch.Tensor:
        return tiny_engine.encode_prompt(prompt, "")["prompt_embeds"][0]

    plain = embedding("portrait of a cat")
    for weighted in ("portrait of a (cat)1.3", "portrait of a cat++"):
        moved = embedding(weighted)
        assert embedding_in_range(moved) and not torch.equal(moved, plain), weighted


@pytest.mark.parametrize(
    ("prompt", "negative", "which"),
    [
        (FORTY_ONES, "", "prompt"),  # 1.1e39: infinities even in float32
        (TOO_MANY_PLUSES, "", "prompt"),  # 8.6e9 times the token's offset: finite in float32, not in float16
        ("a person", "blurry" + "+" * 240, "negative prompt"),
    ],
)
def test_the_guard_after_compel_refuses_an_embedding_out_of_range(
    tiny_engine: Engine, prompt: str, negative: str, which: str
) -> None:
    """Below the plan's check (encode_prompt directly): Compel's own output is checked before the UNet sees it."""
    with pytest.raises(MmppError) as refused:
        tiny_engine.encode_prompt(prompt, negative)
    assert refused.value.code is ErrorCode.INVALID_REQUEST
    assert refused.value.message.startswith(f"The {which}'s weights push its embedding out of range")


def test_an_embedding_is_in_range_when_finite_and_within_float16() -> None:
    values = torch.zeros(1, 77, 8)
    assert embedding_in_range(values)
    for bad in (float("nan"), float("inf"), -float("inf"), EMBEDDING_LIMIT * 1.01):
        broken = values.clone()
        broken[0, 5, 3] = bad
        assert not embedding_in_range(broken), bad
    assert embedding_in_range(torch.full((1, 2, 2), EMBEDDING_LIMIT, dtype=torch.float16))


def test_compels_parser_runs_with_its_memo_so_nested_groups_stay_cheap(tiny_engine: Engine) -> None:
    """Without pyparsing's packrat memo eight nested groups take minutes; with it, no time at all."""
    assert pyparsing.ParserElement._packratEnabled
    deep = "(" * 8 + "cat" + ")" * 8
    assert embedding_in_range(tiny_engine.encode_prompt(f"portrait of {deep}", "")["prompt_embeds"])

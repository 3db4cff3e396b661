"""Prompt weights out of bounds are refused at the bot, before a job exists: through the console adapter and the
core it talks to (a real database; a scripted queue, which must never see the refused prompts)."""

from __future__ import annotations

import io
import tomllib
from pathlib import Path

import pytest

from bot.console_app import ConsoleAdapter
from bot.core import ChatCore
from bot.storage import Storage
from mmpp.catalogue import default_catalogue_path, parse_catalogue
from mmpp.contract import GenerateRequest
from mmpp.errors import ErrorCode, MmppError
from tests.bot.conftest import ALICE, RecordingDelivery, ScriptedQueue, bot_settings, order
from tests.conftest import SAMPLE_SELFIE

TOO_MANY_PLUSES = "cat" + "+" * 240
FORTY_ONES = "(cat)" + "1" * 40


async def test_the_console_refuses_overflowing_weights_and_paints_moderate_ones(
    storage: Storage, tmp_path: Path
) -> None:
    queue = ScriptedQueue()
    core = ChatCore(storage, queue, bot_settings(tmp_path))
    lines = [f"/profile style:anime photo:{SAMPLE_SELFIE} prompt:{prompt}" for prompt in (TOO_MANY_PLUSES, FORTY_ONES)]
    lines.append(f"/profile style:anime photo:{SAMPLE_SELFIE} prompt:(red)1.3 hat, cat++")
    stdout, stderr = io.StringIO(), io.StringIO()
    adapter = ConsoleAdapter(core, io.StringIO("".join(line + "\n" for line in lines)), stdout, stderr, tmp_path)
    await adapter.open()
    await core.start()
    try:
        await adapter.run()
    finally:
        await core.stop()
    out = stdout.getvalue().splitlines()
    refusals = [line for line in out if line.startswith("error[INVALID_REQUEST]: Prompt weights must stay between")]
    assert len(refusals) == 2 and "'cat' would weigh 8.59e+09" in refusals[0] and "1.11e+39" in refusals[1]
    assert any(line.startswith("job 1: ") for line in out), out  # the moderate one was painted
    submitted = [GenerateRequest.from_payload(payload).prompt for payload in queue.submitted.values()]
    assert submitted == ["(red)1.3 hat, cat++"]
    assert await storage.count("jobs") == 1


@pytest.mark.parametrize("prompt", [TOO_MANY_PLUSES, FORTY_ONES])
async def test_the_core_refuses_before_a_job_or_a_download_exists(
    storage: Storage, tmp_path: Path, prompt: str
) -> None:
    queue = ScriptedQueue()
    core = ChatCore(storage, queue, bot_settings(tmp_path))
    core.attach(RecordingDelivery())
    with pytest.raises(MmppError) as before_download:
        core.check_profile({"style": "anime", "prompt": prompt})
    with pytest.raises(MmppError) as ordered:
        await core.order_profile(order(prompt=prompt))
    for refused in (before_download, ordered):
        assert refused.value.code is ErrorCode.INVALID_REQUEST
        assert refused.value.message.startswith("Prompt weights must stay between 0 and 3")
    assert await storage.count("jobs") == 0 and not queue.submitted


async def test_another_style_is_checked_with_its_own_template(storage: Storage, tmp_path: Path) -> None:
    """A re-roll in another style renders the kept prompt into that style's template, and checks it again."""
    document = tomllib.loads(default_catalogue_path().read_text(encoding="utf-8"))
    document["styles"]["watercolor"]["prompt"] = "(watercolor painting of {subject})1.6"  # weighs the subject
    queue = ScriptedQueue()
    core = ChatCore(storage, queue, bot_settings(tmp_path), catalogue=parse_catalogue(document))
    core.attach(RecordingDelivery())
    await core.start()
    try:
        job, _ = await core.order_profile(order(prompt="(red)2 hat"))
        await core.wait_idle(timeout=5)
        with pytest.raises(MmppError, match=r"'red' would weigh 3\.2") as refused:
            await core.reroll(ALICE, job.id, "click-1", "chat-1", {}, style="watercolor")
        assert refused.value.code is ErrorCode.INVALID_REQUEST
        assert len(queue.submitted) == 1
    finally:
        await core.stop()

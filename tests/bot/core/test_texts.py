"""What people read (bot/core/texts.py): history, help, styles, captions, status lines, the privacy notice."""

from __future__ import annotations

from bot.core import ChatCore, texts
from bot.storage import Storage
from tests.bot.conftest import ALICE, order


async def test_history_lists_the_persons_jobs(core: ChatCore) -> None:
    assert await core.history_text(ALICE) == "You have no jobs yet."
    job, _ = await core.order_profile(order())
    await core.wait_idle(timeout=5)
    assert f"job {job.id}: anime, 1 pictures" in await core.history_text(ALICE)


async def test_help_and_styles_name_every_style(core: ChatCore) -> None:
    help_text = core.help_text("Send a selfie.")
    assert "Send a selfie." in help_text and texts.RATING_SCALE in help_text and "24 h" in help_text
    assert all(name in help_text for name in core.style_names())
    assert core.styles_text().count("\n") == len(core.styles) - 1
    assert texts.accepted_photos() == "JPEG, PNG or WebP"


async def test_captions_and_status_lines(core: ChatCore, storage: Storage) -> None:
    job, _ = await core.order_profile(order(count="2"))
    anime = core.styles["anime"]
    assert texts.status_line(job, anime, 0) == "🌸 Anime: 2 pictures queued, starting soon"
    assert texts.status_line(job, anime, 3) == "🌸 Anime: 2 pictures queued, 3 jobs ahead"
    await core.wait_idle(timeout=5)
    done = await storage.job(job.id)
    assert texts.caption(done, anime) == f"🌸 Anime · job {job.id} · fast"
    assert texts.caption(done, None).startswith(f"anime · job {job.id}")
    assert "0 h" not in texts.privacy_notice(0) and "then it is deleted" in texts.privacy_notice(0)

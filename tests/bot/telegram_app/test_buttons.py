"""Inline buttons: every callback query is answered at once, before the slow part (a download of up to 20 MB, the
order), because Telegram takes an answer only for a few seconds after the press; what the button did is then shown
in the chat.  The fake expires unanswered queries as Telegram does (here after a second)."""

from __future__ import annotations

from pathlib import Path

from tests.bot.telegram_app.conftest import ALICE, TOKEN, running_bot, texts_sent
from tests.conftest import SAMPLE_SELFIE
from tests.fakes.telegram_api import QUERY_TOO_OLD, Call, FakeTelegram


def no_internal_error(fake: FakeTelegram) -> bool:
    return not any("(INTERNAL)" in text for text in texts_sent(fake))


def style_button(question: Call, style: str) -> str:
    rows = question.params["reply_markup"]["inline_keyboard"]
    return next(
        button["callback_data"] for row in rows for button in row if button["callback_data"].endswith(f":{style}")
    )


async def test_the_style_keyboard_answers_before_a_download_that_outlasts_the_query(tmp_path: Path) -> None:
    async with (
        FakeTelegram(token=TOKEN, callback_query_timeout=1.0) as fake,
        running_bot(fake, tmp_path) as bot,
    ):
        await fake.send_photo(None, ALICE, SAMPLE_SELFIE.read_bytes())
        question = await fake.wait_for(
            lambda call: call.method == "sendMessage" and call.params["text"] == "Which style?"
        )
        fake.slow_next("downloadFile", 1.5)  # a large photo on a slow link: longer than Telegram waits for an answer
        await fake.press_button(question.result, ALICE, style_button(question, "watercolor"))
        sent = await fake.wait_for("sendPhoto", timeout=30)
        await bot.core.wait_idle(timeout=30)

        (answer,) = fake.calls("answerCallbackQuery")
        (download,) = fake.calls("downloadFile")
        assert answer.ok and answer.at < download.at + 1.5  # answered at once, not after the download
        assert "on it" in answer.params["text"]
        assert sent.ok and await bot.storage.count("jobs") == 1
        status = [text for text in texts_sent(fake, ALICE.id) if "queued" in text]
        assert status  # the outcome shows in the chat: the job's status message
        assert no_internal_error(fake)


async def test_a_reroll_answers_before_ordering(tmp_path: Path) -> None:
    async with (
        FakeTelegram(token=TOKEN, callback_query_timeout=1.0) as fake,
        running_bot(fake, tmp_path) as bot,
    ):
        await fake.send_photo(None, ALICE, SAMPLE_SELFIE.read_bytes(), caption="anime")
        first = await fake.wait_for("sendPhoto", timeout=30)
        await bot.core.wait_idle(timeout=30)
        (job,) = await bot.storage.recent_jobs(1)
        fake.slow_next("sendMessage", 1.5)  # ordering posts the status message: slower than the query lives
        await fake.press_button(first.result, ALICE, f"reroll:{job.id}")
        await fake.wait_for(lambda call: call.method == "sendPhoto" and call is not first, timeout=30)
        await bot.core.wait_idle(timeout=30)

        (answer,) = fake.calls("answerCallbackQuery")
        assert answer.ok and answer.params["text"] == "Re-rolling…"
        jobs = await bot.storage.recent_jobs(1)
        assert len(jobs) == 2 and jobs[0].parent_job_id == job.id and jobs[0].delivered_at
        assert no_internal_error(fake)


async def test_a_refused_answer_loses_no_job_and_shows_no_internal_error(tmp_path: Path) -> None:
    """The update came late (the bot was busy or restarting): Telegram refuses the answer, the job is still made."""
    async with FakeTelegram(token=TOKEN) as fake, running_bot(fake, tmp_path) as bot:
        await fake.send_photo(None, ALICE, SAMPLE_SELFIE.read_bytes())
        question = await fake.wait_for(
            lambda call: call.method == "sendMessage" and call.params["text"] == "Which style?"
        )
        fake.fail_next("answerCallbackQuery", 400, description=QUERY_TOO_OLD)
        await fake.press_button(question.result, ALICE, style_button(question, "comic"))
        sent = await fake.wait_for("sendPhoto", timeout=30)
        await bot.core.wait_idle(timeout=30)
        assert "Comic" in sent.params["caption"]
        (job,) = await bot.storage.recent_jobs(1)
        assert job.style == "comic" and job.delivered_at
        assert [call.status for call in fake.calls("answerCallbackQuery")] == [400]  # one attempt, no retry
        assert no_internal_error(fake)


async def test_an_error_after_the_answer_is_one_line_in_the_chat_with_its_code(tmp_path: Path) -> None:
    """The re-roll is answered at once; the selfie turns out to be gone (retention 0): a one-line message says so
    under the pictures, even when Telegram refused the answer, instead of an alert on an answered query."""
    async with FakeTelegram(token=TOKEN) as fake, running_bot(fake, tmp_path, selfie_retention_hours=0) as bot:
        await fake.send_photo(None, ALICE, SAMPLE_SELFIE.read_bytes(), caption="anime")
        pictures = await fake.wait_for("sendPhoto", timeout=30)
        await bot.core.wait_idle(timeout=30)
        (job,) = await bot.storage.recent_jobs(1)
        for refused in (False, True):
            if refused:
                fake.fail_next("answerCallbackQuery", 400, description=QUERY_TOO_OLD)
            start = len(fake.calls())
            await fake.press_button(pictures.result, ALICE, f"reroll:{job.id}")
            failure = await fake.wait_for(
                lambda call: call.method == "sendMessage" and "(NOT_FOUND)" in call.params["text"], start=start
            )
            assert failure.ok and "\n" not in failure.params["text"] and "no longer kept" in failure.params["text"]
            assert failure.params["reply_parameters"]["message_id"] == pictures.result["message_id"]
            (answer,) = [call for call in fake.calls("answerCallbackQuery") if fake.calls().index(call) >= start]
            assert answer.status == (400 if refused else 200) and not answer.params.get("show_alert")
        assert await bot.storage.count("jobs") == 1
        assert no_internal_error(fake)

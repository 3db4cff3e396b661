"""Every text the core shows people: help, styles, history, privacy notice, captions, status lines.

In one place so the wording is the same on every platform and can be read and changed
without reading the job lifecycle.  Adapters add only what is their platform's own: how to
order there (a slash command, a caption) and formatting (Discord's backticks, an embed).
Error messages stay beside the check that raises them, as one line of an ``MmppError``.
"""

from __future__ import annotations

from collections.abc import Iterable

from bot.storage import Job, PersonSettings
from mmpp.catalogue import Style
from mmpp.contract import accepted_photos_text

#: What a 1-5 rating means, shown in help texts.
RATING_SCALE = "1 = poor, 3 = fine, 5 = love it"
SOMETHING_WENT_WRONG = "Something went wrong on our side; please try again."
#: A job sent to workers of another engine family (a deployment error): refused by them, not painted.
WRONG_WORKER = "This job reached the wrong kind of worker and was not painted; this is on our side, please try later."
NO_JOBS = "You have no jobs yet."
FORGOT_NOTHING = "I had nothing stored about you."
FORGOT_EVERYTHING = "Done: I deleted everything I had about you (jobs, selfies, pictures, ratings and settings)."
ASK_FOR_STYLE = "Which style?"
RATE_THEM = "Rate them (1 = poor, 5 = love it):"
STALE_BUTTON = "That button is not valid anymore."
REROLLING = "Re-rolling…"
UPSCALING = "Upscaling: the picture comes at twice its size, as a file…"
#: The label of the control under a delivered picture that upscales it.
UPSCALE_LABEL = "2× file"
#: Said once in a group where the platform never shows the bot people's reactions (Telegram: only to bots
#: that administer the group), so nobody rates by reacting and wonders why nothing counts.
REACTIONS_UNSEEN = (
    "Reactions in this group don't reach me (only bots that are administrators get them), "
    "so rate the pictures with the buttons under them; make me an administrator to count reactions too."
)
#: The notice :data:`REACTIONS_UNSEEN` is remembered under, once per chat.
REACTIONS_UNSEEN_NOTICE = "reactions-unseen"
#: How /settings is typed (console and Telegram; Discord offers the same as the command's options).
SETTINGS_USAGE = (
    'Use /settings style:NAME mode:fast|quality count:N suffix:"TEXT" to set your defaults, or /settings clear.'
)


def accepted_photos() -> str:
    """``"JPEG, PNG or WebP"``: the kernel's list of accepted photo types, as people call them."""
    return accepted_photos_text()


def style_label(style: Style | None, name: str) -> str:
    """``"🌸 Anime"``, or the bare name of a style the catalogue no longer has."""
    return f"{style.emoji} {style.display_name}" if style else name


def styles_text(styles: Iterable[Style]) -> str:
    return "\n".join(f"{item.emoji} {item.name}: {item.description}" for item in styles)


def help_text(style_names: Iterable[str], retention_hours: float, how_to_order: str, defaults: str = "") -> str:
    """``defaults``: the person's own defaults in words (bot.core.person_settings), a line of its own."""
    styles = ", ".join(style_names)
    personal = f"{defaults}\n" if defaults else ""
    return (
        "I turn a selfie into profile pictures in the style you pick.\n"
        f"{how_to_order}\n"
        f"Styles: {styles}.\n"
        f"{personal}"
        f"Rate the pictures 1-5 ({RATING_SCALE}); /history lists your jobs; /forget deletes everything about you.\n"
        f"Your selfie is kept only for re-rolls, {retention_hours:g} h at most, then deleted."
    )


def how_to_order_in_a_group(addressed_command: str) -> str:
    """How to order in a group, naming the form of the command that always reaches this bot there
    (``/profile@ThisBot``): with several bots in a group, a plain ``/profile`` may go to another one."""
    return (
        f"In a group, send a selfie with the caption {addressed_command} STYLE "
        f"(for example {addressed_command} anime): with several bots here, only that form surely reaches me."
    )


def history_text(jobs: list[Job]) -> str:
    if not jobs:
        return NO_JOBS
    lines = []
    for job in jobs:
        outcome = {"done": f"{job.picture_count} pictures", "failed": f"failed ({job.error_code})"}.get(
            job.state, job.state
        )
        # The variant says which configuration made the pictures: someone comparing their ratings can see it.
        variant = "" if job.variant == "base" else f", variant {job.variant}"
        variant += f" on {job.family}" if job.family else ""
        lines.append(f"job {job.id}: {job.style}, {outcome}, {job.created_at[:16].replace('T', ' ')} UTC{variant}")
    return "\n".join(lines)


def privacy_notice(retention_hours: float) -> str:
    kept = (
        f"then for {retention_hours:g} h so you can re-roll, then it is deleted"
        if retention_hours > 0
        else "then it is deleted"
    )
    return (
        "Privacy: your selfie is biometric data. I keep it only while your pictures are made, "
        f"{kept}. I store the pictures, your ratings and your job list to improve the styles; "
        "/forget deletes all of it at any time."
    )


def caption(job: Job, style: Style | None) -> str:
    """The caption of a job's pictures: style, job number, mode, and a warning for test-sized weights."""
    meta = job.result_meta or {}
    text = f"{style_label(style, job.style)} · job {job.id} · {meta.get('mode', job.mode or '')}".rstrip(" ·")
    if job.is_upscale:
        text += f" · 2× upscale of job {job.parent_job_id}, as a file (not recompressed)"
    if meta.get("test_sized_model"):
        text += " · test-sized model: these pictures are noise"
    return text


def status_line(job: Job, style: Style | None, jobs_ahead: int, busy: bool = False) -> str:
    """The status message of a job while it waits or runs.

    ``busy``: the broker refuses jobs right now (full or unreachable); the job is safe in the
    database and keeps its place, and the person is told so rather than left looking at "starting soon".
    """
    label = style_label(style, job.style)
    count = "a 2× upscale" if job.is_upscale else f"{job.picture_count} picture{'s' if job.picture_count != 1 else ''}"
    if job.state == "running" and job.progress_total:
        percent = int(100 * job.progress_done / job.progress_total)
        return f"{label}: painting {count}… {percent}%"
    ahead = f"{jobs_ahead} job{'s' if jobs_ahead != 1 else ''} ahead"
    if busy:
        return f"{label}: {count} queued. We are busy right now: your job is queued and keeps its place, {ahead}"
    if jobs_ahead:
        return f"{label}: {count} queued, {ahead}"
    return f"{label}: {count} queued, starting soon"


def shorten(text: str, most: int) -> str:
    """``text`` cut to ``most`` characters at most, an ellipsis where it was cut: platforms refuse a longer
    message outright (Discord: 2000 characters), and a cut message still says most of what it meant."""
    return text if len(text) <= most else text[: max(0, most - 1)].rstrip() + "…"


def delivery_failed(job_id: int) -> str:
    """Why a job ended as DELIVERY_FAILED, told to its requester in private."""
    return (
        f"I could not post the outcome of job {job_id} in the chat where you asked for it "
        "(I may not be allowed to post there); ask an admin to let me post, then try again."
    )


def already_upscaled(job_id: int) -> str:
    """The answer to a second press of a picture's upscale: its one upscale job is already there."""
    return f"This picture is already upscaled (job {job_id})."


def pictures_done(count: int) -> str:
    """What the status message says once the pictures are posted below it."""
    return f"Done: {count} pictures below. Rate them: {RATING_SCALE}."


def thanks_for_rating(stars: int | str) -> str:
    return f"Thanks: {stars}★"


def order_taken(style: str) -> str:
    return f"{style}: on it"


def settings_summary(settings: PersonSettings | None) -> str:
    """``style anime · mode fast · 2 pictures · suffix "with a hat"``; empty when there are no defaults."""
    if settings is None:
        return ""
    parts = []
    if settings.style:
        parts.append(f"style {settings.style}")
    if settings.mode:
        parts.append(f"mode {settings.mode}")
    if settings.picture_count:
        parts.append(f"{settings.picture_count} picture{'s' if settings.picture_count != 1 else ''}")
    if settings.prompt_suffix:
        parts.append(f'suffix "{settings.prompt_suffix}"')
    return " · ".join(parts)


def settings_text(settings: PersonSettings | None) -> str:
    """The reply to ``/settings`` (and the line of ``/help``): the defaults, or that there are none."""
    summary = settings_summary(settings)
    if not summary:
        return "You have no defaults: each order uses its own options and the style's. " + SETTINGS_USAGE
    return f"Your defaults: {summary}. An option you give in an order wins; /settings clear removes them."

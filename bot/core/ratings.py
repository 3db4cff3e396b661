"""Ratings: the 1-5 scale and the reactions that mean a rating, rating and withdrawing, which reaction
counts when someone leaves several (the last one), and the ratings report of ``mmpp feedback``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from bot import metrics
from bot.core.jobs import Jobs
from bot.core.platform import Person
from bot.core.texts import RATING_SCALE
from bot.storage import Storage, StoredPicture
from mmpp.errors import ErrorCode, MmppError
from mmpp.feedback import Figures, summarise

logger = logging.getLogger(__name__)

#: Reactions that count as ratings.  On Discord people rate with the 1-5 buttons
#: under each picture or react with the keycaps 1️⃣-5️⃣ themselves (the bot adds
#: none: Discord allows about one reaction add per 0.25 s per channel);
#: Telegram only allows its fixed reaction set, so common ones are mapped onto
#: the same 1-5 scale.  Any other reaction is not a rating.
REACTION_SCORES: dict[str, int] = {
    "1️⃣": 1, "2️⃣": 2, "3️⃣": 3, "4️⃣": 4, "5️⃣": 5,
    "🔥": 5, "😍": 5, "🤩": 5, "🏆": 5, "💯": 5, "❤": 5, "❤️": 5, "❤‍🔥": 5,
    "👍": 4, "👏": 4, "👌": 4, "🥰": 4, "🎉": 4,
    "🤔": 3, "😐": 3, "🤷": 3,
    "👎": 2, "😢": 2, "🥱": 2,
    "💩": 1, "🤮": 1, "😡": 1, "🤡": 1,
}  # fmt: skip
RATING_KEYCAPS = ["1️⃣", "2️⃣", "3️⃣", "4️⃣", "5️⃣"]
#: The scores a rating control offers, lowest first.
RATING_SCORES = (1, 2, 3, 4, 5)
#: How many times a reaction on a not-yet-known message looks again (about 1.5 s in all).
REACTION_WAIT_ATTEMPTS = 5


def score_for_reaction(emoji: str) -> int | None:
    return REACTION_SCORES.get(emoji)


def rating_of_reactions(emojis: Iterable[str]) -> int | None:
    """The rating someone's reactions on a picture mean: the last one that is a rating wins.

    ``emojis`` are all their reactions on it now, oldest first (Telegram sends the whole
    set on every change).  ``None`` when none of them is a rating: the rating is withdrawn.
    """
    scores = [score for score in map(score_for_reaction, emojis) if score is not None]
    return scores[-1] if scores else None


class Ratings:
    def __init__(self, storage: Storage, jobs: Jobs) -> None:
        self.storage = storage
        self.jobs = jobs

    async def rate(self, rater: Person, picture_id: int, stars: int | None, source: str) -> StoredPicture:
        if stars is not None and not 1 <= stars <= 5:
            raise MmppError(ErrorCode.INVALID_REQUEST, f"Ratings go from 1 to 5 ({RATING_SCALE}).")
        picture = await self.storage.picture(picture_id)
        if picture is None:
            raise MmppError(ErrorCode.NOT_FOUND, "That picture no longer exists.")
        job = await self.storage.job(picture.job_id)
        if job is None or job.platform != rater.platform:
            raise MmppError(ErrorCode.NOT_FOUND, "That picture no longer exists.")
        rater_id = await self.storage.ensure_user(rater.platform, rater.user_id, rater.display_name)
        await self.storage.set_rating(picture.id, rater_id, stars, source)
        metrics.RATINGS.labels(source).inc()
        if stars is not None:
            try:
                await self.jobs.variants.after_rating(job.style)
            except Exception:  # the rating is stored; a promotion is asked again at the next one
                logger.exception("asking whether a variant of %s is now best failed", job.style)
        return picture

    async def rate_message(self, rater: Person, message_ref: str, stars: int | None, source: str) -> bool:
        """A rating of a posted picture (``None`` withdraws it); ``False`` when the message is not one of ours."""
        picture = await self.picture_for_message(rater.platform, message_ref)
        if picture is None:
            return False
        await self.rate(rater, picture.id, stars, source)
        return True

    async def picture_for_message(self, platform: str, message_ref: str) -> StoredPicture | None:
        """The picture posted as this message, waiting a moment for one being posted right now.

        A reaction can overtake the adapter's report that the message exists;
        a short wait keeps that rating instead of dropping it.
        """
        for attempt in range(REACTION_WAIT_ATTEMPTS):
            picture = await self.storage.picture_by_message(platform, message_ref)
            if picture is not None or not self.jobs.busy:
                return picture
            await asyncio.sleep(0.1 * (attempt + 1))
        return None

    async def withdraw_reaction(self, rater: Person, message_ref: str, stars: int) -> bool:
        """A removed reaction withdraws the rating only if it was the one in force.

        Someone who reacted 4️⃣ and then 5️⃣ and removes the 4️⃣ still means 5.
        """
        picture = await self.picture_for_message(rater.platform, message_ref)
        rater_id = await self.storage.find_user(rater.platform, rater.user_id)
        if picture is None or rater_id is None:
            return False
        await self.storage.withdraw_rating(picture.id, rater_id, stars)
        return True

    async def rate_job_picture(self, rater: Person, job_id: int, position: int, stars: int, source: str) -> None:
        job = await self.storage.job(job_id)
        if job is None or job.platform != rater.platform:
            raise MmppError(ErrorCode.NOT_FOUND, f"There is no job {job_id}.")
        pictures = {picture.position: picture for picture in await self.storage.pictures(job_id)}
        if position not in pictures:
            raise MmppError(ErrorCode.NOT_FOUND, f"Job {job_id} has no picture {position}.")
        await self.rate(rater, pictures[position].id, stars, source)


async def feedback_report(storage: Storage) -> list[dict[str, Any]]:
    """Per style: jobs, pictures, ratings, mean with 95 % interval, positive share (``mmpp feedback``); and per
    style its variants' figures and its standing promotion, so an operator sees what the ratings decided.

    The figures are ``mmpp.feedback``'s, the same ``mmpp eval --feedback`` reports.
    """
    feedback = summarise(await storage.feedback_rows())
    variants: dict[str, list[dict[str, Any]]] = {}
    for variant in feedback.by_variant:
        variants.setdefault(variant.style, []).append(
            {"variant": variant.variant, "jobs": variant.jobs, **_figures(variant.figures)}
        )
    rows = []
    for row in feedback.by_style:
        promotion = await storage.current_promotion(row.style)
        rows.append(
            {"style": row.style, "jobs": row.jobs, "pictures": row.pictures, **_figures(row.figures),
             "variants": variants.get(row.style, []),
             "promoted_variant": promotion.variant if promotion else None,
             "promotion": None if promotion is None else {
                 "decided_by": promotion.decided_by, "at": promotion.created_at, "evidence": promotion.evidence}}
        )  # fmt: skip
    return rows


def _figures(figures: Figures) -> dict[str, Any]:
    return {
        "ratings": figures.ratings, "mean": figures.mean, "ci95_low": figures.ci95_low,
        "ci95_high": figures.ci95_high, "positive_share": figures.positive_share,
    }  # fmt: skip

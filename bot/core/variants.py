"""Style variants on live traffic: which variant a new job renders, and promoting one that has earned it.

The decisions are :mod:`mmpp.variants`' (the same code ``mmpp bench feedback`` simulates); this part of the
core feeds them what the database knows and records what they decide.  All of it lives in SQLite, not in
memory, so a restart changes nothing: the ratings, the operators' pauses and floors, and the promotions.

A style's state is one of two.  While no promotion stands, its servable variants (not paused, not below the
operator's floor of measured figures) share its traffic by Thompson sampling, and every rating asks whether
one of them is now clearly best.  Once a variant is promoted, by the ratings or by an operator, it serves
every job of the style until an operator rolls it back (which also pauses it, so the same evidence cannot
promote it again at the next rating) or promotes another.

A variant may name the engine family that renders it (``family = "flux2-klein"``).  It is servable only where
this bot serves that family (``MMPP_FAMILY_QUEUES``): elsewhere it is neither assigned nor promoted, and
``mmpp variants`` says why, as it does for a paused one.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bot import metrics
from bot.storage import Storage, VariantPromotion
from mmpp.catalogue import BASE_VARIANT, FAMILIES_WITHOUT_WEIGHTING, Catalogue, Style
from mmpp.errors import ErrorCode, MmppError
from mmpp.variants import Rules, Tally, VariantSummary, choose_variant, decide_promotion, summarise

logger = logging.getLogger(__name__)

#: How long one style's ratings, as read for the assignment, serve before they are read again.  Reading them is
#: one grouped query (milliseconds at thousands of ratings); an order or a rating within this time of the last
#: read costs nothing.  A decision a few seconds behind the newest rating changes nothing in an experiment of
#: hundreds, and a second bot process's ratings are seen within this time too.
RATINGS_FRESH_SECONDS = 5.0


@dataclass(frozen=True)
class _StyleState:
    """One style's experiment as last read: its standing promotion, its servable variants, its ratings."""

    read_at: float
    promotion: VariantPromotion | None
    servable: list[str]
    tally: Tally


@dataclass(frozen=True)
class VariantStatus:
    """One variant as ``mmpp variants`` shows it."""

    style: str
    variant: str
    paused: bool
    ineligible_reason: str | None
    default: bool
    summary: VariantSummary | None
    #: The engine family the variant names ("" for the family of the bot's own queue).
    family: str = ""
    #: Why it is not served here although active and eligible: its family is not one this bot serves.
    unserved_reason: str | None = None


class Variants:
    def __init__(
        self,
        storage: Storage,
        catalogue: Catalogue,
        rules: Rules | None = None,
        chance: random.Random | None = None,
        fresh_seconds: float = RATINGS_FRESH_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
        served_families: Iterable[str] = (),
    ) -> None:
        """``chance`` is the assignment's random source; tests pass a seeded one to steer it, and
        ``fresh_seconds=0`` to read the ratings on every call.  ``served_families`` are the engine families
        this bot has workers for besides its own queue's (the keys of ``MMPP_FAMILY_QUEUES``)."""
        self.served_families = frozenset(served_families)
        self.storage = storage
        self.catalogue = catalogue
        self.rules = rules or Rules()
        self.chance = chance or random.Random()
        self.fresh_seconds = fresh_seconds
        self._monotonic = monotonic
        #: Per style, what was last read of its state: a copy of the database's, never the state of record (a
        #: restart reads it again, and so does every process every ``fresh_seconds``).
        self._states: dict[str, _StyleState] = {}

    def unserved_reason(self, style: Style, variant: str) -> str | None:
        """Why ``variant`` cannot be served by this bot whatever the ratings say (its family has no workers
        here), or ``None``."""
        family = style.with_variant(variant).family
        if not family or family in self.served_families:
            return None
        return f"its family {family} is not served here (MMPP_FAMILY_QUEUES names no queue for it)"

    async def servable(self, style: Style) -> list[str]:
        """The style's variants that may serve a job now: in the catalogue, not paused, not below the floor,
        and of a family this bot serves."""
        controls = await self.storage.variant_controls(style.name)
        servable = []
        for name in style.variant_names:
            control = controls.get((style.name, name))
            if (control is None or not (control.paused or control.ineligible_reason)) and not self.unserved_reason(
                style, name
            ):
                servable.append(name)
        return servable

    async def standing_default(self, style: Style) -> VariantPromotion | None:
        """The style's standing promotion, if its variant is still one the catalogue has (a variant removed from
        the file cannot be rendered, and its style goes back to sharing traffic, with a log line)."""
        promotion = await self.storage.current_promotion(style.name)
        if promotion is not None and promotion.variant not in style.variant_names:
            logger.warning(
                "style %s: promoted variant %s is no longer in the catalogue; its variants share traffic again",
                style.name, promotion.variant,
            )  # fmt: skip
            return None
        return promotion

    async def assign(self, style: Style, preferred: str | None = None, *, weighted_prompt: bool = False) -> str:
        """The variant the next job of ``style`` renders.  ``preferred`` (a reroll's parent's variant) is kept
        while it may still be served, so "the same again" is the same configuration.

        ``weighted_prompt``: the person's prompt uses Compel's weighting, which a family such as klein does not
        read (its worker refuses such a prompt); the job is then served by the other variants only, so that
        whether an order is painted never depends on a draw.  A promoted variant of such a family refuses the
        order instead, as that family's worker would, before a job exists."""
        if len(style.variant_names) == 1:
            return BASE_VARIANT
        state = await self._state(style)
        servable = state.servable
        if weighted_prompt:
            servable = [name for name in servable if not _reads_no_weights(style, name)]
        if state.promotion is not None and not self.unserved_reason(style, state.promotion.variant):
            chosen = state.promotion.variant
            if weighted_prompt and _reads_no_weights(style, chosen):
                family = style.with_variant(chosen).family
                raise MmppError(
                    ErrorCode.INVALID_REQUEST,
                    f"The style '{style.name}' is painted by {family}, which reads plain words: write the prompt "
                    "without weights ('word++', '(word)1.2').",
                )
        elif preferred in servable:
            chosen = preferred
        elif not servable:
            # Everything paused: the style as written still serves; an operator meant to stop an
            # experiment, not the style.
            chosen = BASE_VARIANT
        else:
            chosen = choose_variant(servable, state.tally, self.chance, self.rules)
        metrics.VARIANT_ASSIGNMENTS.labels(style.name, chosen).inc()
        return chosen

    async def after_rating(self, style_name: str) -> VariantPromotion | None:
        """Promote a variant if the ratings now say it is best, per :mod:`mmpp.variants`' rule; else nothing."""
        if style_name not in self.catalogue:
            return None
        style = self.catalogue.get(style_name)
        if len(style.variant_names) == 1:
            return None
        state = await self._state(style)
        if state.promotion is not None:
            return None
        decision = decide_promotion(state.servable, state.tally, self.chance, self.rules)
        if decision is None:
            return None
        promotion = await self.storage.promote_variant(
            style.name, decision.variant, "ratings", decision.evidence(), only_if_none=True
        )
        self.forget_state(style.name)
        if promotion is not None:
            metrics.VARIANT_PROMOTIONS.labels(style.name, "ratings").inc()
            logger.info(
                "style %s: variant %s promoted to default by the ratings (P(best) %.3f over %d ratings)",
                style.name, decision.variant, decision.probability_best, decision.ratings,
            )  # fmt: skip
        return promotion

    def forget_state(self, style_name: str) -> None:
        """Drop this process's copy of a style's state, so the next order reads it (after a change made here)."""
        self._states.pop(style_name, None)

    async def _state(self, style: Style, *, fresh: bool = False) -> _StyleState:
        """The style's promotion, servable variants and ratings as the rules read them: read from the database
        at most every ``fresh_seconds`` (``fresh``: now), so most orders and ratings cost no query at all."""
        now = self._monotonic()
        cached = self._states.get(style.name)
        if not fresh and cached is not None and now - cached.read_at < self.fresh_seconds:
            return cached
        cells, squares = await self.storage.variant_cells(style.name)
        state = _StyleState(
            read_at=now,
            promotion=await self.standing_default(style),
            servable=await self.servable(style),
            tally=Tally.from_cells(cells, float(squares)),
        )
        self._states[style.name] = state
        return state

    # ------------------------------------------------------------------ operators (mmpp variants)

    def _variant(self, style_name: str, variant: str) -> Style:
        style = self.catalogue.get(style_name)
        style.with_variant(variant)  # INVALID_REQUEST naming the style's variants
        return style

    async def promote(self, style_name: str, variant: str) -> VariantPromotion:
        """An operator makes ``variant`` the default, with the ratings so far as the evidence on record."""
        style = self._variant(style_name, variant)
        unserved = self.unserved_reason(style, variant)
        if unserved:
            raise MmppError(
                ErrorCode.NOT_ALLOWED, f"Variant '{variant}' of '{style.name}' cannot be promoted: {unserved}."
            )
        control = (await self.storage.variant_controls(style.name)).get((style.name, variant))
        if control is not None and control.ineligible_reason:
            raise MmppError(
                ErrorCode.NOT_ALLOWED,
                f"Variant '{variant}' of '{style.name}' is below the floor ({control.ineligible_reason}); "
                "it cannot be promoted.",
            )
        evidence = {
            "variants": [
                {"variant": s.variant, "ratings": s.ratings, "raw_mean": s.raw_mean, "adjusted_mean": s.adjusted_mean,
                 "probability_best": round(s.probability_best, 4)}
                for s in summarise(
                    style.variant_names, (await self._state(style, fresh=True)).tally, self.chance, self.rules
                )
            ]
        }  # fmt: skip
        promotion = await self.storage.promote_variant(style.name, variant, "operator", evidence)
        assert promotion is not None
        await self.storage.set_variant_paused(style.name, variant, False)
        self.forget_state(style.name)
        metrics.VARIANT_PROMOTIONS.labels(style.name, "operator").inc()
        logger.info("style %s: variant %s promoted to default by an operator", style.name, variant)
        return promotion

    async def pause(self, style_name: str, variant: str, paused: bool = True) -> None:
        style = self._variant(style_name, variant)
        await self.storage.set_variant_paused(style.name, variant, paused)
        self.forget_state(style.name)
        logger.info("style %s: variant %s %s by an operator", style.name, variant, "paused" if paused else "resumed")

    async def roll_back(self, style_name: str) -> VariantPromotion:
        style = self.catalogue.get(style_name)
        promotion = await self.storage.roll_back_promotion(style.name)
        self.forget_state(style.name)
        if promotion is None:
            raise MmppError(ErrorCode.NOT_FOUND, f"The style '{style.name}' has no promoted variant to roll back.")
        logger.info("style %s: promotion of variant %s rolled back (and the variant paused)", style.name,
                    promotion.variant)  # fmt: skip
        return promotion

    async def status(self, style_name: str | None = None) -> list[VariantStatus]:
        """Every variant of every style that has variants (or of one style), with its figures."""
        styles = [self.catalogue.get(style_name)] if style_name else [s for s in self.catalogue]
        rows = []
        for style in styles:
            if style_name is None and len(style.variant_names) == 1:
                continue
            state = await self._state(style, fresh=True)  # its promotion and ratings, read now
            controls = await self.storage.variant_controls(style.name)  # the pauses and floors, with their reasons
            promotion = state.promotion
            summaries = {s.variant: s for s in summarise(style.variant_names, state.tally, self.chance, self.rules)}
            for name in style.variant_names:
                control = controls.get((style.name, name))
                rows.append(
                    VariantStatus(
                        style=style.name,
                        variant=name,
                        paused=bool(control and control.paused),
                        ineligible_reason=control.ineligible_reason if control else None,
                        default=promotion.variant == name if promotion else False,
                        summary=summaries.get(name),
                        family=style.with_variant(name).family,
                        unserved_reason=self.unserved_reason(style, name),
                    )
                )
        return rows


def _reads_no_weights(style: Style, variant: str) -> bool:
    """Whether the variant's family paints from plain words only (Compel's weighting means nothing to it)."""
    return style.with_variant(variant).family in FAMILIES_WITHOUT_WEIGHTING

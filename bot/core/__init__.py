"""The platform-neutral chat core: every decision lives here, once.

Adapters translate platform events into calls on :class:`ChatCore` and
implement :class:`Delivery` to put the core's replies on their platform.

* :mod:`bot.core.service`: :class:`ChatCore`, the facade the adapters call, composed of:
* :mod:`bot.core.jobs`: the job lifecycle (order, enqueue, follow, complete, deliver, resume, forget)
  and the photo checks;
* :mod:`bot.core.ratings`: the rating scale and reactions, rating, withdrawing, last reaction wins,
  the ratings report;
* :mod:`bot.core.moderation`: deny and admin lists, the prompt filter, quotas and which chat they count;
* :mod:`bot.core.status`: when a status message is edited and when the edit carries a live preview
  (one rule; each platform's limits come from its adapter as an :class:`EditPace`);
* :mod:`bot.core.texts`: every text people read (help, styles, history, privacy, captions, status);
* :mod:`bot.core.choices`: photos waiting for their sender to pick a style (bounded);
* :mod:`bot.core.commands`: parsing what people type (console lines, captions, which photos are orders);
* :mod:`bot.core.platform`: what adapters and the core exchange (Person, ProfileOrder, Delivery, EditPace).
"""

from bot.core.commands import CommandError, ParsedCommand, parse_caption, parse_console_line, photo_order
from bot.core.platform import CHAT_KIND, Delivery, EditPace, Person, PostedCallback, ProfileOrder
from bot.core.service import ChatCore

__all__ = [
    "CHAT_KIND",
    "ChatCore",
    "CommandError",
    "Delivery",
    "EditPace",
    "ParsedCommand",
    "Person",
    "PostedCallback",
    "ProfileOrder",
    "parse_caption",
    "parse_console_line",
    "photo_order",
]

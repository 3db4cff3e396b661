"""The platform-neutral chat core: every decision lives here, once.

Adapters translate platform events into calls on :class:`ChatCore` and
implement :class:`Delivery` to put the core's replies on their platform.
"""

from bot.core.commands import CommandError, ParsedCommand, parse_caption, parse_console_line
from bot.core.service import ChatCore, Delivery, Person, ProfileOrder

__all__ = [
    "ChatCore",
    "CommandError",
    "Delivery",
    "ParsedCommand",
    "Person",
    "ProfileOrder",
    "parse_caption",
    "parse_console_line",
]

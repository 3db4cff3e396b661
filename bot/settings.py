"""Chat-side configuration from the environment (and ``.env``).

Tokens keep their conventional names (``DISCORD_TOKEN``, ``TELEGRAM_TOKEN``,
``REDIS_URL``); everything else carries the ``MMPP_`` prefix.  Tokens are
``SecretStr`` so that printing the settings never shows them.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from mmpp.catalogue import FAMILIES, KLEIN_FAMILY
from mmpp.contract import DEFAULT_JOB_TIMEOUT_SECONDS
from mmpp.errors import ErrorCode, MmppError


class BotSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MMPP_", env_file=".env", extra="ignore")

    discord_token: SecretStr = Field(default=SecretStr(""), validation_alias=AliasChoices("DISCORD_TOKEN"))
    telegram_token: SecretStr = Field(default=SecretStr(""), validation_alias=AliasChoices("TELEGRAM_TOKEN"))
    redis_url: str = Field(default="", validation_alias=AliasChoices("REDIS_URL", "MMPP_REDIS_URL"))
    state_dir: Path = Path("var")
    queue: str = "mmpp"
    #: Where a deployment serves several engine families: each further family and the queue base its workers
    #: consume (``flux2-klein=mmpp-klein,sdxl=mmpp-sdxl``; a family may also name ``queue`` itself when its
    #: workers are the ones of ``queue``).  A style variant with ``family = "..."`` is served only when its
    #: family is named here; every other job goes to ``queue`` as before.  Read by :meth:`family_queues_map`.
    family_queues: str = ""
    database: Path = Path("var/mmpp.sqlite3")
    #: A PostgreSQL database instead of the SQLite file ``database`` (``postgresql://user:password@host/mmpp``):
    #: bot processes on several machines then share one store.  Empty: the SQLite file.
    database_url: str = ""
    out: Path = Path("out")
    #: Another style catalogue instead of the shipped one; bot and worker must read the same file.
    styles_file: Path | None = None
    #: Hours a selfie is kept after its job for re-roll and "another style";
    #: 0 deletes it as soon as the job finishes.
    selfie_retention_hours: float = 24.0
    daily_picture_quota: int = 40
    max_pending_jobs: int = 2
    #: Pictures per day for one Telegram chat or one Discord server, all members together.
    chat_daily_picture_quota: int = 400
    #: People exempt from quotas, as "platform:user_id" separated by commas (e.g. "discord:1234,telegram:99").
    admins: str = ""
    #: People who may not use the bot at all, same form.
    denied_users: str = ""
    #: Words or phrases refused in prompts (case-insensitive, whole words), separated by commas.
    prompt_deny_list: str = ""
    #: A file with one more refused word or phrase per line.
    prompt_deny_file: Path | None = None
    #: Port for /metrics (Prometheus) and /healthz; 0 turns the endpoint off.
    metrics_port: int = 0
    #: "text" for people, "json" for log collectors.
    log_format: str = "text"
    #: How long the bot waits for a job before telling the user it failed.
    job_timeout_seconds: float = DEFAULT_JOB_TIMEOUT_SECONDS
    #: How often the bot asks the result backend about a running job.
    poll_interval_seconds: float = 0.5
    #: Admission control, per Celery queue: at most this many jobs in the broker at once (waiting or
    #: running) and this many bytes of their messages; the others wait in the database and are sent
    #: oldest first as jobs finish.  Keep the count above the number of worker processes on the queue.
    broker_max_jobs: int = Field(default=16, ge=1)
    broker_max_bytes: int = Field(default=32 * 2**20, ge=1)
    #: Platform API addresses; tests point them at loopback fakes.
    discord_api_base: str = "https://discord.com/api/v10"
    telegram_base_url: str = "https://api.telegram.org/bot"
    telegram_base_file_url: str = "https://api.telegram.org/file/bot"
    #: Gateway address; empty means discord.py's default (tests point it at a loopback fake).
    discord_gateway_url: str = ""
    #: Seconds discord.py waits after the last guild arrives before it reports ready.
    discord_guild_ready_timeout: float = 2.0
    #: Discord guild to register commands in at once (global registration takes up to an hour).
    discord_guild_id: str = ""
    #: Discord shards: how many the bot runs in all (empty: as many as the gateway recommends, all in this
    #: process) and which of them this process connects (``0-3`` or ``4,5,6,7``; empty: all of them).  Several
    #: processes split one bot by giving each the same count and its own ids; read by :meth:`discord_shards`.
    discord_shard_count: str = ""
    discord_shard_ids: str = ""
    #: Delivering a job while the platform fails (429, 5xx, a network error): at most this many attempts, and
    #: no new one later than ``delivery_retry_seconds`` after the first failure, with pauses doubling from
    #: the first to the longest.  A refusal for good (403, 404, 400) ends the delivery at once; either way
    #: the job then ends as DELIVERY_FAILED, once, and the requester is told in private where possible.
    delivery_attempts: int = Field(default=8, ge=1)
    delivery_retry_seconds: float = Field(default=900.0, ge=0)
    delivery_pause_first_seconds: float = Field(default=2.0, gt=0)
    delivery_pause_max_seconds: float = Field(default=120.0, gt=0)

    def discord_shards(self) -> tuple[int | None, list[int] | None]:
        """``(shard_count, shard_ids)`` as ``discord.AutoShardedClient`` takes them, ``None`` where not set.

        Read here rather than validated when the settings load: a bad value is then one line from the
        command that needs it (``error[INVALID_REQUEST]: ...``), not a traceback of the settings class.
        """
        count = parse_shard_count(self.discord_shard_count)
        ids = parse_shard_ids(self.discord_shard_ids, count)
        return count, ids

    def family_queues_map(self) -> dict[str, str]:
        """``MMPP_FAMILY_QUEUES`` as ``{family: queue base}``; one INVALID_REQUEST line on a bad value."""
        return parse_family_queues(self.family_queues)

    @property
    def database_location(self) -> Path | str:
        """Where the bot's database is, as ``Storage.open`` takes it: ``MMPP_DATABASE_URL`` when set, else the
        SQLite file.  Read here, not validated when the settings load, so a bad URL is one line of the
        command that needs it, not a traceback."""
        url = self.database_url.strip()
        if not url:
            return self.database
        if urlsplit(url).scheme not in ("postgresql", "postgres"):
            raise MmppError(
                ErrorCode.INVALID_REQUEST,
                f"MMPP_DATABASE_URL must be a postgresql:// URL (e.g. postgresql://mmpp@db-host/mmpp), "
                f"not {urlsplit(url).scheme or url[:20]!r}; leave it empty for the SQLite file MMPP_DATABASE.",
            )
        return url

    @property
    def run_log_file(self) -> Path:
        """Where ``mmpp run`` writes the worker's and the libraries' output (``-v`` shows it on the terminal)."""
        return self.state_dir / "log" / "mmpp-run.log"

    def secrets(self) -> list[str]:
        """What must never reach a log: the chat tokens, the broker's and the database's passwords (see
        ``mmpp.logs.SecretFilter``)."""
        password = urlsplit(self.redis_url).password if self.redis_url else None
        database_password = urlsplit(self.database_url).password if self.database_url else None
        tokens = [self.discord_token.get_secret_value(), self.telegram_token.get_secret_value()]
        return [secret for secret in [*tokens, password or "", database_password or ""] if secret]


FAMILY_QUEUES_SETTING = "MMPP_FAMILY_QUEUES"
#: A Celery queue base: what a worker's ``--queues`` names (with ``.fast`` and ``.quality`` after it).
_QUEUE_BASE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def parse_family_queues(text: str) -> dict[str, str]:
    """``family=queue`` pairs separated by commas, each family one of the catalogue's and named once, each
    queue base a plain name used by one family only (two families on one queue would each get the other's
    jobs, and refuse them).  Empty: one family, the workers of MMPP_QUEUE."""
    mapping: dict[str, str] = {}
    for part in (part.strip() for part in text.split(",")):
        if not part:
            continue
        family, equals, queue = (piece.strip() for piece in part.partition("="))
        if not equals or not family or not queue:
            raise MmppError(
                ErrorCode.INVALID_REQUEST,
                f"{FAMILY_QUEUES_SETTING}: {part[:40]!r} is not family=queue (e.g. {KLEIN_FAMILY}=mmpp-klein).",
            )
        if family not in FAMILIES:
            raise MmppError(
                ErrorCode.INVALID_REQUEST,
                f"{FAMILY_QUEUES_SETTING}: unknown family {family[:40]!r}; the families are {', '.join(FAMILIES)}.",
            )
        if family in mapping:
            raise MmppError(ErrorCode.INVALID_REQUEST, f"{FAMILY_QUEUES_SETTING} names the family {family} twice.")
        if not _QUEUE_BASE.match(queue) or queue.endswith((".fast", ".quality")):
            raise MmppError(
                ErrorCode.INVALID_REQUEST,
                f"{FAMILY_QUEUES_SETTING}: {queue[:40]!r} is not a queue base (letters, digits, '-' and '_'; its "
                ".fast and .quality queues follow from it).",
            )
        if queue in mapping.values():
            raise MmppError(
                ErrorCode.INVALID_REQUEST,
                f"{FAMILY_QUEUES_SETTING}: two families share the queue {queue}; each family needs its own workers.",
            )
        mapping[family] = queue
    return mapping


SHARD_COUNT_SETTING = "MMPP_DISCORD_SHARD_COUNT"
SHARD_IDS_SETTING = "MMPP_DISCORD_SHARD_IDS"


def parse_shard_count(text: str) -> int | None:
    """A whole number of shards, 1 or more; empty means the gateway's recommendation."""
    text = text.strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise MmppError(
            ErrorCode.INVALID_REQUEST, f"{SHARD_COUNT_SETTING} must be a whole number of 1 or more, not {text[:40]!r}."
        )
    return int(text)


def parse_shard_ids(text: str, count: int | None) -> list[int] | None:
    """``0-3``, ``4,5,6,7`` or a mix (``0-1,5``): each id once, within ``0..count-1``; empty means every shard.

    Ids need a count: two processes that each asked the gateway could be told different counts, and would
    then both, or neither, connect some servers.
    """
    text = text.strip()
    if not text:
        return None
    if count is None:
        raise MmppError(
            ErrorCode.INVALID_REQUEST,
            f"{SHARD_IDS_SETTING} needs {SHARD_COUNT_SETTING} (the shards of all processes together).",
        )
    ids: list[int] = []
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        if not first.strip().isdigit() or (dash and not last.strip().isdigit()):
            raise MmppError(
                ErrorCode.INVALID_REQUEST,
                f"{SHARD_IDS_SETTING}: {part.strip()[:40]!r} is not a shard id or a range like 0-3.",
            )
        low, high = int(first), int(last) if dash else int(first)
        if low > high:
            raise MmppError(ErrorCode.INVALID_REQUEST, f"{SHARD_IDS_SETTING}: the range {low}-{high} runs backwards.")
        if high >= count:
            raise MmppError(
                ErrorCode.INVALID_REQUEST,
                f"{SHARD_IDS_SETTING}: shard {high} is not below {SHARD_COUNT_SETTING} ({count}); "
                f"ids run from 0 to {count - 1}.",
            )
        ids.extend(range(low, high + 1))
    if len(set(ids)) != len(ids):
        raise MmppError(ErrorCode.INVALID_REQUEST, f"{SHARD_IDS_SETTING} names a shard twice ({text[:40]!r}).")
    return sorted(ids)

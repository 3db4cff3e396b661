"""The wire contract between the chat bot and the generation worker.

Part of the torch-free kernel both sides import (neither side imports the
other), so it must stay free of torch, diffusers and anything heavy: plain
dataclasses that turn into JSON and back.  Workers may run on other machines
than the bot, so the selfie travels inside the payload (base64) rather than as
a path.
"""

from __future__ import annotations

import base64
import binascii
import enum
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mmpp.errors import ErrorCode, MmppError

#: The Celery task name the bot sends by name; renaming it breaks deployed bots.
GENERATE_TASK_NAME = "engine.generate"


def queue_for(base: str, mode: str | None) -> str:
    """The queue a job goes to: fast and quality jobs have their own, so GPUs can be split between them.

    A worker consumes ``base``, ``base.fast`` and ``base.quality`` unless told otherwise.
    """
    return f"{base}.{mode}" if mode in {"fast", "quality"} else base


#: Bumped whenever a field changes meaning, so an old worker can refuse a new
#: payload loudly instead of misreading it.  Version 2 added ``variant``: an old worker would render the
#: base style for a job that asked for a variant, silently; and ``upscale_source`` (an old worker would
#: answer an upscale with "no photo attached").  Version 3 added ``family``: an old worker would render a job
#: that needs another engine family with its own model, silently, instead of refusing it (``WRONG_FAMILY``).
CONTRACT_VERSION = 3

MIN_PICTURES = 1
MAX_PICTURES = 4
#: Characters, not tokens: the bot can check this without a tokenizer, and
#: Compel concatenates token chunks so length is otherwise unbounded.
MAX_PROMPT_CHARACTERS = 500
#: Upload limit in bytes; Telegram's getFile stops at 20 MB, Discord at 25 MiB.
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
#: Decoded pixel limit, checked before decoding so a decompression bomb costs
#: nothing.  40 megapixels covers any phone camera.
MAX_IMAGE_PIXELS = 40_000_000
#: A face needs some pixels to be recognisable; below this we refuse early.
MIN_IMAGE_SIDE = 64
MAX_SEED = 2**32 - 1
#: An upscale paints its picture again at this many times its width and height.
UPSCALE_FACTOR = 2
#: The longest side of a picture that may be upscaled: twice it is the largest picture a worker paints
#: (SDXL's native 1024 becomes 2048).  Checked on the PNG header, before a pixel is decoded.
MAX_UPSCALE_SOURCE_SIDE = 1024
#: The worker paints sides in multiples of 8 (its autoencoder's scale); a source whose sides are not is
#: no picture of ours, and its double would be resized silently instead of being exactly twice the size.
UPSCALE_SIDE_MULTIPLE = 8
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Seconds the bot waits for a job before it tells the person the job failed (``MMPP_JOB_TIMEOUT_SECONDS``).
#: The worker reads the same setting: a result older than this has no reader left, so it expires then.
DEFAULT_JOB_TIMEOUT_SECONDS = 1800.0


@dataclass(frozen=True)
class PhotoType:
    """A photo format the worker decodes: its MIME type, Pillow's name for it, and what people call it."""

    mime_type: str
    pillow_format: str
    label: str


#: The one list of accepted photo formats.  The worker's decoder (``engine/faces.py``) opens
#: nothing else, and the chat core refuses any other declared type before a job is enqueued,
#: so a HEIC upload is answered at once instead of after a round trip through the queue.
ACCEPTED_PHOTO_TYPES = (
    PhotoType("image/jpeg", "JPEG", "JPEG"),
    PhotoType("image/png", "PNG", "PNG"),
    PhotoType("image/webp", "WEBP", "WebP"),
)


def accepted_photos_text() -> str:
    """``"JPEG, PNG or WebP"``: :data:`ACCEPTED_PHOTO_TYPES` as people call them, for messages."""
    labels = [photo.label for photo in ACCEPTED_PHOTO_TYPES]
    return labels[0] if len(labels) == 1 else f"{', '.join(labels[:-1])} or {labels[-1]}"


class Mode(enum.StrEnum):
    """Speed/quality trade-off picked per job."""

    FAST = "fast"
    QUALITY = "quality"


@dataclass(frozen=True)
class GenerateRequest:
    """One job: a selfie and a style, plus optional overrides.

    ``steps`` and ``guidance`` of ``None`` mean "the style's default for the
    mode"; the engine checks overrides against the mode's bounds.
    """

    selfie: bytes
    style: str
    prompt: str = ""
    mode: Mode | None = None
    count: int = 1
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    job_id: str = ""
    #: The style's variant to render (see :meth:`mmpp.catalogue.Style.with_variant`); "" is the style as written.
    variant: str = ""
    #: The engine family the bot expects to render it (a variant that names one, see ``MMPP_FAMILY_QUEUES``): a
    #: worker of another family refuses the job with ``WRONG_FAMILY``.  "" is any: the family of the bot's queue.
    family: str = ""
    #: An upscale job: the picture (PNG, as a worker painted it) to paint again at :data:`UPSCALE_FACTOR` times
    #: its size, with its own ``seed``.  ``selfie`` is then not needed: it may be gone after its retention.
    upscale_source: bytes | None = None

    def validate(self) -> None:
        """Checks that need no model, so the bot can refuse before enqueueing."""
        if self.upscale_source is not None:
            self._validate_upscale()
        elif not isinstance(self.selfie, bytes | bytearray) or not self.selfie:
            raise MmppError(ErrorCode.NOT_AN_IMAGE, "No photo was attached.")
        if len(self.selfie) > MAX_UPLOAD_BYTES:
            raise MmppError(
                ErrorCode.IMAGE_TOO_LARGE,
                f"The photo is {len(self.selfie) / 2**20:.1f} MiB; the limit is {MAX_UPLOAD_BYTES / 2**20:.0f} MiB.",
            )
        if not self.style or not isinstance(self.style, str):
            raise MmppError(ErrorCode.UNKNOWN_STYLE, "No style was named.")
        if len(self.prompt) > MAX_PROMPT_CHARACTERS:
            raise MmppError(
                ErrorCode.PROMPT_TOO_LONG,
                f"The prompt has {len(self.prompt)} characters; the limit is {MAX_PROMPT_CHARACTERS}.",
            )
        if not MIN_PICTURES <= self.count <= MAX_PICTURES:
            raise MmppError(
                ErrorCode.INVALID_REQUEST,
                f"Ask for {MIN_PICTURES} to {MAX_PICTURES} pictures, not {self.count}.",
            )
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise MmppError(ErrorCode.INVALID_REQUEST, f"The seed must lie between 0 and {MAX_SEED}.")
        if not isinstance(self.variant, str) or len(self.variant) > 32:
            raise MmppError(ErrorCode.INVALID_REQUEST, "The variant must be a name of at most 32 characters.")
        if not isinstance(self.family, str) or len(self.family) > 32:
            raise MmppError(ErrorCode.INVALID_REQUEST, "The family must be a name of at most 32 characters.")

    def _validate_upscale(self) -> None:
        """The source of an upscale, bounded by its header alone (a forged PNG costs nothing to refuse)."""
        source = self.upscale_source
        if not isinstance(source, bytes | bytearray) or not source:
            raise MmppError(ErrorCode.NOT_AN_IMAGE, "There is no picture to upscale.")
        if len(source) > MAX_UPLOAD_BYTES:
            raise MmppError(
                ErrorCode.IMAGE_TOO_LARGE,
                f"The picture to upscale is {len(source) / 2**20:.1f} MiB; the limit is "
                f"{MAX_UPLOAD_BYTES / 2**20:.0f} MiB.",
            )
        width, height = png_size(bytes(source))
        if max(width, height) > MAX_UPSCALE_SOURCE_SIDE:
            raise MmppError(
                ErrorCode.IMAGE_TOO_LARGE,
                f"The picture is {width}x{height} pixels; only pictures up to {MAX_UPSCALE_SOURCE_SIDE} pixels "
                "a side can be upscaled.",
            )
        if min(width, height) < MIN_IMAGE_SIDE or width % UPSCALE_SIDE_MULTIPLE or height % UPSCALE_SIDE_MULTIPLE:
            raise MmppError(
                ErrorCode.INVALID_REQUEST,
                f"The picture is {width}x{height} pixels; an upscale takes a picture this bot made "
                f"(sides of at least {MIN_IMAGE_SIDE}, in multiples of {UPSCALE_SIDE_MULTIPLE}).",
            )
        if self.count != 1:
            raise MmppError(ErrorCode.INVALID_REQUEST, "An upscale makes one picture.")
        if self.seed is None:
            raise MmppError(ErrorCode.INVALID_REQUEST, "An upscale needs the seed of the picture it repaints.")

    def to_payload(self) -> dict[str, Any]:
        """JSON-safe dict for Celery's JSON serialiser."""
        return {
            "version": CONTRACT_VERSION,
            "selfie_b64": base64.b64encode(bytes(self.selfie)).decode("ascii"),
            "style": self.style,
            "prompt": self.prompt,
            "mode": self.mode.value if self.mode else None,
            "count": self.count,
            "seed": self.seed,
            "steps": self.steps,
            "guidance": self.guidance,
            "job_id": self.job_id,
            "variant": self.variant,
            "family": self.family,
            "upscale_source_b64": (
                None if self.upscale_source is None else base64.b64encode(bytes(self.upscale_source)).decode("ascii")
            ),
        }

    @classmethod
    def from_payload(cls, payload: Any) -> GenerateRequest:
        """Parse a payload defensively: it crossed a network from another process."""
        if not isinstance(payload, dict):
            raise MmppError(ErrorCode.INVALID_REQUEST, "The job payload is not an object.")
        if payload.get("version") != CONTRACT_VERSION:
            raise MmppError(
                ErrorCode.INVALID_REQUEST,
                f"The job payload has contract version {payload.get('version')!r}; "
                f"this worker speaks version {CONTRACT_VERSION}.",
            )
        try:
            selfie = base64.b64decode(payload.get("selfie_b64") or "", validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise MmppError(ErrorCode.NOT_AN_IMAGE, "The photo in the job is not valid base64.") from None
        upscale_source = None
        if payload.get("upscale_source_b64") is not None:
            try:
                upscale_source = base64.b64decode(payload["upscale_source_b64"], validate=True)
            except (binascii.Error, ValueError, TypeError):
                raise MmppError(ErrorCode.NOT_AN_IMAGE, "The picture to upscale is not valid base64.") from None
        mode_value = payload.get("mode")
        try:
            mode = Mode(mode_value) if mode_value is not None else None
        except ValueError:
            raise MmppError(ErrorCode.INVALID_REQUEST, f"Unknown mode {mode_value!r}; use fast or quality.") from None
        try:
            return cls(
                selfie=selfie,
                style=str(payload.get("style") or ""),
                prompt=str(payload.get("prompt") or ""),
                mode=mode,
                count=int(payload.get("count", 1)),
                seed=None if payload.get("seed") is None else int(payload["seed"]),
                steps=None if payload.get("steps") is None else int(payload["steps"]),
                guidance=None if payload.get("guidance") is None else float(payload["guidance"]),
                job_id=str(payload.get("job_id") or ""),
                variant=str(payload.get("variant") or ""),
                family=str(payload.get("family") or ""),
                upscale_source=upscale_source,
            )
        except (TypeError, ValueError):
            raise MmppError(ErrorCode.INVALID_REQUEST, "The job payload has a field of the wrong type.") from None


def png_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` as a PNG's header declares them, read without decoding anything."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise MmppError(ErrorCode.NOT_AN_IMAGE, "The picture to upscale is not a PNG.")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


@dataclass
class Picture:
    """One generated picture: PNG bytes and the seed that reproduces it."""

    png: bytes
    seed: int


@dataclass
class GenerateResult:
    """What a job gives back: pictures and how they were made, or an error.

    Exactly one of ``pictures`` (non-empty) and ``error_code`` is set.  The
    scales and timings are kept so ratings can later be joined to the
    configuration that produced them.
    """

    pictures: list[Picture] = field(default_factory=list)
    style: str = ""
    #: The variant of the style that was rendered ("base" for the style as written).
    variant: str = ""
    #: The engine family that rendered it (``sd15``, ``sdxl``, ``flux2-klein``).
    family: str = ""
    mode: str = ""
    steps: int = 0
    guidance: float = 0.0
    scales: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    model: str = ""
    test_sized_model: bool = False
    #: "passed", "off" or "unavailable": whether the NSFW check looked at the pictures.
    safety_check: str = "off"
    error_code: ErrorCode | None = None
    error_message: str = ""
    job_id: str = ""

    @property
    def ok(self) -> bool:
        return self.error_code is None

    @classmethod
    def failure(cls, error: MmppError, job_id: str = "") -> GenerateResult:
        return cls(error_code=error.code, error_message=error.message, job_id=job_id)

    def raise_for_error(self) -> None:
        if self.error_code is not None:
            raise MmppError(self.error_code, self.error_message)

    def to_payload(self) -> dict[str, Any]:
        data = asdict(self)
        data["version"] = CONTRACT_VERSION
        data["pictures"] = [
            {"png_b64": base64.b64encode(picture.png).decode("ascii"), "seed": picture.seed}
            for picture in self.pictures
        ]
        data["error_code"] = self.error_code.value if self.error_code else None
        return data

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> GenerateResult:
        code = payload.get("error_code")
        return cls(
            pictures=[
                Picture(png=base64.b64decode(item["png_b64"]), seed=int(item["seed"]))
                for item in payload.get("pictures", [])
            ],
            style=payload.get("style", ""),
            variant=str(payload.get("variant", "")),
            family=str(payload.get("family", "")),
            mode=payload.get("mode", ""),
            steps=int(payload.get("steps", 0)),
            guidance=float(payload.get("guidance", 0.0)),
            scales=dict(payload.get("scales", {})),
            timings=dict(payload.get("timings", {})),
            model=payload.get("model", ""),
            test_sized_model=bool(payload.get("test_sized_model", False)),
            safety_check=str(payload.get("safety_check", "off")),
            error_code=ErrorCode(code) if code else None,
            error_message=payload.get("error_message", ""),
            job_id=payload.get("job_id", ""),
        )


# --------------------------------------------------------------------------- shared between bot and worker

#: How bot and worker talk over Celery; both apps apply exactly this, so a
#: change of serialiser can never reach only one side.
CELERY_WIRE_SETTINGS: dict[str, Any] = {
    "task_serializer": "json",
    "result_serializer": "json",
    "accept_content": ["json"],
    "result_accept_content": ["json"],
    "result_extended": False,
    "broker_connection_retry_on_startup": True,
}


def broker_urls(redis_url: str, state_dir: Path) -> tuple[str, str]:
    """``(broker, result backend)``: bot and worker must agree, so it is defined once, here.

    With ``redis_url`` empty, an embedded broker on SQLite through kombu's
    SQLAlchemy transport: no server, one machine only, about one second per
    round trip because the transport polls.
    """
    if redis_url:
        return redis_url, redis_url
    state = state_dir.expanduser().resolve()
    state.mkdir(parents=True, exist_ok=True)
    return f"sqla+sqlite:///{state / 'broker.sqlite'}", f"db+sqlite:///{state / 'results.sqlite'}"

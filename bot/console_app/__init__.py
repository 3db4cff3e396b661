"""The terminal adapter: MMPP without any chat platform.

It reads commands line by line and prints one reply line per command (and
``job N: PATH ...`` when a job's pictures are written), so it serves both a
person at a terminal and a script piping commands in.  Status lines go to
stderr; a job's live preview is written to ``OUT/previews/job-N.jpg``
(overwritten while the job paints) and its path printed there once.  Like the platform
adapters it only translates: the core decides everything.
"""

from __future__ import annotations

import asyncio
import getpass
import uuid
from pathlib import Path
from typing import TextIO

from bot.core import ChatCore, EditPace, Person, PostedCallback, ProfileOrder, parse_console_line
from bot.storage import Job, StoredPicture
from mmpp.errors import ErrorCode, MmppError

PLATFORM = "console"
USAGE = (
    "Commands: /profile style:NAME photo:PATH [prompt:TEXT] [count:N] [mode:fast|quality] [seed:N]; "
    "/rate JOB PICTURE STARS; /upscale JOB PICTURE (twice the size, as a file); "
    "/settings [style:NAME] [mode:fast|quality] [count:N] [suffix:TEXT] (or clear); "
    "/styles; /history; /forget; /help"
)


class ConsoleDelivery:
    platform = PLATFORM
    #: No platform limit: only a terminal that should not scroll too fast.
    status_edit_pace = EditPace(0.5)

    def __init__(self, out_dir: Path, stdout: TextIO, stderr: TextIO) -> None:
        self.out_dir = out_dir
        self.stdout = stdout
        self.stderr = stderr
        self._previews_announced: set[int] = set()

    def path(self, job: Job, position: int) -> Path:
        """Where a picture of a job is written (an upscale's says so in its name)."""
        return self.out_dir / f"job-{job.id}-{position}{'-2x' if job.is_upscale else ''}.png"

    def preview_path(self, job: Job) -> Path:
        return self.out_dir / "previews" / f"job-{job.id}.jpg"

    async def post_status(self, job: Job, text: str) -> str | None:
        print(f"job {job.id}: {text}", file=self.stderr, flush=True)
        return f"status-{job.id}"

    async def edit_status(self, job: Job, message_ref: str, text: str, preview: bytes | None = None) -> None:
        print(f"job {job.id}: {text}", file=self.stderr, flush=True)
        if preview is None:
            return
        path = self.preview_path(job)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written beside and renamed over: a viewer reloading the file never reads half a JPEG.
        partial = path.with_name(path.name + ".part")
        partial.write_bytes(preview)
        partial.replace(path)
        if job.id not in self._previews_announced:
            self._previews_announced.add(job.id)
            print(f"job {job.id}: preview: {path} (updated while painting)", file=self.stderr, flush=True)

    async def post_pictures(
        self, job: Job, pictures: list[StoredPicture], caption: str, on_posted: PostedCallback
    ) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for picture in pictures:
            path = self.path(job, picture.position)
            path.write_bytes(picture.png)
            paths.append(str(path))
            await on_posted(picture, f"{job.id}:{picture.position}")
        print(f"job {job.id}: {' '.join(paths)}", file=self.stdout, flush=True)
        print(f"job {job.id}: {caption}", file=self.stderr, flush=True)

    async def post_notice(self, job: Job, text: str) -> None:
        print(text, file=self.stderr, flush=True)

    async def post_failure(self, job: Job, code: ErrorCode, text: str) -> None:
        print(f"error[{code.value}]: job {job.id}: {text}", file=self.stdout, flush=True)


class ConsoleAdapter:
    def __init__(self, core: ChatCore, stdin: TextIO, stdout: TextIO, stderr: TextIO, out_dir: Path) -> None:
        self.core = core
        self.stdin = stdin
        self.stdout = stdout
        self.person = Person(PLATFORM, getpass.getuser())
        self.delivery = ConsoleDelivery(out_dir, stdout, stderr)
        core.attach(self.delivery)

    def healthy(self) -> bool:
        return True

    async def open(self) -> None:
        """Nothing to connect: the terminal is already there."""

    async def close(self) -> None:
        """Nothing to disconnect."""

    def say(self, line: str) -> None:
        print(line, file=self.stdout, flush=True)

    async def run(self) -> None:
        """Serve lines until end of input, then wait for the jobs still running."""
        while True:
            line = await asyncio.to_thread(self.stdin.readline)
            if not line:
                break
            try:
                await self.handle(line)
            except MmppError as error:
                self.say(error.as_line())
        await self.core.wait_idle()

    async def handle(self, line: str) -> None:
        command = parse_console_line(line)
        if command is None:
            return
        if command.name == "profile":
            photo_path = command.options.pop("photo", "")
            await self.core.check_order(self.person, command.options)
            if not photo_path:
                raise MmppError(ErrorCode.NOT_AN_IMAGE, "Give the selfie as photo:PATH.")
            try:
                photo = Path(photo_path).expanduser().read_bytes()
            except OSError as error:
                raise MmppError(ErrorCode.NOT_AN_IMAGE, f"Cannot read {photo_path}: {error.strerror}.") from None
            order = ProfileOrder(self.person, f"line-{uuid.uuid4()}", "console", {}, command.options, photo)
            await self.core.order_profile(order)
        elif command.name == "rate":
            if len(command.arguments) != 3 or not all(part.isdigit() for part in command.arguments):
                raise MmppError(ErrorCode.INVALID_REQUEST, "Use /rate JOB PICTURE STARS, e.g. /rate 3 1 5.")
            job_id, position, stars = (int(part) for part in command.arguments)
            await self.core.rate_job_picture(self.person, job_id, position, stars, "console")
            self.say(f"rated job {job_id} picture {position}: {stars} stars")
        elif command.name == "upscale":
            # Pictures are named as /rate names them, by job and position: the console shows no other id.
            if len(command.arguments) != 2 or not all(part.isdigit() for part in command.arguments):
                raise MmppError(ErrorCode.INVALID_REQUEST, "Use /upscale JOB PICTURE, e.g. /upscale 3 1.")
            job_id, position = (int(part) for part in command.arguments)
            job, created = await self.core.upscale_job_picture(self.person, job_id, position, "console", {})
            what = "upscaling" if created else "already upscaled"
            written = self.delivery.path(job, 1)
            self.say(f"job {job.id}: {what} job {job_id} picture {position} (2x, written as {written})")
        elif command.name == "settings":
            self.say(await self.core.settings_command(self.person, command.arguments, command.options))
        elif command.name == "styles":
            self.say(self.core.styles_text())
        elif command.name == "history":
            self.say(await self.core.history_text(self.person))
        elif command.name == "forget":
            self.say(await self.core.forget(self.person))
        else:  # help, start
            self.say(await self.core.help_for(self.person, USAGE))

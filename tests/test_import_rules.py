"""The rule between the parts (README, "Development"), checked in fresh interpreters.

``bot`` must never pull in torch, diffusers or anything of ``engine``;
``engine`` must never pull in discord, telegram or ``bot``; the kernel both
share (``mmpp`` without its dispatcher) pulls in neither side nor anything
heavy; and the shipped packages never reach the benchmarks or the tests.
Every module of each package is imported, so a new module that breaks the
rule fails here.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def modules_of(package: str) -> list[str]:
    folder = REPO / package
    names = [package]
    for info in pkgutil.walk_packages([str(folder)], prefix=f"{package}."):
        names.append(info.name)
    return names


def loaded_after_importing(modules: list[str]) -> set[str]:
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True)
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def top_level(modules: set[str]) -> set[str]:
    return {name.split(".")[0] for name in modules}


def test_bot_never_imports_torch_diffusers_or_the_engine() -> None:
    loaded = loaded_after_importing(modules_of("bot"))
    assert not top_level(loaded) & {"torch", "diffusers", "transformers", "peft", "compel"}
    assert not top_level(loaded) & {"engine", "bench", "tests"}


def test_engine_never_imports_discord_telegram_or_the_bot() -> None:
    loaded = loaded_after_importing(modules_of("engine"))
    assert "torch" in top_level(loaded), "the check must really import the engine's modules"
    assert not top_level(loaded) & {"discord", "telegram", "bot", "bench", "tests"}


#: The dispatcher is the one module of ``mmpp`` that knows both sides (lazily, per subcommand).
DISPATCHER = "mmpp.cli"


def test_the_kernel_imports_neither_side_nor_anything_heavy() -> None:
    kernel = [name for name in modules_of("mmpp") if name != DISPATCHER]
    assert "mmpp.errors" in kernel and "mmpp.contract" in kernel and "mmpp.catalogue" in kernel
    loaded = loaded_after_importing(kernel)
    assert not top_level(loaded) & {
        "bot", "engine", "bench", "tests", "torch", "diffusers", "transformers", "discord", "telegram", "celery",
    }  # fmt: skip

"""The images install what the tests run on: the Dockerfiles and requirement files against the locks.

There is no docker here or in CI, so the images are checked by reading what they install:
every ``pip install`` in a Dockerfile, every requirement file it copies, resolved through the
metadata of the packages this test environment has (installed from the same locks).  A wrong
or missing pin, a torch release other than the tested one, torch in the bot image, a test tool
in any image, or a package the code imports that no install list names fails here.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import shlex
import sys
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
RUNTIME_LOCK = "requirements.lock"
DEV_LOCK = "requirements-dev.lock"
BOT_REQUIREMENTS = "requirements-bot.txt"
DOCKERFILES = {"bot": REPO / "docker" / "bot.Dockerfile", "worker": REPO / "docker" / "worker.Dockerfile"}
#: Packages only the worker needs: none of them may reach the bot image.
ENGINE_ONLY = {"torch", "diffusers", "transformers", "accelerate", "peft", "compel", "safetensors", "dlib-bin"}
#: Imported inside ``try: ... except ImportError`` with a tested fallback, so not a runtime dependency.
OPTIONAL_IMPORTS = {"scipy": "engine/evaluate/scorers.py computes FID's matrix square root without it"}
#: pip options that take a value (the value is not a requirement).
PIP_VALUE_OPTIONS = {"-r", "--requirement", "-c", "--constraint", "-i", "--index-url", "--extra-index-url", "-f"}


# ------------------------------------------------------------------------ reading the files
@dataclass
class RequirementFile:
    requirements: list[Requirement] = field(default_factory=list)
    constraint_files: list[str] = field(default_factory=list)

    @property
    def pins(self) -> dict[str, Version]:
        pinned = {}
        for requirement in self.requirements:
            specifiers = list(requirement.specifier)
            assert len(specifiers) == 1 and specifiers[0].operator == "==", f"{requirement} is not an exact pin"
            pinned[canonicalize_name(requirement.name)] = Version(specifiers[0].version)
        return pinned


def read_requirements(name: str) -> RequirementFile:
    parsed = RequirementFile()
    for line in (REPO / name).read_text(encoding="utf-8").splitlines():
        line = line.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-c "):
            parsed.constraint_files.append(line.removeprefix("-c ").strip())
            continue
        assert not line.startswith("-"), f"{name}: option {line!r} is not one this test understands"
        parsed.requirements.append(Requirement(line))
    return parsed


@dataclass
class PipInstall:
    requirement_files: list[str] = field(default_factory=list)
    requirements: list[Requirement] = field(default_factory=list)
    local_paths: list[str] = field(default_factory=list)
    index_urls: list[str] = field(default_factory=list)
    no_deps: bool = False


@dataclass
class Dockerfile:
    base_images: list[str] = field(default_factory=list)
    copied: set[str] = field(default_factory=set)
    installs: list[PipInstall] = field(default_factory=list)


def read_dockerfile(path: Path) -> Dockerfile:
    text = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", path.read_text(encoding="utf-8"))
    parsed = Dockerfile()
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            parsed.base_images.append(arguments.split()[0])
        elif instruction == "COPY":
            sources = [word for word in shlex.split(arguments) if not word.startswith("--")][:-1]
            parsed.copied.update(sources)
        elif instruction == "RUN":
            for command in re.split(r"&&|;|\|\|", arguments):
                words = shlex.split(command)
                if len(words) >= 2 and words[0] in {"pip", "pip3"} and words[1] == "install":
                    parsed.installs.append(parse_pip_install(words[2:]))
                elif "pip" in words:
                    pytest.fail(f"{path.name}: a pip call this test cannot read: {command.strip()}")
    return parsed


def parse_pip_install(words: list[str]) -> PipInstall:
    install = PipInstall()
    position = 0
    while position < len(words):
        word = words[position]
        value = words[position + 1] if position + 1 < len(words) else ""
        if word in {"-r", "--requirement"}:
            install.requirement_files.append(value)
        elif word in {"-i", "--index-url", "--extra-index-url"}:
            install.index_urls.append(value)
        elif word == "--no-deps":
            install.no_deps = True
        elif word in PIP_VALUE_OPTIONS:
            pytest.fail(f"pip option {word} is not one the images should need")
        elif word.startswith("-"):
            pass
        elif word.startswith((".", "/")):
            install.local_paths.append(word)
        else:
            install.requirements.append(Requirement(word))
        position += 2 if word in PIP_VALUE_OPTIONS else 1
    return install


def makefile_torch_version() -> Version:
    found = re.findall(r"pip install .*\btorch==(\S+)", (REPO / "Makefile").read_text(encoding="utf-8"))
    assert len(found) == 1, f"the Makefile should install torch once, pinned; found {found}"
    return Version(found[0])


def project_python() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mypy"]["python_version"]


# --------------------------------------------------------------- resolving through metadata
def installed_closure(requirements: Iterable[Requirement]) -> set[str]:
    """Every distribution ``requirements`` pull in, by the metadata of the installed packages."""
    return {canonicalize_name(requirement.name) for requirement in dependency_edges(requirements)}


def unmet_pins(requirements: Iterable[Requirement], pins: dict[str, Version]) -> list[str]:
    """Every requirement on the way that a pinned version does not satisfy: pip would refuse to resolve."""
    unmet = set()
    for requirement in dependency_edges(requirements):
        pinned = pins.get(canonicalize_name(requirement.name))
        if pinned is not None and not requirement.specifier.contains(pinned, prereleases=True):
            unmet.add(f"{requirement} (pinned {pinned})")
    return sorted(unmet)


def dependency_edges(requirements: Iterable[Requirement]) -> list[Requirement]:
    """``requirements`` and, through the installed packages' metadata, everything they require in turn.

    Markers and extras are evaluated for this interpreter (Linux, the project's Python), as in the
    images.  ``pip check`` is no substitute: it ignores what an extra such as
    ``python-telegram-bot[rate-limiter]`` requires.
    """
    edges: list[Requirement] = []
    expanded: set[tuple[str, frozenset[str]]] = set()
    pending = [requirement for requirement in requirements if applies(requirement, set())]
    while pending:
        requirement = pending.pop()
        edges.append(requirement)
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key in expanded:
            continue
        expanded.add(key)
        try:
            distribution = importlib.metadata.distribution(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{requirement.name} is not installed: rebuild .venv from the locks (make)")
        for dependency in distribution.requires or []:
            parsed = Requirement(dependency)
            if applies(parsed, set(requirement.extras)):
                pending.append(parsed)
    return edges


def applies(requirement: Requirement, extras: set[str]) -> bool:
    marker = requirement.marker
    return marker is None or any(marker.evaluate({"extra": extra}) for extra in {"", *extras})


def image_install_set(dockerfile: Dockerfile) -> set[str]:
    """What an image ends up with: locks install as written, other lists through their dependencies."""
    names: set[str] = set()
    for install in dockerfile.installs:
        for requirement_file in install.requirement_files:
            parsed = read_requirements(requirement_file)
            if requirement_file.endswith(".lock"):
                names |= set(parsed.pins)
            else:
                names |= installed_closure(parsed.requirements)
        names |= installed_closure(install.requirements)
    return names


def runtime_pins() -> dict[str, Version]:
    return read_requirements(RUNTIME_LOCK).pins


def dev_pins() -> dict[str, Version]:
    return read_requirements(DEV_LOCK).pins


def pyproject_dependencies(extra: str | None = None) -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    listed = project["optional-dependencies"][extra] if extra else project["dependencies"]
    return [Requirement(line) for line in listed]


# ------------------------------------------------------------------------------ the locks
def test_the_locks_pin_everything_once_and_split_runtime_from_development() -> None:
    runtime, development = runtime_pins(), dev_pins()
    assert not runtime.keys() & development.keys(), "a package is pinned in both locks"
    assert read_requirements(DEV_LOCK).constraint_files == [RUNTIME_LOCK]
    for tool in ("pytest", "pytest-asyncio", "hypothesis", "scikit-image", "ruff", "mypy"):
        assert tool in development and tool not in runtime, f"{tool} is a development tool"
    recipe = (REPO / "Makefile").read_text(encoding="utf-8")
    stamp_rule = re.search(r"^\$\(STAMP\):(.*)$", recipe, flags=re.MULTILINE)
    assert stamp_rule and {RUNTIME_LOCK, DEV_LOCK} <= set(stamp_rule.group(1).split())
    assert recipe.index(f"-r {RUNTIME_LOCK}") < recipe.index(f"-r {DEV_LOCK}"), "make installs the runtime set first"


def test_the_runtime_lock_is_exactly_what_the_package_needs() -> None:
    """Nothing missing (an image would lack it) and nothing extra (a test tool would ship)."""
    needed = installed_closure(pyproject_dependencies())
    runtime = set(runtime_pins())
    assert not needed - runtime, f"pin these in {RUNTIME_LOCK}: {sorted(needed - runtime)}"
    assert not runtime - needed, f"nothing at run time needs these; move them to {DEV_LOCK}: {sorted(runtime - needed)}"
    development = installed_closure(pyproject_dependencies("test")) - needed
    assert development == set(dev_pins()), f"{DEV_LOCK} should hold exactly {sorted(development)}"
    assert not unmet_pins(pyproject_dependencies(), runtime_pins()), "the runtime lock does not resolve"
    assert not unmet_pins(pyproject_dependencies("test"), {**runtime_pins(), **dev_pins()}), "the locks do not resolve"


def test_the_tests_run_on_the_locked_versions() -> None:
    for name, version in {**runtime_pins(), **dev_pins()}.items():
        installed = Version(importlib.metadata.version(name))
        assert Version(installed.public) == version, f"{name} {installed} is installed, the locks pin {version}"


# --------------------------------------------------------------------- what the code imports
def third_party_imports(*packages: str) -> dict[str, list[tuple[Path, bool]]]:
    """Top-level third-party imports of ``packages``, each with where it is and whether it is optional."""
    local = {"bot", "mmpp", "engine", "bench", "tests", "migrations"}
    found: dict[str, list[tuple[Path, bool]]] = {}
    for package in packages:
        for path in sorted((REPO / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            guarded = nodes_guarded_against_import_error(tree)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    if top not in local and top not in sys.stdlib_module_names:
                        found.setdefault(top, []).append((path.relative_to(REPO), id(node) in guarded))
    return found


def nodes_guarded_against_import_error(tree: ast.AST) -> set[int]:
    """The ids of the nodes inside ``try:`` bodies whose handlers catch ImportError."""
    guarded: set[int] = set()
    for statement in ast.walk(tree):
        if isinstance(statement, ast.Try) and any(catches_import_error(handler) for handler in statement.handlers):
            guarded.update(id(node) for body_statement in statement.body for node in ast.walk(body_statement))
    return guarded


def catches_import_error(handler: ast.ExceptHandler) -> bool:
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(name, ast.Name) and name.id in {"ImportError", "ModuleNotFoundError"} for name in names)


def distribution_of(module: str) -> str:
    """The installed distribution that provides ``module``, by the files it installed.

    ``packages_distributions`` trusts ``top_level.txt``, which some wheels get wrong
    (dlib-bin names only its ``_dlib_pybind11`` extension, not ``dlib``).
    """
    providers = module_providers().get(module, set())
    assert len(providers) == 1, f"the module {module} should come from one installed distribution, not {providers}"
    return next(iter(providers))


@functools.cache
def module_providers() -> dict[str, set[str]]:
    providers: dict[str, set[str]] = {}
    for distribution in importlib.metadata.distributions():
        record = distribution.read_text("RECORD") or ""
        tops = set()
        for line in record.splitlines():
            path = line.rsplit(",", 2)[0]
            tops.add(path.split("/")[0] if "/" in path else path.split(".")[0])
        for top in tops:
            if not top.endswith((".dist-info", ".data")):
                providers.setdefault(top, set()).add(canonicalize_name(distribution.metadata["Name"]))
    return providers


def test_every_package_the_code_imports_is_declared_and_in_the_runtime_lock() -> None:
    declared = {canonicalize_name(requirement.name) for requirement in pyproject_dependencies()}
    runtime = set(runtime_pins())
    imports = third_party_imports("bot", "mmpp", "engine")
    assert {"aiohttp", "yarl", "torch", "PIL"} <= imports.keys(), "the scan must see the code's imports"
    for module, places in imports.items():
        distribution = distribution_of(module)
        if distribution in OPTIONAL_IMPORTS:
            unguarded = [str(path) for path, optional in places if not optional]
            assert not unguarded, f"{module} is optional ({OPTIONAL_IMPORTS[distribution]}) but imported in {unguarded}"
            continue
        where = sorted({str(path) for path, _ in places})
        assert distribution in declared, f"pyproject.toml's dependencies lack {distribution} (imported in {where})"
        assert distribution in runtime, f"{distribution} is imported at run time ({where}) but not in {RUNTIME_LOCK}"


def test_the_bot_requirements_name_everything_the_chat_side_imports() -> None:
    named = {canonicalize_name(requirement.name) for requirement in read_requirements(BOT_REQUIREMENTS).requirements}
    imports = third_party_imports("bot", "mmpp")
    assert "discord" in imports, "the scan must see the chat side's imports"
    missing = {distribution_of(module): sorted({str(path) for path, _ in places}) for module, places in imports.items()}
    missing = {name: where for name, where in missing.items() if name not in named}
    assert not missing, f"{BOT_REQUIREMENTS} lacks what the chat side imports: {missing}"
    assert "pillow" in named, "the chat side downscales selfies with Pillow"


def test_the_bot_requirements_resolve_within_the_runtime_lock_without_torch() -> None:
    bot = read_requirements(BOT_REQUIREMENTS)
    assert bot.constraint_files == [RUNTIME_LOCK]
    runtime = runtime_pins()
    for requirement in bot.requirements:
        assert not requirement.specifier or requirement.specifier.contains(runtime[canonicalize_name(requirement.name)])
    assert not unmet_pins(bot.requirements, runtime), "pip -r requirements-bot.txt would fail to resolve"
    resolved = installed_closure(bot.requirements)
    assert not resolved - runtime.keys(), f"the bot set pulls in what {RUNTIME_LOCK} lacks: {resolved - runtime.keys()}"
    assert not resolved & ENGINE_ONLY, f"the bot set pulls in the engine's {sorted(resolved & ENGINE_ONLY)}"
    assert not resolved & dev_pins().keys()


# ------------------------------------------------------------------------------- the images
@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_every_package_an_image_installs_is_pinned_as_in_the_runtime_lock(image: str) -> None:
    dockerfile = read_dockerfile(DOCKERFILES[image])
    runtime, development = runtime_pins(), dev_pins()
    assert dockerfile.base_images == [f"python:{project_python()}-slim"], "a base image that brings its own packages"
    assert dockerfile.installs, "the image must install something"
    copied_names = {Path(source).name for source in dockerfile.copied}
    assert DEV_LOCK not in copied_names, "no image gets the development lock"
    for copied_list in sorted(name for name in copied_names if name.startswith("requirements")):
        parsed = read_requirements(copied_list)
        if copied_list != RUNTIME_LOCK:
            assert parsed.constraint_files == [RUNTIME_LOCK], f"{copied_list} must take its versions from the lock"
            assert RUNTIME_LOCK in copied_names, f"{copied_list}'s constraint file must be copied too"
            assert all(not requirement.specifier for requirement in parsed.requirements), f"{copied_list}: no pins"
    for install in dockerfile.installs:
        for requirement_file in install.requirement_files:
            assert requirement_file in copied_names, f"pip -r {requirement_file}, which the image never copies"
        for requirement in install.requirements:
            name = canonicalize_name(requirement.name)
            pins = [specifier for specifier in requirement.specifier if specifier.operator == "=="]
            assert len(pins) == 1 and len(requirement.specifier) == 1, f"{requirement} is not an exact pin"
            assert name in runtime, f"{image} installs {name}, which {RUNTIME_LOCK} does not pin"
            assert Version(Version(pins[0].version).public) == runtime[name], (
                f"{requirement}: the lock pins {runtime[name]}"
            )
        assert not install.local_paths or install.no_deps, "the project itself installs with --no-deps, from the lock"
    installed = image_install_set(dockerfile)
    assert not installed - runtime.keys(), (
        f"{image} installs what {RUNTIME_LOCK} does not pin: {installed - runtime.keys()}"
    )
    assert not installed & development.keys(), f"{image} installs development tools: {installed & development.keys()}"


def test_the_worker_image_installs_the_cuda_build_of_the_tested_torch() -> None:
    dockerfile = read_dockerfile(DOCKERFILES["worker"])
    torch_pins = [
        (install, requirement)
        for install in dockerfile.installs
        for requirement in install.requirements
        if canonicalize_name(requirement.name) == "torch"
    ]
    assert len(torch_pins) == 1, "the worker installs torch once, explicitly (not from a base image)"
    install, requirement = torch_pins[0]
    version = Version(next(iter(requirement.specifier)).version)
    assert Version(version.public) == makefile_torch_version() == runtime_pins()["torch"]
    cuda = version.local or ""
    assert re.fullmatch(r"cu\d{3}", cuda), f"torch {version} is not a CUDA build"
    assert install.index_urls[0] == f"https://download.pytorch.org/whl/{cuda}", "the CUDA build from PyTorch's index"
    assert any(RUNTIME_LOCK in later.requirement_files for later in dockerfile.installs), "the worker installs the lock"
    assert {"diffusers", "transformers", "dlib-bin"} <= image_install_set(dockerfile)


def test_the_bot_image_installs_no_torch_and_no_diffusers() -> None:
    dockerfile = read_dockerfile(DOCKERFILES["bot"])
    installed = image_install_set(dockerfile)
    assert {"discord-py", "python-telegram-bot", "celery", "pillow"} <= installed
    assert not installed & ENGINE_ONLY, f"the bot image installs {sorted(installed & ENGINE_ONLY)}"

"""The house rules of the architecture (DESIGN.md), checked by walking every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import smoothgrad

PACKAGE = Path(smoothgrad.__file__).parent


def imports() -> dict[str, set[str]]:
    """Module name -> the absolute names it imports (relative imports resolved)."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        package = parts[:-1]
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([*package[: len(package) - node.level + 1], base]).strip(".")
                names.add(base)
                names.update(f"{base}.{alias.name}" for alias in node.names)
        found[name] = names
    return found


def importers(target: str) -> set[str]:
    return {module for module, names in imports().items()
            if any(name == target or name.startswith(f"{target}.") for name in names)}


def test_nothing_imports_the_command_line() -> None:
    outside = {m for m in importers("smoothgrad.cli") if not m.startswith("smoothgrad.cli")}
    assert outside <= {"smoothgrad.__main__"}, outside


def test_argparse_only_in_the_command_line() -> None:
    assert {m for m in importers("argparse") if not m.startswith("smoothgrad.cli")} == set()


def test_torch_distributed_only_in_batch_world() -> None:
    assert importers("torch.distributed") <= {"smoothgrad.batch.world"}


def test_the_core_does_no_file_io_or_pictures() -> None:
    core = ("smoothgrad.engine", "smoothgrad.methods", "smoothgrad.metrics",
            "smoothgrad.evaluation")
    for banned in ("PIL", "argparse", "smoothgrad.batch", "smoothgrad.viz", "smoothgrad.models"):
        offenders = {m for m in importers(banned) if m.startswith(core)}
        assert offenders == set(), (banned, offenders)


def test_the_web_extra_stays_in_its_package() -> None:
    """Starlette and uvicorn are an optional extra: only smoothgrad.web imports them, and only
    the `serve` command imports smoothgrad.web (lazily, with a message when it is missing)."""
    for framework in ("starlette", "uvicorn"):
        assert {m for m in importers(framework) if not m.startswith("smoothgrad.web")} == set()
    outside = {m for m in importers("smoothgrad.web") if not m.startswith("smoothgrad.web")}
    assert outside == {"smoothgrad.cli.serve"}, outside

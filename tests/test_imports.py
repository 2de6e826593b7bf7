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


def _faces_and_modules(root: Path) -> tuple[dict[str, Path], set[str]]:
    """Every module of the package by dotted name (a package by its `__init__`, its face),
    and the names that are packages."""
    found, packages = {}, set()
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
            packages.add(".".join(parts))
        found[".".join(parts)] = path
    return found, packages


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, read with `ast` (nothing is imported).

    Every import statement counts: at the top, inside a function (a lazy import still runs
    the other module, and an arrow drawn lazily is still an arrow) and under
    `if TYPE_CHECKING:` (the type checker follows it; a module that needs another's types
    stands above it, so two modules naming each other's types are one floor). `from P import n`
    counts as importing the submodule P.n where there is one, and the face P (the package's
    `__init__`) as well, since P's namespace is read: a module that takes a name from its
    own package's face while that face imports it is a circle. The one exception is the root
    face `smoothgrad`: it is the library's entry point, above every module, and
    `from smoothgrad import targets` reads as `import smoothgrad.targets`.
    """
    modules, packages = _faces_and_modules(root)
    top = root.name
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name.split(".") if name in packages else name.split(".")[:-1]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        arrows: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                arrows.update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([*package[: len(package) - node.level + 1], base]).strip(".")
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    if submodule in modules:
                        arrows.add(submodule)
                    if base in modules and (submodule not in modules or base != top):
                        arrows.add(base)
        graph[name] = arrows - {name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected sets of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in sorted(graph[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            members = []
            while not members or members[-1] != module:
                members.append(stack.pop())
            if len(members) > 1:
                found.append(sorted(members))

    for module in sorted(graph):
        if module not in index:
            visit(module)
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


def test_no_import_circles() -> None:
    """Arrows point one way: no set of modules imports itself round, lazily or not, package
    faces included (issue 19 found config -> meanfield -> engine -> config and six more)."""
    assert circles(import_graph()) == []


def test_the_circle_finder_finds_circles() -> None:
    """The finder on hand-made graphs: a 3-circle beside a chain, a self-contained pair."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"f"}, "f": {"e"}}
    assert sorted(circles(graph)) == [["a", "b", "c"], ["e", "f"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_the_graph_counts_lazy_imports_and_package_faces(tmp_path: Path) -> None:
    """A lazy import inside a function closes a circle; so does a submodule reading its own
    package's face, and an import under TYPE_CHECKING (display and result named each
    other's types that way); the root face is the entry."""
    files = {
        "__init__.py": "from pkg import low, up\n",
        "low.py": "def f():\n    from pkg.up import g\n",
        "up.py": "from pkg import low\n",
        "typed.py": ("from typing import TYPE_CHECKING\n"
                     "if TYPE_CHECKING:\n    from pkg.shown import S\n"),
        "shown.py": "def draw():\n    from pkg import typed\n",
        "sub/__init__.py": "from pkg.sub.runner import run\n",
        "sub/runner.py": "from pkg.sub import helper\nrun = 1\n",
        "sub/helper.py": "",
    }
    for name, text in files.items():
        (tmp_path / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / name).write_text(text)
    graph = import_graph(tmp_path / "pkg")
    assert graph["pkg.typed"] == {"pkg.shown"}
    assert graph["pkg.low"] == {"pkg.up"} and graph["pkg.up"] == {"pkg.low"}
    assert circles(graph) == [["pkg.low", "pkg.up"], ["pkg.shown", "pkg.typed"],
                              ["pkg.sub", "pkg.sub.runner"]]


def test_no_merge_conflict_markers_are_committed() -> None:
    """A merge left half-resolved shows its markers to every reader (README.md once did)."""
    root = Path(__file__).parent.parent
    markers = ("<<<<<<< ", "=======\n", ">>>>>>> ")
    found = []
    texts = (".py", ".md", ".toml", ".txt", ".sh", ".yml", ".yaml", ".html", ".ipynb")
    paths = [*root.glob("*.md"), *root.glob("*.toml"), root / "Makefile", root / ".ci" / "run"]
    paths += [path for folder in ("docs", "src", "tests", "benchmarks", "examples")
              for path in (root / folder).rglob("*")
              if path.suffix in texts and ".egg-info" not in str(path) and path.is_file()]
    for path in sorted(path for path in paths if path.exists()):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(True), 1):
            if line.startswith(markers):
                found.append(f"{path.relative_to(root)}:{number}")
    assert found == [], found

"""Fixtures shared by the test modules, and how every test is classified.

Four markers (registered in pyproject.toml) set slow tests apart:

    processes   starts processes: `tether serve`/`tether proxy`, curl, any subprocess
    postgres    needs the session's throwaway PostgreSQL (tests/postgres.py)
    etcd        needs a throwaway etcd (tests/etcd.py)
    bench       runs a benchmark script briefly (tests/test_bench_*.py)

A test with none of them is *fast*: in-process, real loopback sockets allowed.
`make test-fast` runs only those (`-m "not processes and not postgres and not etcd
and not bench"`); `make test` runs everything.

Nobody has to mark tests by hand. At collection, `pytest_collection_modifyitems`
classifies each test from what it references, read from the source (ast) of
tests/ and bench/:

- `processes`: the test function, or a fixture it uses, reaches (through functions
  and classes defined in tests/ or bench/, followed by name) a process-starting call:
  anything from `subprocess` or `multiprocessing`, `Popen`,
  `asyncio.create_subprocess_exec/_shell`, `os.fork/exec*/spawn*/posix_spawn/system`,
  `run_supervisor`. So `server_process`, `tether_process`, `run_tether`,
  `ProcessFamily` and every helper built on them count. tests/postgres.py and
  tests/etcd.py do not count here: their processes are the services below.
- `postgres` / `etcd`: the test or its fixtures reach `postgres_dsn` /
  `throwaway_postgres`, or `etcd_server` / `throwaway_etcd`; or the test is
  parametrized with the value "etcd" / "postgres" (the indirect `registry_url`
  fixtures pick their backend from that parameter at run time).
- `bench`: the module is named `test_bench_*.py`.

A marker written on a test (`@pytest.mark.processes`) is always kept; the scan only
adds markers. **A new test module gets no special treatment**: it is classified by the
same scan, so a module whose tests start nothing is fast, and one that starts
processes through any helper above is not.

The scan is checked while the tests run (`_classification_is_honest` below): a test
classified fast that starts a process (seen through Python's audit hooks:
`subprocess.Popen`, `os.fork`, `os.exec`, `os.posix_spawn`, ...) or that obtains
`postgres_dsn`/`etcd_server` (also through `request.getfixturevalue`) fails in
teardown, naming what it did. The fix is a marker on the test, or teaching the scan
a new helper name below. Not seen by either: a process started by uvloop's own
subprocess support (libuv spawns without an audit event).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from tests.etcd import etcd_server
from tests.postgres import postgres_dsn

__all__ = ["etcd_server", "postgres_dsn"]

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
#: Where helpers live: the scan follows names through every def and class here.
SCANNED = [TESTS, ROOT / "bench"]

SLOW_MARKERS = ("processes", "postgres", "etcd", "bench")

#: Names whose use means "starts a process", and prefixes that do too: any attribute
#: of ``subprocess`` or ``multiprocessing`` (``subprocess.run``), ``os.execv``, ...
PROCESS_NAMES = frozenset({
    "Popen", "create_subprocess_exec", "create_subprocess_shell",
    "asyncio.create_subprocess_exec", "asyncio.create_subprocess_shell", "run_supervisor",
    "ProcessPoolExecutor", "os.fork", "os.forkpty", "os.system", "os.posix_spawn",
    "os.posix_spawnp",
})
PROCESS_PREFIXES = ("subprocess.", "multiprocessing.", "os.exec", "os.spawn")

#: A service marker, the names that start the service, and the module holding them
#: (whose own subprocess calls are the service, not `processes`).
SERVICES = {
    "postgres": (frozenset({"postgres_dsn", "throwaway_postgres"}), TESTS / "postgres.py"),
    "etcd": (frozenset({"etcd_server", "throwaway_etcd"}), TESTS / "etcd.py"),
}
SERVICE_FIXTURES = {"postgres": "postgres_dsn", "etcd": "etcd_server"}

#: Python audit events that start a process (PEP 578).
SPAWN_EVENTS = frozenset({
    "subprocess.Popen", "os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn",
    "os.system",
})


# -- the scan ----------------------------------------------------------------------------


class _References(ast.NodeVisitor):
    """Every name a piece of code uses (``x`` and ``x.y``), annotations left out: a
    parameter typed ``subprocess.Popen`` does not start anything."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def visit_Name(self, node: ast.Name) -> None:
        self.names.add(node.id)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.value, ast.Name):
            self.names.add(f"{node.value.id}.{node.attr}")
        self.generic_visit(node)

    def visit_arg(self, node: ast.arg) -> None:
        pass  # its annotation

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for child in (*node.decorator_list, *node.args.defaults, *node.args.kw_defaults,
                      *node.body):
            if child is not None:
                self.visit(child)

    visit_AsyncFunctionDef = visit_FunctionDef


def _references(nodes: Iterable[ast.AST]) -> frozenset[str]:
    visitor = _References()
    for node in nodes:
        visitor.visit(node)
    return frozenset(visitor.names)


def _starts_process(refs: frozenset[str]) -> bool:
    return not refs.isdisjoint(PROCESS_NAMES) or any(
        ref.startswith(PROCESS_PREFIXES) for ref in refs)


def _uses(seeds: frozenset[str]) -> Callable[[frozenset[str]], bool]:
    return lambda refs: not refs.isdisjoint(seeds)


class _Index:
    """Every top-level def and class in tests/ and bench/ with the names it uses, and
    each module's imports from tests/ and bench/, so that a name is followed to the def
    it really means (``serve`` from tests.support is not bench/server.py's ``serve``).
    A class counts as one unit (all its methods); its methods are also indexed as
    ``Class.method`` for test classes."""

    def __init__(self, roots: Iterable[Path]) -> None:
        self.defs: dict[Path, dict[str, frozenset[str]]] = {}
        self.imports: dict[Path, dict[str, tuple[Path, str | None]]] = {}
        for root in roots:
            for path in sorted(root.rglob("*.py")):
                self._read(path)
        self.processes = self._closure(_starts_process, excluded={
            module for _, module in SERVICES.values()})
        self.services = {
            marker: self._closure(_uses(seeds)) for marker, (seeds, _) in SERVICES.items()
        }

    def _read(self, path: Path) -> None:
        defs: dict[str, frozenset[str]] = {}
        imports: dict[str, tuple[Path, str | None]] = {}
        self.defs[path], self.imports[path] = defs, imports
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        except (OSError, SyntaxError, UnicodeDecodeError):
            return  # pytest reports the module itself
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                defs[node.name] = _references([node])
            elif isinstance(node, ast.ClassDef):
                defs[node.name] = _references([*node.decorator_list, *node.bases,
                                               *node.body])
                for member in node.body:
                    if isinstance(member, ast.FunctionDef | ast.AsyncFunctionDef):
                        defs[f"{node.name}.{member.name}"] = _references([member])
            elif isinstance(node, ast.ImportFrom):
                base = _module_path(path, node.module or "", node.level)
                for alias in node.names:
                    local = alias.asname or alias.name
                    module = _module_path(path, f"{node.module or ''}.{alias.name}",
                                          node.level)
                    if module is not None:  # from bench import harness
                        imports[local] = (module, None)
                    elif base is not None:  # from tests.support import serve
                        imports[local] = (base, alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    module = _module_path(path, alias.name, 0)
                    if module is not None and alias.asname:  # import tests.support as s
                        imports[alias.asname] = (module, None)

    def resolve(self, path: Path, ref: str, depth: int = 0) -> tuple[Path, str] | None:
        """The def ``ref`` means in the module at ``path``, if it is one of ours."""
        head, dot, attr = ref.partition(".")
        found = self.imports.get(path, {}).get(head)
        if dot:  # module.name, through a module imported under an alias
            if found is None or found[1] is not None:
                return None
            path, ref = found[0], attr
        elif ref not in self.defs.get(path, {}):
            if found is None or found[1] is None:
                return None
            path, ref = found[0], found[1]
        if ref in self.defs.get(path, {}):
            return path, ref
        if depth < 3:  # imported from a module that imported it
            return self.resolve(path, ref, depth + 1)
        return None

    def _closure(
        self, seeded: Callable[[frozenset[str]], bool], excluded: Iterable[Path] = ()
    ) -> set[tuple[Path, str]]:
        """The defs that use a seed directly or through other defs."""
        skip = set(excluded)
        users: dict[tuple[Path, str], list[tuple[Path, str]]] = {}
        todo = []
        for path, defs in self.defs.items():
            if path in skip:
                continue
            for name, refs in defs.items():
                if seeded(refs):
                    todo.append((path, name))
                for ref in refs:
                    used = self.resolve(path, ref)
                    if used is not None:
                        users.setdefault(used, []).append((path, name))
        hit = set(todo)
        while todo:
            for user in users.get(todo.pop(), ()):
                if user not in hit:
                    hit.add(user)
                    todo.append(user)
        return hit

    def reaches(self, path: Path, refs: Iterable[str], hit: set[tuple[Path, str]]) -> bool:
        return any(self.resolve(path, ref) in hit for ref in refs)


def _module_path(importer: Path, dotted: str, level: int) -> Path | None:
    """The file in tests/ or bench/ that an import names, if any."""
    parts = [part for part in dotted.split(".") if part]
    if level:
        base = importer.parent
        for _ in range(level - 1):
            base = base.parent
        bases = [base]
    else:
        bases = [ROOT, TESTS]  # tests/apps import each other as ``apps.x`` (cwd tests/)
    for base in bases:
        candidate = base.joinpath(*parts)
        for found in (candidate.with_suffix(".py"), candidate / "__init__.py"):
            if parts and found.is_file() and any(
                    found.is_relative_to(root) for root in SCANNED):
                return found.resolve()
    return None


@cache
def _index() -> _Index:
    return _Index(SCANNED)


def classify(item: pytest.Item) -> set[str]:
    """The markers the scan gives ``item`` (see the module docstring)."""
    function = getattr(item, "function", None)
    if function is None:
        return set()
    path = Path(str(item.path)).resolve()
    index = _index()
    name = getattr(item, "originalname", item.name)
    cls = getattr(item, "cls", None)
    own = index.defs.get(path, {}).get(f"{cls.__name__}.{name}" if cls else name, frozenset())
    refs = own | set(getattr(item, "fixturenames", ()))
    found = set()
    if path.name.startswith("test_bench_"):
        found.add("bench")
    if _starts_process(own) or index.reaches(path, refs, index.processes):
        found.add("processes")
    params = getattr(getattr(item, "callspec", None), "params", {})
    for marker, (seeds, _) in SERVICES.items():
        if (not refs.isdisjoint(seeds) or index.reaches(path, refs, index.services[marker])
                or any(isinstance(v, str) and v == marker for v in params.values())):
            found.add(marker)
    return found


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for marker in sorted(classify(item)):
            if item.get_closest_marker(marker) is None:
                item.add_marker(marker)


# -- the check while tests run -----------------------------------------------------------

_spawned: list[str] | None = None  # where the audit hook records, while a fast test runs


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _spawned is not None and event in SPAWN_EVENTS:
        shown = args[1] if event == "subprocess.Popen" and len(args) > 1 else args[:1]
        _spawned.append(f"{event} {shown!r}"[:200])


sys.addaudithook(_audit)  # cannot be removed; does nothing unless a fast test runs


@pytest.fixture(autouse=True)
def _classification_is_honest(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test classified fast that starts a process or uses PostgreSQL or etcd."""
    global _spawned
    item = request.node
    fast = not any(item.get_closest_marker(m) for m in SLOW_MARKERS)
    seen: list[str] = []
    if fast:
        _spawned = seen
    try:
        yield
    finally:
        _spawned = None
    problems = [f"starts a process ({what})" for what in dict.fromkeys(seen)][:3]
    for marker, fixture in SERVICE_FIXTURES.items():
        if fixture in request.fixturenames and item.get_closest_marker(marker) is None:
            problems.append(f"uses {fixture} without the {marker} marker")
    if problems:
        pytest.fail(
            f"{item.nodeid} was not classified as it runs: " + "; ".join(problems)
            + ". Mark it (@pytest.mark.processes, postgres, etcd) or teach the scan in "
            "tests/conftest.py the helper it uses.",
            pytrace=False,
        )

"""The import contract of the house (README, "Project layout"): who may import what.

- pure logic (`streams/logic`, `schemas`) imports no framework or client: no Faust,
  aiokafka, Redis or ClickHouse; `streams/logic` imports only `schemas` and itself;
- only the agents and the delivery layer import Faust (and the CLI, which starts it);
- `sinks/` is ClickHouse only and imports nothing from `streams/`;
- the worker never imports the dev tooling (`streams/dev`);
- the CLI's batch jobs (`streams/jobs`) import no Faust, agents or dev tooling;
- no circles between modules.
"""
from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import ROOT

PACKAGES = ("streams", "schemas", "sinks")
CLIENTS = ("faust", "mode", "aiokafka", "redis", "clickhouse_connect", "chdb", "aiohttp")


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = modules()


def imports(path: Path) -> Iterator[str]:
    """Every module `path` imports, at any depth of its code (lazy imports count too)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def top(name: str) -> str:
    return name.split(".", 1)[0]


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def local(name: str) -> str | None:
    """The refstream module `name` refers to (a module, or the package of a name in it)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


RULES = [
    # (who, may not import, why)
    ("streams.logic", CLIENTS + ("streams.agents", "streams.adapters", "streams.delivery", "streams.dev",
                                  "streams.web", "streams.config", "streams.metrics", "streams.jobs", "sinks"),
     "pure logic: plain data in, plain data out"),
    ("schemas", CLIENTS + ("streams", "sinks"), "the contract depends on nothing"),
    ("sinks", ("streams", "faust", "mode", "aiokafka", "redis"), "ClickHouse only; settings are passed in"),
    ("streams.adapters", ("faust", "mode", "streams.agents", "streams.dev", "streams.jobs"), "adapters are not agents"),
    ("streams.jobs", ("faust", "mode", "streams.agents", "streams.dev"),
     "the CLI's batch jobs drive logic, adapters and sinks once, outside the worker"),
    ("streams.web", ("faust", "mode", "streams.dev"), "the stats API runs on any aiohttp app"),
    ("streams.agents", ("streams.dev",), "the worker never needs the dev tooling"),
    ("streams.delivery", ("streams.dev", "streams.agents", "sinks"), "delivery knows no agent"),
]


@pytest.mark.parametrize("who,forbidden,why", RULES, ids=[r[0] for r in RULES])
def test_import_contract(who: str, forbidden: tuple[str, ...], why: str) -> None:
    broken = sorted(f"{name} imports {imported}" for name, path in MODULES.items() if within(name, who)
                    for imported in imports(path) if any(within(imported, f) for f in forbidden))
    assert not broken, f"{why}: {broken}"


def test_only_agents_delivery_and_cli_import_faust() -> None:
    allowed = ("streams.agents", "streams.delivery", "streams.cli")
    broken = sorted(name for name, path in MODULES.items() if not any(within(name, a) for a in allowed)
                    and any(top(i) in ("faust", "mode") for i in imports(path)))
    assert not broken


def test_no_circles() -> None:
    graph = {name: {m for i in imports(path) if (m := local(i)) and m != name and not within(name, m)}
             for name, path in MODULES.items()}
    seen: dict[str, int] = {}  # 1: on the current path, 2: done
    circles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(graph[node]):
            if seen.get(nxt) == 1:
                circles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in seen:
                visit(nxt, path + [nxt])
        seen[node] = 2

    for name in sorted(graph):
        if name not in seen:
            visit(name, [name])
    assert not circles, circles


PURE = ("streams.logic", "schemas")


def public_signatures(path: Path) -> Iterator[tuple[str, str]]:
    """(name, annotation source) of every annotation in the public functions and methods of `path`."""
    tree = ast.parse(path.read_text(), str(path))

    def functions(body: list[ast.stmt], owner: str = "") -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
                yield owner + node.name, node
            elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                yield from functions(node.body, node.name + ".")

    for name, fn in functions(tree.body):
        args = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs + [a for a in (fn.args.vararg, fn.args.kwarg) if a]
        for note in [a.annotation for a in args] + [fn.returns]:
            if note is not None:
                yield name, ast.unparse(note)


def test_no_any_in_the_public_signatures_of_pure_code() -> None:
    found = sorted(f"{module}.{name}: {note}" for module, path in MODULES.items() if any(within(module, p) for p in PURE)
                   for name, note in public_signatures(path) if "Any" in note.replace("Anything", ""))
    assert not found, found

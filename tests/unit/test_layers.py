"""The package's layering rule and the absence of import cycles, read from the source (every import counts,
the ones inside functions too: a late import hides a cycle from Python, not from this test).

The rule is the table in docs/ARCHITECTURE.md ("Layers"): a module may import its own layer and the layers
below it, never one above, and the two services (streams, executor) never import each other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "ksched"

# Highest first. A module belongs to the layer of the longest prefix it starts with ("ksched" alone: the
# package module itself).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("entry points", ("ksched.cli",)),
    ("services", ("ksched.streams", "ksched.executor", "ksched.analytics")),
    ("platform", ("ksched.kafka", "ksched.topics", "ksched.partitioning", "ksched.bulk", "ksched.reader",
                  "ksched.artifacts", "ksched.acl", "ksched.devbroker", "ksched.config")),
    ("pure core", ("ksched.streams.core",)),
    ("records", ("ksched.schemas", "ksched.instants", "ksched.errors", "ksched")),
]
# Within one layer these never import each other.
INDEPENDENT = [("ksched.streams", "ksched.executor"), ("ksched.analytics", "ksched.streams"),
               ("ksched.analytics", "ksched.executor")]
# What the pure core may import from outside the package: no Kafka, Faust, RocksDB, clock, I/O or threads.
CORE_FORBIDDEN = {"faust", "mode", "aiokafka", "confluent_kafka", "rocksdict", "boto3", "botocore", "time",
                  "asyncio", "threading", "socket", "subprocess", "os", "random", "uuid", "logging", "pathlib"}


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, module: str) -> set[str]:
    """Every module `module` (at `path`) imports, absolute, wherever the import statement stands."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            # `from pkg import mod` imports the submodule pkg.mod when there is one.
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def package_graph(root: Path) -> dict[str, set[str]]:
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    return {m: {i for i in imports_of(p, m) if i in modules and i != m} for m, p in modules.items()}


def external_imports(root: Path, prefix: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for p in root.rglob("*.py"):
        m = module_name(p, root)
        if m == prefix or m.startswith(prefix + "."):
            out[m] = {i.split(".")[0] for i in imports_of(p, m) if not i.startswith("ksched")}
    return out


def layer_of(module: str) -> int:
    best = (-1, len(LAYERS))
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            inside = module == prefix or (prefix != "ksched" and module.startswith(prefix + "."))
            if inside and len(prefix) > best[0]:
                best = (len(prefix), rank)
    return best[1]


def layer_violations(graph: Mapping[str, Iterable[str]]) -> list[str]:
    bad = []
    for mod, targets in graph.items():
        for target in targets:
            if layer_of(target) < layer_of(mod):
                bad.append(f"{mod} ({LAYERS[layer_of(mod)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})")
            for a, b in INDEPENDENT:
                pair = {a, b}
                owners = {p for p in pair if mod == p or mod.startswith(p + ".")}
                others = {p for p in pair - owners if target == p or target.startswith(p + ".")}
                if owners and others:
                    bad.append(f"{mod} imports {target}: {a} and {b} are independent")
    return sorted(bad)


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


# --- the checker itself can fail ---------------------------------------------------------------------


def test_the_cycle_finder_finds_a_cycle_through_three_modules_and_none_in_a_chain() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_layer_rule_flags_an_upward_import_and_a_service_importing_the_other() -> None:
    graph = {"ksched.executor.sandbox": {"ksched.streams.core.schedule", "ksched.instants"},
             "ksched.reader": {"ksched.streams.replay"},
             "ksched.streams.web": {"ksched.reader"}}
    assert layer_violations(graph) == [
        "ksched.executor.sandbox imports ksched.streams.core.schedule: ksched.streams and ksched.executor "
        "are independent",
        "ksched.reader (platform) imports ksched.streams.replay (services)",
    ]


def test_a_late_import_inside_a_function_counts(tmp_path: Path) -> None:
    pkg = tmp_path / "ksched"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from ksched import b\n")
    (pkg / "b.py").write_text("from . import a\n")
    assert cycles(package_graph(pkg)) == [["ksched.a", "ksched.b"]]


# --- the package -------------------------------------------------------------------------------------


def test_the_package_has_no_import_cycles() -> None:
    assert cycles(package_graph(PACKAGE)) == []


def test_every_import_follows_the_layer_rule() -> None:
    assert layer_violations(package_graph(PACKAGE)) == []


@pytest.mark.parametrize("module", sorted(external_imports(PACKAGE, "ksched.streams.core")))
def test_the_pure_core_imports_no_kafka_faust_storage_or_clock(module: str) -> None:
    assert external_imports(PACKAGE, "ksched.streams.core")[module] & CORE_FORBIDDEN == set()


def test_the_pure_core_may_not_import_the_platform() -> None:
    assert layer_violations({"ksched.streams.core.decide": {"ksched.kafka"}}) == [
        "ksched.streams.core.decide (pure core) imports ksched.kafka (platform)"]


def test_every_module_belongs_to_a_layer() -> None:
    assert [m for m in package_graph(PACKAGE) if layer_of(m) == len(LAYERS)] == []


FAUST_PRIVATE = ("_committed_offset", "_db_for_partition", "_create_worker_consumer", "_isolation_level",
                 "from faust.transport", "import faust.transport")


def test_faust_internals_are_touched_only_by_the_adapter_module() -> None:
    users = sorted(module_name(p, PACKAGE) for p in PACKAGE.rglob("*.py")
                   if any(name in p.read_text() for name in FAUST_PRIVATE))
    assert users == ["ksched.streams.faustcompat"]

"""The package map and its dependency rule, checked on the source (README: Design).

Every import of one package of ``pathgen_batch`` by another must go down the layers below;
``training`` and ``synth`` are imported by the command line only; each external system has one
door. Imports inside functions count the same as top-level ones, so a lazy import cannot hide
a cycle.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "pathgen_batch"

# A package may import packages of a strictly lower layer only.
LAYERS: dict[str, int] = {
    "errors": 0,
    "config": 1,
    "assets": 1,
    "storage": 1,
    "slides": 1,
    "omics": 1,
    "models": 2,
    "cohort": 2,
    "evaluation": 3,
    "features": 3,
    "inference": 4,
    "tables": 5,
    "registry": 5,
    "training": 5,
    "batch": 6,
    "report": 6,
    "synth": 6,
    "cli": 7,
}
ONLY_CLI = {"training", "synth"}
DOORS = {  # external top-level module -> the one package that may import it
    "boto3": "storage",
    "pydicom": "storage",
    "botocore": "storage",
    "mlflow": "registry",
    "ray": "batch",
    "openslide": "slides",
    "timm": "features",
    "transformers": "features",
}
MAX_LINES = 450


def _package(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every absolute import in the file, nested ones included."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "pathgen_batch":
                out += [(node.lineno, f"pathgen_batch.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, node.module))
    return out


def _modules() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


def _internal_edges() -> list[tuple[str, str, str]]:
    """(importing package, imported package, 'file:line') across packages."""
    edges = []
    for f in _modules():
        src = _package(f)
        for line, mod in _imports(f):
            parts = mod.split(".")
            if parts[0] != "pathgen_batch" or len(parts) < 2 or parts[1] == "__version__":
                continue
            if parts[1] != src:
                edges.append((src, parts[1], f"{f.relative_to(PKG.parent)}:{line}"))
    return edges


def test_every_package_has_a_layer() -> None:
    found = {_package(f) for f in _modules()} - {"__init__"}
    assert found <= set(LAYERS), f"packages without a layer: {sorted(found - set(LAYERS))}"


def test_imports_go_down_the_layers() -> None:
    bad = [
        f"{where}: {src} (layer {LAYERS[src]}) imports {dst} (layer {LAYERS[dst]})"
        for src, dst, where in _internal_edges()
        if LAYERS[dst] >= LAYERS[src]
    ]
    assert not bad, "\n".join(bad)


def test_training_and_synth_are_imported_by_the_command_line_only() -> None:
    bad = [
        f"{where}: {src} imports {dst}"
        for src, dst, where in _internal_edges()
        if dst in ONLY_CLI and src != "cli"
    ]
    assert not bad, "\n".join(bad)


def test_no_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for src, dst, _ in _internal_edges():
        graph[src].add(dst)
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, node])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [])
            assert cycle is None, " -> ".join(cycle)


def test_each_external_system_has_one_door() -> None:
    bad = []
    for f in _modules():
        src = _package(f)
        for line, mod in _imports(f):
            door = DOORS.get(mod.split(".")[0])
            if door is not None and door != src:
                bad.append(f"{f.relative_to(PKG.parent)}:{line}: {mod} outside {door}/")
    assert not bad, "\n".join(bad)


def test_modules_stay_small() -> None:
    big = [
        f"{f.relative_to(PKG.parent)}: {n} lines"
        for f in _modules()
        if (n := len(f.read_text().splitlines())) > MAX_LINES
    ]
    assert not big, "\n".join(big)


def test_the_rule_catches_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: an upward import in a file is reported with its line."""
    f = tmp_path / "m.py"
    f.write_text("import os\n\ndef g():\n    from pathgen_batch.training import cv\n")
    assert _imports(f) == [(1, "os"), (4, "pathgen_batch.training")]

"""The shape of the code: every module imports alone, no import cycle, notebooks and their sources agree."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest

from trashlib.run import PROJECT_ROOT
from trashlib.workbook import list_notebooks, notebook_digest

PACKAGE = PROJECT_ROOT / "trashlib"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))


def import_graph() -> dict[str, set[str]]:
    """Module -> the trashlib modules it imports anywhere in its body (module level and inside functions)."""
    graph: dict[str, set[str]] = {}
    for name in MODULES:
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        targets: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "trashlib":
                    targets |= {alias.name for alias in node.names if alias.name in MODULES}
                elif node.module.startswith("trashlib."):
                    targets.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                targets |= {a.name.split(".")[1] for a in node.names if a.name.startswith("trashlib.")}
        graph[name] = targets - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first module repeated at the end), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert graph["run"] <= {"data", "files", "synthetic"}, "the run directory sits at the bottom of the stack"
    assert "workbook" not in set().union(*graph.values()) - graph["cli"], "only the command line imports the runner"
    assert find_cycle(graph) is None, find_cycle(graph)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_module_imports_alone():
    code = "import importlib, sys; importlib.import_module(sys.argv[1])"
    failed = {}
    for name in MODULES:
        proc = subprocess.run(
            [sys.executable, "-c", code, f"trashlib.{name}"], capture_output=True, text=True, check=False
        )
        if proc.returncode:
            failed[name] = proc.stderr.strip().splitlines()[-1]
    assert not failed, failed
    print(f"modules imported alone: {len(MODULES)}")


@pytest.mark.parametrize("notebook", list_notebooks(), ids=lambda p: p.stem)
def test_notebook_and_its_source_agree_and_carry_no_outputs(notebook: Path):
    source = notebook.parent / "src" / f"{notebook.stem}.py"
    assert source.is_file(), f"{notebook.name} has no paired source {source}"
    from_ipynb, from_py = jupytext.read(notebook), jupytext.read(source)

    def cells(nb: nbformat.NotebookNode) -> list[tuple[str, list[str], str]]:
        return [(c.cell_type, sorted(c.metadata.get("tags", [])), c.source.strip()) for c in nb.cells]

    assert cells(from_ipynb) == cells(from_py), f"{notebook.name} and {source.name} differ: run `make sync`"
    raw = nbformat.read(notebook, as_version=4)
    for cell in raw.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{notebook.name} is committed with outputs"


def test_notebook_digest_follows_cells_not_metadata_or_outputs(tmp_path: Path):
    nb = nbformat.read(list_notebooks()[0], as_version=4)
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    before = notebook_digest(path)
    nb.metadata["widgets"] = {"state": {}}  # what an editor adds on save
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="hello")]
    nb.cells[1].execution_count = 3
    nbformat.write(nb, path)
    assert notebook_digest(path) == before
    nb.cells[1].source += "\nx = 1"
    nbformat.write(nb, path)
    assert notebook_digest(path) != before


@pytest.mark.parametrize("notebook", list_notebooks(), ids=lambda p: p.stem)
def test_papermill_reads_every_parameter_of_a_notebook(notebook: Path):
    """papermill skips (with a warning) a parameters line with two '=' signs, a comment's '>=' included."""
    from papermill.translators import PythonTranslator

    nb = nbformat.read(notebook, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assigned = {
        target.id
        for node in ast.parse(cell.source).body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    read = {p.name for p in PythonTranslator.inspect(cell)}
    assert assigned, f"{notebook.name}: no parameter assigned"
    assert read == assigned, f"{notebook.name}: papermill cannot read {sorted(assigned - read)}"

"""The package's module graph has no import cycles, counting imports inside functions too (a
cycle hidden in a function is still two modules that cannot be understood apart)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_graph(root: Path = SRC) -> dict[str, set[str]]:
    """llmkit module -> the llmkit modules it imports (anywhere in the file)."""
    files = {}
    for p in (root / "llmkit").rglob("*.py"):
        parts = p.relative_to(root).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([node.module] if node.module else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            graph[mod] |= {n for n in names if n in files and n != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    graph = module_graph()
    assert len(graph) > 30 and "llmkit.checkpoint" in graph["llmkit.recipes.scaffold"]
    assert cycles(graph) == []


def test_the_cycle_finder_finds_one_inside_a_function(tmp_path):
    pkg = tmp_path / "llmkit"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import llmkit.b\n")
    (pkg / "b.py").write_text("def f():\n    from llmkit import a\n")
    (pkg / "c.py").write_text("from llmkit.a import x\n")
    assert cycles(module_graph(tmp_path)) == [["llmkit.a", "llmkit.b"]]


def test_config_and_presets_import_no_torch():
    """`llmkit --help` and config listing stay fast: config.py and the preset data need no torch."""
    import subprocess
    import sys

    code = "import sys, llmkit.config, llmkit.presets, llmkit.cli; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"

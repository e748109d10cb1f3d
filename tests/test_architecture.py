"""The package's shape (issue 12): imports run one way, no module reaches into another's private names,
no method is attached by assignment, and functions and modules stay small enough to read.

The checks read the exported sources with `ast` (nothing is imported), so they run anywhere in a second.
A new module must be given a layer in `LAYERS` below: where it sits is a decision, not an accident.
"""
import ast, sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "scl_nb"

# config -> model parts -> objectives -> engine -> tasks -> launch (a module may import its own layer or lower ones)
LAYERS = {
    "config": ["config", "metrics", "masking", "distributed"],
    "model parts": ["text", "vision", "fusion", "model", "towers", "synthetic", "media", "containers", "data", "downloads",
                    "importers"],
    "objectives": ["objectives"],
    "engine": ["optim", "checkpoint", "perf", "train", "jobs", "bench", "data_bench"],
    "tasks": ["tasks", "evaluation", "rerank_bench", "official", "alignment"],
    "launch": ["specs", "launch", "fixtures", "figures_index", "docs"],
}
RANK = {m: i for i, mods in enumerate(LAYERS.values()) for m in mods}
MAX_FUNCTION_LINES, MAX_MODULE_LINES = 60, 600


def modules() -> dict:
    return {p.stem: p for p in sorted(PKG.glob("*.py")) if p.stem not in ("__init__", "_modidx")}


def imports(path: Path) -> list:
    "(module, imported names) for every `scl_nb` import in the file, at any depth (function-level imports count too)."
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level == 1 or mod == "scl_nb" or mod.startswith("scl_nb."):
                target = mod.split(".", 1)[1] if mod.startswith("scl_nb.") else mod if node.level == 1 else ""
                if target: out.append((target, [a.name for a in node.names]))
                else: out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name.split(".", 1)[1], []) for a in node.names if a.name.startswith("scl_nb.")]
    return out


def graph() -> dict:
    return {m: sorted({t for t, _ in imports(p) if t != m}) for m, p in modules().items()}


def find_cycle(g: dict):
    "One import cycle as a list of modules, or None."
    state, stack = {}, []
    def visit(m):
        state[m] = "open"; stack.append(m)
        for d in g.get(m, ()):
            if state.get(d) == "open": return stack[stack.index(d):] + [d]
            if d not in state and (c := visit(d)): return c
        state[m] = "done"; stack.pop()
    for m in g:
        if m not in state and (c := visit(m)): return c
    return None


def test_every_module_has_a_layer():
    missing = sorted(set(modules()) - set(RANK))
    assert not missing, f"modules without a layer in tests/test_architecture.py LAYERS: {missing}"


def test_imports_run_one_way():
    g = graph()
    upward = [f"{m} ({RANK_NAME[RANK[m]]}) imports {d} ({RANK_NAME[RANK[d]]})" for m, ds in g.items() for d in ds
              if m in RANK and d in RANK and RANK[d] > RANK[m]]
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)
    assert find_cycle(g) is None, f"import cycle: {' -> '.join(find_cycle(g))}"


RANK_NAME = list(LAYERS)


def test_find_cycle_finds_one():
    "The cycle finder itself can fail: a planted circle is found, a chain is not."
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b"], "b": ["c"], "c": []}) is None


def test_no_private_names_across_modules():
    bad = [f"{m} imports {n} from {t}" for m, p in modules().items() for t, names in imports(p) if t != m
           for n in names if n.startswith("_")]
    assert not bad, "\n".join(bad)


def test_no_methods_attached_by_assignment():
    "`Class.name = fn` at module level splits a class across cells; `@patch` (fastcore) is the nbdev way."
    bad = []
    for m, p in modules().items():
        tree = ast.parse(p.read_text())
        classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
        for node in tree.body:
            if isinstance(node, ast.Assign):
                targets = [e for t in node.targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])]
                bad += [f"{m}: {ast.unparse(t)} = ..." for t in targets
                        if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id in classes | {"SCLModel"}]
    assert not bad, "\n".join(bad)


def test_functions_and_modules_are_short():
    long_fns, long_mods = [], []
    for m, p in modules().items():
        text = p.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES: long_mods.append(f"{m}.py: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES: long_fns.append(f"{m}.{node.name}: {n} lines")
    assert not (long_mods or long_fns), f"modules over {MAX_MODULE_LINES} lines: {long_mods}; functions over {MAX_FUNCTION_LINES} lines: {long_fns}"


@pytest.mark.parametrize("planted, check, expect", [
    ("from .train import _say\n", "test_no_private_names_across_modules", "config imports _say from train"),
    ("from scl_nb.launch import main\n", "test_imports_run_one_way", r"config \(config\) imports launch \(launch\)"),
    ("def f():\n" + "    x = 1\n" * 70, "test_functions_and_modules_are_short", "config.f: 71 lines"),
    ("ConfigError.describe = str\n", "test_no_methods_attached_by_assignment", "config: ConfigError.describe = ...")])
def test_checks_catch_a_planted_violation(tmp_path, monkeypatch, planted, check, expect):
    "Copy the package, plant one violation in `config`, and the checks above report it."
    import shutil
    copy = tmp_path / "scl_nb"
    shutil.copytree(PKG, copy)
    (copy / "config.py").write_text((copy / "config.py").read_text() + planted)
    monkeypatch.setattr(sys.modules[__name__], "PKG", copy)
    with pytest.raises(AssertionError, match=expect): globals()[check]()

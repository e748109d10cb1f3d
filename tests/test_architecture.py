"""The package's shape (issue 12): imports run one way, no module reaches into another's private names,
no method is attached by assignment, and functions and modules stay small enough to read.

Each line holds one statement and at most 120 characters of code (a trailing comment may run past: docments).
The checks read the exported sources with `ast` (nothing is imported), so they run anywhere in a second.
A new module must be given a layer in `LAYERS` below: where it sits is a decision, not an accident.
"""
import ast, io, sys, tokenize
from collections import Counter
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "scl_nb"

# config -> model parts -> objectives -> engine -> tasks -> tools (a module may import its own layer or lower ones).
# The method package is everything but `tools`; `tools` (benchmarks, specs and their launcher, fixtures, figures index,
# docs) is the repository's tooling, which nothing in the method imports.
LAYERS = {
    "config": ["config", "metrics", "masking", "distributed"],
    "model parts": [
        "text",
        "vision",
        "fusion",
        "model",
        "towers",
        "synthetic",
        "media",
        "containers",
        "data",
        "loaders",
        "downloads",
        "import_common",
        "importers_arrow",
        "importers",
    ],
    "objectives": ["objectives"],
    "engine": ["optim", "checkpoint", "perf", "runtime", "train", "jobs"],
    "tasks": ["tasks", "task_runs", "evaluation", "official", "alignment", "plots"],
    "tools": [
        "tools.bench",
        "tools.data_bench",
        "tools.rerank_bench",
        "tools.spec_format",
        "tools.specs",
        "tools.launch",
        "tools.fixtures",
        "tools.figures_index",
        "tools.docs",
    ],
}
RANK = {m: i for i, mods in enumerate(LAYERS.values()) for m in mods}
MAX_FUNCTION_LINES, MAX_MODULE_LINES, MAX_LINE_CHARS = 60, 600, 120


def modules() -> dict:
    "{dotted name inside the package (e.g. 'train', 'tools.docs'): path} of every module."
    paths = sorted(p for p in PKG.rglob("*.py") if p.stem not in ("__init__", "_modidx"))
    return {".".join(p.relative_to(PKG).with_suffix("").parts): p for p in paths}


def _resolve(path: Path, level: int, mod: str) -> str:
    "The package-relative module named by `from <level dots><mod> import ...` in `path`."
    here = list(path.relative_to(PKG).parent.parts)
    base = here[:len(here) - (level - 1)] if level > 1 else here
    return ".".join([*base, *([mod] if mod else [])])


def imports(path: Path) -> list:
    "(module, imported names) for every `scl_nb` import in the file, at any depth (function-level imports count too)."
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level >= 1 or mod == "scl_nb" or mod.startswith("scl_nb."):
                target = (
                    mod.split(".", 1)[1]
                    if mod.startswith("scl_nb.")
                    else _resolve(path, node.level, mod) if node.level else ""
                )
                names = [a.name for a in node.names]
                if target and f"{target}.{names[0]}" not in modules():
                    out.append((target, names))
                else:  # `from scl_nb import x` / `from . import x`: the names are modules
                    out += [(f"{target}.{n}" if target else n, []) for n in names]
        elif isinstance(node, ast.Import):
            out += [(a.name.split(".", 1)[1], []) for a in node.names if a.name.startswith("scl_nb.")]
    return out


def graph() -> dict:
    return {m: sorted({t for t, _ in imports(p) if t != m}) for m, p in modules().items()}


def find_cycle(g: dict):
    "One import cycle as a list of modules, or None."
    state, stack = {}, []
    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in g.get(m, ()):
            if state.get(d) == "open":
                return stack[stack.index(d):] + [d]
            if d not in state and (c := visit(d)):
                return c
        state[m] = "done"
        stack.pop()
    for m in g:
        if m not in state and (c := visit(m)):
            return c
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
                bad += [
                    f"{m}: {ast.unparse(t)} = ..."
                    for t in targets
                    if isinstance(t, ast.Attribute)
                    and isinstance(t.value, ast.Name)
                    and t.value.id in classes | {"SCLModel"}
                ]
    assert not bad, "\n".join(bad)


def test_functions_and_modules_are_short():
    long_fns, long_mods = [], []
    for m, p in modules().items():
        text = p.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_mods.append(f"{m}.py: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_fns.append(f"{m}.{node.name}: {n} lines")
    assert not (
        long_mods or long_fns
    ), f"modules over {MAX_MODULE_LINES} lines: {long_mods}; functions over {MAX_FUNCTION_LINES} lines: {long_fns}"


def test_tooling_lives_in_tools():
    "The method package and its tooling are apart: the `tools` layer is exactly the modules in `scl_nb/tools/`."
    assert {m for m in modules() if m.startswith("tools.")} == set(LAYERS["tools"])


def style_problems(m: str, text: str) -> list:
    "Lines holding more than one statement (`;` chains, `if x: y`), and lines whose code passes `MAX_LINE_CHARS`."
    tree = ast.parse(text)
    starts = Counter(n.lineno for n in ast.walk(tree) if isinstance(n, ast.stmt))
    out = [f"{m}.py:{n}: more than one statement" for n, k in sorted(starts.items()) if k > 1]
    tokens = tokenize.generate_tokens(io.StringIO(text).readline)
    comments = {t.start[0]: t.start[1] for t in tokens if t.type == tokenize.COMMENT}
    generated = set()  # nbdev writes the module docstring (the notebook's summary) and `__all__` itself
    for i, node in enumerate(tree.body):
        docstring = i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        if docstring or (isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "__all__"):
            generated.update(range(node.lineno, node.end_lineno + 1))
    for i, line in enumerate(text.splitlines(), 1):
        if i in generated:
            continue
        code = line[:comments[i]].rstrip() if i in comments else line
        if len(code) > MAX_LINE_CHARS:
            out.append(f"{m}.py:{i}: {len(code)} characters of code")
    return out


def test_one_statement_per_line_and_lines_within_width():
    "`python .dev/style.py fix` splits and wraps the notebooks' exported cells mechanically; the rest is by hand."
    bad = [problem for m, p in modules().items() for problem in style_problems(m, p.read_text())]
    assert not bad, f"{len(bad)} lines:\n" + "\n".join(bad)


@pytest.mark.parametrize("planted, check, expect", [
    ("x = 1; y = 2\n", "test_one_statement_per_line_and_lines_within_width", r"config.py:\d+: more than one statement"),
    ("if True: z = 3\n", "test_one_statement_per_line_and_lines_within_width", r"config.py:\d+: more than one "
                                                                               r"statement"),
    ("w = '" + "x" * 130 + "'\n", "test_one_statement_per_line_and_lines_within_width", r"config.py:\d+: 136 "
                                                                                        r"characters"),
    ("from .train import _say\n", "test_no_private_names_across_modules", "config imports _say from train"),
    ("from scl_nb.tools.launch import "
     "main\n", "test_imports_run_one_way", r"config \(config\) imports tools.launch \(tools\)"),
    ("def f():\n" + "    x = 1\n" * 70, "test_functions_and_modules_are_short", "config.f: 71 lines"),
    ("ConfigError.describe = str\n", "test_no_methods_attached_by_assignment", "config: ConfigError.describe = ...")])
def test_checks_catch_a_planted_violation(tmp_path, monkeypatch, planted, check, expect):
    "Copy the package, plant one violation in `config`, and the checks above report it."
    import shutil
    copy = tmp_path / "scl_nb"
    shutil.copytree(PKG, copy)
    (copy / "config.py").write_text((copy / "config.py").read_text() + planted)
    monkeypatch.setattr(sys.modules[__name__], "PKG", copy)
    with pytest.raises(AssertionError, match=expect):
        globals()[check]()

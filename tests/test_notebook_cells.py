"""Notebooks a reader can follow (issue 26): exported cells are short, and each is followed by prose and its test.

An exported cell (`#| export`) of a numbered notebook holds at most 40 lines of code (directive lines `#|` not
counted), or one definition alone (a function or a class, with its decorators) of at most 60 lines, the function cap
of `test_architecture.py`; a longer class is split across cells with fastcore's `@patch`. Before the next exported
cell come a markdown cell (what the definition is for) and a code cell that is not exported (its example or test).
The anchors are fastcore's and nbdev's own notebooks (median exported cell 6 and 11 lines).
"""
import ast, json
from pathlib import Path

NBS = Path(__file__).resolve().parent.parent / "nbs"
MAX_CELL_LINES, MAX_ONE_DEFINITION_LINES = 40, 60


def exported(cell: dict) -> bool:
    "A code cell whose directives (its first lines) include `#| export`."
    if cell["cell_type"] != "code":
        return False
    lines = "".join(cell["source"]).splitlines()
    return any(line.strip() == "#| export" for line in lines if line.startswith("#|"))


def one_definition(code: str) -> bool:
    "The cell's code is a single function or class definition."
    body = ast.parse(code).body
    return len(body) == 1 and isinstance(body[0], (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))


def cell_problems(path: Path) -> list:
    "Every exported cell of notebook `path` that is too long or not followed by prose and a test."
    cells, out = json.loads(path.read_text())["cells"], []
    for i, cell in enumerate(cells):
        if not exported(cell):
            continue
        code = "\n".join(line for line in "".join(cell["source"]).splitlines() if not line.startswith("#|"))
        n = len(code.splitlines())
        cap = MAX_ONE_DEFINITION_LINES if one_definition(code) else MAX_CELL_LINES
        name = f"{path.name} cell {cell.get('id')} ({code.strip().splitlines()[0][:50]!r})"
        if n > cap:
            out.append(f"{name}: {n} lines (at most {cap})")
        after = []
        for later in cells[i + 1:]:
            if exported(later):
                break
            after.append(later)
        if not any(c["cell_type"] == "markdown" for c in after):
            out.append(f"{name}: no prose before the next exported cell")
        if not any(c["cell_type"] == "code" and "".join(c["source"]).strip() for c in after):
            out.append(f"{name}: no example or test before the next exported cell")
    return out


def test_exported_cells_are_short_and_followed_by_prose_and_a_test():
    bad = [problem for nb in sorted(NBS.glob("[0-9]*.ipynb")) for problem in cell_problems(nb)]
    assert not bad, f"{len(bad)} problems:\n" + "\n".join(bad)


def _notebook(tmp_path: Path, cells: list) -> Path:
    made = [dict(cell_type=kind, id=f"c{i}", metadata={}, source=text, **(dict(outputs=[], execution_count=None)
                                                                         if kind == "code" else {}))
            for i, (kind, text) in enumerate(cells)]
    path = tmp_path / "01_planted.ipynb"
    path.write_text(json.dumps(dict(cells=made, metadata={}, nbformat=4, nbformat_minor=5)))
    return path


def test_the_check_catches_a_long_cell_and_a_missing_test(tmp_path):
    long_cell = "#| export\n" + "x = 1\n" * 41
    one_long_function = "#| export\ndef f():\n" + "    x = 1\n" * 58
    too_long_function = "#| export\ndef g():\n" + "    x = 1\n" * 60
    planted = _notebook(tmp_path, [("code", long_cell), ("markdown", "prose"), ("code", "test_x()"),
                                   ("code", one_long_function), ("markdown", "prose"),
                                   ("code", too_long_function), ("code", "test_g()"),
                                   ("code", "#| export\ny = 2"), ("markdown", "only prose")])
    problems = cell_problems(planted)
    assert len(problems) == 5, problems
    assert "cell c0 ('x = 1'): 41 lines (at most 40)" in problems[0]
    assert "cell c3 ('def f():'): no example or test" in problems[1]
    assert "cell c5 ('def g():'): 61 lines (at most 60)" in problems[2]
    assert "cell c5 ('def g():'): no prose" in problems[3]
    assert "cell c7 ('y = 2'): no example or test" in problems[4]
    fine = _notebook(tmp_path, [("code", "#| export\ny = 2"), ("markdown", "why"), ("code", "assert y == 2")])
    assert cell_problems(fine) == []

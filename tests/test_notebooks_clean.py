"""Notebooks are committed as `nbdev_clean` leaves them, without outputs (README, Developing).

Outputs are made where they are read: the docs site (`python -m scl_nb.tools.docs`) executes every library notebook
and stamps the commit it ran, and the papermill notebooks' executed copies live in their run folders (`runs/`). So the
sources hold no stale or machine-specific results and merge cleanly. This test is the check CI runs on that choice.
"""
import json, shutil, subprocess, sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NBDEV_CLEAN = Path(sys.executable).parent / "nbdev_clean"


def unclean(notebooks: list, work: Path) -> list:
    "One line per notebook that `nbdev_clean` would change, or that holds outputs or execution counts."
    work.mkdir(parents=True, exist_ok=True)
    copies = {nb: work / nb.name for nb in notebooks}
    for nb, copy in copies.items():
        shutil.copyfile(nb, copy)
    subprocess.run([str(NBDEV_CLEAN), "--fname", str(work)], cwd=REPO, check=True, capture_output=True)  # its settings
    out = []
    for nb, copy in copies.items():
        cells = json.loads(nb.read_text())["cells"]
        code = [(i, c) for i, c in enumerate(cells) if c["cell_type"] == "code"]
        with_output = [i for i, c in code if c.get("outputs") or c.get("execution_count")]
        if with_output:
            out.append(f"{nb.name}: outputs or execution counts in cells {with_output}")
        elif copy.read_bytes() != nb.read_bytes():
            out.append(f"{nb.name}: not as nbdev_clean leaves it")
    return out


def test_notebooks_are_clean_and_without_outputs(tmp_path):
    problems = unclean(sorted((REPO / "nbs").glob("*.ipynb")), tmp_path / "nbs")
    assert not problems, "run .venv/bin/nbdev_clean (and clear the outputs):\n" + "\n".join(problems)


def test_the_check_finds_an_output_and_a_metadata_change(tmp_path):
    "The check can fail: a planted output and a planted execution metadata key are both reported."
    src = REPO / "nbs" / "00_config.ipynb"
    nb = json.loads(src.read_text())
    code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    code["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["hello\n"]}]
    (tmp_path / "with_output.ipynb").write_text(json.dumps(nb, indent=1))
    nb = json.loads(src.read_text())
    nb["cells"][0]["metadata"]["execution"] = {"iopub.execute_input": "2026-12-07T07:00:00Z"}
    (tmp_path / "with_metadata.ipynb").write_text(json.dumps(nb, indent=1) + "\n")
    problems = unclean([tmp_path / "with_output.ipynb", tmp_path / "with_metadata.ipynb"], tmp_path / "work")
    assert [p.split(":")[0] for p in problems] == ["with_output.ipynb", "with_metadata.ipynb"], problems

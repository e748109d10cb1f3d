"""`python -m scl_nb.tools.docs` end to end on a throwaway nbdev project: each notebook processed in its own
process, a failing notebook gets a page that says so (and the exit status is 1), a papermill notebook is
rendered from its executed run with the date and commit it ran at (or says it was not run), and the site
replaces an older one whole."""
import json, os, shutil, subprocess, sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell as code, new_markdown_cell as md, new_notebook

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("sphinx"); pytest.importorskip("myst_nb"); pytest.importorskip("furo")
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="no git")


def _project(d: Path):
    (d / "nbs").mkdir()
    ini = (REPO / "settings.ini").read_text()
    (d / "settings.ini").write_text(ini)
    (d / "README.md").write_text("# p\n\n## Set up\n\nRun the thing: `make`.\n\n## Current figures\n\n![loss](figures/p.png)\n")
    (d / "figures").mkdir(); shutil.copy(next((REPO / "figures").glob("*.png")), d / "figures" / "p.png")
    nbs = {
        "index": [md("# Home\n\n> The home page."), code("#| echo: false\nfrom scl_nb.tools.docs import readme_section\nreadme_section('Set up')")],
        "01_good": [md("# Good\n\n> Works."), code("#| default_exp good"),
                    code("#| export\ndef twice(x: int,  # the number\n         ) -> int:\n    \"Double it.\"\n    return 2 * x"),
                    code("#| hide\nSECRET = 'hidden cell'"), code("print(twice(21))"), code("#| gpu\nimport torch; torch.zeros(1).cuda()")],
        "02_bad": [md("# Bad\n\n> Fails."), code("1 / 0")],
        "job": [md("# A job\n\n> Papermill."), code("n = 1", metadata={"tags": ["parameters"]}), code("print('n is', n)")],
        "job2": [md("# Another job\n\n> Never run."), code("k = 1", metadata={"tags": ["parameters"]}), code("print(k)")],
    }
    for name, cells in nbs.items():
        nbformat.write(new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "python3", "language": "python"}}),
                       d / "nbs" / f"{name}.ipynb")


def _docs(d, *args, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "scl_nb.tools.docs", *args], cwd=d, env=env, capture_output=True, text=True, timeout=timeout)


@needs_git
def test_build(tmp_path):
    d = tmp_path
    _project(d)
    git = lambda *a: subprocess.run(["git", *a], cwd=d, check=True, capture_output=True)
    git("init", "-q"); git("add", "."); git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=d, capture_output=True, text=True).stdout.strip()
    (d / "runs").mkdir()
    pm = subprocess.run([sys.executable, "-m", "papermill", "nbs/job.ipynb", "runs/job.ipynb", "-p", "n", "7"],
                        cwd=d, capture_output=True, text=True, timeout=300)
    assert pm.returncode == 0, pm.stderr[-2000:]
    (d / "_docs").mkdir(); (d / "_docs" / "stale.html").write_text("from an older build")

    r = _docs(d, "--runs", "runs")
    assert r.returncode == 1, r.stdout + r.stderr  # 02_bad fails
    assert "02_bad.ipynb" in r.stderr and "1 page(s) failed" in r.stderr
    site = d / "_docs"
    assert not (site / "stale.html").exists(), "a page of an older build survived"
    good = (site / "good.html").read_text()
    assert "42" in good and "the number" in good and "<table" in good and 'class="api-entry"' in good
    assert "#|" not in good and "hidden cell" not in good and "default_exp" not in good
    assert "not run for the docs (gpu)" in good
    bad = (site / "bad.html").read_text()
    assert "failed to render in this build" in bad and "ZeroDivisionError" in bad
    job = (site / "job.html").read_text()
    assert "n is 7" in job and "Executed run" in job and f"at commit <code" in job and head[:10] in job
    assert "Not run for this build" in (site / "job2.html").read_text()
    home = (site / "index.html").read_text()
    assert "Run the thing" in home and all(f'href="{p}.html"' in home for p in ("good", "bad", "job", "job2"))
    assert not list(d.glob("._docs-build-*")), "the build folder was left behind"

    # the same run with a changed notebook is no longer "at commit ..."
    nb = json.loads((d / "nbs" / "job.ipynb").read_text()); nb["cells"][2]["source"] = "print('changed', n)"
    (d / "nbs" / "job.ipynb").write_text(json.dumps(nb))
    git("add", "."); git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "change")
    pm = subprocess.run([sys.executable, "-m", "papermill", "nbs/job.ipynb", "runs/job.ipynb"], cwd=d, capture_output=True, text=True, timeout=300)
    nb = json.loads((d / "runs" / "job.ipynb").read_text()); nb["cells"][2]["source"] = "print('edited by hand')"
    (d / "runs" / "job.ipynb").write_text(json.dumps(nb))
    r = _docs(d, "nbs/job.ipynb", "--runs", "runs")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "not committed" in (site / "job.html").read_text()
    assert not (site / "good.html").exists()  # a partial build is a whole new site too

"""Run parameters (issue 12): each parameterised notebook's `parameters` cell and the dataclass that checks it
agree, name for name and default for default, so the two cannot drift apart; and the notebook really
checks its values with that dataclass (a bad value stops it before anything runs, with the config's message)."""
import ast, dataclasses, json, os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")


def specs() -> dict:
    from scl_nb.train import PretrainRun
    from scl_nb.task_runs import VQARun, NLVR2Run, RetrievalRun, RetrievalEvalRun
    from scl_nb.alignment import AlignmentRun
    return {"pretrain.ipynb": PretrainRun, "finetune_vqa.ipynb": VQARun, "finetune_nlvr2.ipynb": NLVR2Run,
            "finetune_retrieval.ipynb": RetrievalRun, "eval_retrieval.ipynb": RetrievalEvalRun, "eval_alignment.ipynb": AlignmentRun}


def notebook_parameters(name: str) -> dict:
    "The literal values assigned in the notebook's cell tagged `parameters`."
    nb = json.loads((ROOT / "nbs" / name).read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    tree = ast.parse("".join(cell["source"]))
    return {n.targets[0].id: ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)}


@pytest.mark.parametrize("name", ["pretrain.ipynb", "finetune_vqa.ipynb", "finetune_nlvr2.ipynb", "finetune_retrieval.ipynb",
                                  "eval_retrieval.ipynb", "eval_alignment.ipynb"])
def test_parameters_cell_matches_its_dataclass(name):
    spec = specs()[name]
    defaults = {f.name: f.default for f in dataclasses.fields(spec)}
    assert notebook_parameters(name) == defaults
    nb = (ROOT / "nbs" / name).read_text()
    assert f"check_parameters({spec.__name__}, globals())" in nb, f"{name} does not check its parameters with {spec.__name__}"


def run_pretrain_until_it_stops(tmp_path, parameters: dict):
    "papermill on nbs/pretrain.ipynb with `parameters`, expected to stop with an error: (the error, the executed notebook)."
    pm = pytest.importorskip("papermill")
    with pytest.raises(pm.PapermillExecutionError) as e:
        pm.execute_notebook(str(ROOT / "nbs" / "pretrain.ipynb"), str(tmp_path / "out.ipynb"), cwd=str(ROOT / "nbs"),
                            parameters=parameters | {"out_dir": str(tmp_path / "run")}, progress_bar=False,
                            kernel_name="python3")
    return e.value, json.loads((tmp_path / "out.ipynb").read_text())


def test_notebook_refuses_a_bad_parameter_and_no_warning_comes_first(tmp_path):
    """papermill with steps=0: the notebook stops in its check with the config's message, before training; and the
    executed notebook's first output is that check's (it was tqdm's 'IProgress not found' warning)."""
    error, nb = run_pretrain_until_it_stops(tmp_path, {"steps": 0})
    assert "ConfigError" in str(error) and "steps=0 is out of range" in str(error)
    assert not (tmp_path / "run").exists()
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    first = outputs[0]
    assert first.get("output_type") == "error" and first.get("ename") == "ConfigError", first  # the check, not a warning
    assert not any(o.get("name") == "stderr" and "Warning" in "".join(o.get("text", "")) for o in outputs), outputs


def test_notebook_refuses_a_misspelt_parameter(tmp_path):
    "papermill -p stpes 3: papermill only warns; the notebook stops in its check naming the closest parameter, before training."
    error, _ = run_pretrain_until_it_stops(tmp_path, {"stpes": 3})
    assert "ConfigError" in str(error) and "unknown parameter 'stpes' (did you mean 'steps'?)" in str(error)
    assert not (tmp_path / "run").exists()

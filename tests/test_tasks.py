"""Run every task notebook under papermill with small parameters and check what it writes.

The notebooks' own learning checks (fine-tuned beats untrained by a margin) need their default, longer
runs; here the runs are shortened, so each test checks the outputs against the notebook's own
definitions instead: metric ranges and sums, the EvalAI file format, the saved model's configuration,
the number of fused pairs for k = all. NLVR2 runs with two CPU processes (torchrun + DDP). One synthetic set and one short pre-training are shared by
all tests (one cache folder per session). Total: about 3-4 minutes on 2 CPU cores.
"""
import json, os
from pathlib import Path

import pytest

papermill = pytest.importorskip("papermill")

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / "nbs"


@pytest.fixture(scope="session")
def cache(offline_cache):
    return offline_cache


def run(name, out, **params):
    "Execute nbs/<name>.ipynb into `out`; return its results.json."
    params = dict(out_dir=str(out), **params)
    papermill.execute_notebook(str(NBS / f"{name}.ipynb"), str(out / f"{name}.ipynb"), parameters=params,
                               cwd=str(NBS), progress_bar=False, kernel_name="python3")
    return json.loads((out / "results.json").read_text())


def check_image_metrics(m):
    keys = ["tr_r1", "tr_r5", "tr_r10", "ir_r1", "ir_r5", "ir_r10"]
    assert all(0 <= m[k] <= 100 for k in keys)
    assert m["tr_r1"] <= m["tr_r5"] <= m["tr_r10"] and m["ir_r1"] <= m["ir_r5"] <= m["ir_r10"]
    assert abs(m["rsum"] - sum(m[k] for k in keys)) < 1e-6


def test_parameters_cell_is_tagged():
    for name in ("finetune_vqa", "finetune_nlvr2", "finetune_retrieval", "eval_retrieval"):
        params = papermill.inspect_notebook(str(NBS / f"{name}.ipynb"))
        for p in ("gpus", "nodes", "cluster", "preset", "data", "checkpoint", "batch_size", "precision", "out_dir", "resume", "seed", "overrides"):
            assert p in params, (name, p)


def test_finetune_vqa(cache, tmp_path):
    r = run("finetune_vqa", tmp_path, steps=60, margin=2.0)  # part of the answer prior is learnt in 60 steps
    m, u = r["metrics"]["val"], r["untrained"]["val"]
    assert 0 <= u["accuracy"] <= 100 and m["questions"] == u["questions"] > 0
    assert r["gain"] == pytest.approx(m["accuracy"] - u["accuracy"]) and r["gain"] >= 2.0
    preds = json.loads(Path(r["submissions"]["test"]["file"]).read_text())
    assert len(preds) == r["submissions"]["test"]["questions"]
    assert all(set(p) == {"question_id", "answer"} and isinstance(p["question_id"], int) and isinstance(p["answer"], str) for p in preds)
    assert len({p["question_id"] for p in preds}) == len(preds)
    assert r["engine"]["step"] == 60 and (tmp_path / "model" / "model.safetensors").exists()


def test_finetune_nlvr2(cache, tmp_path):
    # two CPU processes: the torchrun path (every process rebuilds the model from the job; DDP in the engine)
    r = run("finetune_nlvr2", tmp_path, steps=6, synthetic_pairs=1000, cpu_workers=2, check_learning=False)
    assert r["engine"]["world_size"] == 2 and r["engine"]["step"] == 6
    for split in ("dev", "test_p"):
        assert 0 <= r["metrics"][split]["accuracy"] <= 100 and r["metrics"][split]["statements"] > 0
    assert r["config"]["fusion"]["token_types"] == 3  # the saved model carries the grown token-type table
    from scl_nb.config import load_config
    assert load_config(tmp_path / "model" / "config.yaml").fusion.token_types == 3


def test_finetune_retrieval(cache, tmp_path):
    r = run("finetune_retrieval", tmp_path, steps=4, pretrain_steps=20, eval_images=20, k=5, check_learning=False)
    for key in ("metrics", "start"):
        check_image_metrics(r[key]["itm"]); check_image_metrics(r[key]["itc"])
    assert r["untrained"] is None and r["gain"] is None  # no learning check: the untrained model is not scored
    (tmp_path / "with").mkdir()  # scoring it as well changes nothing the run trains or reports
    w = run("finetune_retrieval", tmp_path / "with", steps=4, pretrain_steps=20, eval_images=20, k=5, check_learning=False,
            eval_untrained=True)
    check_image_metrics(w["untrained"]["itm"])
    assert w["gain"] == pytest.approx(w["metrics"]["itm"]["rsum"] - w["untrained"]["itm"]["rsum"])
    for key in ("metrics", "start"):
        assert (w[key]["itm"], w[key]["itc"]) == (r[key]["itm"], r[key]["itc"]), key
    assert r["k"] == 5 and r["itc_weight"] == 0.5 and r["metrics"]["n_images"] == 20
    assert r["metrics"]["fused_pairs"] < r["metrics"]["n_images"] * r["metrics"]["n_texts"]


def test_eval_retrieval_full_matrix(cache, tmp_path):
    r = run("eval_retrieval", tmp_path, pretrain_steps=20, eval_images=12, k=0, check_learning=False, eval_untrained=True)
    m = r["metrics"]
    assert r["k"] == "all" and r["zero_shot"] is True
    assert m["fused_pairs"] == m["n_images"] * m["n_texts"]  # k = all: the reference's full ITM matrix
    check_image_metrics(m["itm"]); check_image_metrics(r["untrained"]["itm"])


def test_eval_retrieval_two_processes(cache, tmp_path):
    "Two CPU processes (torchrun): each encodes its share of the rows and re-ranks the candidates of its own images; one process's results."
    (tmp_path / "one").mkdir(); (tmp_path / "two").mkdir()
    one = run("eval_retrieval", tmp_path / "one", pretrain_steps=20, eval_images=12, k=5, check_learning=False, eval_untrained=True)
    two = run("eval_retrieval", tmp_path / "two", pretrain_steps=20, eval_images=12, k=5, cpu_workers=2, check_learning=False,
              eval_untrained=True)
    assert (one["metrics"]["processes"], two["metrics"]["processes"]) == (1, 2)
    assert (tmp_path / "two" / "eval_checkpoint" / "metrics.json").exists()  # written by rank 0 of the torchrun job
    for key in ("metrics", "untrained"):
        assert two[key]["fused_pairs"] == one[key]["fused_pairs"] and two[key]["n_texts"] == one[key]["n_texts"] == 60
        for kind in ("itc", "itm"):
            assert two[key][kind] == pytest.approx(one[key][kind], abs=1e-3), (key, kind)


def test_eval_retrieval_video(cache, tmp_path):
    r = run("eval_retrieval", tmp_path, modality="video", pretrain_steps=20, eval_images=8, one_caption_per_video=True,
            k=3, check_learning=False)
    m = r["metrics"]["itm"]
    assert r["metrics"]["n_images"] == r["metrics"]["n_texts"] == 8  # one caption per video (MSR-VTT 1k-A protocol)
    for d in ("t2v", "v2t"):
        assert m[f"{d}_r1"] <= m[f"{d}_r5"] <= m[f"{d}_r10"] == 100.0  # 8 videos: everything is within the top 10
        assert 1 <= m[f"{d}_medr"] <= 8 and 1 <= m[f"{d}_meanr"] <= 8

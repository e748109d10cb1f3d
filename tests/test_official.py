"""Official-format checkpoints end to end, without downloading anything.

A tiny random model is written as an SCL Lightning `.ckpt` (official names and layouts, hyper-parameters,
optimizer and scheduler states, a callback keyed by Lightning's class), then:

* `python -m scl_nb.official convert` turns it into our checkpoint folder (a separate process), and
  refuses bad files with one line and exit status 2;
* `nbs/eval_retrieval.ipynb` evaluates the `.ckpt` itself under papermill, and its numbers equal an
  evaluation of the same weights loaded here with `load_official`.

About 1-2 minutes on 2 CPU cores.
"""
import json, os, re, subprocess, sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / "nbs"


@pytest.fixture(scope="module")
def official_ckpt(offline_cache, tmp_path_factory):
    from scl_nb.model import SCLModel
    from official_writers import official_tiny_config, randomise_parameters, save_lightning_style_checkpoint
    torch.manual_seed(0)
    model = randomise_parameters(SCLModel(official_tiny_config()).eval(), seed=5)
    return model, save_lightning_style_checkpoint(model, tmp_path_factory.mktemp("official") / "SCL-tiny.ckpt")


def cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "scl_nb.official", *map(str, args)], capture_output=True, text=True, env=env, cwd=ROOT)


def test_cli_convert(official_ckpt, tmp_path):
    from scl_nb.model import SCLModel
    model, ckpt = official_ckpt
    r = cli("convert", ckpt, tmp_path / "converted")
    assert r.returncode == 0, r.stderr
    assert "SCL layout, task pretrain" in r.stdout
    back = SCLModel.from_pretrained(tmp_path / "converted")
    own = model.state_dict()
    assert set(back.state_dict()) == set(own)
    assert all(torch.equal(back.state_dict()[k], v) for k, v in own.items())
    report = json.loads((tmp_path / "converted" / "conversion.json").read_text())
    assert report["initialised"] == [] and "vision_transformer.decoder_embed.weight" in report["ignored"]


def test_cli_bad_input(official_ckpt, tmp_path):
    _, ckpt = official_ckpt
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(ckpt.read_bytes()[:1000])
    for path, msg in ((cut, "truncated"), (tmp_path / "missing.ckpt", "no such file")):
        r = cli("convert", path, tmp_path / "out")
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert not (tmp_path / "out").exists()
    for junk in (b"", b"hello\n"):  # an empty or text .ckpt: one line naming it (was IndexError / KeyError)
        bad = tmp_path / "junk.ckpt"
        bad.write_bytes(junk)
        r = cli("inspect", bad)
        assert r.returncode == 2 and f"{bad}: not a readable PyTorch checkpoint" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_cli_convert_never_replaces_a_folder_unasked(official_ckpt, tmp_path):
    "convert into a folder that holds something: exit 2, the folder untouched (it used to be wiped, exit 0); --overwrite replaces it."
    _, ckpt = official_ckpt
    run = tmp_path / "a_run"
    run.mkdir(); (run / "metrics.jsonl").write_text('{"step": 1}\n')
    r = cli("convert", ckpt, run)
    assert r.returncode == 2 and f"{run} already exists and is not empty" in r.stderr and "--overwrite" in r.stderr, r.stderr
    assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert cli("convert", ckpt, run, "--overwrite").returncode == 0 and (run / "conversion.json").exists()


def test_eval_retrieval_official_checkpoint(official_ckpt, tmp_path):
    papermill = pytest.importorskip("papermill")
    from scl_nb.official import load_official
    from scl_nb.tasks import task_config
    from scl_nb.task_runs import task_run_config, task_manifest, retrieval_subset
    from scl_nb.evaluation import evaluate_retrieval
    from scl_nb.loaders import task_loader
    model, ckpt = official_ckpt
    papermill.execute_notebook(str(NBS / "eval_retrieval.ipynb"), str(tmp_path / "eval_retrieval.ipynb"),
                               parameters=dict(out_dir=str(tmp_path), checkpoint=str(ckpt), eval_images=12, k=0, check_learning=False),
                               cwd=str(NBS), progress_bar=False, kernel_name="python3")
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["checkpoint"] == str(tmp_path / "converted_checkpoint") and res["zero_shot"] is True
    assert res["config"]["vision"]["heads"] == res["config"]["text"]["heads"] == 1  # the architecture of the .ckpt (tiny has 2)
    assert (tmp_path / "converted_checkpoint" / "conversion.json").exists()
    # the same weights, loaded here from the .ckpt, evaluated on the same rows, give the same numbers
    loaded, report = load_official(ckpt, task="retrieval")
    assert report.task == "retrieval"
    run_cfg = task_run_config("retrieval", "tiny", "synthetic", "f30k")
    rows = retrieval_subset(task_manifest(run_cfg, "captions", "test"), 12)
    mine = evaluate_retrieval(loaded, task_loader(task_config(run_cfg, loaded.cfg), rows, "pretrain", train=False, batch_size=128,
                                                  tokenizer=loaded.text.tokenizer, device="cpu"), k=None,
                              precision=run_cfg.train.precision)  # the run's precision, as the notebook evaluates in
    for key in ("itm", "itc"):
        for name, value in mine[key].items():
            assert res["metrics"][key][name] == pytest.approx(value, abs=1e-9), (key, name)
    assert res["metrics"]["fused_pairs"] == res["metrics"]["n_images"] * res["metrics"]["n_texts"]


def test_finetune_vqa_evaluates_official_vqa_checkpoint(offline_cache, tmp_path):
    "A released-style fine-tuned VQA file, evaluated as it is (evaluate_only): the notebook's accuracy is that of the file's weights."
    papermill = pytest.importorskip("papermill")
    from safetensors.torch import load_file
    from scl_nb.official import load_official
    from official_writers import official_tiny_config, randomise_parameters, save_lightning_style_checkpoint
    from scl_nb.tasks import TaskModel, task_config
    from scl_nb.task_runs import task_run_config, task_manifest
    from scl_nb.evaluation import evaluate_vqa
    from scl_nb.loaders import task_loader
    run_cfg = task_run_config("vqa", "tiny", "synthetic", "vqav2")
    vocab = json.loads((task_manifest(run_cfg, "vqa", "train").parent / "vqa_answers.json").read_text())
    torch.manual_seed(0)
    model = randomise_parameters(TaskModel(official_tiny_config(), "vqa", num_answers=len(vocab)).eval(), seed=7)
    ckpt = save_lightning_style_checkpoint(model, tmp_path / "vqa.ckpt")
    papermill.execute_notebook(str(NBS / "finetune_vqa.ipynb"), str(tmp_path / "finetune_vqa.ipynb"),
                               parameters=dict(out_dir=str(tmp_path), checkpoint=str(ckpt), evaluate_only=True, test_splits=""),
                               cwd=str(NBS), progress_bar=False, kernel_name="python3")
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["evaluate_only"] is True and res["engine"]["step"] == 0 and res["gain"] == 0
    saved = load_file(str(tmp_path / "model" / "model.safetensors"))
    assert torch.equal(saved["vqa_head.3.weight"], model.vqa_head[3].weight) and torch.equal(saved["itm_head.weight"], model.itm_head.weight)
    loaded, _ = load_official(ckpt)
    loader = task_loader(task_config(run_cfg, loaded.cfg), task_manifest(run_cfg, "vqa", "val"), "vqa", train=False, answers=vocab,
                         batch_size=128, tokenizer=loaded.text.tokenizer, device="cpu")
    mine = evaluate_vqa(loaded, loader, vocab)
    assert res["metrics"]["val"]["questions"] == mine["questions"] > 0
    assert res["metrics"]["val"]["accuracy"] == pytest.approx(mine["accuracy"], abs=1e-9)
    assert res["metrics"]["val"]["vqa_score"] == pytest.approx(mine["vqa_score"], abs=1e-9)


# The official optimiser groups (issue 24), written here from the official `set_schedule` (scl/modules/scl_utils.py,
# lines 324-406 at IIGROUP/SCL cd0d819): substring rules on the official parameter names.
OFFICIAL_NO_DECAY = ["bias", "LayerNorm.bias", "LayerNorm.weight", "norm.bias", "norm.weight",
                     "norm1.bias", "norm1.weight", "norm2.bias", "norm2.weight"]
OFFICIAL_HEAD_NAMES = ["vqa_classifier", "nlvr2_classifier", "snli_classifier", "mlm_score", "itm_score"]


def official_rule(official_name: str):
    "(group, no decay) of one official parameter name; a name both head and cross-modal would be in no group."
    head, cross = any(h in official_name for h in OFFICIAL_HEAD_NAMES), "cross_modal" in official_name
    assert not (head and cross), official_name
    return ("head" if head else "cross_modal" if cross else "base"), any(s in official_name for s in OFFICIAL_NO_DECAY)


def official_parameter_name(ours: str) -> str:
    from official_writers import official_name
    m = re.fullmatch(r"vision\.blocks\.(\d+)\.attn\.[qkv]_proj\.(weight|bias)", ours)
    if m: return f"vision_transformer.visual.transformer.resblocks.{m.group(1)}.attn.in_proj_{m.group(2)}"
    if ours in ("itc_logit_scale", "itc_tau"): return "cl_temp"
    return official_name(ours, "scl")


def test_official_param_groups_follow_the_official_names():
    """`train.param_groups='official'`: every parameter of the pre-training and task models where the official rules put
    its official name."""
    from scl_nb.config import apply_overrides
    from scl_nb.model import SCLModel
    from official_writers import official_tiny_config
    from scl_nb.optim import official_group, param_groups
    from scl_nb.tasks import TaskModel
    overrides = {"train.param_groups": "official", "objectives.itc_temperature": "raw"}
    cfg = apply_overrides(official_tiny_config(), overrides)
    models = [SCLModel(cfg), TaskModel(cfg, "vqa", num_answers=5), TaskModel(cfg, "nlvr2"), TaskModel(cfg, "retrieval")]
    checked = 0
    for model in models:
        groups = {n: (g["group"].removesuffix("_no_decay"), g["weight_decay"] == 0)
                  for g in param_groups(model, cfg.train) for n in g["names"]}
        for name, p in model.named_parameters():
            if not p.requires_grad: continue
            expect = official_rule(official_parameter_name(name))
            assert official_group(name) == expect and groups[name] == expect, (name, groups[name], expect)
            checked += 1
    assert checked > 400

"""`python -m scl_nb.tools.launch` on bad specs, as a user runs it: exit status 2, a short message on stderr
naming the file and line, no traceback; and the full-scale suite without its data refused (not planned).

Each test spawns the launcher (about 5 to 15 s each on 2 CPU cores: it imports torch to check objectives).
"""
import json, os, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
           PYTHONPATH=os.pathsep.join([str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))


def launch(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "scl_nb.tools.launch", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)


def assert_user_error(p, *parts, max_lines=12):
    "Exit status 2, no traceback, a short stderr containing every one of `parts`."
    assert p.returncode == 2, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    assert "Traceback" not in p.stderr + p.stdout, p.stderr
    assert 0 < len(p.stderr.splitlines()) <= max_lines, p.stderr
    for part in parts: assert part in p.stderr, (part, p.stderr)


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("runs:\n  - name: a\n    notebook: nbs/pretrain.ipynb\n   parameters: {steps: 3}\n")
    p = launch(bad, "--cluster", "local", "--dry-run", "--root", ROOT)
    assert_user_error(p, f"{bad}:4:4: YAML syntax error", max_lines=1)


def test_bad_values_listed_with_lines(tmp_path):
    spec = tmp_path / "typos.yaml"
    spec.write_text("runs:\n"
                    "  - name: pt\n"
                    "    notebook: nbs/pretrain.ipynb\n"
                    "    parameters: {objectives: \"mlm,itm,itcc\", preset: tiny, data: synthetic}\n"
                    "  - name: ft\n"
                    "    notebook: nbs/finetune_vqa.ipynb\n"
                    "    parameters: {data: data/none/vqav2.jsonl, epochs: 2, stepz: 5}\n")
    p = launch(spec, "--cluster", "local", "--dry-run", "--root", ROOT)
    assert_user_error(p, "spec error: 3 problems:",
                      f"{spec}:4: run typos/pt, parameter 'objectives': unknown objective 'itcc'; choose from [",
                      f"{spec}:7: run typos/ft, parameter 'stepz': notebook finetune_vqa.ipynb has no such parameter; did you mean 'steps'?",
                      f"{spec}:7: data path data/none/vqav2.jsonl does not exist (parameter data of typos/ft)")  # relative to the working directory
    assert "[would run]" not in p.stdout


def test_unknown_only_run_is_a_user_error():
    p = launch(ROOT / "experiments" / "pretrain.yaml", "--cluster", "local", "--scale", "tiny", "--dry-run", "--only", "nope")
    assert_user_error(p, "spec error:", "no run 'nope'")


@pytest.mark.skipif((ROOT / "data" / "manifests" / "pretrain_4m.jsonl").exists(), reason="this checkout has the paper's data")
def test_full_scale_without_data_is_refused_not_planned():
    specs = sorted((ROOT / "experiments").glob("*.yaml"))
    p = launch(*specs, "--cluster", "slurm", "--dry-run")
    assert_user_error(p, "data path data/manifests/pretrain_4m.jsonl does not exist", "--allow-missing-data", max_lines=15)
    assert "[would run]" not in p.stdout
    planned = launch(*specs, "--cluster", "slurm", "--dry-run", "--allow-missing-data")
    assert planned.returncode == 0, planned.stderr[-2000:]
    assert "# note: planned although data is missing" in planned.stdout
    assert planned.stdout.count("[would run]") > 20


def test_seeds_errors_and_the_seeded_ablation_plan(tmp_path):
    "Bad seeds are a user error naming the line; the tiny objectives ablation plans each variant and its evaluation for seeds 0, 1, 2."
    bad = tmp_path / "bad.yaml"
    bad.write_text("runs:\n  - {name: a, notebook: nbs/pretrain.ipynb}\nscales:\n  tiny:\n    seeds: [1, 1]\n")
    r = launch(bad, "--cluster", "local", "--scale", "tiny", "--dry-run")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "bad.yaml:5: scales.tiny.seeds=[1, 1] must be a list of distinct integers >= 0" in r.stderr
    r = launch("experiments/ablation_objectives.yaml", "--cluster", "local", "--scale", "tiny", "--dry-run", "--runs-dir", tmp_path / "runs")
    assert r.returncode == 0, r.stderr
    planned = [l.removeprefix("[would run] ").split(":")[0] for l in r.stdout.splitlines() if l.startswith("[would run]")]
    runs = [f"ablation_objectives/{n}" for n in ("pt_base", "pt_mvsc", "pt_mlsc", "pt_official",
                                                  "zs_base", "zs_mvsc", "zs_mlsc", "zs_both", "zs_mltc", "zs_official")]
    runs += ["pretrain/scl", "pretrain/glscl"]  # the other file's runs the ablation uses, each seed's copy with it
    assert sorted(planned) == sorted(f"{run} (seed {s})" if s == 0 else f"{run}@s{s} (seed {s})" for run in runs for s in (0, 1, 2))
    zs = next(l for l in r.stdout.split("\n[") if l.startswith("would run] ablation_objectives/zs_both@s2 "))
    assert f'"checkpoint": "{(tmp_path / "runs/tiny/pretrain/scl@s2").resolve()}"' in zs and '"seed": 2' in zs
    official = next(l for l in r.stdout.split("\n[") if l.startswith("would run] ablation_objectives/pt_official "))
    assert '"preset": "tiny"' in official and official_signal_overrides() in official  # the as-trained arm


def official_signal_overrides() -> str:
    "`OFFICIAL_SIGNAL` (scl_nb.config, the one home of the official signal's settings) as the `overrides` parameter."
    from scl_nb.config import OFFICIAL_SIGNAL
    return '"overrides": "' + " ".join(f"{k}={v}" for k, v in OFFICIAL_SIGNAL.items()) + '"'


def test_towers_scale_plan(tmp_path):
    "The towers scale pre-trains every variant from the tiny towers (`tiny-towers`), fine-tunes it on VQA and retrieval and scores ALIGN-BENCH, for seeds 0, 1, 2."
    r = launch("experiments/ablation_objectives.yaml", "--cluster", "local", "--scale", "towers", "--dry-run", "--runs-dir", tmp_path / "runs")
    assert r.returncode == 0, r.stderr
    blocks = {b.split(":")[0].removeprefix("would run] "): b for b in r.stdout.split("\n[") if b.startswith("would run] ")}
    variants = {"base": "ablation_objectives/pt_base", "mvsc": "ablation_objectives/pt_mvsc", "mlsc": "ablation_objectives/pt_mlsc",
                "both": "pretrain/scl", "mltc": "pretrain/glscl", "official": "ablation_objectives/pt_official"}
    pretrain = [f"{v} (seed 0)" for v in variants.values()] + [f"{v}@s{s} (seed {s})" for v in variants.values() for s in (1, 2)]
    kinds = ("zs", "vqa", "ret", "bench")
    downstream = [f"ablation_objectives/{k}_{v}{f'@s{s}' if s else ''} (seed {s})" for k in kinds for v in variants for s in (0, 1, 2)]
    assert sorted(blocks) == sorted(pretrain + downstream)
    for p in pretrain: assert '"preset": "tiny-towers"' in blocks[p] and '"steps": 300' in blocks[p], p
    for d in downstream: assert '"preset": "tiny"' in blocks[d] and '"gpus": 0' in blocks[d], d  # the tiny fine-tuning recipe, on the CPU
    vqa = blocks["ablation_objectives/vqa_mltc@s1 (seed 1)"]
    assert f'"checkpoint": "{(tmp_path / "runs/towers/pretrain/glscl@s1").resolve()}"' in vqa and '"eval_split": "val"' in vqa
    assert "[skipped at scale towers] ablation_objectives/nlvr2_base" in r.stdout
    assert official_signal_overrides() in blocks["ablation_objectives/pt_official@s2 (seed 2)"]
    assert sum("overrides" in blocks[p] for p in pretrain) == 3  # only the official arm's three seeds change the signal


def test_reproduce_rejects_an_unknown_scale():
    "A mistyped scale stops `experiments/reproduce.sh` at once with the scales it knows (nothing is launched or drawn)."
    r = subprocess.run(["bash", "experiments/reproduce.sh", "tower"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == "", (r.returncode, r.stdout)
    assert r.stderr.strip() == "error: unknown scale 'tower'; choose tiny (default), tiny-seeds, towers, realsmall or full"


def planned_parameters(stdout: str) -> dict:
    "{run (seed k): its papermill parameters} of a dry run's `[would run]` blocks."
    out = {}
    for block in stdout.split("\n["):
        if block.startswith("would run] "):
            line = next(l for l in block.splitlines() if l.strip().startswith("parameters: "))
            out[block.removeprefix("would run] ").split(":")[0]] = json.loads(line.split("parameters: ", 1)[1])
    return out


REALSMALL_ARMS = {"ablation_objectives/pt_base": ("mlm,itm,itc", "base"),
                  "ablation_objectives/pt_mlsc": ("mlm,itm,itc,scl_text", "mlsc"),
                  "pretrain/scl": ("mlm,itm,itc,scl", "both"),
                  "pretrain/glscl": ("mlm,itm,itc,scl,mltc", "mltc")}


@pytest.mark.parametrize("scale", ["realsmall", "realsmall-official"])
def test_realsmall_scales_plan(tmp_path, scale):
    """The real-small ablation plans the issue's four arms (MLM+ITM+ITC, +MLSC, +MVSC+MLSC, GLSCL) for seeds 0, 1, 2: each a
    300-step `realsmall` pre-training on the corpus scored on `val` along the run, then, from that seed's checkpoint,
    zero-shot retrieval on `test` at the training resolution and a retrieval fine-tuning on `train` (200 steps of 32,
    base lr 1e-4, 64 px, the f30k setting otherwise) scored on `test`; `realsmall-official` puts every pre-training
    (the baseline's included) under `OFFICIAL_SIGNAL`, `realsmall` none; nothing else runs."""
    r = launch("experiments/ablation_objectives.yaml", "--cluster", "local", "--scale", scale, "--dry-run",
               "--allow-missing-data", "--runs-dir", tmp_path / "runs")
    assert r.returncode == 0, r.stderr
    plan = planned_parameters(r.stdout)
    seeded = lambda run, s: f"{run}@s{s} (seed {s})" if s else f"{run} (seed 0)"
    downstream = lambda arm: (f"ablation_objectives/zs_{arm}", f"ablation_objectives/ret_{arm}")
    expected = [seeded(run, s) for pt, (_, arm) in REALSMALL_ARMS.items() for run in (pt, *downstream(arm)) for s in (0, 1, 2)]
    assert sorted(plan) == sorted(expected)
    signal = json.loads("{" + official_signal_overrides() + "}")["overrides"]
    corpus = "data/real-small/captions.jsonl"
    for pt, (objectives, arm) in REALSMALL_ARMS.items():
        for s in (0, 1, 2):
            zs, ret = downstream(arm)
            p, z, f = plan[seeded(pt, s)], plan[seeded(zs, s)], plan[seeded(ret, s)]
            assert (p["preset"], p["data"], p["objectives"], p["steps"], p["eval_points"], p["gpus"], p["check_learning"]) == \
                ("realsmall", corpus, objectives, 300, 10, 0, False), (pt, s, p)
            assert p.get("seed", 0) == s and z.get("seed", 0) == s and f.get("seed", 0) == s
            assert p.get("overrides", "") == (signal if scale == "realsmall-official" else ""), (pt, s)
            checkpoint = str((tmp_path / "runs" / scale / (pt + (f"@s{s}" if s else ""))).resolve())
            assert z["checkpoint"] == checkpoint and f["checkpoint"] == checkpoint
            assert (z["preset"], z["data"], z["eval_split"], z["overrides"], z["gpus"], z["check_learning"]) == \
                ("realsmall", corpus, "test", "vision.image_size=64", 0, False), (zs, s, z)
            assert (f["preset"], f["data"], f["dataset"], f["train_splits"], f["eval_split"], f["steps"], f["batch_size"],
                    f["lr"], f["overrides"], f["gpus"], f["check_learning"]) == \
                ("realsmall", corpus, "f30k", "train", "test", 200, 32, 1e-4, "vision.image_size=64", 0, False), (ret, s, f)
    for left_out in ("pt_mvsc", "pt_official", "zs_official", "ret_official", "ret_mvsc", "nlvr2_base", "vqa_both", "bench_base"):
        assert f"[skipped at scale {scale}] ablation_objectives/{left_out}" in r.stdout, left_out


def test_reproduce_realsmall_without_the_corpus_says_how_to_build_it(tmp_path):
    "`reproduce.sh realsmall` in a checkout without `data/real-small` exits 2 with the build command; it launches and writes nothing."
    (tmp_path / "experiments").mkdir()
    script = tmp_path / "experiments" / "reproduce.sh"
    script.write_text((ROOT / "experiments" / "reproduce.sh").read_text())
    r = subprocess.run(["bash", str(script), "realsmall"], cwd=tmp_path, env=ENV | {"PYTHON": sys.executable},
                       capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout) == (2, ""), (r.returncode, r.stdout, r.stderr)
    assert "no real-small corpus at data/real-small/captions.jsonl" in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].strip() == ".venv/bin/python -m scl_nb.realsmall --link data/real-small"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiments"]  # no runs/, no figures/


def test_pretrain_plan_on_slurm_is_a_light_driver_and_its_training_job(tmp_path):
    "On SLURM the pre-training notebook is planned as a driver that holds no GPU; the run's resources go to its training job."
    p = launch(ROOT / "experiments" / "pretrain.yaml", "--cluster", "slurm", "--dry-run", "--allow-missing-data", "--runs-dir", tmp_path)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    at = next(i for i, l in enumerate(lines) if l.startswith("[would run] pretrain/glscl"))
    assert lines[at + 1] == "    driver: 0 GPU, 1 CPU, 8 GB (follows its training job)", lines[at:at + 4]
    assert lines[at + 2] == "    training job (1 node): 8 GPU, 8 CPU, 480 GB, 2880 min, partition gpu", lines[at:at + 4]
    params = json.loads(lines[at + 3].split("parameters: ", 1)[1])
    assert (params["cluster"], params["gpus"], params["nodes"]) == ("slurm", 8, 1)
    assert params["job_resources"] == {"nodes": 1, "gpus_per_node": 8, "cpus_per_task": 8, "mem_gb": 480, "timeout_min": 2880,
                                       "partition": "gpu", "slurm": {}, "signal_delay_s": 120}
    local = launch(ROOT / "experiments" / "pretrain.yaml", "--cluster", "local", "--dry-run", "--allow-missing-data", "--runs-dir", tmp_path)
    assert "driver:" not in local.stdout and '"cluster": "none"' in local.stdout  # elsewhere the notebook trains where it runs

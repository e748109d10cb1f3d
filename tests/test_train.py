"""Integration tests of the training engine (`scl_nb.train`, issue 5) through its real entry points.

- same seed, same run: two CLI runs give bitwise-identical metrics and weights, with the default thread count;
- kill-and-resume: the CLI is SIGKILLed mid-run, resumed, and its per-step losses (every term) equal the
  uninterrupted run's bitwise (CPU, default thread count);
- bad input (missing or malformed manifest, a run folder that holds another run): exit code 2, one line naming
  the file, no traceback, no run folder left behind;
- SIGTERM: the CLI finishes the step, writes a checkpoint, exits with code 75, and `--resume` continues
  with the same losses;
- 2 CPU workers (gloo, torchrun through `launch`): the run finishes with finite losses and both ranks'
  RNG states in the checkpoint;
- FSDP (`train.parallel=fsdp`, 2 CPU workers): the per-step losses equal the DDP run's (fp32, up to
  reduction order), and a run resumed from its step-2 checkpoint replays the rest bitwise (loading an
  FSDP checkpoint without FSDP and the other way round is tested in `nbs/21_checkpoint.ipynb`);
- the main job notebook `nbs/pretrain.ipynb` under papermill with few steps;
- SLURM (marker `slurm`, skipped without `sinfo`): the same training as a submitit job.

Everything runs the `tiny` preset on the synthetic data with small batches; the synthetic set is generated
once per session into a temporary cache folder.
"""
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
STEPS = 8

def _env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.pop("OMP_NUM_THREADS", None)  # the default thread count: determinism must not depend on one thread
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.update(extra)
    return env

@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    "One synthetic data set (and tokenizer cache) for every test of the session."
    return tmp_path_factory.mktemp("scl_cache")

def _overrides(cache_dir, **train) -> list[str]:
    kw = dict(batch_size=16, per_gpu_batch_size=16, ckpt_every=3, keep_last=10, log_every=1) | train
    return [f"train.{k}={v}" for k, v in kw.items()] + [f"data.cache_dir={cache_dir}"]

def _cli(out, cache_dir, steps=STEPS, resume=False, **train) -> list[str]:
    cmd = [PY, "-m", "scl_nb.train", "--preset", "tiny", "--data", "synthetic", "--steps", str(steps), "--out", str(out), "--no-progress"]
    return cmd + (["--resume"] if resume else []) + _overrides(cache_dir, **train)

def _run(cmd, timeout=300) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return r

def _metrics(out) -> list[dict]:
    p = Path(out) / "metrics.jsonl"
    return [json.loads(l) for l in p.read_text().splitlines() if l.strip()] if p.exists() else []

def _losses(out) -> list[dict]:
    "Per step: every loss term and accuracy (everything but timings)."
    skip = {"pairs_per_s", "step_time_s", "mfu"}
    return [{k: v for k, v in r.items() if k not in skip} for r in _metrics(out)]

def _wait_for_step(proc, out, step, timeout=240):
    t0 = time.time()
    while time.time() - t0 < timeout:
        rows = _metrics(out)
        if rows and rows[-1]["step"] >= step: return rows[-1]["step"]
        if proc.poll() is not None: pytest.fail(f"run ended (code {proc.returncode}) before step {step}:\n{proc.stderr.read()[-3000:]}")
        time.sleep(0.05)
    proc.kill(); pytest.fail(f"no step {step} after {timeout} s")

@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, cache_dir) -> Path:
    "The uninterrupted CLI run every interrupted run is compared with."
    out = tmp_path_factory.mktemp("reference")
    r = _run(_cli(out, cache_dir))
    assert r.returncode == 0, r.stderr[-3000:]
    rows = _losses(out)
    assert [x["step"] for x in rows] == list(range(1, STEPS + 1))
    return out

def test_cli_writes_run_files(reference_run):
    rows = _metrics(reference_run)
    import math
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert {"step", "loss", "lr", "pairs_per_s"} <= set(rows[0])
    terms = [k for k in ("mlm", "itm", "itc", "scl_image", "scl_text", "mltc_image", "mltc_text") if f"{k}_loss" in rows[0]]
    assert len(terms) == 7, rows[0]  # every objective of the tiny preset is logged
    run = json.loads((reference_run / "run.json").read_text())
    assert run["config"]["train"]["steps"] == STEPS and "torch" in run["versions"] and run["hardware"]["cpu_count"]
    ckpts = sorted(p.name for p in (reference_run / "checkpoints").iterdir())
    assert ckpts == ["step_0000003", "step_0000006", "step_0000008"]
    assert sorted(os.listdir(reference_run / "checkpoints" / "step_0000008")) == ["config.json", "model.safetensors", "rng_0.pt", "state.pt"]

def _weights(out, step=STEPS) -> bytes:
    return (Path(out) / "checkpoints" / f"step_{step:07d}" / "model.safetensors").read_bytes()

def test_same_seed_same_run(tmp_path, cache_dir, reference_run):
    out = tmp_path / "again"
    r = _run(_cli(out, cache_dir))
    assert r.returncode == 0, r.stderr[-3000:]
    assert _losses(out) == _losses(reference_run)
    assert _weights(out) == _weights(reference_run)

def test_bad_input_exits_2_with_one_line(tmp_path, cache_dir, reference_run):
    def refused(cmd, *needles):
        r = _run(cmd)
        assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        for n in needles: assert n in r.stderr, r.stderr
    missing = tmp_path / "absent.jsonl"
    refused([*_cli(tmp_path / "run1", cache_dir), f"data.source={missing}"], str(missing), "not found")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"media": "a.png", "caption": "one"}\n{"media": "b.png", "caption": \n')
    refused([*_cli(tmp_path / "run2", cache_dir), f"data.source={bad}"], f"{bad}, line 2", "not valid JSON")
    assert not (tmp_path / "run1").exists() and not (tmp_path / "run2").exists()  # nothing half-made
    before = _metrics(reference_run)
    refused(_cli(reference_run, cache_dir), "already holds a run", "--resume")  # no --resume on a finished run folder
    assert _metrics(reference_run) == before

def test_sigkill_then_resume_is_bitwise_identical(tmp_path, cache_dir, reference_run):
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli(out, cache_dir), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    _wait_for_step(proc, out, 4)  # past the checkpoint of step 3
    proc.send_signal(signal.SIGKILL); proc.wait()
    killed_at = _metrics(out)[-1]["step"]
    assert killed_at < STEPS, "the run finished before it was killed; the test proves nothing"
    newest = sorted(p.name for p in (out / "checkpoints").iterdir())[-1]
    r = _run(_cli(out, cache_dir, resume=True))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming from {out / 'checkpoints' / newest}" in r.stdout, r.stdout  # says where it continues
    assert _losses(out) == _losses(reference_run)
    assert _weights(out) == _weights(reference_run)
    finished = _run(_cli(out, cache_dir, resume=True))  # a finished run run again: nothing trained, nothing rewritten
    assert finished.returncode == 0 and "holds a finished run" in finished.stdout, finished.stdout
    assert _losses(out) == _losses(reference_run)

def test_sigterm_checkpoints_exits_75_and_resumes(tmp_path, cache_dir, reference_run):
    out = tmp_path / "term"
    proc = subprocess.Popen(_cli(out, cache_dir, ckpt_every=100), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    _wait_for_step(proc, out, 2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 75, proc.stderr.read()[-3000:]
    stopped = _metrics(out)[-1]["step"]
    ckpts = [p.name for p in (out / "checkpoints").iterdir()]
    assert ckpts == [f"step_{stopped:07d}"] and stopped < STEPS  # saved at the step where the signal arrived
    r = _run(_cli(out, cache_dir, resume=True, ckpt_every=100))
    assert r.returncode == 0, r.stderr[-3000:]
    assert _losses(out) == _losses(reference_run)

def test_two_cpu_workers_gloo(tmp_path, cache_dir):
    import math
    from scl_nb.config import run_config
    from scl_nb.jobs import launch_pretrain, follow
    cfg = run_config("tiny", {"data.source": "synthetic", "train.steps": 6}, _overrides(cache_dir, batch_size=32, per_gpu_batch_size=8))
    summary = follow(launch_pretrain(cfg, tmp_path / "ddp", nprocs=2, device="cpu", resume=False), every=0.5, quiet=True)
    assert (summary["status"], summary["world_size"], summary["grad_accum"], summary["step"]) == ("completed", 2, 2, 6)
    rows = _metrics(tmp_path / "ddp")
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all(math.isfinite(v) for r in rows for k, v in r.items() if isinstance(v, float) and k != "mfu")
    assert rows[0]["mlm_loss"] > 0.5 * math.log(cfg.text.vocab_size)  # untrained MLM is near log(vocab)
    ck = tmp_path / "ddp" / "checkpoints" / "step_0000006"
    assert {"rng_0.pt", "rng_1.pt", "model.safetensors", "state.pt"} <= set(os.listdir(ck))

def _unshare_uts() -> bool:
    "Can this process give a child its own host name (`unshare --uts`, as root)?"
    try: return subprocess.run(["unshare", "--uts", "true"], capture_output=True, timeout=15).returncode == 0
    except (OSError, subprocess.SubprocessError): return False

@pytest.mark.skipif(not _unshare_uts(), reason="needs `unshare --uts` (root) to run under a host name that does not resolve")
def test_two_workers_under_a_host_name_that_does_not_resolve(tmp_path, cache_dir):
    """A container or offline runner whose host name resolves nowhere: torchrun's workers would be sent to that
    name and retry it for 30 minutes; on the loopback address they train as usual."""
    name = "scl-nb-no-such-host"
    if subprocess.run(["getent", "hosts", name], capture_output=True, timeout=60).returncode == 0:
        pytest.skip(f"{name} resolves on this machine (a wildcard DNS?): nothing to test")
    script = (
        "import json; from scl_nb.config import run_config; from scl_nb.jobs import launch_pretrain, follow; "
        f"cfg = run_config('tiny', {{'data.source': 'synthetic', 'train.steps': 2}}, {_overrides(cache_dir, batch_size=8, per_gpu_batch_size=4)!r}); "
        f"s = follow(launch_pretrain(cfg, {str(tmp_path / 'run')!r}, nprocs=2, device='cpu', resume=False), every=0.5, quiet=True); "
        "print(json.dumps([s['status'], s['world_size'], s['step']]))"
    )
    proc = subprocess.Popen(["unshare", "--uts", "sh", "-c", f'hostname {name} && exec "$0" -c "$1"', PY, script],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            start_new_session=True)  # its own process group: torchrun and its workers go with it
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"no result after 240 s under an unresolvable host name:\n{(out + err)[-3000:]}")
    assert proc.returncode == 0, (out + err)[-3000:]
    assert json.loads(out.strip().splitlines()[-1]) == ["completed", 2, 2]

def _close(a: list[dict], b: list[dict], rel: float) -> float:
    "Assert two runs' per-step rows match (same keys, every number within `rel` relative); return the largest relative difference."
    assert [r["step"] for r in a] == [r["step"] for r in b] and [sorted(r) for r in a] == [sorted(r) for r in b]
    worst = 0.0
    for ra, rb in zip(a, b):
        for k, va in ra.items():
            if isinstance(va, bool) or not isinstance(va, (int, float)): assert va == rb[k], (ra["step"], k); continue
            d = abs(va - rb[k]) / max(abs(va), abs(rb[k]), 1e-6)
            assert d <= rel, f"step {ra['step']} {k}: {va} vs {rb[k]} (relative difference {d:.2e})"
            worst = max(worst, d)
    return worst

def test_fsdp_matches_ddp_and_resumes(tmp_path, cache_dir):
    """FSDP and DDP compute the same fp32 training, so their per-step losses (every term, accuracies, gradient
    norm) agree up to reduction order: FSDP reduce-scatters and sums the gradient norm shard by shard where DDP
    all-reduces buckets, which changes fp32 roundings (~1e-7 relative per operation) that AdamW carries into the
    next steps. 1e-5 relative leaves room for that over 4 steps and still catches any real difference (a wrong
    gradient average, a missed synchronisation or a skipped parameter changes the losses by 1e-3 or more)."""
    from scl_nb.config import run_config
    from scl_nb.jobs import launch_pretrain, follow
    steps = 4
    ov = _overrides(cache_dir, batch_size=16, per_gpu_batch_size=4, ckpt_every=2)  # 2 ranks x 2 accumulation micro-batches
    def run(name, parallel, resume=False):
        cfg = run_config("tiny", {"data.source": "synthetic", "train.steps": steps}, ov + [f"train.parallel={parallel}"])
        return follow(launch_pretrain(cfg, tmp_path / name, nprocs=2, device="cpu", resume=resume), every=0.5, quiet=True)
    ddp, fsdp = run("ddp", "ddp"), run("fsdp", "fsdp")
    assert (ddp["parallel"], fsdp["parallel"], fsdp["world_size"], fsdp["grad_accum"], fsdp["step"]) == ("ddp", "fsdp", 2, 2, steps)
    rows = _losses(tmp_path / "fsdp")
    assert len(rows) == steps and len([k for k in rows[0] if k.endswith("_loss")]) == 7
    worst = _close(rows, _losses(tmp_path / "ddp"), rel=1e-5)
    print(f"FSDP vs DDP: largest relative difference {worst:.2e}")
    assert rows[-1]["loss"] != rows[0]["loss"]  # the weights moved: later steps compare the updates too
    state = __import__("torch").load(tmp_path / "fsdp" / "checkpoints" / "step_0000004" / "state.pt", weights_only=True)
    assert state["optimizer_format"] == "fqn" and "vision.blocks.0.mlp.fc1.weight" in state["optimizer"]["state"]

    resumed = tmp_path / "fsdp_resumed"  # the run folder as a run killed after its step-2 checkpoint leaves it
    shutil.copytree(tmp_path / "fsdp", resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_0000004"); (resumed / "summary.json").unlink()
    assert run(resumed.name, "fsdp", resume=True)["step"] == steps
    assert [r["step"] for r in _metrics(resumed)] == list(range(1, steps + 1))
    assert _losses(resumed) == rows  # exact resume under FSDP (same data position, RNG states, scheduler)

def test_pretrain_notebook_papermill(tmp_path, cache_dir):
    pm = pytest.importorskip("papermill")
    out = tmp_path / "run"
    pm.execute_notebook(str(ROOT / "nbs" / "pretrain.ipynb"), str(tmp_path / "out.ipynb"), cwd=str(ROOT / "nbs"), progress_bar=False,
                        parameters=dict(steps=4, batch_size=16, per_gpu_batch_size=16, out_dir=str(out), check_learning=False,
                                        overrides=f"data.cache_dir={cache_dir} train.ckpt_every=2"))
    res = json.loads((out / "results.json").read_text())
    assert res["steps"] == 4 and res["r1_before"] is not None and res["r1_after"] is not None
    assert Path(res["checkpoint"]).name == "step_0000004"

def test_notebook_rejects_bad_parameters(tmp_path):
    pm = pytest.importorskip("papermill")
    with pytest.raises(pm.PapermillExecutionError, match=r"cluster='cloud' is not allowed; choose one of \['none', 'local', 'slurm'\]"):
        pm.execute_notebook(str(ROOT / "nbs" / "pretrain.ipynb"), str(tmp_path / "bad.ipynb"), cwd=str(ROOT / "nbs"), progress_bar=False,
                            parameters=dict(cluster="cloud", out_dir=str(tmp_path / "x")))

def _slurm_up() -> bool:
    if shutil.which("sinfo") is None: return False
    try: return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=15).returncode == 0
    except (OSError, subprocess.SubprocessError): return False

@pytest.mark.slurm
@pytest.mark.skipif(not _slurm_up(), reason="no SLURM (sinfo) on this machine")
def test_slurm_submitit_training(tmp_path, cache_dir):
    from scl_nb.config import run_config
    from scl_nb.jobs import launch_pretrain, follow
    cfg = run_config("tiny", {"data.source": "synthetic", "train.steps": 4}, _overrides(cache_dir))
    summary = follow(launch_pretrain(cfg, tmp_path / "slurm", nprocs=1, cluster="slurm", device="cpu", timeout_min=10), every=1, quiet=True)
    assert (summary["status"], summary["step"]) == ("completed", 4)

"""Integration tests on a real SLURM cluster (CI: `bash ../shared/tools/slurm_local.sh up`).

Every test is marked `slurm` and skipped when `sinfo` is missing or the cluster does not answer.
Facts these tests rely on are in shared/tools/slurm_local.md: job ids start again at 1 on a new
cluster (so each test uses a fresh `tmp_path`), `job.state` is cached (assertions use
`job.done(force_check=True)` / `get_info(mode="force")`), a preemption is only seen as one by
submitit when `timeout_min` is large (60), and a requeued job starts again after `cred_expire` + 1 s.
"""
import json, os, shutil, subprocess, sys, time
from pathlib import Path

import pytest

def _slurm_answers() -> tuple[bool, str]:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None: return False, "no SLURM client (sinfo/sbatch) on PATH"
    try: r = subprocess.run(["sinfo", "-h", "-o", "%a %T"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError) as e: return False, f"sinfo failed: {e}"
    if r.returncode != 0: return False, f"SLURM does not answer: {r.stderr.strip()}"
    if not any(l.split()[0] == "up" and l.split()[1] in ("idle", "mixed", "allocated") for l in r.stdout.splitlines() if l.split()):
        return False, f"no usable partition/node: {r.stdout.strip()!r}"
    return True, ""

_UP, _WHY = _slurm_answers()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(not _UP, reason=_WHY)]

submitit = pytest.importorskip("submitit")
from scl_nb.tools.launch import launch
from scl_nb.tools.specs import load_spec
from scl_nb.tools.fixtures import write_test_notebook
from scl_nb.jobs import is_finished

WAIT_S = 150  # per job; the node may be busy with another user's jobs

@pytest.fixture
def cancel_on_exit():
    "Collect submitit jobs; cancel the ones still queued when the test ends (pass or fail)."
    jobs = []
    yield jobs
    for j in jobs:
        if not j.done(force_check=True): subprocess.run(["scancel", str(j.job_id)], check=False)

def _wait(job, timeout=WAIT_S):
    t0 = time.time()
    while not job.done(force_check=True):
        if time.time() - t0 > timeout: pytest.fail(f"job {job.job_id} not done after {timeout} s; state {job.get_info(mode='force').get('State')}")
        time.sleep(1)

# --- (a) multi-task jobs -------------------------------------------------------------------------

def _ranks():
    env = submitit.JobEnvironment()
    return {"global_rank": env.global_rank, "local_rank": env.local_rank, "num_tasks": env.num_tasks,
            "slurm_procid": int(os.environ["SLURM_PROCID"]), "job_id": env.job_id}

def test_two_task_job_ranks(tmp_path, cancel_on_exit):
    "`tasks_per_node=2` runs the function in two tasks that see ranks 0 and 1 of 2."
    import cloudpickle
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # this file is not importable inside the job
    ex = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="slurm")
    ex.update_parameters(tasks_per_node=2, nodes=1, cpus_per_task=1, timeout_min=5, name="scl-test-ranks")
    job = ex.submit(_ranks)
    cancel_on_exit.append(job)
    _wait(job)
    res = sorted(job.results(), key=lambda r: r["global_rank"])
    assert [(r["global_rank"], r["local_rank"], r["slurm_procid"], r["num_tasks"]) for r in res] == [(0, 0, 0, 2), (1, 1, 1, 2)]
    assert {r["job_id"] for r in res} == {str(job.job_id)}

def test_engine_two_task_pretraining(tmp_path, cancel_on_exit):
    "The engine's job on SLURM (`scl_nb.jobs.launch_pretrain`, cluster='slurm'): 2 CPU tasks run `python -m scl_nb.train` on the tiny model."
    pytest.importorskip("scl_nb.train")
    from scl_nb.jobs import launch_pretrain
    pytest.importorskip("scl_nb.objectives", reason="scl_nb.objectives (the default loss of the engine) is not built yet")
    from scl_nb.config import load_config
    cfg = load_config("tiny", ["train.steps=4", "train.batch_size=8", "train.per_gpu_batch_size=4", "train.ckpt_every=2",
                               "train.log_every=1", "data.num_workers=0"])
    h = launch_pretrain(cfg, tmp_path / "run", nprocs=2, cluster="slurm", device="cpu", timeout_min=10)
    cancel_on_exit.append(h.job)
    _wait(h.job, timeout=WAIT_S + 60)
    results = h.job.results()  # one result per task; raises if a task failed
    assert len(results) == 2 and all(r["status"] == "completed" for r in results)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["status"], summary["world_size"], summary["step"]) == ("completed", 2, 4)
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if l.strip()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(r["loss"] == r["loss"] for r in rows)  # finite (not NaN)

def test_engine_preempted_job_resumes(tmp_path, cancel_on_exit):
    """A preempted pre-training job (`scl_nb.jobs.JobTask` running `python -m scl_nb.train`) checkpoints,
    is requeued by submitit and resumes from its checkpoint (`--resume`) to the end."""
    pytest.importorskip("scl_nb.objectives", reason="scl_nb.objectives (the default loss of the engine) is not built yet")
    from scl_nb.config import load_config
    from scl_nb.jobs import launch_pretrain
    steps = 40
    cfg = load_config("tiny", [f"train.steps={steps}", "train.batch_size=4", "train.per_gpu_batch_size=4", "train.ckpt_every=2",
                               "train.log_every=1", "data.num_workers=0"])
    h = launch_pretrain(cfg, tmp_path / "run", nprocs=1, cluster="slurm", device="cpu", timeout_min=60)  # 60: submitit sees a preemption
    cancel_on_exit.append(h.job)
    ckpts, t0 = tmp_path / "run" / "checkpoints", time.time()
    while not (ckpts.exists() and any(p.name.startswith("step_") for p in ckpts.iterdir())):
        if h.job.done(force_check=True): pytest.fail(f"the job ended before its first checkpoint:\n{h.job.stderr()}")
        if time.time() - t0 > WAIT_S: pytest.fail("the run wrote no checkpoint")
        time.sleep(0.2)
    h.job._interrupt()  # SIGTERM + SIGUSR2, as a preemption
    _wait(h.job, timeout=WAIT_S + 120)
    assert h.job.result() == {"exit_code": 0, "status": "completed"}
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["status"], summary["step"]) == ("completed", steps)
    resumed_from = json.loads((tmp_path / "run" / "run.json").read_text())["resumed_from"]
    assert 2 <= resumed_from < steps  # continued from the checkpoint written at the signal, not restarted
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if l.strip()]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    logs = "".join(p.read_text() for p in (tmp_path / "run" / "submitit").glob("*/*_log.*"))
    assert "this job is preempted" in logs and "Requeued job" in logs and f"resuming from {ckpts}" in logs

# --- (b) the launcher: a two-run spec with a dependency -----------------------------------------------

def _suite(tmp_path: Path, sleep_s=0.0, steps=3, timeout_min=10) -> Path:
    write_test_notebook(tmp_path / "nbs" / "count.ipynb", sleep_s=sleep_s)
    (tmp_path / "experiments").mkdir()
    spec = tmp_path / "experiments" / "two.yaml"
    spec.write_text(f"""
runs:
  - name: first
    notebook: nbs/count.ipynb
    parameters: {{steps: {steps}}}
    resources: {{cpus_per_task: 1, mem_gb: 1, timeout_min: {timeout_min}}}
  - name: second
    notebook: nbs/count.ipynb
    depends_on: [first]
    parameters: {{steps: 2, scale: 10, inputs: ["${{first.out_dir}}"]}}
    resources: {{cpus_per_task: 1, mem_gb: 1, timeout_min: {timeout_min}}}
""")
    return spec

def test_launcher_dependency_on_slurm(tmp_path, cancel_on_exit):
    "Two runs submitted at once; the second waits for the first (afterok) and reads its folder."
    spec = load_spec(_suite(tmp_path, sleep_s=1.0), root=tmp_path)
    lines = []
    res = launch(spec, cluster="slurm", runs_dir=tmp_path / "runs", log=lines.append)
    first, second = res["two/first"], res["two/second"]
    cancel_on_exit.extend([first.job, second.job])
    assert (first.status, second.status) == ("submitted", "submitted")
    assert second.after == [first.job_id]
    dep = subprocess.run(["squeue", "-h", "-j", second.job_id, "-o", "%E"], capture_output=True, text=True).stdout
    assert f"afterok:{first.job_id}" in dep, dep  # SLURM holds it (first runs >= 3 s)
    assert lines[1].startswith(f"[submitted job {second.job_id}] two/second: count.ipynb -> {tmp_path.resolve()}/runs/two/second/output.ipynb (after job {first.job_id})")
    again = launch(spec, cluster="slurm", runs_dir=tmp_path / "runs", log=None)  # relaunch while queued: nothing new
    assert [(r.status, r.job_id, r.job) for r in again.values()] == [("running", first.job_id, None), ("running", second.job_id, None)]
    _wait(second.job)
    assert {k: v for k, v in second.job.result()["results"].items() if k != "cwd"} == {"total": 2 * 10 + 3, "started_at": 0, "upstream": [3]}
    assert is_finished(first.out_dir) and is_finished(second.out_dir) and second.output.exists()
    info = {j: subprocess.run(["sacct", "-n", "-X", "-P", "-j", j, "-o", "Start,End"], capture_output=True, text=True).stdout.split("|")
            for j in (first.job_id, second.job_id)}
    assert info[second.job_id][0] >= info[first.job_id][1].strip()  # second started when first had ended
    done = launch(spec, cluster="slurm", runs_dir=tmp_path / "runs", log=None)
    assert [r.status for r in done.values()] == ["finished", "finished"]

# --- (c) preemption: requeue, resume from the checkpoint, finish ------------------------------------

def test_preempted_run_resumes(tmp_path, cancel_on_exit):
    "A preempted notebook run is requeued by submitit and continues from its checkpoint to the end."
    steps = 16
    spec = load_spec(_suite(tmp_path, sleep_s=0.5, steps=steps, timeout_min=60), root=tmp_path)  # 60: submitit sees a preemption
    res = launch(spec, cluster="slurm", runs_dir=tmp_path / "runs", only=["first"], log=None)
    first = res["two/first"]
    cancel_on_exit.append(first.job)
    ckpt, t0 = first.out_dir / "ckpt.json", time.time()
    while not (ckpt.exists() and json.loads(ckpt.read_text())["step"] >= 3):
        if time.time() - t0 > WAIT_S: pytest.fail("the run never reached step 3")
        time.sleep(0.2)
    first.job._interrupt()  # SIGTERM + SIGUSR2, as a preemption
    _wait(first.job, timeout=WAIT_S + 60)
    out = first.job.result()["results"]
    assert out["total"] == steps and 3 <= out["started_at"] < steps  # continued, not restarted
    assert is_finished(first.out_dir)
    log = "".join(p.read_text() for p in (first.out_dir / "submitit").glob("*/*_log.err"))
    assert "this job is preempted" in log and "Requeued job" in "".join(p.read_text() for p in (first.out_dir / "submitit").glob("*/*_log.*"))
    state = first.job.get_info(mode="force").get("State", "")
    assert state in ("COMPLETED", "RUNNING", "COMPLETING"), state  # result written; the job may still be closing

# --- (d) a driver notebook: pre-training through the launcher, the driver requeued ---------------

ROOT = Path(__file__).resolve().parent.parent


def _cluster_cpus() -> int:
    out = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True).stdout.split()
    return max((int(c.rstrip("+")) for c in out if c.rstrip("+").isdigit()), default=0)


def test_pretrain_driver_requeued_follows_its_training_job(tmp_path, offline_cache, cancel_on_exit):
    """pretrain.ipynb through `scl_nb.tools.launch` on SLURM: the notebook runs as a light driver job that submits one
    training job of 2 processes with the run's resources and follows it. The driver is requeued (`scontrol requeue`)
    while the training runs: it runs the notebook again, resuming, and follows the same training job instead of
    submitting a second one; the run ends with every step once, and the held-out evaluation (a job too) in results.json."""
    if _cluster_cpus() < 4:
        pytest.skip("needs 4 CPUs on the cluster at once (driver, two training tasks, then the evaluation): "
                    "start it with SLURM_LOCAL_CPUS=8")
    steps = 80
    spec_file = tmp_path / "experiments" / "t.yaml"
    spec_file.parent.mkdir()
    spec_file.write_text(f"""
runs:
  - name: pt
    notebook: {ROOT / "nbs" / "pretrain.ipynb"}
    parameters: {{preset: tiny, data: synthetic, steps: {steps}, cpu_workers: 2, check_learning: false,
                  overrides: "train.batch_size=8 train.per_gpu_batch_size=4 train.ckpt_every=10 train.log_every=1 data.num_workers=0"}}
    resources: {{cpus_per_task: 1, mem_gb: 2, timeout_min: 60}}
""")
    spec = load_spec(spec_file, root=ROOT)
    pt = launch(spec, cluster="slurm", runs_dir=tmp_path / "runs", log=None)["t/pt"]
    cancel_on_exit.append(pt.job)
    record, t0 = pt.out_dir / "train_job.json", time.time()
    while not record.exists():
        if pt.job.done(force_check=True): pytest.fail(f"the driver ended before submitting its training job:\n{pt.job.stderr()}")
        if time.time() - t0 > WAIT_S: pytest.fail("the driver submitted no training job")
        time.sleep(0.5)
    first = json.loads(record.read_text())
    cancel_on_exit.append(submitit.SlurmJob(first["folder"], first["job_id"], tasks=(0, 1)))
    assert first["tasks"] == 2 and first["name"] == "scl-train:pt"
    info = subprocess.run(["scontrol", "show", "job", first["job_id"]], capture_output=True, text=True).stdout
    assert "NumNodes=1" in info and "NumTasks=2" in info and "CPUs/Task=1" in info, info  # the run's resources
    driver = subprocess.run(["scontrol", "show", "job", pt.job_id], capture_output=True, text=True).stdout
    assert "gres/gpu" not in driver and "CPUs/Task=1" in driver, driver  # a light driver
    subprocess.run(["scontrol", "requeue", pt.job_id], check=True)  # the driver goes; the training job stays
    _wait(pt.job, timeout=WAIT_S + 240)
    assert is_finished(pt.out_dir), pt.job.stderr()
    assert json.loads(record.read_text())["job_id"] == first["job_id"]  # the requeued driver submitted nothing new
    assert len(list((pt.out_dir / "submitit").glob("train_*/*_submitted.pkl"))) == 1
    summary = json.loads((pt.out_dir / "summary.json").read_text())
    assert (summary["status"], summary["step"], summary["world_size"]) == ("completed", steps, 2)
    rows = [json.loads(l) for l in (pt.out_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))  # trained once, not twice
    import nbformat
    said = "".join(o.get("text", "") for c in nbformat.read(pt.output, 4).cells for o in c.get("outputs", []))
    assert f"following SLURM job {first['job_id']}" in said or "the earlier run trained" in said, said[-2000:]
    results = json.loads((pt.out_dir / "results.json").read_text())
    assert results["r1_before"] is not None and results["r1_after"] is not None  # the held-out evaluation job ran
    logs = "".join(p.read_text() for p in pt.out_dir.glob(f"submitit/*_{pt.job_id}/*_log.*"))  # the driver's, not the training's
    assert logs.count("Starting with JobEnvironment") == 2, logs[-3000:]  # it ran twice: before and after the requeue

"""Faults and hostile input at the process level (issue 23): what a user can type or hand us, and what the
machine can do to a run, through the real `python -m scl_nb.train` entry point.

- two processes started on one run folder at the same moment: one runs, the other is refused (exit 2);
- a full disk (a small tmpfs, root only): one line naming the file, no torn `metrics.jsonl` line, and after
  space is freed `--resume` finishes the run with the uninterrupted run's losses;
- a second SIGTERM right after the first: still exit code 75, the checkpoint intact;
- a checkpoint whose safetensors header is relabelled, a damaged `state.pt`, changed settings on
  `--resume`: exit 2, one line naming the file or the settings (`--allow-changed` lets a change through);
- bad values, a config file that is a list, a cache folder that is a file, a read-only run folder, a
  manifest with fewer rows than one batch: exit 2 with one line, nothing hangs.

Everything runs the `tiny` preset on the synthetic data with batch 16.
"""
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = 6


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults_cache")


def _cli(out, cache_dir, steps=STEPS, *extra, **train) -> list[str]:
    kw = dict(batch_size=16, per_gpu_batch_size=16, ckpt_every=3, keep_last=10, log_every=1) | train
    return ([sys.executable, "-m", "scl_nb.train", "--steps", str(steps), "--out", str(out), "--no-progress", *extra]
            + [f"train.{k}={v}" for k, v in kw.items()] + [f"data.cache_dir={cache_dir}"])


def _run(cmd, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _rows(out) -> list[dict]:
    p = Path(out) / "metrics.jsonl"
    return [json.loads(l) for l in p.read_text().splitlines()] if p.exists() else []  # every line must parse


def _losses(out) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("pairs_per_s", "step_time_s", "mfu")} for r in _rows(out)]


def _one_line_error(r, code=2, *needles):
    assert r.returncode == code, (r.returncode, r.stderr[-3000:])
    lines = [l for l in r.stderr.strip().splitlines() if l.strip() and "examples/s]" not in l]  # datasets' filter bars aside
    assert "Traceback" not in r.stderr and len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-3000:]
    for n in needles: assert n in lines[0], lines[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache_dir) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    r = _run(_cli(out, cache_dir))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_two_processes_racing_for_one_folder(tmp_path, cache_dir, reference):
    out = tmp_path / "raced"
    procs = [subprocess.Popen(_cli(out, cache_dir), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
             for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], [(c, e[-1500:]) for c, _, e in results]
    refused = next(e for c, _, e in results if c == 2)
    assert f"{out} is in use by another run (process " in refused and "Traceback" not in refused, refused
    assert _losses(out) == _losses(reference)  # the winner's files are whole and its own
    assert json.loads((out / "summary.json").read_text())["step"] == STEPS


def _mount_tmpfs(where: Path, size: str, *options):
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(where)], capture_output=True)
    if r.returncode != 0: pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()}); needs root")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_full_disk_leaves_no_torn_line_and_resumes(tmp_path, cache_dir):
    disk, steps = tmp_path / "disk", 8
    plain = _run(_cli(tmp_path / "plain", cache_dir, steps, ckpt_every=100))  # the uninterrupted run
    assert plain.returncode == 0, plain.stderr[-3000:]
    _mount_tmpfs(disk, "40k")  # 10 pages: the lock, run.json and one page of metrics rows (about 7) fit, a checkpoint never does
    try:
        (disk / "filler").write_bytes(b"\0" * 7 * 4096)
        out = disk / "run"
        r = _run(_cli(out, cache_dir, steps, ckpt_every=100))
        assert r.returncode == 1, (r.returncode, r.stderr[-3000:])
        last = r.stderr.strip().splitlines()[-1]
        assert "Traceback" not in r.stderr and last.startswith("error: ") and "No space left on device" in last, r.stderr[-3000:]
        assert f"{out / 'metrics.jsonl'}" in last, last  # names the file it could not write
        assert "after step" in r.stdout and "saving step" in r.stdout, r.stdout  # the step it stopped after, not the next one
        rows = _rows(out)  # every line parses: the part of the row that did not fit was cut off again
        assert 0 < len(rows) < steps and (out / "metrics.jsonl").read_text().endswith("\n")
        assert not list((out / "checkpoints").glob(".tmp-*")) if (out / "checkpoints").exists() else True
        (disk / "filler").unlink()
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        again = _run(_cli(out, cache_dir, steps, "--resume", ckpt_every=100))  # used to fail on the torn line, naming no file
        assert again.returncode == 0, again.stderr[-3000:]
        assert _losses(out) == _losses(tmp_path / "plain")
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_second_sigterm_still_exits_75(tmp_path, cache_dir):
    out = tmp_path / "term"
    proc = subprocess.Popen(_cli(out, cache_dir, 40, ckpt_every=100), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)
    t0 = time.time()
    while not _rows(out) or _rows(out)[-1]["step"] < 2:
        assert proc.poll() is None and time.time() - t0 < 240, proc.stderr.read()[-2000:] if proc.poll() is not None else "no step 2"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    ckpts = out / "checkpoints"
    while not (ckpts.exists() and any(p.name.startswith("step_") for p in ckpts.iterdir())) and proc.poll() is None: time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)  # the checkpoint is written: the run is winding down (this used to kill it with 143)
    time.sleep(0.15)
    if proc.poll() is None: proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 75, proc.stderr.read()[-3000:]
    stopped = _rows(out)[-1]["step"]
    assert [p.name for p in ckpts.iterdir()] == [f"step_{stopped:07d}"]


def _copy_run(reference, tmp_path, name) -> Path:
    out = tmp_path / name
    shutil.copytree(reference, out, ignore=shutil.ignore_patterns(".lock"))
    shutil.rmtree(out / "checkpoints" / f"step_{STEPS:07d}")
    (out / "summary.json").unlink()
    return out


def _relabel(file: Path, key: str, dtype: str):
    raw = bytearray(file.read_bytes()); n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n]); header[key]["dtype"] = dtype
    file.write_bytes(bytes(raw[:8]) + json.dumps(header, separators=(",", ":")).encode().ljust(n) + bytes(raw[8 + n:]))


def test_resume_refuses_altered_checkpoints_and_changed_settings(tmp_path, cache_dir, reference):
    ckpt = f"step_{3:07d}"
    out = _copy_run(reference, tmp_path, "relabelled")
    weights = out / "checkpoints" / ckpt / "model.safetensors"
    key = next(k for k, v in json.loads(weights.read_bytes()[8:8 + int.from_bytes(weights.read_bytes()[:8], "little")]).items()
               if k != "__metadata__" and v["dtype"] == "F32")
    _relabel(weights, key, "I32")  # same bytes, another dtype: used to load silently and train on NaN
    _one_line_error(_run(_cli(out, cache_dir, STEPS, "--resume")), 2, str(weights), f"tensor {key} is stored as I32")

    out = _copy_run(reference, tmp_path, "damaged")
    state = out / "checkpoints" / ckpt / "state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    _one_line_error(_run(_cli(out, cache_dir, STEPS, "--resume")), 2, str(state), "damaged or not a checkpoint file")

    out = _copy_run(reference, tmp_path, "changed")
    _one_line_error(_run(_cli(out, cache_dir, STEPS, "--resume", "fusion.width=128", "objectives.itc=0.5")), 2,
                    "objectives.itc 2.0 -> 0.5", "fusion.width 64 -> 128", "--allow-changed fusion.width,objectives.itc")
    allowed = _run(_cli(out, cache_dir, STEPS, "--resume", "--allow-changed", "objectives.itc", "objectives.itc=0.5"))
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert "resuming with changed settings: objectives.itc 2.0 -> 0.5" in allowed.stdout
    assert [r["step"] for r in _rows(out)] == list(range(1, STEPS + 1))


@pytest.mark.parametrize("override, needle", [
    ("train.grad_clip=-1", "train.grad_clip=-1.0 is out of range"), ("train.grad_clip=nan", "train.grad_clip=nan must be a finite number"),
    ("data.max_bad_fraction=nan", "data.max_bad_fraction=nan must be a finite"), ("train.lr=nan", "train.lr=nan must be a finite"),
    ("train.seed=99999999999999999999", "train.seed=99999999999999999999 is out of range"), ("train.betas=[2,3]", "train.betas=[2.0, 3.0] must both lie in [0, 1)")])
def test_bad_values_exit_2(tmp_path, capsys, override, needle):
    from scl_nb.train import main
    assert main(["--steps", "2", "--out", str(tmp_path / "run"), "--no-progress", override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "run").exists()


def test_files_a_user_hands_us_are_used_or_refused(tmp_path, capsys, cache_dir):
    from scl_nb.train import main
    listed = tmp_path / "list.yaml"
    listed.write_text("- train\n- vision\n")
    cache_file = tmp_path / "cache_file"
    cache_file.write_text("x")
    for argv, needle in ((["--config", str(listed)], f"config file {listed}: the top level is a list"),
                         ([f"data.cache_dir={cache_file}"], f"data.cache_dir='{cache_file}' is a file, not a folder")):
        assert main(["--steps", "2", "--out", str(tmp_path / "run"), "--no-progress", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    ro = tmp_path / "ro"
    if os.geteuid() == 0: _mount_tmpfs(ro, "1m", "ro")
    else: ro.mkdir(); ro.chmod(0o500)
    try:
        assert main(["--steps", "2", "--out", str(ro / "run"), "--no-progress", f"data.cache_dir={cache_dir}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{ro / 'run'}: cannot be used as a run folder" in err[0], err
    finally:
        if os.geteuid() == 0: subprocess.run(["umount", "-l", str(ro)], capture_output=True)


def test_fewer_rows_than_a_batch_is_refused_not_a_hang(tmp_path, cache_dir):
    from PIL import Image
    import numpy as np
    rows = []
    for i in range(5):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(tmp_path / f"im{i}.png")
        rows.append({"media": f"im{i}.png", "caption": f"a grey square number {i}"})
    manifest = tmp_path / "small.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = _run(_cli(tmp_path / "run", cache_dir, 2, "--data", str(manifest)), timeout=120)  # used to spin forever
    _one_line_error(r, 2, f"{manifest}: 5 image rows, fewer than one batch of 16")

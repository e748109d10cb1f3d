"""Several processes (2 gloo workers on the CPU, through `scl_nb.jobs.launch_pretrain`) and what they share
(issue 22, items 7 and 9):

- too much bad input on one rank stops every rank promptly after the same step, with a checkpoint; the
  checkpoint and `summary.json` hold the bad-input counts of both ranks (before: rank 0's only, and the rank
  that stopped left the other one waiting in a collective for 30 minutes with nothing saved);
- a run of 2 processes resumed on 1 process continues with the samples not yet seen: its sampler ends where
  the uninterrupted 2-process run's does (before: refused, the sampler state was tied to the number of ranks).
  That the rows read are exactly those of the uninterrupted run is checked row by row in `nbs/17_loaders.ipynb`.
"""
import json, os, shutil, subprocess, sys, time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ranks_cache")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(k, "1")


def _config(cache_dir, steps: int, **changes):
    from scl_nb.config import run_config
    train = dict(batch_size=32, per_gpu_batch_size=16, ckpt_every=50, keep_last=10, log_every=1) | changes
    overrides = [f"train.{k}={v}" for k, v in train.items()] + [f"data.cache_dir={cache_dir}"]
    return run_config("tiny", {"data.source": "synthetic", "train.steps": steps}, overrides)


def _state(ckpt: Path) -> dict:
    return torch.load(ckpt / "state.pt", weights_only=True, map_location="cpu")


def _rank1_first_rows(cache_dir, n_bad: int) -> Path:
    "A manifest of the synthetic training captions whose first `n_bad` rows read by rank 1 of 2 point to missing files."
    from scl_nb.synthetic import synthetic_for_config
    cfg = _config(cache_dir, 1)
    src = synthetic_for_config(cfg)["captions_train"]
    rows = [json.loads(l) for l in src.read_text().splitlines()]
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(cfg.train.seed)).tolist()  # epoch 0
    for r in order[1::2][:n_bad]:  # rank 1 reads every second row of the epoch's order
        rows[r]["media"] = f"missing/{r}.png"
    out = src.parent / "rank1_missing.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def test_bad_input_on_one_rank_stops_every_rank_with_a_checkpoint(tmp_path, cache_dir):
    from scl_nb.jobs import launch_pretrain
    manifest = _rank1_first_rows(cache_dir, 30)  # rank 0 meets none of them in the first epoch
    cfg = _config(cache_dir, 20)
    cfg.data.source, cfg.data.max_bad_fraction, cfg.data.video_ratio = str(manifest), 0.05, 0.0
    t0 = time.monotonic()
    handle = launch_pretrain(cfg, tmp_path / "run", nprocs=2, device="cpu", resume=False)
    try:
        rc = handle.proc.wait(timeout=400)  # before: rank 0 waited for rank 1 in a collective for 30 minutes
    except subprocess.TimeoutExpired:
        handle.proc.kill()
        pytest.fail(f"the ranks did not stop together:\n{handle.log_tail()}")
    assert rc != 0, handle.log_tail()
    print(f"stopped in {time.monotonic() - t0:.0f} s")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    step = summary["step"]
    assert (summary["status"], summary["world_size"]) == ("too_many_bad_samples", 2)
    assert 0 < step < 20 and Path(summary["checkpoint"]).name == f"step_{step:07d}"
    bad = _state(Path(summary["checkpoint"]))["data"]["image"]["bad"]
    assert bad["reads"] - bad["bad_reads"] == step * 32  # the usable samples of both ranks (rank 0's alone: 16 a step)
    assert bad["by_reason"]["missing_file"] == bad["bad_reads"] >= 30
    assert bad["bad_reads"] / bad["reads"] > 0.05
    assert summary["bad_input"]["images"]["reads"] == bad["reads"]
    assert summary["bad_input"]["images"]["reads_by_reason"] == bad["by_reason"]  # (with caption_truncated)
    assert "of the samples read are unusable" in handle.log_tail()


def test_two_processes_resume_on_one(tmp_path, cache_dir):
    from scl_nb.jobs import launch_pretrain, follow
    cfg = _config(cache_dir, 4, ckpt_every=2)
    full = follow(launch_pretrain(cfg, tmp_path / "two", nprocs=2, device="cpu", resume=False), every=0.5, quiet=True)
    assert (full["status"], full["world_size"], full["step"]) == ("completed", 2, 4)
    resumed = tmp_path / "two_then_one"  # the run folder as a 2-process run stopped after step 2 leaves it
    shutil.copytree(tmp_path / "two", resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_0000004")
    (resumed / "summary.json").unlink()
    one = follow(launch_pretrain(cfg, resumed, nprocs=1, device="cpu", resume=True), every=0.5, quiet=True)
    assert (one["status"], one["world_size"], one["grad_accum"], one["step"]) == ("completed", 1, 2, 4)
    rows = [json.loads(l)["step"] for l in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert rows == [1, 2, 3, 4]
    want = _state(tmp_path / "two" / "checkpoints" / "step_0000004")["data"]
    got = _state(resumed / "checkpoints" / "step_0000004")["data"]
    for part in ("image", "video"):
        if want[part] is not None:
            assert got[part]["sampler"] == want[part]["sampler"] | {"world": 1}, (part, got[part], want[part])
    assert got["step"] * 16 == want["step"] * 32  # batches of 16 samples on 1 rank, of 2 x 16 on 2 ranks

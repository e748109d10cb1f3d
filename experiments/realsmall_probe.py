"""Probe runs on the real-small corpus (issue 27): train a preset with `scl_nb.heldout.train_with_curve` (held-out
zero-shot ITC R@1 and ITM pair accuracy before the run and after every tenth of it) and write `probe.json`;
the last checkpoint scored on the test split into `final.json` (a trained run folder: only that). Not a
spec: the measurements behind the real-small presets (`nbs/16_realsmall.ipynb`, *Presets*).

    python -m scl_nb.realsmall --link data/real-small                       # the corpus, once
    python experiments/realsmall_probe.py OUT --preset realsmall [--split val] [key=value ...]
"""
import argparse, json, sys, time
from pathlib import Path

import torch
from safetensors.torch import load_model

from scl_nb.config import load_config, objective_overrides
from scl_nb.loaders import task_loader
from scl_nb.checkpoint import latest_checkpoint
from scl_nb.heldout import heldout_scores, train_with_curve
from scl_nb.objectives import PretrainTask


def write_final(cfg, out: Path, split: str):
    "Score the run's last checkpoint on `split` (held-out ITC R@1 and ITM) into `out/final.json`."
    if not split: return
    torch.manual_seed(cfg.train.seed)
    model = PretrainTask.from_config(cfg)
    load_model(model, str(latest_checkpoint(out / "checkpoints") / "model.safetensors"), strict=False)
    loader = task_loader(cfg, cfg.data.source, "pretrain", train=False, split=split, batch_size=100)
    scores = dict(split=split, **heldout_scores(model, loader))
    (out / "final.json").write_text(json.dumps(scores, indent=1))
    print(f"{split}: R@1 {scores['r1']:.2f} (chance {scores['chance_r1']:.2f})  "
          f"ITM acc {scores['itm_acc']:.1f}  AUC {scores['itm_auc']:.3f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--preset", default="realsmall")
    ap.add_argument("--data", default=str(Path("data/real-small/captions.jsonl").resolve()))
    ap.add_argument("--objectives", default="mlm,itm,itc")
    ap.add_argument("--split", default="val", help="held-out split scored along the run")
    ap.add_argument("--points", type=int, default=10)
    ap.add_argument("--final-split", default="test", help="split scored once at the end, into final.json ('' for none)")
    ap.add_argument("overrides", nargs="*", help="config overrides key=value")
    a = ap.parse_intermixed_args(argv)
    cfg = load_config(a.preset, {"data.source": a.data} | objective_overrides(a.objectives))
    cfg = load_config(cfg, a.overrides)
    loader = task_loader(cfg, cfg.data.source, "pretrain", train=False, split=a.split, batch_size=100)
    t0 = time.time()
    if (a.out / "probe.json").exists():  # trained: only the end scores are (re)written
        write_final(cfg, a.out, a.final_split)
        return 0
    summary, curve = train_with_curve(cfg, a.out, loader, points=a.points, device="cpu", progress="lines")
    res = dict(wall_s=time.time() - t0, train_wall_s=summary.get("wall_s"), pairs_per_s=summary["pairs_per_s"],
               step_time_s=summary["step_time_s"], final=summary["final"], curve=curve, preset=a.preset,
               objectives=a.objectives, overrides=a.overrides, split=a.split, torch_threads=torch.get_num_threads())
    (a.out / "probe.json").write_text(json.dumps(res, indent=1))
    for r in curve:
        print(f"step {r['step']:5d}  R@1 {r['r1']:6.2f} (chance {r['chance_r1']:.2f})  "
              f"ITM acc {r['itm_acc']:5.1f}  AUC {r['itm_auc']:.3f}")
    write_final(cfg, a.out, a.final_split)
    print(f"{res['wall_s']:.0f} s in all, {summary['pairs_per_s']:.1f} pairs/s, {summary['step_time_s']:.2f} s/step")
    return 0


if __name__ == "__main__":
    sys.exit(main())

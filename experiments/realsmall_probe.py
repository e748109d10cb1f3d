"""Probe runs on the real-small corpus (issue 27): train a preset with `scl_nb.heldout.train_with_curve` (held-out
zero-shot ITC R@1 and ITM pair accuracy before the run and after every tenth of it) and write `probe.json`. Not a
spec: the measurements behind the real-small presets (`nbs/16_realsmall.ipynb`, *Presets*).

    python -m scl_nb.realsmall --link data/real-small                       # the corpus, once
    python experiments/realsmall_probe.py OUT --preset realsmall [--split val] [key=value ...]
"""
import argparse, json, sys, time
from pathlib import Path

from scl_nb.config import load_config, objective_overrides
from scl_nb.data import task_loader
from scl_nb.heldout import train_with_curve


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--preset", default="realsmall")
    ap.add_argument("--data", default=str(Path("data/real-small/captions.jsonl").resolve()))
    ap.add_argument("--objectives", default="mlm,itm,itc")
    ap.add_argument("--split", default="val", help="held-out split scored along the run")
    ap.add_argument("--points", type=int, default=10)
    ap.add_argument("overrides", nargs="*", help="config overrides key=value")
    a = ap.parse_intermixed_args(argv)
    cfg = load_config(a.preset, {"data.source": a.data} | objective_overrides(a.objectives))
    cfg = load_config(cfg, a.overrides)
    loader = task_loader(cfg, cfg.data.source, "pretrain", train=False, split=a.split, batch_size=100)
    t0 = time.time()
    summary, curve = train_with_curve(cfg, a.out, loader, points=a.points, device="cpu", progress="lines")
    res = dict(wall_s=time.time() - t0, train_wall_s=summary.get("wall_s"), pairs_per_s=summary["pairs_per_s"],
               step_time_s=summary["step_time_s"], final=summary["final"], curve=curve, preset=a.preset,
               objectives=a.objectives, overrides=a.overrides, split=a.split)
    (a.out / "probe.json").write_text(json.dumps(res, indent=1))
    for r in curve: print(f"step {r['step']:5d}  R@1 {r['r1']:6.2f} (chance {r['chance_r1']:.2f})  ITM acc {r['itm_acc']:5.1f}  AUC {r['itm_auc']:.3f}")
    print(f"{res['wall_s']:.0f} s in all, {summary['pairs_per_s']:.1f} pairs/s, {summary['step_time_s']:.2f} s/step")
    return 0


if __name__ == "__main__":
    sys.exit(main())

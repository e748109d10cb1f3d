"""The real-small baseline and positive control (issue 27, phase A): read the held-out curves (`curve.jsonl`) of paired
runs written by `experiments/realsmall_probe.py` (same seeds, same schedule, same evaluation steps), and print at one
step of the schedule the per-seed scores, the paired differences control - baseline with 95 % intervals, and the
smallest true difference the seed count detects (80 % power, two-sided paired t at 5 %;
`scl_nb.metrics.detectable_difference`) from the measured spread of the paired differences and, for an ablation
between two arms that both align, from the baseline's own spread times sqrt(2) (independent arms). Writes JSON.

    python experiments/realsmall_control.py RUNS OUT.json --step 180 --baseline b64 --control noitc
    # reads RUNS/<arm>_s<seed>/curve.jsonl
"""
import argparse, json, sys
from pathlib import Path

from scl_nb.metrics import detectable_difference, mean_sd, paired_difference

SCORES = ("r1", "tr_r1", "ir_r1", "itm_acc", "itm_auc")


def curve_row(run: Path, step: int) -> dict:
    "The held-out scores of one run at `step` (KeyError naming the run when it was not evaluated there)."
    rows = {r["step"]: r for r in map(json.loads, (run / "curve.jsonl").read_text().splitlines())}
    if step not in rows: raise KeyError(f"{run}: no evaluation at step {step} (has {sorted(rows)})")
    return rows[step]


def summarise(runs: Path, step: int, baseline: str, control: str) -> dict:
    "Per arm and seed the scores at `step`; per score the paired difference control - baseline, the detectable effect."
    arms = {}
    for d in sorted(p for p in runs.iterdir() if (p / "curve.jsonl").exists() and "_s" in p.name):
        arm, seed = d.name.rsplit("_s", 1)
        rows = [json.loads(line)["step"] for line in (d / "curve.jsonl").read_text().splitlines()]
        if step in rows: arms.setdefault(arm, {})[int(seed)] = curve_row(d, step)
    seeds = sorted(set(arms.get(baseline, {})) & set(arms.get(control, {})))
    out = dict(step=step, seeds=seeds, chance_r1=arms[baseline][seeds[0]]["chance_r1"] if seeds else None,
               runs={a: {s: {k: r[k] for k in SCORES} for s, r in v.items()} for a, v in arms.items()}, scores={})
    for k in SCORES:
        base = [arms[baseline][s][k] for s in seeds]
        ctrl = [arms[control][s][k] for s in seeds]
        diff = paired_difference(ctrl, base)
        base_sd = mean_sd(base)[1]
        out["scores"][k] = dict(baseline=mean_sd(base), control=mean_sd(ctrl), difference=diff,
                                detectable=detectable_difference(diff["sd"], len(seeds)),
                                detectable_two_aligned_arms=detectable_difference(2 ** 0.5 * base_sd, len(seeds)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--step", type=int, required=True)
    ap.add_argument("--baseline", default="baseline")
    ap.add_argument("--control", default="control")
    a = ap.parse_args(argv)
    res = summarise(a.runs, a.step, a.baseline, a.control)
    a.out.write_text(json.dumps(res, indent=1))
    print(f"step {res['step']}, seeds {res['seeds']}, chance R@1 {res['chance_r1']:.2f} %")
    for k, v in res["scores"].items():
        d = v["difference"]
        print(f"{k:8s} baseline {v['baseline'][0]:7.3f} ± {v['baseline'][1]:.3f}  "
              f"control {v['control'][0]:7.3f} ± {v['control'][1]:.3f}  "
              f"Δ {d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] (n={d['n']})  detectable {v['detectable']:.3f}  "
              f"(two aligned arms: {v['detectable_two_aligned_arms']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

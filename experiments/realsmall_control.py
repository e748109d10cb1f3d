"""The real-small baseline and positive control (issue 27, phase A): read the `probe.json` of paired runs written by
`experiments/realsmall_probe.py` (same seeds, same evaluation steps), print the held-out curves, the paired
differences with 95 % intervals, and the smallest effect the seed count detects (80 % power, two-sided paired t at
5 %; `scl_nb.metrics.detectable_difference`), and write them as JSON.

    python experiments/realsmall_control.py RUNS OUT.json   # RUNS/{baseline,control}_s<seed>/probe.json
"""
import argparse, json, sys
from pathlib import Path

from scl_nb.metrics import detectable_difference, mean_sd, paired_difference

SCORES = ("r1", "itm_acc", "itm_auc")


def final_scores(run: Path) -> dict:
    "The last curve point of one run (its end) and the whole curve."
    probe = json.loads((run / "probe.json").read_text())
    return dict(end={k: probe["curve"][-1][k] for k in SCORES + ("chance_r1", "step")}, curve=probe["curve"],
                wall_s=probe["wall_s"], step_time_s=probe["step_time_s"], objectives=probe["objectives"])


def summarise(runs: Path) -> dict:
    "Per arm and seed the end scores; per score the paired difference control - baseline and the detectable effect."
    arms = {}
    for d in sorted(p for p in runs.iterdir() if (p / "probe.json").exists()):
        arm, seed = d.name.rsplit("_s", 1)
        arms.setdefault(arm, {})[int(seed)] = final_scores(d)
    seeds = sorted(set(arms["baseline"]) & set(arms["control"]))
    out = dict(seeds=seeds, arms={a: {s: v for s, v in runs_.items()} for a, runs_ in arms.items()}, scores={})
    for k in SCORES:
        base = [arms["baseline"][s]["end"][k] for s in seeds]
        ctrl = [arms["control"][s]["end"][k] for s in seeds]
        diff = paired_difference(ctrl, base)
        base_sd = mean_sd(base)[1]
        out["scores"][k] = dict(baseline=mean_sd(base), control=mean_sd(ctrl), difference=diff,
                                detectable=detectable_difference(diff["sd"], len(seeds)),
                                detectable_from_baseline_sd=detectable_difference(2 ** 0.5 * base_sd, len(seeds)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", type=Path)
    ap.add_argument("out", type=Path)
    a = ap.parse_args(argv)
    res = summarise(a.runs)
    a.out.write_text(json.dumps(res, indent=1))
    for k, v in res["scores"].items():
        d = v["difference"]
        print(f"{k:8s} baseline {v['baseline'][0]:7.3f} ± {v['baseline'][1]:.3f}  "
              f"control {v['control'][0]:7.3f} ± {v['control'][1]:.3f}"
              f"  Δ {d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] (n={d['n']})  detectable {v['detectable']:.3f}"
              f"  (unpaired-like sd√2: {v['detectable_from_baseline_sd']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

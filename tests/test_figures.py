"""Run the result notebooks (`tables`, `figures`) on a fabricated `runs/` tree, and `eval_alignment` with its defaults.

The fake runs hold made-up numbers in the places the specs' tables read (`results.json`) and loss rows
in `metrics.jsonl`; the tests check that the CSV tables carry exactly those numbers (and the paper's
numbers from the spec files), that cells of runs that do not exist stay empty and are listed, and
that the figures are written. `eval_alignment` runs on a random tiny model and the synthetic set;
its uniform-attention scores are checked against the boxes' area computed here. About 1 minute on
2 CPU cores.
"""
import json, math, os, shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

papermill = pytest.importorskip("papermill")
pd = pytest.importorskip("pandas")

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / "nbs"


@pytest.fixture(scope="module")
def env(offline_cache):
    return offline_cache


def execute(name, nb_dir: Path, **parameters):
    nb_dir.mkdir(parents=True, exist_ok=True)
    return papermill.execute_notebook(str(NBS / name), str(nb_dir / f"{Path(name).stem}.out.ipynb"), parameters=parameters,
                                      cwd=str(ROOT), progress_bar=False, kernel_name="python3")


def write_run(runs: Path, spec: str, run: str, results: dict = None, metrics: list = None, files: dict = None):
    d = runs / "tiny" / spec / run
    d.mkdir(parents=True, exist_ok=True)
    if results is not None: (d / "results.json").write_text(json.dumps(results))
    if metrics is not None: (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    for name, data in (files or {}).items(): (d / name).write_bytes(data)
    return d


def fake_metrics(terms, steps=30, start=8.0):
    "Made-up decreasing losses; `loss` is the sum of the terms."
    rows = []
    for s in range(1, steps + 1):
        row = {f"{t}_loss": start / (i + 1) * math.exp(-s / steps) for i, t in enumerate(terms)}  # as the engine logs them
        rows.append({"step": s, **row, "loss": sum(row.values()), "lr": 1e-3, "grad_norm": 1.0, "pairs_per_s": 50.0,
                     "step_time_s": 0.5, "skipped": False})
    return rows


def png_bytes(colour, size=(40, 60)):
    import io
    from PIL import Image
    buf = io.BytesIO(); Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


STALE = "attention_maps__maps_scl__attention_global.png"  # the name of the per-run copies figures/ used to hold

FAKE = {  # (spec, run): results.json
    ("ablation_objectives", "pt_base"): {"r1_after": 3.25},
    ("pretrain", "scl"): {"r1_after": 4.5},
    ("ablation_objectives", "zs_base"): {"metrics": {"itm": {"tr_r1": 10.0, "ir_r1": 7.5, "rsum": 120.25}}},
    ("ablation_objectives", "zs_both"): {"metrics": {"itm": {"tr_r1": 12.5, "ir_r1": 8.0, "rsum": 131.0}}},
    ("ablation_mask_ratio", "pt_img50"): {"r1_after": 2.0},
    ("ablation_mask_ratio", "zs_img50"): {"metrics": {"itm": {"tr_r1": 9.0, "ir_r1": 6.0, "rsum": 100.0}}},
    ("ablation_mask_ratio", "zs_paper"): {"metrics": {"itm": {"tr_r1": 11.0, "ir_r1": 7.0, "rsum": 115.0}}},
    ("ablation_mask_ratio", "zs_txt60"): {"metrics": {"itm": {"tr_r1": 10.5, "ir_r1": 6.5, "rsum": 110.0}}},
    ("main_vqa_nlvr2", "vqa_scl"): {"metrics": {"val": {"accuracy": 42.0}}},  # rest-val falls back to val
    ("main_vqa_nlvr2", "nlvr2_scl"): {"metrics": {"dev": {"accuracy": 61.25}, "test_p": {"accuracy": 60.0}}},
    # seeds 1 and 2 of the objectives ablation (seeded at the tiny scale; seed 0 is the plain run above)
    ("ablation_objectives", "pt_base@s1"): {"r1_after": 3.75},
    ("ablation_objectives", "pt_base@s2"): {"r1_after": 4.25},
    ("pretrain", "scl@s1"): {"r1_after": 5.5},
    ("pretrain", "scl@s2"): {"r1_after": 6.5},
    ("ablation_objectives", "zs_base@s1"): {"metrics": {"itm": {"tr_r1": 11.0, "ir_r1": 7.5, "rsum": 121.25}}},
    ("ablation_objectives", "zs_base@s2"): {"metrics": {"itm": {"tr_r1": 12.0, "ir_r1": 7.5, "rsum": 122.25}}},
    ("ablation_objectives", "zs_both@s1"): {"metrics": {"itm": {"tr_r1": 12.0, "ir_r1": 8.0, "rsum": 132.0}}},
    ("ablation_objectives", "zs_both@s2"): {"metrics": {"itm": {"tr_r1": 15.5, "ir_r1": 8.0, "rsum": 133.0}}},
    # the as-trained arm (GLSCL under the official code's signal), seeds 0, 1, 2
    ("ablation_objectives", "pt_official"): {"r1_after": 2.0},
    ("ablation_objectives", "pt_official@s1"): {"r1_after": 2.5},
    ("ablation_objectives", "pt_official@s2"): {"r1_after": 3.0},
    ("align_bench", "bench_scl"): {"global_box": 0.31, "global_mask": 0.22, "local_box": 0.18, "local_mask": 0.12,
                                   "uniform_global_box": 0.11, "uniform_global_mask": 0.08, "uniform_local_box": 0.06, "uniform_local_mask": 0.04},
}


@pytest.fixture(scope="module")
def results(env, tmp_path_factory):
    base = tmp_path_factory.mktemp("results")
    runs, figs = base / "runs", base / "figures"
    for (spec, run), res in FAKE.items(): write_run(runs, spec, run, res)
    write_run(runs, "pretrain", "scl", FAKE[("pretrain", "scl")], fake_metrics(["itc", "itm", "mlm", "scl_image", "scl_text"]))
    write_run(runs, "ablation_objectives", "pt_base", FAKE[("ablation_objectives", "pt_base")], fake_metrics(["itc", "itm", "mlm"]))
    maps = {"attention_global.png": png_bytes((200, 30, 30)), "attention_local.png": png_bytes((30, 30, 200), (30, 90))}
    write_run(runs, "attention_maps", "maps_scl", {"global_box": 0.3}, files=maps)
    figs.mkdir(parents=True)  # a figures/ folder from an earlier regeneration, with a file under a name no longer written
    (figs / STALE).write_bytes(png_bytes((1, 2, 3)))
    (figs / "notes.txt").write_text("not in the manifest: left alone")
    (figs / "manifest.json").write_text(json.dumps({STALE: {"what": "old per-run copy", "runs": [], "scale": "tiny", "missing": [],
                                                            "writer": "nbs/figures.ipynb", "written": "2026-11-27 08:15"}}))
    execute("tables.ipynb", base / "out", runs_dir=str(runs), figures_dir=str(figs), scale="tiny")
    execute("figures.ipynb", base / "out", runs_dir=str(runs), figures_dir=str(figs), scale="tiny")
    return dict(runs=runs, figs=figs, maps=maps)


def read_csv(figs, spec): return pd.read_csv(figs / f"{spec}.csv", index_col="row")


def test_tables_carry_the_runs_numbers(results):
    figs = results["figs"]
    obj = read_csv(figs, "ablation_objectives")  # seeded at the tiny scale: the means over seeds 0, 1, 2
    assert obj.loc["MLM+ITM+ITC", "pre-training held-out R@1"] == (3.25 + 3.75 + 4.25) / 3
    assert obj.loc["MLM+ITM+ITC", "F30K ZS TR@1"] == 11.0 and obj.loc["MLM+ITM+ITC", "F30K ZS RSUM"] == 121.25
    assert obj.loc["+ MVSC + MLSC (SCL)", "pre-training held-out R@1"] == 5.5  # another spec's runs (pretrain/scl, scl@s1, scl@s2)
    assert obj.loc["+ MVSC + MLSC (SCL)", "F30K ZS IR@1"] == 8.0
    seeds = pd.read_csv(figs / "ablation_objectives_seeds.csv")
    base_r1 = seeds[(seeds["row"] == "MLM+ITM+ITC") & (seeds["column"] == "pre-training held-out R@1")]
    assert list(base_r1["seed"]) == [0, 1, 2] and list(base_r1["value"]) == [3.25, 3.75, 4.25]
    diff = pd.read_csv(figs / "ablation_objectives_differences.csv").set_index(["row", "column"])
    # SCL - base per seed: 1.25, 1.75, 2.25: mean 1.75, sd 0.5; half-width t(0.975, 2) * 0.5 / sqrt(3) = 4.302653 * 0.5 / 1.732051 = 1.242069
    d = diff.loc[("+ MVSC + MLSC (SCL)", "pre-training held-out R@1")]
    assert (d["mean"], d["sd"], d["n"]) == pytest.approx((1.75, 0.5, 3)) and (d["lo"], d["hi"]) == pytest.approx((0.507931, 2.992069), abs=1e-6)
    assert d["excludes_zero"] and "MLM+ITM+ITC" not in set(diff.index.get_level_values("row"))
    none = diff.loc[("+ MVSC", "F30K ZS TR@1")]  # no results: no pairs
    assert none["n"] == 0 and math.isnan(none["mean"]) and not none["excludes_zero"]
    assert obj.loc["+ MVSC"].drop("source").isna().all()  # no runs: empty cells, not zeros
    assert obj.loc["GLSCL (official signal)", "pre-training held-out R@1"] == 2.5  # the as-trained arm's own row
    arm = diff.loc[("GLSCL (official signal)", "pre-training held-out R@1")]  # minus the base per seed: -1.25, 3 times
    assert (arm["mean"], arm["sd"], arm["n"]) == pytest.approx((-1.25, 0.0, 3))
    assert obj["NLVR2 dev"].isna().all()  # skipped at the tiny scale
    main = read_csv(figs, "main_vqa_nlvr2")
    assert main.loc["SCL (ours)", "NLVR2 dev"] == 61.25 and main.loc["SCL (ours)", "NLVR2 test-P"] == 60.0
    assert main.loc["SCL (ours)", "VQAv2 rest-val"] == 42.0
    assert math.isnan(main.loc["SCL (ours)", "VQAv2 test-dev"]) and main.loc["GLSCL (ours)"].drop("source").isna().all()
    spec = yaml.safe_load((ROOT / "experiments" / "main_vqa_nlvr2.yaml").read_text())["table"]
    for row in spec["rows"]:
        if any(isinstance(v, str) for v in row["values"]): continue
        assert main.loc[row["label"], "source"] == "paper"
        for col, v in zip(spec["columns"], row["values"]):
            got = main.loc[row["label"], col]
            assert (v is None and math.isnan(got)) or got == v
    ab = read_csv(figs, "align_bench")
    assert list(ab.loc["SCL (ours)"].drop("source")) == [0.31, 0.22, 0.18, 0.12]
    mask = read_csv(figs, "ablation_mask_ratio")
    assert mask.loc["image 0.5", "pre-training held-out R@1"] == 2.0 and mask.loc["text 0.6", "F30K ZS RSUM"] == 110.0


def test_markdown_lists_missing_cells(results):
    md = (results["figs"] / "ablation_objectives.md").read_text()
    assert "| MLM+ITM+ITC | ours | 3.75 ± 0.50 (3) | - | 11.00 ± 1.00 (3) | 7.50 ± 0.00 (3) | 121.25 ± 1.00 (3) |" in md
    # TR@1 differences 2.5, 1.0, 3.5: mean 2.33, sd 1.258, half-width 3.126 (the interval holds 0: not bold); IR@1 0.5 and
    # RSUM 10.75 on every seed (sd 0: no interval, not bold)
    assert ("| + MVSC + MLSC (SCL) | ours | **Δ +1.75 [+0.51, +2.99]** | - | Δ +2.33 [-0.79, +5.46] | Δ +0.50 [same on all 3 seeds] | "
            "Δ +10.75 [same on all 3 seeds] |") in md.split("### Paired differences to MLM+ITM+ITC")[1]
    assert "`ablation_objectives/zs_mvsc@s2` no results.json" in md
    assert "`ablation_objectives/pt_mvsc` no results.json" in md
    assert "`ablation_objectives/nlvr2_base` run skipped at scale tiny" in md
    assert "`ablation_objectives/pt_base`" not in md.split("Missing")[1].split("MLM+ITM+ITC / NLVR2")[0]


def test_figures_written(results):
    from PIL import Image
    figs = results["figs"]
    for name in ("pretrain_loss.png", "ablation_objectives.png", "ablation_mask_ratio.png", "align_bench.png",
                 "attention_global.png", "attention_local.png"):
        with Image.open(figs / name) as im:
            assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 50, name
    for kind, colour, size in (("global", (200, 30, 30), (40, 60)), ("local", (30, 30, 200), (30, 90))):
        with Image.open(figs / f"attention_{kind}.png") as im:  # the run's image stacked pixel for pixel
            rgb = np.asarray(im.convert("RGB"))
        assert (rgb == colour).all(axis=-1).sum() == size[0] * size[1], kind
    assert not list(figs.glob("attention_maps__*")), "per-run copies are not written (each map once) and the old ones removed"
    assert (figs / "notes.txt").exists()  # only files the manifest says the notebook wrote are removed
    for png in figs.glob("*.png"):
        with Image.open(png) as im: assert im.mode in ("RGB", "P") and "transparency" not in im.info, (png.name, im.mode)
    index = json.loads((figs / "manifest.json").read_text())
    assert index["pretrain_loss.png"]["runs"] == ["ablation_objectives/pt_base", "pretrain/scl"]
    assert index["pretrain_loss.png"]["panels"] == ["total", "ITC", "ITM", "MLM", "MVSC (image completion)", "MLSC (text completion)"]
    assert "pretrain/glscl" in index["pretrain_loss.png"]["missing"]
    assert index["attention_global.png"]["runs"] == ["attention_maps/maps_scl"]
    assert index["ablation_objectives.csv"]["writer"] == "nbs/tables.ipynb"
    assert index["ablation_objectives_differences.csv"]["writer"] == index["ablation_objectives_seeds.csv"]["writer"] == "nbs/tables.ipynb"
    readme = (figs / "README.md").read_text()
    for name in index:
        if index[name].get("drawn", True): assert f"[{name}]({name})" in readme
    assert "`attention_maps/maps_glscl`" in readme and "scale" in readme


def test_figures_without_runs_do_not_crash(env, tmp_path):
    execute("figures.ipynb", tmp_path / "out", runs_dir=str(tmp_path / "runs"), figures_dir=str(tmp_path / "figures"))
    index = json.loads((tmp_path / "figures" / "manifest.json").read_text())
    assert not list((tmp_path / "figures").glob("*.png"))
    assert index["pretrain_loss.png"]["drawn"] is False and "pretrain/scl" in index["pretrain_loss.png"]["missing"]


def test_eval_alignment_defaults(env, tmp_path):
    out = tmp_path / "align"
    execute("eval_alignment.ipynb", tmp_path / "out", out_dir=str(out))
    res = json.loads((out / "results.json").read_text())
    keys = ("global_box", "global_mask", "local_box", "local_mask")
    for k in keys:
        assert 0.0 <= res[k] <= 1.0 and 0.0 <= res[f"uniform_{k}"] <= 1.0, k
        assert res[f"n_{k}"] == res["n_samples"] == 200
    assert res["checkpoint"] is None and res["data"] == "synthetic"
    for name in ("attention_global.png", "attention_local.png"): assert (out / name).stat().st_size > 1000
    # uniform attention on a square synthetic image (no crop) scores the regions' share of the image area
    from scl_nb.alignment import read_synthetic_alignment
    from scl_nb.config import load_config
    from scl_nb.synthetic import synthetic_for_config
    samples = {s.id: s for s in read_synthetic_alignment(synthetic_for_config(load_config("tiny"))["captions_test"], limit=200)}
    per = [json.loads(l) for l in (out / "per_sample.jsonl").read_text().splitlines()]
    assert len(per) == 200
    for r in per[:20]:
        s = samples[r["id"]]
        from PIL import Image
        w, h = Image.open(s.image).size
        canvas = np.zeros((h, w), bool)
        for p in s.phrases:
            for reg in p.regions: canvas[reg.box[1]:reg.box[3], reg.box[0]:reg.box[2]] = True
        assert abs(r["uniform_global_box"] - canvas.mean()) < 1e-6, r["id"]
        union = np.logical_or.reduce([reg.load_mask() for p in s.phrases for reg in p.regions])
        assert abs(r["uniform_global_mask"] - union.mean()) < 1e-6, r["id"]
    assert np.mean([r["global_box"] for r in per]) == pytest.approx(res["global_box"])


def fake_align_bench(folder: Path, n: int = 3) -> Path:
    "An ALIGN-BENCH folder in the documented layout (images/<id>.jpg, pkls/<id>.pkl) with random images."
    import pickle
    from PIL import Image
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True); (folder / "pkls").mkdir()
    for i in range(n):
        h, w = 48, 64 + 8 * i
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / "images" / f"{i}.jpg")
        sq = np.zeros((h, w), bool); sq[5:20, 8:30] = True
        ci = np.zeros((h, w), bool); ci[25:40, 30:50] = True
        ann = {"a red square": [dict(bbox_mask=[8, 5, 30, 20], pixel_mask=sq)],
               "a blue circle": [dict(bbox_mask=[30, 25, 50, 40], pixel_mask=ci)]}
        pickle.dump(dict(caption="A red square near a blue circle.", annotation=ann), open(folder / "pkls" / f"{i}.pkl", "wb"))
    return folder


def test_eval_alignment_checkpoint_on_align_bench(env, tmp_path):
    "A pre-training run folder (engine checkpoint inside) scored on an ALIGN-BENCH folder equals `alignment_report` computed here."
    import torch
    from scl_nb.alignment import alignment_report, read_align_bench
    from scl_nb.config import load_config
    from scl_nb.model import SCLModel
    from scl_nb.text import load_tokenizer
    from scl_nb.checkpoint import save_checkpoint
    cfg = load_config("tiny")
    torch.manual_seed(3)
    model = SCLModel(cfg).eval()
    run = tmp_path / "pretrain_run"
    save_checkpoint(run / "checkpoints", 5, model, torch.optim.AdamW(model.parameters()), cfg=cfg)
    bench = fake_align_bench(tmp_path / "align_bench")
    out = tmp_path / "align"
    execute("eval_alignment.ipynb", tmp_path / "out", out_dir=str(out), checkpoint=str(run), data=str(bench), figures=2)
    res = json.loads((out / "results.json").read_text())
    assert res["model"].endswith("step_0000005") and res["n_samples"] == 3 and res["n_phrases"] == 6
    ref = alignment_report(model, read_align_bench(bench), load_tokenizer(cfg.text), keep_per_sample=False)
    for k in ("global_box", "global_mask", "local_box", "local_mask"):
        assert res[k] == pytest.approx(ref[k], abs=1e-6), k
        assert res[f"n_{k}"] == 3
    assert (out / "attention_local.png").exists()

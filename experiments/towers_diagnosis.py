"""Why the tiny towers do not align under the paper's recipe (issue 15): step-0 probes and 300-step runs.

Usage (one thread, offline; ~1 min for `probe`, 4-8 min per `run` on the 2-core machine):
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python experiments/towers_diagnosis.py probe [random|towers] [override ...]
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python experiments/towers_diagnosis.py run   [random|towers] [override ...]
`probe` prints the step-0 feature norms, cross-sample cosines, per-term losses and gradient norms per part;
`run` (options steps=N, delay=K: the terms delayed=a,b (default scl_image,scl_text) start at step K) trains 300 steps (batch 32, clip 1.0) from the `tiny-towers` preset (or `tiny` for `random`) with the
overrides and prints the held-out zero-shot ITC R@1 and the last-10-step mean of every logged term.
"""
import json, math, shutil, sys, tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

torch.set_num_threads(1)

from scl_nb.config import load_config
from scl_nb.loaders import pretrain_loader, task_loader
from scl_nb.objectives import PretrainTask
from scl_nb.synthetic import synthetic_for_config

MAIN_JOB_CPU = ["train.batch_size=32", "train.per_gpu_batch_size=32", "train.grad_clip=1.0"]
PAPER_WEIGHTS = ["objectives.itc=0.5", "objectives.mlm=1", "objectives.itm=1", "objectives.scl_image=1", "objectives.scl_text=1",
                 "objectives.mltc_image=0.2", "objectives.mltc_text=0.2"]

def config(kind, overrides, steps=300):
    "`tiny-towers` (towers) or `tiny` with the paper's weights and the tiny-towers rates (random), then `overrides`."
    base = ["train.lr=3e-4", "train.head_lr_mult=5", "train.cross_modal_lr_mult=5"] + PAPER_WEIGHTS if kind == "random" else []
    return load_config("tiny" if kind == "random" else "tiny-towers", MAIN_JOB_CPU + [f"train.steps={steps}"] + base + list(overrides))

def off_diagonal_cos(x):  # [B, D] -> mean cosine between different samples
    x = F.normalize(x.float(), dim=-1); s = x @ x.T; n = len(x)
    return ((s.sum() - s.diagonal().sum()) / (n * n - n)).item()

def parts(model):
    "Parameter groups: towers, transforms + token types, fusion layers, poolers, heads."
    f = model.fusion
    return dict(vision=model.vision, text=model.text, transforms=[f.image_transform, f.text_transform, f.token_type],
                fusion_layers=[f.text_layers, f.image_layers], poolers=[f.text_pooler, f.image_pooler],
                itc_proj=[model.itc_image_proj, model.itc_text_proj], itm_head=model.itm_head, mlm_head=model.mlm_head)

def grad_norm(mods):
    mods = mods if isinstance(mods, list) else [mods]
    g = [p.grad.norm() ** 2 for m in mods for p in m.parameters() if p.grad is not None]
    return math.sqrt(sum(g)) if g else 0.0

@torch.no_grad()
def features(model, b):
    "Norms and cross-sample cosines of the tower outputs, the transformed tokens and the fused outputs."
    px, ids, att = b["pixels"], b["input_ids"], b["attention_mask"]
    v = model.vision(px).tokens                                 # [B, 1+N, Dv] after ln_post
    t = model.text(ids, att)                                    # [B, L, Dt]
    img, txt = model.encode_image(px), model.encode_text(ids, att)
    fused = model.fuse(img, txt)
    perm = torch.roll(torch.arange(len(ids)), 1)
    swapped = model.fuse(img.index(perm), txt)                  # every caption with another image
    rel = lambda a, c: ((a - c).norm(dim=-1) / a.norm(dim=-1)).mean().item()
    real = att.bool()
    return dict(
        vision_cls_norm=v[:, 0].norm(dim=-1).mean().item(), vision_patch_norm=v[:, 1:].norm(dim=-1).mean().item(),
        vision_cls_cos_across_images=off_diagonal_cos(v[:, 0]), vision_patch_cos_across_images=off_diagonal_cos(v[:, 1:].flatten(1)),
        vision_patch_cos_within_image=sum(off_diagonal_cos(v[i, 1:]) for i in range(len(v))) / len(v),
        ln_post_gamma_rms=model.vision.ln_post.weight.pow(2).mean().sqrt().item(), ln_post_beta_norm=model.vision.ln_post.bias.norm().item(),
        text_token_norm=t[real].norm(dim=-1).mean().item(), text_cls_cos_across_captions=off_diagonal_cos(t[:, 0]),
        text_mean_cos_across_captions=off_diagonal_cos((t * att[..., None]).sum(1) / att.sum(1, keepdim=True)),
        image_after_transform_norm=img.tokens.norm(dim=-1).mean().item(), text_after_transform_norm=txt.tokens[real].norm(dim=-1).mean().item(),
        token_type_norm=model.fusion.token_type.weight.norm(dim=-1).mean().item(),
        fused_image_cls_cos=off_diagonal_cos(fused.image_cls), fused_text_cls_cos=off_diagonal_cos(fused.text_cls),
        itm_input_cos=off_diagonal_cos(fused.cls_feats),
        text_cls_change_when_image_swapped=rel(fused.text_cls, swapped.text_cls),
        image_cls_change_when_image_swapped=rel(fused.image_cls, swapped.image_cls),
        itc_image_cos=off_diagonal_cos(model.itc_image(img)), itc_text_cos=off_diagonal_cos(model.itc_text(txt)))

@torch.no_grad()
def mltc_image_anatomy(model, b, o, gen):
    "The MLTC-image NCE taken apart: tokens, cosines among predictions / targets, row and column cross-entropies."
    from scl_nb.objectives import image_token_mask
    img, txt = model.encode_image(b["pixels"]), model.encode_text(b["input_ids"], b["attention_mask"])
    pass_b = model.fuse(img, model.encode_text(b["scl_text_ids"], b["attention_mask"]))
    mimg = model.encode_image(b["pixels"], mask_ratio=o.mltc_image_mask, generator=gen)
    pass_a2 = model.fuse(mimg, txt)
    m = image_token_mask(mimg)
    p, t = F.normalize(pass_a2.image_tokens[m], dim=-1), F.normalize(pass_b.image_tokens[m], dim=-1)  # [M, D]
    s = p @ t.T / o.scl_tau; target = torch.arange(len(p))
    return dict(tokens=len(p), chance=2 * math.log(len(p)), pred_pred_cos=off_diagonal_cos(p), tgt_tgt_cos=off_diagonal_cos(t),
                positive_cos=(p * t).sum(-1).mean().item(), row_ce=F.cross_entropy(s, target).item(), col_ce=F.cross_entropy(s.T, target).item(),
                tau=o.scl_tau)

def probe(kind, overrides):
    cfg = config(kind, overrides)
    torch.manual_seed(cfg.train.seed)
    model = PretrainTask.from_config(cfg); model.train()
    b = next(iter(pretrain_loader(cfg)))
    out = dict(kind=kind, overrides=overrides, features=features(model, b),
               mltc_image=mltc_image_anatomy(model, b, cfg.objectives, torch.Generator().manual_seed(0)))
    res = model(b, torch.Generator().manual_seed(0))
    terms = {k[:-5]: v for k, v in res.items() if k.endswith("_loss")}
    out["terms"] = {k: round(v.item(), 3) for k, v in terms.items()}
    out["weighted"] = {k: round(getattr(cfg.objectives, k) * v.item(), 3) for k, v in terms.items()}
    grads, flat = {}, {}
    shared = [q for p in ("vision", "text", "transforms", "fusion_layers") for m in (parts(model)[p] if isinstance(parts(model)[p], list) else [parts(model)[p]]) for q in m.parameters()]
    for name, term in terms.items():  # gradient norm per part of each weighted term alone
        model.zero_grad(set_to_none=True)
        (getattr(cfg.objectives, name) * term).backward(retain_graph=True)
        grads[name] = {p: round(grad_norm(m), 4) for p, m in parts(model).items()}
        flat[name] = torch.cat([(q.grad if q.grad is not None else torch.zeros_like(q)).flatten() for q in shared])
    out["grad_norm_of_weighted_term"] = grads
    out["grad_cos_with_itc_on_towers_transforms_fusion"] = {k: round(F.cosine_similarity(flat["itc"], v, dim=0).item(), 4) for k, v in flat.items()} if "itc" in flat else None
    out["param_norm"] = {p: round(math.sqrt(sum(q.norm().item() ** 2 for q in (m if isinstance(m, list) else [m]) for q in q.parameters())), 2)
                         for p, m in parts(model).items()}
    print(json.dumps(out, indent=1))

def run(kind, overrides, steps=300, delay=0, delayed=("scl_image", "scl_text")):
    from safetensors.torch import load_model
    from scl_nb.evaluation import evaluate_itc_retrieval
    from scl_nb.jobs import read_metrics
    from scl_nb.train import train
    cfg = config(kind, overrides, steps)
    held = task_loader(cfg, synthetic_for_config(cfg)["captions_val"], "pretrain", train=False, batch_size=100)
    out = Path(tempfile.mkdtemp(prefix="towers-diag-"))
    try:
        if delay:  # the `delayed` terms off until step `delay`, then on (same schedule, optimizer state kept)
            first = config(kind, list(overrides) + [f"objectives.{k}=0" for k in delayed], steps)
            train(first, out, resume=False, progress=False, device="cpu", count_model_flops=False, max_steps=delay)
        summary = train(cfg, out, resume=bool(delay), progress=False, device="cpu", count_model_flops=False)
        model = PretrainTask.from_config(cfg)
        load_model(model, str(Path(summary["checkpoint"]) / "model.safetensors"))
        after, rows = evaluate_itc_retrieval(model, held), list(read_metrics(out))
        model.train(); end = features(model, next(iter(pretrain_loader(cfg))))  # collapse check after training
    finally: shutil.rmtree(out, ignore_errors=True)
    keys = [k for k in rows[-1] if k.endswith("_loss") or k.endswith("_acc") or k == "loss"]
    mean = lambda rs, k: round(sum(r[k] for r in rs if k in r) / max(1, sum(k in r for r in rs)), 3)  # a delayed term is absent at first
    print(json.dumps(dict(kind=kind, overrides=overrides, steps=steps, delay=delay, delayed=list(delayed) if delay else [], r1=round(after["r1"], 2), tr_r1=round(after["tr_r1"], 2),
                          ir_r1=round(after["ir_r1"], 2), r5=round((after["tr_r5"] + after["ir_r5"]) / 2, 2),
                          first10={k: mean(rows[:10], k) for k in keys}, last10={k: mean(rows[-10:], k) for k in keys},
                          grad_norm_first10_last10=[mean(rows[:10], "grad_norm"), mean(rows[-10:], "grad_norm")] if "grad_norm" in rows[-1] else None,
                          end_features={k: round(v, 3) for k, v in end.items()})))

if __name__ == "__main__":
    cmd, kind, *ov = sys.argv[1:]
    opt = {o.split("=")[0]: o.split("=")[1] for o in ov if o.startswith(("steps=", "delay=", "delayed="))}
    ov = [o for o in ov if not o.startswith(("steps=", "delay=", "delayed="))]
    if cmd == "probe": probe(kind, ov)
    else: run(kind, ov, int(opt.get("steps", 300)), int(opt.get("delay", 0)), tuple(opt.get("delayed", "scl_image,scl_text").split(",")))

"""Cross-process correctness of the global-batch objectives (issue 3): ITC, SCL global (MVSC + MLSC) and
SCL local (MLTC) computed by 2 CPU gloo processes on two parts of a batch equal the single-process values
on the whole batch -- losses on every rank, and gradients after DDP's averaging.

- `test_ddp_pretrain_step_matches_single_process`: `scl_nb.objectives.PretrainTask` through
  `DistributedDataParallel` on the tiny model in float64, images and 2-frame videos, uneven split (4 + 2 samples).
- `test_tensor_losses_match_single_process`: the loss functions on fixed tensors through one shared
  linear layer; one rank holds only all-special captions, i.e. no masked text token at all.

The official code's training signal (issue 24, method §7), with the same pair of processes:

- `test_local_gather_gives_each_gathered_term_half_the_gradient`: under `objectives.gather_grad="local"`
  each gathered term alone (ITC, MVSC, MLSC, MLTC-text, MLTC-image) has the loss of `"sum"` and exactly
  1/2 of its gradient in every parameter (the ITC temperature, not gathered, all of it);
- `test_process_negatives_give_the_per_process_loss`: with every SCL term's negatives per process, each
  rank's losses are the single-process losses of its own samples, and the gradient is their mean;
- `test_one_process_emulates_two`: one process with `objectives.emulate_world_size=2` trains exactly the
  2-process `local` signal (gradients, and losses as the ranks' mean);
- `test_official_glscl_signal_equals_the_options`: the official GLSCL losses restated from the released
  code (its own-slice all-gather, per-GPU MLSC and MLTC-image) equal ours under those options.

The processes are spawned by `scl_nb.distributed.run_local_processes` (about 10 s in all on 2 cores).
"""
import pytest
import torch
import torch.nn.functional as F

from scl_nb.config import OBJECTIVE_NAMES, apply_overrides, preset
from scl_nb.distributed import run_local_processes
from scl_nb.masking import scl_text_mask
from scl_nb.model import SCLModel
from scl_nb.objectives import SCL_TERMS, Negatives, PretrainTask, completion_nce, itc_loss, mltc_loss

CFG = preset("tiny")
SPECIAL_IDS = torch.tensor([0, 1, 2, 3, CFG.text.vocab_size - 1])  # <s> <pad> </s> <unk> ... <mask> (tiny BPE layout)
MASK_ID = CFG.text.vocab_size - 1
OBJECTIVES = apply_overrides(CFG, ["objectives.mlm=0", "objectives.itm=0", "objectives.mltc_image=0",
                                   "objectives.scl_image_mask=0.0"]).objectives  # ITC, MVSC, MLSC, MLTC text; nothing random
SIZES = [4, 2]


def _batch(frames: int, seed: int) -> dict:
    "Random pixels and captions (the last one empty: `<s></s>` + padding), SCL-masked like the collator does."
    g = torch.Generator().manual_seed(seed)
    B, L, size = 6, 10, CFG.vision.image_size
    ids = torch.randint(4, MASK_ID, (B, L), generator=g)
    lengths = [10, 9, 7, 10, 6, 2]
    for b, n in enumerate(lengths):
        ids[b, 0], ids[b, n - 1], ids[b, n:] = 0, 2, 1
    attn = (torch.arange(L)[None] < torch.tensor(lengths)[:, None]).long()
    special = torch.isin(ids, SPECIAL_IDS) | (attn == 0)
    scl_ids, scl_masked = scl_text_mask(ids, special, MASK_ID, 0.4, generator=g)
    shape = (B, 3, size, size) if frames == 1 else (B, frames, 3, size, size)
    return dict(pixels=torch.randn(shape, generator=g), input_ids=ids, attention_mask=attn,
                scl_text_ids=scl_ids, scl_text_masked=scl_masked)


def _ddp_worker(batches, objectives, sizes):
    import torch
    from scl_nb.config import preset
    from scl_nb.distributed import rank
    from scl_nb.objectives import PretrainTask
    torch.manual_seed(0)
    ddp = torch.nn.parallel.DistributedDataParallel(PretrainTask(preset("tiny")).double(), find_unused_parameters=True)
    start, results = sum(sizes[:rank()]), []
    for b in batches:
        ddp.zero_grad()
        out = ddp({k: v[start:start + sizes[rank()]] for k, v in _double(b).items()}, objectives=objectives)
        out["loss"].backward()
        results.append(({k: v.item() for k, v in out.items()},
                         {n: p.grad.clone() for n, p in ddp.module.named_parameters() if p.grad is not None}))
    return results


def _double(b: dict) -> dict:
    "float64 pixels: the model runs in float64, so that summation order cannot hide or fake a difference."
    return b | {"pixels": b["pixels"].double()}


def _single(b, objectives):
    torch.manual_seed(0)
    model = PretrainTask(CFG).double()
    out = model(_double(b), objectives=objectives)
    out["loss"].backward()
    return {k: v.item() for k, v in out.items()}, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


BATCHES = [_batch(1, 0), _batch(2, 1)]


def test_ddp_pretrain_step_matches_single_process(two_processes):
    per_rank = [r["ddp"] for r in two_processes]
    for i, b in enumerate(BATCHES):
        s_out, s_grad = _single(b, OBJECTIVES)
        for out, grad in (r[i] for r in per_rank):
            for k in ("loss", "itc_loss", "scl_image_loss", "scl_text_loss", "mltc_text_loss"):
                assert abs(out[k] - s_out[k]) < 1e-10 * max(1.0, abs(s_out[k])), (i, k, out[k], s_out[k])
            assert sorted(grad) == sorted(s_grad)
            for n in s_grad:
                assert torch.allclose(grad[n], s_grad[n], rtol=1e-9, atol=1e-12), (i, n)


def _tensor_case():
    "Fixed features for 6 samples: image/text [6, 8], video [6, 2, 8], tokens [6, 5, 8] with masks."
    g = torch.Generator().manual_seed(7)
    masked = torch.zeros(6, 5, dtype=torch.bool)
    masked[0, 1] = masked[0, 3] = masked[1, 2] = masked[2, 0] = masked[3, 4] = True  # samples 4 and 5: no masked token
    return dict(img=torch.randn(6, 8, generator=g), txt=torch.randn(6, 8, generator=g), vid=torch.randn(6, 2, 8, generator=g),
                vid_tgt=torch.randn(6, 2, 8, generator=g), tok=torch.randn(6, 5, 8, generator=g),
                tok_tgt=torch.randn(6, 5, 8, generator=g), masked=masked)


def _tensor_losses(case, rows):
    "Losses through one shared linear layer (fixed init) on the samples `rows`; returns values and grads."
    torch.manual_seed(0)
    proj, scale = torch.nn.Linear(8, 8), torch.nn.Parameter(torch.tensor(2.0))
    c = {k: v[rows] for k, v in case.items()}
    terms = dict(itc=itc_loss(F.normalize(proj(c["img"]), dim=-1), F.normalize(proj(c["txt"]), dim=-1), scale)[0],
                 video=completion_nce(proj(c["vid"]), proj(c["vid_tgt"]), 0.03),
                 mltc=mltc_loss(proj(c["tok"]), proj(c["tok_tgt"]), c["masked"], 0.03))
    total = sum(terms.values())
    total.backward()
    return {k: v.item() for k, v in terms.items()}, dict(weight=proj.weight.grad, bias=proj.bias.grad, scale=scale.grad)


def _tensor_worker(case, sizes):
    from scl_nb.distributed import rank, all_reduce_mean
    start = sum(sizes[:rank()])
    values, grads = _tensor_losses(case, slice(start, start + sizes[rank()]))
    return values, {k: all_reduce_mean(v) for k, v in grads.items()}  # what DDP does to parameter gradients


def _worker(batches, objectives, case, sizes):
    return dict(ddp=_ddp_worker(batches, objectives, sizes), tensors=_tensor_worker(case, sizes),
                signal=_signal_worker(batches[0], sizes), official=_official_worker(_official_case()))


@pytest.fixture(scope="module")
def two_processes():
    "Every check in one pair of spawned processes (starting them is most of the cost)."
    return run_local_processes(_worker, 2, args=(BATCHES, OBJECTIVES, _tensor_case(), SIZES))


def test_tensor_losses_match_single_process(two_processes):
    s_values, s_grads = _tensor_losses(_tensor_case(), slice(0, 6))
    for values, grads in (r["tensors"] for r in two_processes):  # rank 1: samples 4, 5, nothing masked
        for k in s_values: assert abs(values[k] - s_values[k]) < 1e-5 * max(1.0, abs(s_values[k])), (k, values[k], s_values[k])
        for k in s_grads: assert torch.allclose(grads[k], s_grads[k], rtol=1e-4, atol=1e-6), k


# ---- the official training signal (issue 24) ----
LOCAL = {"objectives.gather_grad": "local"}
GATHERED_TERMS = ("itc", "scl_image", "scl_text", "mltc_text", "mltc_image")
PER_PROCESS = {"objectives.itc": 0.0, "objectives.mlm": 0.0, "objectives.itm": 0.0}
PER_PROCESS |= {f"objectives.{t}_negatives": "process" for t in SCL_TERMS}
EMULATED = LOCAL | {"objectives.mlm": 0.0, "objectives.itm": 0.0, "objectives.mltc_image": 0.0,
                    "objectives.scl_text_negatives": "process", "objectives.mltc_text_negatives": "process"}


def _objectives(overrides: dict):
    "The tiny objectives with `overrides`; pass A keeps the whole image (nothing drawn for it)."
    return apply_overrides(CFG, {"objectives.scl_image_mask": 0.0} | overrides).objectives


def _alone(term: str) -> dict:
    return {f"objectives.{k}": 0.0 for k in OBJECTIVE_NAMES if k != term}


def _step(model, b: dict, objectives, seed: int = 5):
    "Loss terms and gradients of one float64 step (DDP-averaged when `model` is DDP); the same draws every call."
    model.zero_grad()
    out = model(_double(b), torch.Generator().manual_seed(seed), objectives=objectives)
    out["loss"].backward()
    module = getattr(model, "module", model)
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return {k: v.item() for k, v in out.items()}, grads


def _tiny64():
    torch.manual_seed(0)
    return PretrainTask(CFG).double()


def _signal_worker(batch, sizes):
    import torch
    from scl_nb.distributed import rank
    ddp = torch.nn.parallel.DistributedDataParallel(_tiny64(), find_unused_parameters=True)
    start = sum(sizes[:rank()])
    part = {k: v[start:start + sizes[rank()]] for k, v in batch.items()}
    out = {(t, g): _step(ddp, part, _objectives(_alone(t) | ({} if g == "sum" else LOCAL)))
           for t in GATHERED_TERMS for g in ("sum", "local")}
    out["process"] = _step(ddp, part, _objectives(PER_PROCESS))
    half = {k: v[3 * rank():3 * rank() + 3] for k, v in batch.items()}  # 3 + 3: the split the emulation makes
    out["emulated"] = _step(ddp, half, _objectives(EMULATED))
    return out


def test_local_gather_gives_each_gathered_term_half_the_gradient(two_processes):
    for r in two_processes:
        for term in GATHERED_TERMS:
            (o_sum, g_sum), (o_loc, g_loc) = r["signal"][(term, "sum")], r["signal"][(term, "local")]
            assert abs(o_loc["loss"] - o_sum["loss"]) < 1e-12 * abs(o_sum["loss"]), term
            assert sorted(g_loc) == sorted(g_sum) and len(g_sum) > 10, term
            for n in g_sum:
                share = 1.0 if n == "itc_logit_scale" else 0.5  # R = 2
                assert torch.allclose(g_loc[n], share * g_sum[n], rtol=1e-10, atol=1e-14), (term, n)


def test_process_negatives_give_the_per_process_loss(two_processes):
    b, starts = BATCHES[0], [0, SIZES[0]]
    singles = [_step(_tiny64(), {k: v[s:s + n] for k, v in b.items()}, _objectives(PER_PROCESS))
               for s, n in zip(starts, SIZES)]
    for r, (s_out, _) in zip(two_processes, singles):
        out, _ = r["signal"]["process"]
        for k in ("loss", "scl_image_loss", "scl_text_loss", "mltc_image_loss", "mltc_text_loss"):
            assert abs(out[k] - s_out[k]) < 1e-12 * max(1.0, abs(s_out[k])), (k, out[k], s_out[k])
    mean = {n: (singles[0][1][n] + singles[1][1][n]) / 2 for n in singles[0][1]}
    for n, g in two_processes[0]["signal"]["process"][1].items():
        assert torch.allclose(g, mean[n], rtol=1e-9, atol=1e-13), n
    glob = _step(_tiny64(), b, _objectives(PER_PROCESS | {f"objectives.{t}_negatives": "global" for t in SCL_TERMS}))
    assert abs(glob[0]["scl_text_loss"] - (singles[0][0]["scl_text_loss"] + singles[1][0]["scl_text_loss"]) / 2) > 1e-3


def test_one_process_emulates_two(two_processes):
    out, grads = _step(_tiny64(), BATCHES[0], _objectives(EMULATED | {"objectives.emulate_world_size": 2}))
    ranks = [r["signal"]["emulated"] for r in two_processes]
    for k in ("loss", "itc_loss", "scl_image_loss", "scl_text_loss", "mltc_text_loss"):
        mean = (ranks[0][0][k] + ranks[1][0][k]) / 2
        assert abs(out[k] - mean) < 1e-12 * max(1.0, abs(mean)), (k, out[k], mean)
    assert sorted(grads) == sorted(ranks[0][1])
    for n in grads: assert torch.allclose(grads[n], ranks[0][1][n], rtol=1e-9, atol=1e-13), n


class _AllGatherOwnSlice(torch.autograd.Function):
    "The official `AllGather_multi` (scl/modules/dist_utils.py, lines 144-161 at IIGROUP/SCL cd0d819), restated."
    @staticmethod
    def forward(ctx, x):
        import torch.distributed as dist
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]  # this rank's slice of its own gradient, not summed


def _norm_softmax(sim, tau):
    "The official `NormSoftmaxLoss` (objectives.py 377-400), restated: both directions' mean diagonal log-softmax."
    return -F.log_softmax(sim / tau, dim=1).diagonal().mean() - F.log_softmax(sim.t() / tau, dim=1).diagonal().mean()


def _unit(x):
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-8)


def _official_case():
    "Fixed float64 features of 6 samples (3 per rank): global tokens, 5 text and 5 image tokens with masks."
    g = torch.Generator().manual_seed(11)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    tmask, imask = torch.rand(6, 5, generator=g) < 0.4, torch.rand(6, 5, generator=g) < 0.3
    tmask[:, 1] = imask[:, 2] = True  # every sample has a masked token of each kind
    return dict(img=r(6, 8), txt=r(6, 8), vpred=r(6, 8), vtgt=r(6, 8), tpred=r(6, 8), ttgt=r(6, 8),
                tok=r(6, 5, 8), tok_tgt=r(6, 5, 8), itok=r(6, 5, 8), itok_tgt=r(6, 5, 8), tmask=tmask, imask=imask)


def _official_glscl(c, proj, temp, gather):
    "HEAD's compute_con and compute_scl(token_recover=True) on given features, restated (objectives.py 194-425)."
    txt, img = gather(proj(c["txt"])), gather(proj(c["img"]))
    mvsc = _norm_softmax(gather(_unit(proj(c["vpred"]))) @ gather(_unit(proj(c["vtgt"]).detach())).t(), 0.03)
    mlsc = _norm_softmax(_unit(proj(c["tpred"])) @ _unit(proj(c["ttgt"]).detach()).t(), 0.03)  # this GPU's samples only
    tok, tok_tgt = gather(_unit(proj(c["tok"]))), gather(_unit(proj(c["tok_tgt"]).detach()))
    tmask = gather(c["tmask"].double()) > 0.5
    mltc_text = _norm_softmax(tok[tmask] @ tok_tgt[tmask].t(), 0.03)  # gathered masked text tokens
    itok, itok_tgt = proj(c["itok"])[c["imask"]], proj(c["itok_tgt"])[c["imask"]].detach()
    mltc_image = _norm_softmax(F.normalize(itok, dim=-1) @ F.normalize(itok_tgt, dim=-1).t(), 0.03)  # this GPU's tokens
    return dict(itc=0.5 * _norm_softmax(_unit(txt) @ _unit(img).t(), temp), mvsc=mvsc, mlsc=mlsc,
                mltc_text=0.2 * mltc_text, mltc_image=0.2 * mltc_image)


def _ours_with_official_options(c, proj, temp, negatives):
    "Our loss functions with `paper-official`'s settings: `local` gathers, per-process MLSC and MLTC-image, a raw tau."
    glob, proc = negatives
    unit = lambda x: F.normalize(x, dim=-1)
    itc = itc_loss(unit(proj(c["img"])), unit(proj(c["txt"])), -temp.log(), glob, max_logit_scale=None)[0]
    return dict(itc=0.5 * itc,
                mvsc=completion_nce(proj(c["vpred"]), proj(c["vtgt"]), 0.03, glob),
                mlsc=completion_nce(proj(c["tpred"]), proj(c["ttgt"]), 0.03, proc),
                mltc_text=0.2 * mltc_loss(proj(c["tok"]), proj(c["tok_tgt"]), c["tmask"], 0.03, negatives=glob),
                mltc_image=0.2 * mltc_loss(proj(c["itok"]), proj(c["itok_tgt"]), c["imask"], 0.03, negatives=proc))


def _official_terms(kind, case):
    "This rank's terms and DDP-averaged gradients (weight, bias, tau) of `kind`: official, ours, or our defaults."
    from scl_nb.distributed import all_reduce_mean, rank
    torch.manual_seed(0)
    proj, temp = torch.nn.Linear(8, 8).double(), torch.nn.Parameter(torch.tensor(0.07, dtype=torch.float64))
    c = {k: v[3 * rank():3 * rank() + 3] for k, v in case.items()}
    if kind == "official": terms = _official_glscl(c, proj, temp, _AllGatherOwnSlice.apply)
    else:
        official_options = (Negatives(grad="local"), Negatives("process", "local"))
        negatives = official_options if kind == "ours" else (Negatives(), Negatives())
        terms = _ours_with_official_options(c, proj, temp, negatives)
    sum(terms.values()).backward()
    grads = [all_reduce_mean(g) for g in (proj.weight.grad, proj.bias.grad, temp.grad)]
    return {k: v.item() for k, v in terms.items()}, grads


def _official_worker(case):
    return {kind: _official_terms(kind, case) for kind in ("official", "ours", "default")}


def test_official_glscl_signal_equals_the_options(two_processes):
    for r in two_processes:
        (v_off, g_off), (v_ours, g_ours), (v_def, g_def) = (r["official"][k] for k in ("official", "ours", "default"))
        for k in v_off: assert abs(v_ours[k] - v_off[k]) < 1e-12 * abs(v_off[k]), (k, v_ours[k], v_off[k])
        for a, b in zip(g_ours, g_off): assert torch.allclose(a, b, rtol=1e-10, atol=1e-14)
        assert abs(v_def["mlsc"] - v_off["mlsc"]) > 1e-3  # our defaults are another signal
        assert not torch.allclose(g_def[0], g_off[0], rtol=1e-3)

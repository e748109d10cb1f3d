"""Cross-process correctness of the global-batch objectives (issue 3): ITC, SCL global (MVSC + MLSC) and
SCL local (MLTC) computed by 2 CPU gloo processes on two parts of a batch equal the single-process values
on the whole batch -- losses on every rank, and gradients after DDP's averaging.

- `test_ddp_pretrain_step_matches_single_process`: `scl_nb.objectives.PretrainTask` through
  `DistributedDataParallel` on the tiny model in float64, images and 2-frame videos, uneven split (4 + 2 samples).
- `test_tensor_losses_match_single_process`: the loss functions on fixed tensors through one shared
  linear layer; one rank holds only all-special captions, i.e. no masked text token at all.

The processes are spawned by `scl_nb.distributed.run_local_processes` (about 10 s in all on 2 cores).
"""
import pytest
import torch
import torch.nn.functional as F

from scl_nb.config import apply_overrides, preset
from scl_nb.distributed import run_local_processes
from scl_nb.masking import scl_text_mask
from scl_nb.model import SCLModel
from scl_nb.objectives import PretrainTask, completion_nce, itc_loss, mltc_loss

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
    return dict(ddp=_ddp_worker(batches, objectives, sizes), tensors=_tensor_worker(case, sizes))


@pytest.fixture(scope="module")
def two_processes():
    "Both checks in one pair of spawned processes (starting them is most of the cost)."
    return run_local_processes(_worker, 2, args=(BATCHES, OBJECTIVES, _tensor_case(), SIZES))


def test_tensor_losses_match_single_process(two_processes):
    s_values, s_grads = _tensor_losses(_tensor_case(), slice(0, 6))
    for values, grads in (r["tensors"] for r in two_processes):  # rank 1: samples 4, 5, nothing masked
        for k in s_values: assert abs(values[k] - s_values[k]) < 1e-5 * max(1.0, abs(s_values[k])), (k, values[k], s_values[k])
        for k in s_grads: assert torch.allclose(grads[k], s_grads[k], rtol=1e-4, atol=1e-6), k

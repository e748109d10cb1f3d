"The pre-training step compiles whole: no graph break, forward and backward, same numbers as eager; static shapes compile once."
import os

import pytest

torch = pytest.importorskip("torch")
from scl_nb.config import apply_overrides, preset
from scl_nb.objectives import PretrainTask, random_pretrain_batch, step_noise

pytestmark = pytest.mark.slow
os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")


def _setup(frames=1, negatives="random", batch_size=4, seed=0):
    cfg = apply_overrides(preset("tiny"), {"objectives.itm_negatives": negatives, "vision.max_frames": 4})
    torch.manual_seed(0)
    model = PretrainTask(cfg)
    batch = random_pretrain_batch(cfg, batch_size, frames, torch.Generator().manual_seed(seed))
    n = (cfg.vision.image_size // cfg.vision.patch_size) ** 2
    return cfg, model, batch, step_noise(batch_size, n, torch.Generator().manual_seed(seed + 1))


@pytest.mark.parametrize("frames,negatives", [(1, "random"), (2, "hard")])
def test_step_has_no_graph_break(frames, negatives):
    cfg, model, batch, noise = _setup(frames, negatives)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model.losses)(batch, noise, cfg.objectives)
    assert [str(r.reason)[:200] for r in explained.break_reasons] == []
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)


def test_activation_checkpointing_compiles_without_break():
    "Recomputing the towers' and the fusion's blocks (what lets batch 128+ fit) keeps the step one graph."
    cfg, model, batch, noise = _setup()
    model.train()
    from scl_nb.runtime import enable_activation_checkpointing
    assert enable_activation_checkpointing(model) == 3  # vision, text, fusion: the one switch the engine uses
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model.losses)(batch, noise, cfg.objectives)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), [str(r.reason)[:200] for r in explained.break_reasons]


def test_a_generator_in_the_step_would_break_the_graph():
    "The check can fail: the full forward draws with a torch.Generator, which dynamo cannot trace."
    cfg, model, batch, _ = _setup()
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(batch, torch.Generator().manual_seed(1))
    assert explained.graph_break_count >= 1


def test_compiled_step_matches_eager_forward_and_backward():
    cfg, model, batch, noise = _setup()
    out = model.losses(batch, noise, cfg.objectives)
    out["loss"].backward()
    eager = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    torch._dynamo.reset()
    model.compile(backend="aot_eager", dynamic=False)  # AOTAutograd traces forward and backward as graphs
    compiled = model(batch, torch.Generator())  # through forward: draws eagerly, then the compiled losses ...
    model.zero_grad()
    compiled = model.losses(batch, noise, cfg.objectives)  # ... and with the same draws as the eager step
    compiled["loss"].backward()
    for k, v in out.items(): torch.testing.assert_close(compiled[k], v, rtol=1e-5, atol=1e-6)
    assert sorted(eager) == sorted(n for n, p in model.named_parameters() if p.grad is not None)
    for n, p in model.named_parameters():
        if p.grad is not None: torch.testing.assert_close(p.grad, eager[n], rtol=1e-4, atol=1e-6)


def _graphs_for(model, cfg, batches, n):
    from torch._dynamo.utils import counters
    torch._dynamo.reset(); counters.clear()
    step = torch.compile(model.losses, backend="eager", dynamic=False)
    for i, b in enumerate(batches): step(b, step_noise(4, n, torch.Generator().manual_seed(i)), cfg.objectives)
    return counters["stats"]["unique_graphs"]


def test_static_shapes_compile_once():
    "Captions padded to max_len (data.static_shapes): new batches reuse the compiled graph, as CUDA graphs need."
    cfg, model, _, noise = _setup()
    n = noise["drop"].shape[1]
    padded = [random_pretrain_batch(cfg, 4, generator=torch.Generator().manual_seed(10 + i)) for i in range(3)]
    assert {b["input_ids"].shape for b in padded} == {(4, cfg.text.max_len)}
    longest = lambda b: int(b["attention_mask"].sum(1).max())
    trimmed = [{k: (v[:, :longest(b)] if v.dim() == 2 and v.shape[1] == cfg.text.max_len else v) for k, v in b.items()} for b in padded]
    assert len({b["input_ids"].shape[1] for b in trimmed}) > 1  # padded to the longest caption: the shapes change
    assert _graphs_for(model, cfg, padded, n) == 1
    assert _graphs_for(model, cfg, trimmed, n) > 1

"""Writers of official-format (Lightning 1.3) checkpoints, for the tests only: our model in the official names and
layouts, the hyper-parameters and training state a released `.ckpt` holds, and a pickler that writes Lightning's class
names without Lightning. `nbs/41_official.ipynb` and `tests/test_official.py` use them to make files for
`scl_nb.official` to read; the package itself only reads such files (method §7.1)."""
import math, pickle, re, types
from pathlib import Path
from typing import Optional

import torch

from scl_nb.config import SCLConfig, apply_overrides, preset
from scl_nb.model import SCLModel
from scl_nb.official import (EXACT_NAMES, FUSION_LAYER_NAMES, LIGHTNING_DICT_CLASSES, LIGHTNING_STAND_INS,
                             OFFICIAL_LAYOUTS, PREFIX_NAMES, VISION_BLOCK_NAMES, VISION_NAMES)


class LightningNamesPickler(pickle._Pickler):
    "A pickler that writes the Lightning stand-ins as references to Lightning's names."
    def save_global(self, obj, name=None):
        path = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
        if path in LIGHTNING_STAND_INS and path not in LIGHTNING_DICT_CLASSES:  # a stand-in (any copy of it) carries its name
            module, qual = path.rsplit(".", 1)
            self.write(pickle.GLOBAL + module.encode() + b"\n" + qual.encode() + b"\n")
            self.memoize(obj)
            return
        if obj is AttributeDictForWriting:
            module, qual = LIGHTNING_DICT_CLASSES[0].rsplit(".", 1)
            self.write(pickle.GLOBAL + module.encode() + b"\n" + qual.encode() + b"\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)

class AttributeDictForWriting(dict):
    "A dict pickled as Lightning's `AttributeDict`."

LIGHTNING_PICKLE = types.SimpleNamespace(Pickler=LightningNamesPickler, Unpickler=pickle.Unpickler,
                                          load=pickle.load, dump=pickle.dump, __name__="lightning_names_pickle")

def save_lightning_checkpoint(ckpt: dict, path) -> Path:
    "`torch.save` of `ckpt`, with the Lightning stand-ins pickled under Lightning's names."
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path, pickle_module=LIGHTNING_PICKLE)
    return path

def reverse(table: dict) -> dict:
    return {v: k for k, v in table.items()}

def official_name(key: str, layout: str) -> Optional[str]:
    "The official name of one of our (non-q/k/v) parameters, or None when the layout has none."
    vp = OFFICIAL_LAYOUTS[layout]
    if key.startswith("vision."):
        rest = key[len("vision."):]
        if rest in reverse(VISION_NAMES):
            name = reverse(VISION_NAMES)[rest]
            return None if layout == "meter" and name in ("visual_mask_token", "temporal_embed") else vp + name
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", rest)
        return f"{vp}transformer.resblocks.{m.group(1)}.{reverse(VISION_BLOCK_NAMES)[m.group(2)]}.{m.group(3)}"
    m = re.fullmatch(r"fusion\.(text|image)_layers\.(\d+)\.(.+)\.(weight|bias)", key)
    if m:
        return f"cross_modal_{m.group(1)}_layers.{m.group(2)}.{reverse(FUSION_LAYER_NAMES)[m.group(3)]}.{m.group(4)}"
    if key in reverse(EXACT_NAMES):
        return reverse(EXACT_NAMES)[key]
    for official, ours in PREFIX_NAMES.items():
        if key.startswith(ours):
            if layout == "meter" and official in ("vision_proj.", "language_proj."):
                return None
            return official + key[len(ours):]
    raise KeyError(key)

def ours_to_official(model: SCLModel,
                     layout: str = "scl",   # 'scl' or 'meter'
                     extras: bool = True,   # add the unused tensors the released files carry
                     seed: int = 0,         # for the extras' random values
                    ) -> dict:
    "Our model's state dict in the official names and layouts."
    own, out = model.state_dict(), {}
    vp = OFFICIAL_LAYOUTS[layout]
    for k, v in own.items():
        m = re.fullmatch(r"vision\.blocks\.(\d+)\.attn\.([qkv])_proj\.(weight|bias)", k)
        if m:
            if m.group(2) == "q":
                i, kind = m.group(1), m.group(3)
                out[f"{vp}transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat(
                    [own[f"vision.blocks.{i}.attn.{n}_proj.{kind}"] for n in "qkv"])
            continue
        if k == "itc_logit_scale":
            if layout == "scl":
                out["cl_temp"] = torch.tensor(math.exp(-float(v)), dtype=v.dtype)
            continue
        name = official_name(k, layout)
        if name is None:
            continue
        out[name] = v[None] if name.endswith(("visual_mask_token", "temporal_embed")) else v
    if extras:
        out |= official_extras(model, layout, seed)
    return {k: v.detach().clone().contiguous() for k, v in out.items()}

def official_extras(model: SCLModel, layout: str, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.02
    Dt, positions = model.cfg.text.width, model.cfg.text.max_position_embeddings
    extra = {"text_transformer.pooler.dense.weight": r(Dt, Dt), "text_transformer.pooler.dense.bias": r(Dt),
             "text_transformer.embeddings.position_ids": torch.arange(positions)[None]}
    if layout == "scl":
        D, Dd, n = model.cfg.vision.width, 16, model.cfg.vision.grid ** 2
        extra |= {"vision_transformer.decoder_embed.weight": r(Dd, D), "vision_transformer.decoder_embed.bias": r(Dd),
                  "vision_transformer.mask_token": r(1, 1, Dd), "vision_transformer.decoder_pos_embed": r(1, n + 1, Dd),
                  "vision_transformer.decoder_blocks.0.attn.qkv.weight": r(3 * Dd, Dd),
                  "vision_transformer.decoder_norm.weight": r(Dd), "vision_transformer.decoder_norm.bias": r(Dd),
                  "vision_transformer.decoder_pred.weight": r(model.cfg.vision.patch_size ** 2 * 3, Dd)}
    else:
        extra |= {"vit_model.token_embedding.weight": r(100, 32), "vit_model.positional_embedding": r(77, 32),
                  "vit_model.ln_final.weight": r(32), "vit_model.ln_final.bias": r(32)}
    return extra

def official_hparams_for(model: SCLModel, layout: str = "scl") -> dict:
    "The reference configuration dictionary describing `model` (the keys the reference reads)."
    c = model.cfg
    task = getattr(model, "task", None)
    loss = dict(itm=1, mlm=1, vqa=int(task == "vqa"), nlvr2=int(task == "nlvr2"), irtr=int(task == "retrieval"),
                con=int(layout == "scl"), mgsc=int(layout == "scl"), mltc=int(layout == "scl"))
    hp = dict(
        image_size=c.vision.image_size,
        patch_size=c.vision.patch_size,
        max_text_len=c.text.max_len,
        tokenizer=c.text.tokenizer or c.text.pretrained or "roberta-base",
        vocab_size=c.text.vocab_size,
        hidden_size=c.fusion.width,
        num_heads=c.fusion.heads,
        num_layers=c.text.layers,
        mlp_ratio=c.fusion.mlp_dim // c.fusion.width,
        num_top_layer=c.fusion.layers,
        drop_rate=c.fusion.dropout,
        loss_names=loss,
        vit="ViT-B/16",
        vqav2_label_size=model.vqa_head[3].out_features if task == "vqa" else 3129,
        load_path="",
        test_only=False,
    )
    if layout == "meter":
        hp |= dict(input_text_embed_size=c.text.width, input_image_embed_size=c.vision.width)
    else:
        hp |= dict(
            mask_ratio=c.objectives.scl_image_mask,
            mtm_ratio=c.objectives.scl_text_mask,
            image_token_mask_ratio=c.objectives.mltc_image_mask,
            con_weight=c.objectives.itc,
            num_frames=c.data.num_frames,
        )
    return hp

def save_lightning_style_checkpoint(model: SCLModel, path,
                                    layout: str = "scl",          # 'scl' or 'meter'
                                    extras: bool = True,          # see `ours_to_official`
                                    attribute_dict: bool = False,  # store the hyper-parameters as Lightning's AttributeDict
                                   ) -> Path:
    "Write `model` as the reference's Lightning 1.3 `.ckpt` would hold it (weights, hyper-parameters, training state)."
    state = ours_to_official(model, layout, extras)
    params = [v for k, v in state.items() if v.is_floating_point()]
    adam = {
        i: {"step": 100, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.full_like(p, 1e-8)}
        for i, p in enumerate(params)
    }
    groups = [
        {
            "lr": 1e-5,
            "betas": (0.9, 0.98),
            "eps": 1e-8,
            "weight_decay": 0.01,
            "amsgrad": False,
            "params": list(range(len(params))),
        }
    ]
    hp = {"config": official_hparams_for(model, layout)}
    mc = LIGHTNING_STAND_INS["pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"]
    ckpt = {
        "epoch": 9,
        "global_step": 100,
        "pytorch-lightning_version": "1.3.2",
        "state_dict": state,
        "callbacks": {
            mc: {
                "monitor": "val/the_metric",
                "best_model_score": torch.tensor(0.5),
                "best_model_path": "epoch=9.ckpt",
                "current_score": torch.tensor(0.5),
                "dirpath": "result/checkpoints",
            }
        },
        "optimizer_states": [{"state": adam, "param_groups": groups}],
        "lr_schedulers": [
            {
                "base_lrs": [1e-5],
                "last_epoch": 100,
                "_step_count": 101,
                "verbose": False,
                "_get_lr_called_within_step": False,
                "_last_lr": [1e-6],
                "lr_lambdas": [{}],
            }
        ],
        "native_amp_scaling_state": {
            "scale": 65536.0,
            "growth_factor": 2.0,
            "backoff_factor": 0.5,
            "growth_interval": 2000,
            "_growth_tracker": 5,
        },
        "hparams_name": "kwargs",
        "hyper_parameters": AttributeDictForWriting(hp) if attribute_dict else hp,
    }
    return save_lightning_checkpoint(ckpt, path)

def randomise_parameters(model, seed: int = 0):
    """Give every parameter distinct random values, the ITC temperature one in the learnt range 0.02-0.1 (tests of
    weight conversion)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        if hasattr(model, "itc_logit_scale"):
            model.itc_logit_scale.fill_(-math.log(0.02 + 0.08 * torch.rand((), generator=g).item()))
    return model

def official_tiny_config() -> SCLConfig:
    "The `tiny` preset with the head counts the official rules imply (`width // 64` = 1 in both towers)."
    return apply_overrides(preset("tiny"), {"vision.heads": 1, "text.heads": 1})

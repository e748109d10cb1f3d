"""Corpora read where they lie (issue 25): shards and arrow files written in the real tools' layouts, through the
importers and the loader, in processes of their own.

- img2dataset `webdataset` output (shards of `<key>.jpg`, `<key>.txt`, `<key>.json` written with webdataset's
  `TarWriter`, as img2dataset writes them, beside each shard's parquet), video2dataset output (`<key>.mp4`) and a
  ViLT arrow file (`image`, `caption`, `image_id`, `split`, two record batches, written as ViLT's scripts write
  it) are imported in place (`python -m scl_nb.importers webdataset` / `arrow`) and load: one epoch reads every
  row once;
- resume: the test process reads two batches and takes the loader's state; a new process restores it and reads
  on; rows, pixels and masked ids equal an uninterrupted run's bitwise, through the epoch boundary;
- two processes (ranks 0 and 1 of 2) read disjoint halves whose union is every row;
- a corrupt member (garbage bytes where a JPEG was) and a shard cut short after the manifest was written are
  counted by reason (`corrupt_image`, `truncated_shard`), their rows replaced, and nothing hangs;
- video2dataset's mp4 members decode to the same clips as the same loose mp4 files.
"""
import hashlib, io, json, os, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BATCH = 8


def _jpeg(png_path: Path) -> bytes:
    "img2dataset and ViLT store JPEG: the synthetic PNG re-encoded."
    from PIL import Image
    buf = io.BytesIO()
    Image.open(png_path).convert("RGB").save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _img2dataset(out: Path, samples: list, per_shard: int, media_field: str):
    "Shards as img2dataset / video2dataset write them: key = shard + place, media + txt + json, and a parquet."
    import pyarrow as pa, pyarrow.parquet as pq
    import webdataset as wds
    out.mkdir(parents=True)
    for shard in range(0, len(samples), per_shard):
        name, meta_rows = f"{shard // per_shard:05d}", []
        with wds.TarWriter(str(out / f"{name}.tar")) as w:
            for i, (caption, data) in enumerate(samples[shard:shard + per_shard]):
                key = f"{name}{i:04d}"
                meta = dict(url=f"http://example.org/{key}.{media_field}", caption=caption, key=key, status="success",
                            error_message=None, width=64, height=64, original_width=64, original_height=64)
                w.write({"__key__": key, media_field: data, "txt": caption, "json": json.dumps(meta, indent=4)})
                meta_rows.append(meta)
        pq.write_table(pa.Table.from_pylist(meta_rows), out / f"{name}.parquet")


def _vilt_arrow(path: Path, images: list, captions: list, batches: int = 2):
    "A ViLT caption arrow file: pandas -> `pa.Table.from_pandas` -> the IPC file writer, as `write_*.py` do."
    import numpy as np, pandas as pd, pyarrow as pa
    frame = pd.DataFrame({"image": images, "caption": captions,
                          "image_id": [f"COCO_train2014_{i:012d}.jpg" for i in range(len(images))],
                          "split": ["train"] * len(images)})
    table = pa.Table.from_pandas(frame)
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(path), "wb") as sink, pa.RecordBatchFileWriter(sink, table.schema) as writer:
        for part in np.array_split(np.arange(len(images)), batches):
            writer.write_table(table.slice(int(part[0]), len(part)))


def _cli(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "scl_nb.importers", *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=ROOT)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, offline_cache) -> dict:
    "The synthetic images and videos held as img2dataset shards, video2dataset shards and a ViLT arrow file."
    from scl_nb.synthetic import make_synthetic
    from scl_nb.text import build_tiny_tokenizer
    d = tmp_path_factory.mktemp("corpus")
    syn = make_synthetic(d / "syn", n_images=40, n_videos=20, n_pairs=4, seed=3)
    root = syn["captions_train"].parent
    image_rows = [json.loads(l) for l in syn["captions_train"].read_text().splitlines()]
    video_rows = [json.loads(l) for l in syn["video_captions_train"].read_text().splitlines()]
    firsts = {}
    for r in image_rows:
        firsts.setdefault(r["media"], r["caption"])
    images = sorted(firsts)[:32]
    _img2dataset(d / "cc3m" / "train", [(firsts[m], _jpeg(root / m)) for m in images], 10, "jpg")
    vfirsts = {}
    for r in video_rows:
        vfirsts.setdefault(r["media"], r["caption"])
    videos = sorted(vfirsts)[:16]
    _img2dataset(d / "webvid" / "train", [(vfirsts[m], (root / m).read_bytes()) for m in videos], 5, "mp4")
    loose_videos = d / "loose_videos.jsonl"
    loose_videos.write_text("".join(json.dumps(dict(media=str(root / m), caption=vfirsts[m], split="train")) + "\n"
                                    for m in videos))
    caps = [[r["caption"] for r in image_rows if r["media"] == m] for m in images[:16]]
    _vilt_arrow(d / "arrows" / "coco_caption_karpathy_train.arrow", [_jpeg(root / m) for m in images[:16]], caps)
    for name, src in (("cc3m", "cc3m"), ("webvid", "webvid")):
        r = _cli("webdataset", "--src", str(d / src), "--out", str(d / f"{name}.jsonl"))
        assert r.returncode == 0, r.stderr
    r = _cli("arrow", "--src", str(d / "arrows"), "--out", str(d / "coco.jsonl"))
    assert r.returncode == 0, r.stderr
    return dict(dir=d, tok=build_tiny_tokenizer(d / "tok", 1024), cc3m=d / "cc3m.jsonl", webvid=d / "webvid.jsonl",
                coco=d / "coco.jsonl", loose_videos=loose_videos)


def _loader(manifest, tok_dir, rank: int = 0, world: int = 1):
    "The pre-training loader of one manifest: two workers, batches of 8, 64 px, 4 frames."
    import tempfile
    from transformers import AutoTokenizer
    from scl_nb.config import ObjectiveConfig
    from scl_nb.data import Collator, ManifestDataset, load_manifest
    from scl_nb.loaders import ResumableLoader
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    m = load_manifest(manifest, cache_dir=tempfile.mkdtemp())
    ds = ManifestDataset(m, tok, "pretrain", "pretrain", 64, num_frames=4, max_len=40, seed=7)
    return ResumableLoader(ds, BATCH, Collator(tok, ObjectiveConfig(), seed=7), rank, world, num_workers=2,
                           max_bad_fraction=0.5, min_reads=10)


def _take(loader, n: int) -> list:
    "(rows, digest of the pixels, digest of the masked ids) of the next `n` batches (fewer at the epoch's end)."
    out = []
    for b in loader:
        digest = hashlib.sha256(b["pixels"].numpy().tobytes()).hexdigest()
        out.append((b["index"].tolist(), digest, hashlib.sha256(b["mlm_ids"].numpy().tobytes()).hexdigest()))
        if len(out) == n:
            break
    return out


def _first_part(manifest, tok_dir):
    "A job that reads two batches and is stopped: its batches and the loader's state."
    loader = _loader(manifest, tok_dir)
    return _take(loader, 2), loader.state_dict()


def _fork_workers():
    "DataLoader workers forked, as in a process torchrun starts (a spawned test process would spawn them: slow)."
    import multiprocessing
    multiprocessing.set_start_method("fork", force=True)


def _second_parts(jobs: list) -> list:
    "The restarted jobs, one (manifest, tokenizer, state) each: the rest of the epoch and two batches of the next."
    _fork_workers()
    out = []
    for manifest, tok_dir, state in jobs:
        loader = _loader(manifest, tok_dir)
        loader.load_state_dict(state)
        out.append(_take(loader, 100) + _take(loader, 2))
    return out


def _rank_epochs(manifests: list, tok_dir) -> list:
    "One epoch of this process's share of each manifest (rank and world from the environment the runner sets)."
    from scl_nb.distributed import rank, world_size
    _fork_workers()
    out = []
    for manifest in manifests:
        loader = _loader(manifest, tok_dir, rank(), world_size())
        out.append(([i for rows, _, _ in _take(loader, 100) for i in rows], loader.monitor.counts))
    return out


HOLDINGS = {"cc3m": 32, "webvid": 16, "coco": 80}  # img2dataset shards, video2dataset shards, a ViLT arrow file: rows


def test_load_resume_and_shard_across_processes(corpus):
    "Each holding: every row once per epoch; resume bitwise in a new process; 2 processes, disjoint halves."
    from scl_nb.containers import parse_media_ref
    from scl_nb.data import load_manifest
    from scl_nb.distributed import run_local_processes
    tok, refs, jobs = corpus["tok"], {}, []
    for holding, n in HOLDINGS.items():
        m = load_manifest(corpus[holding], cache_dir=corpus["dir"] / "hf")
        assert len(m) == n
        assert all(parse_media_ref(m.row(i)["media"]) is not None for i in range(n))  # in place: nothing extracted
        whole = _loader(corpus[holding], tok)
        refs[holding] = _take(whole, 100) + _take(whole, 2)
        assert sorted(i for rows, _, _ in refs[holding][:-2] for i in rows) == list(range(n))  # each row once
        assert whole.monitor.counts == {}
        first, state = _first_part(corpus[holding], tok)  # this process stops after two batches ...
        assert state["sampler"]["position"] == 2 * BATCH  # samples read, over all processes
        jobs.append((corpus[holding], tok, state))
        refs[holding + " first"] = first
    assert not any(p.suffix in (".jpg", ".mp4") for p in corpus["dir"].rglob("*") if "syn" not in p.parts)
    (rests,) = run_local_processes(_second_parts, 1, (jobs,))  # ... and a new process goes on
    for holding, rest in zip(HOLDINGS, rests):
        assert refs[holding + " first"] + rest == refs[holding], holding  # rows, pixels, masks: bitwise
    halves = run_local_processes(_rank_epochs, 2, (list(corpus[h] for h in HOLDINGS), tok))
    for (rows0, counts0), (rows1, counts1), n in zip(*halves, HOLDINGS.values()):
        assert len(rows0) == len(rows1) == n // 2
        assert not set(rows0) & set(rows1) and sorted(rows0 + rows1) == list(range(n))
        assert counts0 == counts1 == {}


def test_corrupt_member_and_cut_shard_are_counted(corpus, tmp_path):
    "A JPEG member replaced by garbage and a shard cut after the manifest was written: counted, replaced, no hang."
    import shutil
    import numpy as np
    from scl_nb.containers import index_tar
    src = corpus["dir"] / "cc3m" / "train"
    damaged = tmp_path / "cc3m" / "train"
    shutil.copytree(src, damaged)
    manifest = tmp_path / "cc3m.jsonl"
    assert _cli("webdataset", "--src", str(tmp_path / "cc3m"), "--out", str(manifest)).returncode == 0
    rows = [json.loads(l) for l in manifest.read_text().splitlines()]
    members = {m.name: m for m in index_tar(damaged / "00000.tar")[0]}
    bad = members["000000005.jpg"]
    with open(damaged / "00000.tar", "r+b") as f:  # same size, same header: only the image's bytes are garbage
        f.seek(bad.offset)
        f.write(np.random.default_rng(0).bytes(bad.size))
    last = damaged / "00003.tar"
    first_jpg = {m.name: m for m in index_tar(last)[0]}["000030000.jpg"]
    os.truncate(last, first_jpg.offset + first_jpg.size // 2)  # a copy that stopped inside the first image
    loader = _loader(manifest, corpus["tok"])
    seen, bad_rows = [], {}
    for n_batches, b in enumerate(loader, 1):  # one epoch
        seen += b["index"].tolist()
        for reason, row, _ in b.get("bad", []):
            bad_rows.setdefault(reason, set()).add(row)
        if n_batches == 100:
            break
    where = {r["image_id"]: i for i, r in enumerate(rows)}
    corrupt, cut = {where["00000/000000005"]}, {where["00003/000030000"], where["00003/000030001"]}
    assert loader.monitor.counts == {"corrupt_image": 1, "truncated_shard": 2}
    assert bad_rows == {"corrupt_image": corrupt, "truncated_shard": cut}
    assert len(seen) == len(rows) and not set(seen) & (corrupt | cut)  # each bad row replaced by a good one
    assert all("00003.tar#" in e for e in loader.monitor.examples["truncated_shard"])


def test_video2dataset_members_decode_like_loose_files(corpus):
    "The mp4 members of the video2dataset shards give the clips the loose mp4 files give, with the same reader."
    shards, loose = _loader(corpus["webvid"], corpus["tok"]), _loader(corpus["loose_videos"], corpus["tok"])
    a, b = _take(shards, 100), _take(loose, 100)
    assert len(a) == 2 and a == b

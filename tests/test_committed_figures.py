"""The committed `figures/` folder stays small: under 2 MB in all, every PNG an opaque RGB or palette
image (an alpha channel only adds bytes to an opaque figure), every file listed in its index, and the
index lists only files that exist (regenerating must not leave stale files behind)."""
import json
from pathlib import Path

import pytest

FIGURES = Path(__file__).resolve().parent.parent / "figures"
LIMIT_BYTES = 2_000_000


def test_figures_folder_under_2_mb():
    sizes = {p.name: p.stat().st_size for p in FIGURES.rglob("*") if p.is_file()}
    total = sum(sizes.values())
    biggest = sorted(sizes.items(), key=lambda kv: -kv[1])[:5]
    assert total < LIMIT_BYTES, f"figures/ holds {total / 1e6:.2f} MB (limit {LIMIT_BYTES / 1e6:.0f} MB); biggest: {biggest}"


def test_pngs_are_rgb_or_palette():
    Image = pytest.importorskip("PIL.Image")
    pngs = sorted(FIGURES.rglob("*.png"))
    assert pngs
    for p in pngs:
        with Image.open(p) as im:
            assert im.mode in ("RGB", "P") and "transparency" not in im.info, \
                f"{p.name} is {im.mode}{' with transparency' if 'transparency' in im.info else ''}; write it with scl_nb.plots.save_figure / write_png"


def test_index_matches_the_folder():
    index = json.loads((FIGURES / "manifest.json").read_text())
    listed = {k for k, v in index.items() if v.get("drawn", True)}
    present = {p.name for p in FIGURES.iterdir() if p.is_file()} - {"manifest.json", "README.md"}
    assert present == listed, f"not in manifest.json: {sorted(present - listed)}; listed but missing: {sorted(listed - present)}"

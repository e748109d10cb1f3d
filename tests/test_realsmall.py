"""The real-small corpus from the real Debian packages (`nbs/16_realsmall.ipynb`; its own tests use fake sources).

A subset (240 pairs of whole concept groups, 64 px) is built twice into two cache folders: the files are the
same byte for byte, every source is in it, no concept group, caption or picture is on two sides of the split,
and the split check fails once a test pair is copied into training. The command builds and links it, and
stops with exit status 2 and the install command when a package is missing. The builds need the packages
(`apt-get install` of `scl_nb.realsources.INSTALL_COMMAND`, as CI does) and skip without them; about a minute
on 2 cores.
"""
import json, subprocess, sys
from collections import Counter
from pathlib import Path

import pytest

from scl_nb.realsources import SOURCES, SourceRoots, SplitLeak, check_splits, missing_sources

SUBSET = dict(max_items=240, n_val=30, n_test=60, image_size=64)
needs_packages = pytest.mark.skipif(bool(missing_sources(SourceRoots())),
                                    reason="the real-small Debian packages are not installed (scl_nb.realsources.INSTALL_COMMAND)")


def _files(folder: Path) -> dict:
    return {f.relative_to(folder): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file() and f.name != "build.json"}


def _rows(paths) -> list:
    return [json.loads(line) for line in paths["captions"].read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def built(tmp_path_factory, offline_cache):
    from scl_nb.realsmall import make_realsmall
    root = tmp_path_factory.mktemp("realsmall")
    return make_realsmall(root / "a", **SUBSET), make_realsmall(root / "b", **SUBSET), root


@needs_packages
def test_subset_is_deterministic(built):
    a, b, _ = built
    fa, fb = _files(a["captions"].parent), _files(b["captions"].parent)
    assert fa.keys() == fb.keys() and len(fa) > SUBSET["max_items"]
    assert [str(k) for k in fa if fa[k] != fb[k]] == []


@needs_packages
def test_subset_splits_by_concept_group(built):
    a, _, _ = built
    rows = _rows(a)
    assert len(rows) >= SUBSET["max_items"] - 10, len(rows)  # whole groups up to the size, a few pictures unusable
    assert {r["source"] for r in rows} == set(SOURCES)
    counts = Counter(r["split"] for r in rows)
    assert counts["test"] >= SUBSET["n_test"] and counts["val"] >= SUBSET["n_val"] and counts["train"] > counts["test"], counts
    sides = {}
    for r in rows: sides.setdefault(r["group"], set()).add(r["split"])
    assert {g: s for g, s in sides.items() if len(s) > 1} == {}
    by_split = {s: {r["caption"] for r in rows if r["split"] == s} for s in counts}
    assert not by_split["test"] & by_split["train"] and not by_split["val"] & by_split["train"]
    assert check_splits(rows, a["captions"].parent) == dict(counts)


@needs_packages
def test_a_test_caption_in_training_fails_the_check(built):
    a, _, _ = built
    rows = _rows(a)
    test_row = next(r for r in rows if r["split"] == "test")
    train_row = next(r for r in rows if r["split"] == "train")
    leaked = dict(train_row, caption=test_row["caption"], name=test_row["name"], image_id="leak")  # a training image, a test caption
    with pytest.raises(SplitLeak, match="leaks into"):
        check_splits(rows + [leaked], a["captions"].parent)
    mirrored = dict(test_row, split="train", image_id="copy", group="another")  # the test pair itself, under another group id
    with pytest.raises(SplitLeak, match="leaks into"):
        check_splits(rows + [mirrored], a["captions"].parent)


@needs_packages
def test_command_builds_and_links(built):
    a, _, root = built
    link = root / "data" / "real-small"
    args = [f"--{k.replace('_', '-')}={v}" for k, v in SUBSET.items()]
    r = subprocess.run([sys.executable, "-m", "scl_nb.realsmall", "--cache", str(root / "a"), "--link", str(link), *args],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    counts = Counter(row["split"] for row in _rows(a))
    assert f"train {counts['train']}, val {counts['val']}, test {counts['test']}" in r.stdout and str(link) in r.stdout
    assert link.is_symlink() and link.resolve() == a["captions"].parent.resolve()


def test_missing_package_exits_2(tmp_path, monkeypatch, capsys):
    import scl_nb.realsmall as rs
    monkeypatch.setattr(rs, "SourceRoots", lambda: SourceRoots(tuxpaint=str(tmp_path / "no-stamps")))
    assert rs.main(["--cache", str(tmp_path), "--max-items", "10"]) == 2
    err = capsys.readouterr().err
    assert "no-stamps (package tuxpaint-stamps-default)" in err and "apt-get install -y --no-install-recommends" in err
    assert not (tmp_path / "realsmall").exists() or not any((tmp_path / "realsmall").iterdir())


def test_readme_gives_the_install_command():
    from scl_nb.realsources import INSTALL_COMMAND
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert f"sudo {INSTALL_COMMAND}\n" in readme, "README's real-small install line differs from scl_nb.realsources.INSTALL_COMMAND"

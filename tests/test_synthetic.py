"""The synthetic set is byte-identical across builds while other processes load every core.

`10_synthetic` builds it 20 times on a quiet machine; here two busy processes (one per core on the CI
machine) run beside the builds, the case in which libx264 wrote other bytes for the same frames now
and then. About 15 s on 2 cores.
"""
import hashlib, os, subprocess, sys
from pathlib import Path

import pytest

pytest.importorskip("av")


def _digests(folder: Path) -> dict:
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.rglob("*")) if f.is_file()}


@pytest.fixture
def busy_cores():
    "One spinning process per core until the test ends."
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    yield len(procs)
    for p in procs:
        p.kill()
        p.wait()


def test_twenty_builds_identical_under_load(tmp_path, busy_cores):
    from scl_nb.synthetic import make_synthetic
    builds = []
    for k in range(20):
        paths = make_synthetic(tmp_path / f"build{k}", n_images=4, n_videos=12, n_pairs=4, seed=11)
        builds.append(_digests(paths["captions_train"].parent))
    assert sum(name.endswith(".mp4") for name in builds[0]) == 12
    differing = {k: sorted(n for n in b if b[n] != builds[0].get(n)) for k, b in enumerate(builds) if b != builds[0]}
    assert differing == {}, f"builds that differ from build 0, with their files: {differing}"

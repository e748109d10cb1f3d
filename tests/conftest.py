"""Shared pytest settings: the `slurm` and `slow` markers, one offline environment + scl_nb cache folder per session,
and `tests/helpers` (test-only code, e.g. the writers of official checkpoints) on the import path."""
import os, sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slurm: needs a SLURM cluster (sinfo on PATH); skipped otherwise")
    config.addinivalue_line("markers", "slow: traces or compiles the model (about a minute); deselect with -m 'not slow'")


@pytest.fixture(scope="session")
def offline_cache(tmp_path_factory):
    "HF offline variables and one scl_nb cache folder (synthetic data, tokenizers, short pre-trainings) for the session."
    d = tmp_path_factory.mktemp("scl_nb_cache")
    env = dict(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", SCL_NB_CACHE=str(d))
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield d
    for k, v in old.items():
        if v is None: os.environ.pop(k, None)
        else: os.environ[k] = v

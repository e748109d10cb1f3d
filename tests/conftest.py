"Shared pytest settings: the `slurm` marker (tests that need a SLURM cluster skip cleanly without `sinfo`)."

def pytest_configure(config):
    config.addinivalue_line("markers", "slurm: needs a SLURM cluster (sinfo on PATH); skipped otherwise")

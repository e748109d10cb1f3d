"""The repository's tooling, apart from the method: benchmarks, experiment specs and their launcher, the launcher's test fixtures, the figures index and the docs site."""

"""Replace one exact, unique string inside a notebook's cell sources (keeps cell ids and metadata).

    python .dev/nbsub.py nbs/00_config.ipynb OLD NEW      # OLD / NEW may be given as @file to read them from a file
"""
import sys, nbformat

def arg(s): return open(s[1:]).read() if s.startswith("@") else s

def main(path, old, new):
    old, new = arg(old), arg(new)
    nb = nbformat.read(path, as_version=4)
    hits = [c for c in nb.cells if old in c.source]
    n = sum(c.source.count(old) for c in hits)
    if n != 1: sys.exit(f"{path}: {n} matches for {old[:60]!r}; need exactly 1")
    hits[0].source = hits[0].source.replace(old, new)
    nbformat.write(nb, path)

if __name__ == "__main__": main(*sys.argv[1:])

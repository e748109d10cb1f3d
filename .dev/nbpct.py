"""Convert between nbdev notebooks and a plain "percent" text form, for editing notebooks as text.

    python .dev/nbpct.py to-nb  nbs/src.py  nbs/01_vision.ipynb   # text  -> notebook
    python .dev/nbpct.py to-pct nbs/01_vision.ipynb  /tmp/v.py     # notebook -> text

Cells start with a line `# %%` (code) or `# %% [markdown]` (markdown; its lines are written with a
leading `# `). The notebook stays the source of truth: convert, edit, convert back, `nbdev_export`.
"""
import sys, nbformat

def pct_to_nb(text):
    cells, kind, buf = [], None, []
    def flush():
        if kind is None: return
        src = "\n".join(buf).strip("\n")
        if kind == "md":
            src = "\n".join(l[2:] if l.startswith("# ") else l.lstrip("#") for l in src.split("\n"))
            cells.append(nbformat.v4.new_markdown_cell(src))
        else: cells.append(nbformat.v4.new_code_cell(src))
    for line in text.split("\n"):
        if line.startswith("# %%"):
            flush(); kind, buf = ("md" if "[markdown]" in line else "code"), []
        else: buf.append(line)
    flush()
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata = {"kernelspec": {"display_name": "python3", "language": "python", "name": "python3"}}
    return nb

def nb_to_pct(nb):
    out = []
    for c in nb.cells:
        if c.cell_type == "markdown":
            out.append("# %% [markdown]\n" + "\n".join(("# " + l) if l else "#" for l in c.source.split("\n")))
        else: out.append("# %%\n" + c.source)
    return "\n\n".join(out) + "\n"

if __name__ == "__main__":
    cmd, src, dst = sys.argv[1:4]
    if cmd == "to-nb":
        nbformat.write(pct_to_nb(open(src).read()), dst)
    elif cmd == "to-pct":
        open(dst, "w").write(nb_to_pct(nbformat.read(src, as_version=4)))
    else: sys.exit(__doc__)

"""One statement per line and lines of at most 120 characters in the exported cells of the notebooks.

    python .dev/style.py check [NB ...]   # list what breaks the rules (default: every notebook in nbs/)
    python .dev/style.py fix [NB ...]     # split compound one-liners and `;` chains, wrap long lines

`fix` is mechanical: a body on its header's line (`if x: y`, `try: yield`, `def f(): ...`) moves to a line
of its own, a `;` chain becomes one statement per line, and a line over 120 characters is wrapped by black
(line-length 120, strings and trailing commas left alone) when black is installed. The result parses to the
same AST as the input, or the cell is left as it was. Comments and strings that are too long are listed by
`check` for a person to shorten. `tests/test_architecture.py` checks the exported package with the same rules.
"""
import ast, io, sys, tokenize
from typing import Optional
from pathlib import Path

import nbformat

WIDTH = 120
BLOCKS = ("body", "orelse", "finalbody", "handlers")


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _col(line: str, byte_col: int) -> int:
    "ast's byte offset as a character offset."
    return len(line.encode()[:byte_col].decode())


def _blocks(tree):
    "(parent node, list of statements) for every statement list in the tree."
    for node in ast.walk(tree):
        for name in BLOCKS:
            stmts = getattr(node, name, None)
            if isinstance(stmts, list) and stmts and isinstance(stmts[0], (ast.stmt, ast.excepthandler)):
                yield node, stmts


def shared_lines(src: str) -> list[int]:
    "Line numbers (1-based) on which a statement starts on a line another statement already holds."
    starts = {}
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.stmt):
            starts.setdefault(node.lineno, []).append(node)
    return sorted(line for line, nodes in starts.items() if len(nodes) > 1)


def semicolons(src: str) -> int:
    return sum(t.type == tokenize.OP and t.string == ";" for t in tokenize.generate_tokens(io.StringIO(src).readline))


def long_lines(src: str, width: int = WIDTH) -> list[int]:
    "Lines whose code (the line less a trailing comment) passes `width`: a trailing comment may run past (docments)."
    comments = {}
    try:
        for t in tokenize.generate_tokens(io.StringIO(src).readline):
            if t.type == tokenize.COMMENT:
                comments[t.start[0]] = t.start[1]
    except (tokenize.TokenError, SyntaxError):
        pass
    lines = src.splitlines()
    return [i + 1 for i, line in enumerate(lines) if len(line[:comments.get(i + 1, len(line))].rstrip()) > width]


def rejoin(src: str) -> str:
    """Undo a three-line split `head(` / one line / `)...` whose joined code fits in `WIDTH` (black splits a line long
    only by its trailing comment that way, moving the comment inside the brackets or after them)."""
    lines = src.split("\n")
    closing = {"(": ")", "[": "]", "{": "}"}
    i = 0
    while i + 2 < len(lines):
        head, mid, tail = lines[i], lines[i + 1], lines[i + 2]
        indent, opener = _indent(head), head.rstrip()[-1:]
        ok = opener in closing and tail.strip().startswith(closing[opener]) and _indent(tail) == indent
        ok = ok and "#" not in head and len(_indent(mid)) > len(indent) and "#" not in tail.partition("#")[0][1:]
        if ok:
            code, _, comment = mid.strip().partition("  #")
            tail_code, _, tail_comment = tail.strip().partition("  #")
            if tail.strip().startswith("#") or (comment and tail_comment):
                i += 1
                continue
            inner = code.strip().rstrip(",")  # a one-element tuple loses its meaning: the AST check below keeps it
            joined = head.rstrip() + inner + tail_code.strip()
            if head.rstrip().endswith(" (") and tail_code.strip().startswith(")"):  # brackets around one value
                joined = head.rstrip()[:-1] + inner + tail_code.strip()[1:]
            note = comment or tail_comment
            candidate = joined + (f"  #{note}" if note else "")
            try:
                same = _same("\n".join(lines), "\n".join(lines[:i] + [candidate] + lines[i + 3:]))
            except SyntaxError:
                same = False
            if same and len(joined) <= WIDTH:
                lines[i:i + 3] = [candidate]
                continue
        i += 1
    return "\n".join(lines)

def _one_split(src: str):
    "`src` with the first shared line split, or None when there is none."
    tree = ast.parse(src)
    lines = src.split("\n")
    for parent, stmts in _blocks(tree):
        first = stmts[0]
        line = lines[first.lineno - 1]
        col = _col(line, first.col_offset)
        if line[:col].strip():  # a body on its header's line
            header_line = lines[(parent.lineno if not isinstance(first, ast.excepthandler) else first.lineno) - 1]
            if isinstance(parent, ast.If) and parent.orelse is stmts:
                header_line = line  # `else: y` / the `elif` keyword line
            if parent.__class__.__name__ in ("Try", "TryStar") and stmts in (parent.orelse, parent.finalbody):
                header_line = line
            if isinstance(parent, (ast.For, ast.While, ast.AsyncFor)) and parent.orelse is stmts:
                header_line = line
            indent = _indent(header_line) + "    "
            lines[first.lineno - 1] = line[:col].rstrip() + "\n" + indent + line[col:]
            return "\n".join(lines)
        for prev, nxt in zip(stmts, stmts[1:]):
            if prev.end_lineno == nxt.lineno:
                line = lines[nxt.lineno - 1]
                end, col = _col(line, prev.end_col_offset), _col(line, nxt.col_offset)
                between = line[end:col]
                if between.strip() != ";":
                    continue
                indent = _indent(lines[first.lineno - 1]) if not lines[first.lineno - 1][:_col(lines[first.lineno - 1], first.col_offset)].strip() else None
                if indent is None:
                    continue  # the block's own one-liner is split first
                indent = lines[first.lineno - 1][:_col(lines[first.lineno - 1], first.col_offset)]
                lines[nxt.lineno - 1] = line[:end].rstrip() + "\n" + indent + line[col:]
                return "\n".join(lines)
    return None


def split_statements(src: str) -> str:
    "Every statement on a line of its own."
    for _ in range(10000):
        out = _one_split(src)
        if out is None:
            return src
        src = out
    raise RuntimeError("too many splits")


def wrap_long(src: str) -> str:
    "Lines over `WIDTH` reformatted by black (only those lines)."
    try:
        import black
    except ImportError:
        return src
    todo = long_lines(src)
    if not todo:
        return src
    mode = black.Mode(line_length=WIDTH, string_normalization=False, magic_trailing_comma=False)
    try:
        out = black.format_str(src, mode=mode, lines=[(n, n) for n in todo])
    except Exception:
        out = src
        for n in reversed(todo):  # one at a time, skipping the ones black cannot do
            try:
                out = black.format_str(out, mode=mode, lines=[(n, n)])
            except Exception:
                pass
    return "\n".join("#|" + line[3:] if line.startswith("# | ") else line for line in out.split("\n"))  # nbdev's directives


def _balanced(text: str) -> bool:
    "Whether the brackets of one line of code close on it (strings and comments not looked into: none expected)."
    depth = 0
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text + "\n").readline))
    except (tokenize.TokenError, SyntaxError):
        return False
    for t in tokens:
        if t.type == tokenize.OP and t.string in "([{":
            depth += 1
        elif t.type == tokenize.OP and t.string in ")]}":
            depth -= 1
            if depth < 0:
                return False
        elif t.type == tokenize.COMMENT:
            return False
    return depth == 0


def _flow(prefix: str, items: list, suffix: str) -> Optional[list]:
    "`prefix` + the items joined by ', ' + `suffix`, wrapped at `WIDTH` under the opening bracket; None if one cannot fit."
    col, out, line = len(prefix), [], prefix
    for k, item in enumerate(items):
        piece = item + (", " if k < len(items) - 1 else suffix)
        if len(line.rstrip()) + len(piece.rstrip()) > WIDTH and line.strip() and line != prefix:
            out.append(line.rstrip())
            line = " " * col
        if len(line) + len(piece.rstrip()) > WIDTH:
            return None
        line += piece
    out.append(line.rstrip())
    return out


def reflow(src: str) -> str:
    """Black's one-item-per-line lists (imports, calls, literals, signatures without comments) flowed back under their
    opening bracket, as many items a line as fit in `WIDTH`."""
    closing = {"(": ")", "[": "]", "{": "}"}
    lines = src.split("\n")
    changed = True
    while changed:
        changed = False
        for i, head in enumerate(lines):
            opener = head.rstrip()[-1:]
            if opener not in closing or "#" in head:
                continue
            indent, j, items = _indent(head), i + 1, []
            while j < len(lines) and _indent(lines[j]) != indent and lines[j].strip():
                items.append(lines[j].strip())
                j += 1
            if j >= len(lines) or not items or not lines[j].strip().startswith(closing[opener]) or len(items) < 2:
                continue
            if not all(_balanced(it) for it in items) or "#" in lines[j]:
                continue
            if len({_indent(lines[k]) for k in range(i + 1, j)}) != 1:
                continue
            items = [it.rstrip(",") for it in items]
            flowed = _flow(head.rstrip(), items, lines[j].strip())
            if flowed is None:
                continue
            candidate = lines[:i] + flowed + lines[j + 1:]
            try:
                same = _same("\n".join(lines), "\n".join(candidate))
            except SyntaxError:
                same = False
            if same and len(flowed) < j - i + 1:
                lines, changed = candidate, True
                break
    return "\n".join(lines)


def _docstrings(tree):
    "The docstring nodes of the functions and classes in `tree`."
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                yield first.value


def wrap_docstrings(src: str) -> str:
    "One-line docstrings over `WIDTH` as triple-quoted paragraphs wrapped at `WIDTH`."
    import textwrap
    lines = src.split("\n")
    for node in sorted(_docstrings(ast.parse(src)), key=lambda n: -n.lineno):
        line = lines[node.lineno - 1]
        if node.lineno != node.end_lineno or len(line) <= WIDTH:
            continue
        start, end = _col(line, node.col_offset), _col(line, node.end_col_offset)
        raw, text = line[start:end], node.value
        if raw[:1] not in "\"'" or '"""' in text or "\\" in text or line[end:].strip():
            continue  # a prefixed, escaped or commented docstring: by hand
        indent = " " * start
        body = textwrap.fill(text, WIDTH - 3, initial_indent=indent + '"""', subsequent_indent=indent)
        lines[node.lineno - 1] = line[:start] + body[len(indent):] + '"""'
    return "\n".join(lines)


def split_strings(src: str) -> str:
    "Long string literals inside brackets split at a space into implicitly joined pieces, one per line."
    out = src.split("\n")
    for _ in range(200):
        tokens = list(tokenize.generate_tokens(io.StringIO("\n".join(out)).readline))
        depth, done = 0, True
        for t in tokens:
            if t.type == tokenize.OP and t.string in "([{":
                depth += 1
            elif t.type == tokenize.OP and t.string in ")]}":
                depth -= 1
            elif t.type == tokenize.STRING and depth and t.start[0] == t.end[0] and len(out[t.start[0] - 1]) > WIDTH:
                piece = _split_point(t.string, WIDTH - t.start[1])
                if piece is None:
                    continue
                line, (row, col) = out[t.start[0] - 1], t.start
                prefix = t.string[:len(t.string) - len(t.string.lstrip("rRbBfFuU"))]
                quote = t.string[len(prefix)]
                first, rest = t.string[:piece], t.string[piece:]
                out[row - 1] = line[:col] + first + quote + "\n" + " " * col + prefix + quote + rest + line[t.end[1]:]
                out = "\n".join(out).split("\n")
                done = False
                break
        if done:
            break
    return "\n".join(out)


def _split_point(raw: str, room: int):
    "An index in the literal `raw` just after a space, outside `{...}` and escapes, that leaves the first piece in `room`."
    if raw.endswith(('"""', "'''")) or len(raw) < 20:
        return None
    prefix_len = len(raw) - len(raw.lstrip("rRbBfFuU"))
    fmt = "f" in raw[:prefix_len].lower()
    depth, best, i = 0, None, prefix_len + 1
    while i < len(raw) - 1:
        c = raw[i]
        if c == "\\":
            i += 2
            continue
        if fmt and c == "{":
            if raw[i + 1:i + 2] == "{":
                i += 2
                continue
            depth += 1
        elif fmt and c == "}":
            depth = max(0, depth - 1)
        elif c == " " and depth == 0 and i + 1 < room - 1 and i > prefix_len + 10:
            best = i + 1
        i += 1
    return best


def _same(a: str, b: str) -> bool:
    "Equal ASTs, with docstrings compared with their whitespace collapsed and joined strings compared joined."
    def norm(src):
        tree = ast.parse(src)
        for node in _docstrings(tree):
            node.value = " ".join(node.value.split())
        return ast.dump(tree)
    return norm(a) == norm(b)


def fix_source(src: str) -> str:
    try:
        ast.parse(src)
    except SyntaxError:
        return src
    out = reflow(wrap_long(split_strings(wrap_docstrings(split_statements(rejoin(src))))))
    if not out.endswith("\n") and src.endswith("\n") is False:
        out = out.rstrip("\n")
    return out if _same(src, out) else src


def exported(cell) -> bool:
    return cell.cell_type == "code" and any(l.strip() == "#| export" for l in cell.source.splitlines()[:3])


def notebooks(args):
    return [Path(a) for a in args] or sorted(Path(__file__).resolve().parent.parent.joinpath("nbs").glob("[0-9]*.ipynb"))


def main(cmd, *args):
    bad = 0
    for path in notebooks(args):
        nb = nbformat.read(path, as_version=4)
        changed = False
        for i, cell in enumerate(nb.cells):
            if not exported(cell):
                continue
            if cmd == "fix":
                new = fix_source(cell.source).rstrip("\n")
                if new != cell.source:
                    cell.source, changed = new, True
            src = cell.source
            problems = [f"line {n}: {len(src.splitlines()[n - 1])} characters" for n in long_lines(src)]
            problems += [f"line {n}: more than one statement" for n in shared_lines(src)]
            for p in problems:
                print(f"{path.name} cell {i}: {p}")
            bad += len(problems)
        if changed:
            nbformat.write(nb, path)
    print(f"{bad} problems left")
    return 1 if bad and cmd == "check" else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))

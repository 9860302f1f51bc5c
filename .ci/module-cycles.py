#!/usr/bin/env python3
"""Fails when the modules of a Rust crate import each other in a loop.

    .ci/module-cycles.py gateway/src [more/src …]
    .ci/module-cycles.py --layers gateway/src     # the crate's top modules, bottom layer first
    .ci/module-cycles.py --self-test              # the check finds a loop it is given

At each folder of the crate, its entries (a file, or a subfolder with everything in it) are the
nodes, and an entry that names an item of another (`use crate::…`, `super::…`, `crate::…` in
code) is an arrow to it. The folder's own root (`lib.rs`, `mod.rs`) is the parent of its entries,
not one of them: a child may use what its parent declares. Any loop among the entries of one
folder is reported with the names that tie it, and the exit code is 1. Comments and `#[cfg(test)]`
modules (inline or in files of their own) are left out: a doc link or a unit test is no layering.
"""

import re
import sys
from pathlib import Path

USE = re.compile(r"\buse\s+([^;]+);", re.S)
INLINE = re.compile(r"\b(?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)+")
MOD = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([a-z_][a-z0-9_]*)\s*;", re.M)
TEST_MOD = re.compile(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([a-z_][a-z0-9_]*)\s*;")


def module_of(src: Path, path: Path) -> tuple:
    """`a/b.rs` and `a/b/mod.rs` are the module `(a, b)`; `lib.rs` and `main.rs` are `()`."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts.pop()
    return tuple(parts)


def strip(text: str) -> str:
    """The code without comments and without `#[cfg(test)]` modules."""
    text = TEST_MOD.sub("", re.sub(r"//[^\n]*", "", text))
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    out, i = [], 0
    for match in re.finditer(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text):
        if match.start() < i:
            continue
        out.append(text[i : match.start()])
        depth, j = 1, match.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def expand(tree: str) -> list:
    """`a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e` (without `as` renames)."""
    tree = re.sub(r"\s+", "", re.sub(r"\s+as\s+\w+", "", tree))
    brace = tree.find("{")
    if brace < 0:
        return [tree]
    prefix, inner = tree[:brace], tree[brace + 1 : tree.rfind("}")]
    parts, depth, start = [], 0, 0
    for k, ch in enumerate(inner):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(inner[start:k])
            start = k + 1
    parts.append(inner[start:])
    return [path for part in parts if part for path in expand(prefix + part)]


def resolve(path: str, here: tuple, children: set, modules: set):
    """The deepest module of the crate that `path` (as written in module `here`) names."""
    segments = [s for s in path.split("::") if s]
    if not segments:
        return None
    if segments[0] == "crate":
        base, rest = (), segments[1:]
    elif segments[0] in ("super", "self"):
        base = here
        while segments and segments[0] in ("super", "self"):
            if segments.pop(0) == "super":
                base = base[:-1]
        rest = segments
    elif segments[0] in children:
        base, rest = here, segments
    else:
        return None
    target = base
    for segment in rest:
        if target + (segment,) not in modules:
            break
        target += (segment,)
    return target


def arrows(src: Path):
    """(from module, to module, name) for every item one module of the crate takes from another."""
    files = {module_of(src, p): p for p in sorted(src.rglob("*.rs"))}
    tests = {m + (t,) for m, p in files.items() for t in TEST_MOD.findall(p.read_text())}
    files = {m: p for m, p in files.items() if not any(m[: len(t)] == t for t in tests)}
    modules = set(files)
    for here, path in files.items():
        text = strip(path.read_text())
        children = set(MOD.findall(text))
        paths = [p for tree in USE.findall(text) for p in expand(tree)]
        paths += INLINE.findall(USE.sub("", text))
        for written in paths:
            target = resolve(written, here, children, modules)
            if target is not None and target != here:
                yield here, target, written.split("::")[-1]


def entry(module: tuple, folder: tuple):
    """Which entry of `folder` holds `module`, or None when it is outside it or is its root."""
    if len(module) <= len(folder) or module[: len(folder)] != folder:
        return None
    return module[len(folder)]


def cycles(graph: dict) -> list:
    """The strongly connected parts of more than one node (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def check(src: Path) -> bool:
    edges = list(arrows(src))
    folders = {m[:k] for m, _, _ in edges for k in range(len(m))} | {()}
    ok = True
    for folder in sorted(folders):
        graph, names = {}, {}
        for a, b, name in edges:
            ea, eb = entry(a, folder), entry(b, folder)
            if ea is None or eb is None or ea == eb:
                continue
            graph.setdefault(ea, set()).add(eb)
            names.setdefault((ea, eb), set()).add(name)
        for part in cycles(graph):
            ok = False
            where = "/".join((src,) + tuple(str(f) for f in folder)) if folder else str(src)
            print(f"module cycle in {where}: {' <-> '.join(part)}")
            for a in part:
                for b in part:
                    if (a, b) in names:
                        print(f"  {a} -> {b}: {', '.join(sorted(names[(a, b)]))}")
    return ok


def layers(src: Path) -> None:
    """Prints the top modules of a crate without loops, each on the layer above all it uses."""
    graph = {}
    for a, b, _ in arrows(src):
        ea, eb = entry(a, ()), entry(b, ())
        if ea is not None and eb is not None and ea != eb:
            graph.setdefault(ea, set()).add(eb)
    level = {}

    def height(node):
        if node not in level:
            level[node] = 1 + max((height(n) for n in graph.get(node, ())), default=-1)
        return level[node]

    for node in {n for n in graph} | {n for used in graph.values() for n in used}:
        height(node)
    for layer in sorted(set(level.values())):
        print(f"{layer}: {' '.join(sorted(n for n in level if level[n] == layer))}")


def self_test() -> int:
    """A crate whose `a` and `b/c.rs` use each other is refused; without the loop it passes."""
    import contextlib
    import io
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        src = Path(tmp)
        (src / "b").mkdir()
        (src / "lib.rs").write_text("mod a;\nmod b;\n")
        (src / "b" / "mod.rs").write_text("mod c;\n/// [`crate::a`] in a comment is no arrow.\n")
        (src / "a.rs").write_text("use crate::b::{c::{Thing as T}};\n")
        (src / "b" / "c.rs").write_text("pub struct Thing;\nfn f() { crate::a::g() }\n")
        found = check(src)
        (src / "b" / "c.rs").write_text("pub struct Thing;\n#[cfg(test)]\nmod t { use crate::a; }\n")
        clean = check(src)
    if found or not clean:
        print("module-cycles: the self-test failed", file=sys.stderr)
        return 1
    print("module-cycles: the self-test found the loop it was given")
    return 0


def main() -> int:
    args = sys.argv[1:]
    if args == ["--self-test"]:
        return self_test()
    if args[:1] == ["--layers"] and len(args) == 2:
        layers(Path(args[1]))
        return 0
    roots = [Path(a) for a in args]
    if not roots or any(a.startswith("-") for a in args):
        print(__doc__.strip(), file=sys.stderr)
        return 64
    ok = all([check(root) for root in roots])
    if ok:
        print(f"module-cycles: no cycle between the modules of {', '.join(map(str, roots))}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

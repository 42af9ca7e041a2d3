#!/usr/bin/env python3
"""Fails when two modules of the host crate import each other, directly or through others,
or when the "depends on" column of docs/architecture.md's layout table says otherwise than
the code.

The crate's layout is one boundary per module (docs/architecture.md, "Layout"); rustc allows
import circles between modules, so CI checks them here. Every `crate::` or `super::` path
outside comments and test code is an edge to the longest module it names, lifted to the
two siblings under their nearest common parent: a module depends on another when any module
inside it imports any module inside the other. The leaves every module may use
(`timestamp`, `error`, `dsn`) are not listed in the table.
"""
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "host", "src")
ARCHITECTURE = os.path.join(HERE, "..", "docs", "architecture.md")
LEAVES = {"timestamp", "error", "dsn"}


def modules():
    found = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(folder, name)
            parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
            if parts[-1] == "mod":
                parts = parts[:-1]
            if parts in (["lib"], ["main"]):
                continue
            # Test code may use anything: it is not part of the layout.
            if any(p in ("tests", "testing") for p in parts):
                continue
            found["::".join(parts)] = path
    return found


def siblings(a, b):
    """The two modules under their nearest common parent through which `a` reaches `b`:
    `source::query` importing `partition::memory` is `source` depending on `partition`."""
    x, y = a.split("::"), b.split("::")
    i = 0
    while i < min(len(x), len(y)) and x[i] == y[i]:
        i += 1
    return "::".join(x[: i + 1]), "::".join(y[: i + 1])


def edges(mods):
    graph = {m: set() for m in mods}
    for module, path in mods.items():
        with open(path, encoding="utf-8") as f:
            text = f.read()
        text = "\n".join(l for l in text.split("\n") if not l.strip().startswith("//"))
        text = re.sub(r"#\[cfg\(test\)\]\s*mod tests \{.*", "", text, flags=re.S)
        # `super` is the parent of the module, whether it lives in a file or a mod.rs.
        parent = module.rsplit("::", 1)[0] if "::" in module else ""
        for kind, target in re.findall(r"\b(crate|super)::([a-z_]+(?:::[a-z_]+)*)", text):
            base = "" if kind == "crate" else parent
            full = f"{base}::{target}" if base else target
            segments = full.split("::")
            for i in range(len(segments), 0, -1):
                candidate = "::".join(segments[:i])
                if candidate in mods:
                    # A module and its own parent or children are one boundary.
                    related = candidate == module or module.startswith(candidate + "::") \
                        or candidate.startswith(module + "::")
                    if not related:
                        a, b = siblings(module, candidate)
                        graph.setdefault(a, set()).add(b)
                    break
    return graph


def cycles(graph):
    found = set()
    for a in graph:
        for b in graph[a]:
            stack, seen = [b], set()
            while stack:
                x = stack.pop()
                if x == a:
                    found.add(tuple(sorted((a, b))))
                    break
                if x not in seen:
                    seen.add(x)
                    stack.extend(graph.get(x, ()))
    return sorted(found)


def documented():
    """The layout table's modules and the modules each lists under "depends on"."""
    with open(ARCHITECTURE, encoding="utf-8") as f:
        text = f.read()
    table = {}
    for name, deps in re.findall(r"^\| `([a-z_]+)`[^|]*\| .+ \| (.+?) \|$", text, re.M):
        table[name] = set(re.findall(r"`([a-z_]+)`", deps))
    return table


def drift(graph):
    """Lines naming each module whose documented dependencies differ from its imports."""
    lines = []
    for module, listed in sorted(documented().items()):
        actual = {b for b in graph.get(module, ()) if "::" not in b} - LEAVES
        if listed != actual:
            missing, extra = sorted(actual - listed), sorted(listed - actual)
            lines.append(
                f"error: docs/architecture.md: `{module}` depends on {sorted(actual)}"
                f" (unlisted: {missing}; listed but not imported: {extra})"
            )
    return lines


def main():
    graph = edges(modules())
    found = cycles(graph)
    for a, b in found:
        print(f"error: host modules {a} and {b} import each other (directly or through others)")
    drifted = drift(graph)
    for line in drifted:
        print(line)
    if found or drifted:
        return 1
    print("module imports: no circles; the architecture's dependency column matches")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/python3
"""The include layering of the C sources, checked (make test).

Each folder is a layer and may include headers of its own layer and of the
layers it lists below; a module (a .c and its .h, by file stem) of proxy/
may not reach itself through #include lines (no include cycle).  Headers
are found by name, as the compiler does with the Makefile's -I list.

    scripts/layer-check.py          exit 0, or 1 naming each violation
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# folder -> the folders it may include from (its own is always allowed)
LAYERS = {
    "common": [],
    "worker": ["common"],
    "executor": ["common"],
    "legacyd": ["common"],
    "proxy/backend": ["common"],
    "proxy": ["common", "proxy/backend"],
}

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
# a function declared at top level of a header (not static inline, not a typedef)
PROTO = re.compile(r'^(?!static|typedef|extern|#|\s|/|\*|struct \w+ \{|enum|union)[A-Za-z_][\w \*]*?\b(\w+)\(', re.M)


def sources():
    for folder in LAYERS:
        for f in sorted((ROOT / folder).glob("*.[ch]")):
            yield folder, f


def main():
    where = {}  # header name -> folder
    for folder, f in sources():
        if f.suffix == ".h":
            if f.name in where:
                print(f"layer-check: {f.name} is in both {where[f.name]}/ and {folder}/", file=sys.stderr)
                return 1
            where[f.name] = folder
    bad = []
    # the module graph is by file stem: a header's functions must be defined
    # in the .c of the same name, or the graph would not see that module
    for folder, f in sources():
        if f.suffix == ".h" and folder.startswith("proxy") and not f.with_suffix(".c").exists():
            m = PROTO.search(f.read_text())
            if m:
                bad.append(f"{f.relative_to(ROOT)} declares {m.group(1)}() but there is no "
                           f"{f.with_suffix('.c').name}: name the header after the file that defines it")
    graph = {}  # proxy module stem -> stems it includes
    for folder, f in sources():
        rel = f.relative_to(ROOT)
        for name in INCLUDE.findall(f.read_text()):
            if name not in where:
                continue  # generated or a test's own header
            to = where[name]
            if to != folder and to not in LAYERS[folder]:
                bad.append(f"{rel} includes {to}/{name}: {folder}/ may include only "
                           f"{', '.join([folder] + LAYERS[folder])}")
            if folder.startswith("proxy") and to.startswith("proxy"):
                stem, dep = f.stem, Path(name).stem
                if dep != stem:
                    graph.setdefault(stem, set()).add(dep)
    # cycles among proxy modules (depth-first search, each cycle once)
    state, stack, seen = {}, [], set()

    def visit(n):
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                cyc = stack[stack.index(d):]
                key = frozenset(cyc)
                if key not in seen:
                    seen.add(key)
                    bad.append("include cycle among proxy modules: " + " -> ".join(cyc + [d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    for b in bad:
        print("layer-check:", b, file=sys.stderr)
    if bad:
        return 1
    print(f"layer-check: {sum(1 for _ in sources())} files, layering and proxy modules acyclic")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""README's configuration tables must equal what each binary's config table
prints (--print-config-markdown).  `--fix` rewrites them in place."""
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
BINARIES = ["turnout-proxy", "turnout-legacyd", "turnout-worker", "turnout-executor"]


def main() -> int:
    build = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else ROOT / "build")
    fix = "--fix" in sys.argv
    readme_path = ROOT / "README.md"
    text = readme_path.read_text()
    problems = []
    for name in BINARIES:
        begin, end = f"<!-- BEGIN config {name} -->\n", f"<!-- END config {name} -->"
        table = subprocess.run([str(build / name), "--print-config-markdown"], check=True,
                               capture_output=True, text=True).stdout
        if begin not in text or end not in text:
            problems.append(f"README.md has no block {begin.strip()} ... {end}")
            continue
        head, rest = text.split(begin, 1)
        current, tail = rest.split(end, 1)
        if current != table:
            if fix:
                text = head + begin + table + end + tail
            else:
                problems.append(f"README.md's configuration table of {name} differs from `{name} --print-config-markdown`")
    if fix:
        readme_path.write_text(text)
    for p in problems:
        print(f"readme-check: {p}; run `scripts/readme-check.py --fix`", file=sys.stderr)
    if not problems:
        print("readme-check: configuration tables match the binaries")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

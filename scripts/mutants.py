#!/usr/bin/env python3
"""Apply each mutant in mutants/ to a scratch copy and run the tests that must go red.

A mutant is a patch (``mutants/NAME.patch``, paths relative to the repo root) that removes
one behaviour a test guards. Its header names the tests and where to run them:

    # tests: tests/test_chaos.py -k "reset and no_client_retries"
    # platform: pre-fix            (pytest --platform; default current)
    # venv: .venv-pre              (default .venv)

A mutant is *killed* when those tests fail, *survived* when they pass: a survivor means
the test proves less than its name. Not part of the default CI run (each mutant runs a
slice of the end-to-end suite): ``.venv/bin/python scripts/mutants.py [NAME ...]``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ROOT / "mutants"
SKIP = {".git", ".venv", ".venv-pinned", ".venv-pre", "__pycache__", ".pytest_cache"}


def header(patch: Path) -> dict[str, str]:
    found = {"platform": "current", "venv": ".venv"}
    for line in patch.read_text().splitlines():
        if not line.startswith("#"):
            break
        key, _, value = line[1:].partition(":")
        if value.strip():
            found[key.strip()] = value.strip()
    if "tests" not in found:
        raise SystemExit(f"{patch.name}: no '# tests:' line")
    return found


def scratch_copy(dest: Path) -> None:
    shutil.copytree(ROOT, dest, ignore=lambda d, names: [n for n in names if n in SKIP])


def run_one(patch: Path, timeout: float) -> tuple[str, float, str]:
    meta = header(patch)
    with tempfile.TemporaryDirectory(prefix=f"mutant-{patch.stem}-") as tmp:
        copy = Path(tmp) / "repo"
        scratch_copy(copy)
        applied = subprocess.run(["patch", "-p1", "--forward", "--quiet", "-i", str(patch)], cwd=copy,
                                 capture_output=True, text=True)
        if applied.returncode != 0:
            return "does-not-apply", 0.0, applied.stdout + applied.stderr
        # The installed package maps app_patch/ and operator/blipguard_operator/ below
        # blipguard/ (setup.py): give the copy the same layout and put it first on the path,
        # ahead of the editable install of the real tree.
        shutil.copytree(copy / "app_patch", copy / "src" / "blipguard" / "app_patch")
        shutil.copytree(copy / "operator" / "blipguard_operator", copy / "src" / "blipguard" / "operator")
        env = {**os.environ, "PYTHONPATH": str(copy / "src")}
        python = ROOT / meta["venv"] / "bin" / "python"
        cmd = [str(python), "-m", "pytest", "-x", "-q", "-p", "no:randomly", "--platform", meta["platform"],
               *shlex.split(meta["tests"])]
        t0 = time.monotonic()
        try:
            done = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "killed (timeout)", time.monotonic() - t0, ""
        elapsed = time.monotonic() - t0
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-3:])
        if done.returncode == 0:
            return "SURVIVED", elapsed, tail
        if done.returncode == 5:
            return "no-tests", elapsed, tail
        return "killed", elapsed, tail


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="mutant names (default: all)")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    patches = sorted(MUTANTS.glob("*.patch"))
    if args.names:
        patches = [p for p in patches if p.stem in args.names]
        missing = set(args.names) - {p.stem for p in patches}
        if missing:
            parser.error(f"no such mutant: {', '.join(sorted(missing))}")
    bad = 0
    for patch in patches:
        verdict, elapsed, tail = run_one(patch, args.timeout)
        print(f"{patch.stem:45s} {verdict:16s} {elapsed:6.0f}s  [{header(patch)['tests']}]", flush=True)
        if verdict != "killed":
            bad += 1
            print("    " + tail.replace("\n", "\n    "), flush=True)
    print(f"{len(patches) - bad} killed, {bad} not killed, of {len(patches)} mutants")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

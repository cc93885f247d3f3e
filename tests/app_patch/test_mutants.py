"""Every mutant (mutants/*.patch, run by scripts/mutants.py) still applies to the code it breaks."""

import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PATCHES = sorted((ROOT / "mutants").glob("*.patch"))


def test_there_are_mutants():
    assert PATCHES


@pytest.mark.parametrize("patch", PATCHES, ids=lambda p: p.stem)
def test_mutant_applies(patch):
    done = subprocess.run(["git", "apply", "--check", str(patch)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, f"{patch.name} no longer applies; regenerate it against the code: {done.stderr}"

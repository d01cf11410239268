"""The test suite needs nothing outside the repository: a clone in an empty folder, with nothing
beside it, passes the parity tests, which read the official ground truth. The clone is of the
committed state, so this test checks what CI will see."""
import os
import shutil
import subprocess
import sys

import pytest

from helpers import REPO, background


HAS_GIT = shutil.which("git") is not None and os.path.isdir(os.path.join(REPO, ".git"))


@background
def clone_run(ctx):
    """A git clone of the repository in an empty folder, and the parity tests run in it: what
    the empty folder holds afterwards and the run."""
    empty = ctx.folder / "empty"
    empty.mkdir()
    clone = empty / "convmlp"
    if not HAS_GIT:
        return None, None
    subprocess.run(["git", "clone", "-q", REPO, str(clone)], check=True, capture_output=True, timeout=120)
    beside = sorted(os.listdir(empty))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_parity.py"], cwd=clone, capture_output=True, text=True,
                          timeout=900, env=dict(ctx.env, PYTHONDONTWRITEBYTECODE="1"))
    return beside, proc


@pytest.mark.skipif(not HAS_GIT, reason="needs git and a git checkout")
def test_parity_tests_pass_in_a_clone_with_nothing_beside_it(clone_run):
    beside, proc = clone_run
    assert beside == ["convmlp"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout and "error" not in proc.stdout.lower()

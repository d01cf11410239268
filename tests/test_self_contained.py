"""The test suite needs nothing outside the repository: a clone in an empty folder, with nothing
beside it, passes the parity tests, which read the official ground truth. The clone is of the
committed state, so this test checks what CI will see."""
import os
import shutil
import subprocess
import sys

import pytest

from helpers import REPO


@pytest.mark.skipif(shutil.which("git") is None or not os.path.isdir(os.path.join(REPO, ".git")),
                    reason="needs git and a git checkout")
def test_parity_tests_pass_in_a_clone_with_nothing_beside_it(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    clone = empty / "convmlp"
    subprocess.run(["git", "clone", "-q", REPO, str(clone)], check=True, capture_output=True, timeout=120)
    assert sorted(os.listdir(empty)) == ["convmlp"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_parity.py"], cwd=clone, capture_output=True, text=True,
                          timeout=900, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout and "error" not in proc.stdout.lower()

"""The README stays true: its config table is the schema's, its two set-up commands are CI's."""
import os
import re

from helpers import REPO
from src.config import config_markdown


def _readme():
    with open(os.path.join(REPO, "README.md")) as f:
        return f.read()


def test_readme_config_table_is_generated_from_the_schema():
    text = _readme()
    block = text.split("<!-- config-table:start -->")[1].split("<!-- config-table:end -->")[0]
    assert block.strip() == config_markdown().strip(), "run: python tools/sync_readme.py"


def test_quick_start_has_two_commands_and_ci_runs_the_test_one():
    quick = _readme().split("## Quick start")[1].split("The real run")[0]
    commands = re.findall(r"```bash\n(.*?)\n```", quick, flags=re.S)
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    assert "train.py --demo" in commands[0] and "pytest" in commands[1]
    with open(os.path.join(REPO, ".ci", "run")) as f:
        ci = [ln for ln in f.read().splitlines() if ln and not ln.startswith(("#", "set ", "cd "))]
    assert ci == [commands[1]]

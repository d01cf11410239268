"""The documentation stays true: its generated parts are the code's (the key table of
docs/configuration.md is the schema's), the README is a front page whose two set-up commands are
CI's. The examples themselves are checked by test_examples.py."""
import glob
import importlib.util
import os
import re

from helpers import REPO
from src.config import config_markdown

#: The README is a front page; the guides are in docs/.
README_MAX_LINES = 250


def _read(page):
    with open(os.path.join(REPO, page), encoding="utf-8") as f:
        return f.read()


def _sync_docs():
    spec = importlib.util.spec_from_file_location("sync_docs", os.path.join(REPO, "tools", "sync_docs.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_table_is_generated_from_the_schema():
    text = _read("docs/configuration.md")
    block = text.split("<!-- config-table:start -->")[1].split("<!-- config-table:end -->")[0]
    assert block.strip() == config_markdown().strip(), "run: python tools/sync_docs.py"


def test_every_generated_part_is_current():
    """What tools/sync_docs.py would write is what the pages hold (it would change nothing)."""
    sync = _sync_docs()
    for page, start, end, render in sync.GENERATED:
        text = _read(page)
        assert sync.generated_text(text, start, end, render) == text, f"{page}: run python tools/sync_docs.py"


def test_readme_is_a_front_page_that_links_every_guide():
    readme = _read("README.md")
    assert len(readme.splitlines()) <= README_MAX_LINES
    guides = sorted(glob.glob("docs/*.md", root_dir=REPO))
    assert guides and [g for g in guides if f"]({g})" not in readme] == []


def test_quick_start_has_two_commands_and_ci_runs_the_test_one():
    quick = _read("README.md").split("## Quick start")[1].split("\n## ")[0]
    commands = re.findall(r"```bash\n(.*?)\n```", quick, flags=re.S)
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    assert "train.py --demo" in commands[0] and "pytest" in commands[1]
    with open(os.path.join(REPO, ".ci", "run")) as f:
        ci = [ln for ln in f.read().splitlines() if ln and not ln.startswith(("#", "set ", "cd "))]
    assert ci == [commands[1]]


#: A measured figure: a time, a size, a ratio or a percentage (what benchmarks/RESULTS.md holds).
FIGURE = re.compile(r"\d(?:[\d.,]*\d)?\s?(?:ms|s|MiB|GiB|MB|GB|img/s|%)(?![\w/])|\d(?:\.\d+)?-?\d*x (?:slower|faster)")


def test_no_figures_in_the_kernels_comments():
    """Measurements live in benchmarks/RESULTS.md, where their machine and date are; the C++ kernels'
    comments say what a choice is for, without the number (it would go stale there unseen)."""
    found = []
    sources = glob.glob("model/csrc/*", root_dir=REPO) + glob.glob("src/*/csrc/*", root_dir=REPO)
    for path in sorted(os.path.join(REPO, s) for s in sources):
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                comment = line.split("//", 1)[1] if "//" in line else ""
                if FIGURE.search(comment):
                    found.append(f"{os.path.relpath(path, REPO)}:{n}: {comment.strip()}")
    assert not found, "\n".join(found)


def test_project_layout_names_what_is_there():
    """Every file and folder the layout of docs/architecture.md names exists: a name on a folder's
    lines is looked for anywhere below that folder (``model/ ... csrc/`` is model/csrc)."""
    section = _read("docs/architecture.md").split("## Project layout")[1]
    block = re.search(r"```text\n(.*?)\n```", section, flags=re.S).group(1)
    missing, base = [], ""
    for line in block.splitlines():
        head = re.match(r"^([\w.-]+(?:/[\w.-]+)*/?)\s", line)
        if head:
            base = head.group(1) if head.group(1).endswith("/") else ""
            if not os.path.exists(os.path.join(REPO, head.group(1))):
                missing.append(head.group(1))
            line = line[head.end():]
        for name in re.findall(r"(?<![\w./-])([\w-]+(?:\.py|\.md|\.yaml|/))(?=[\s,;:)]|$)", line):
            pattern = name.rstrip("/")
            if not glob.glob(os.path.join(REPO, base, "**", pattern), recursive=True):
                missing.append(f"{base}{name}")
    assert not missing, missing

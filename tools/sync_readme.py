"""Regenerate the generated parts of README.md (the configuration table) from their source."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from src.config import config_markdown  # noqa: E402
from src.platform.fileio import atomic_output  # noqa: E402

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def main():
    with open(README) as f:
        text = f.read()
    start, end = "<!-- config-table:start -->", "<!-- config-table:end -->"
    head, rest = text.split(start)
    _, tail = rest.split(end)
    new = f"{head}{start}\n{config_markdown()}\n{end}{tail}"
    if new != text:
        with atomic_output(README) as tmp:
            with open(tmp, "w") as f:
                f.write(new)
        print("README.md: config table updated")


if __name__ == "__main__":
    main()

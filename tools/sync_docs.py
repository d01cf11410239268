"""Regenerate the generated parts of the documentation from their source: the key table of
docs/configuration.md from the config schema (``tests/test_docs.py`` fails while it differs)."""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from src.config import config_markdown  # noqa: E402
from src.platform.fileio import atomic_output  # noqa: E402

#: The generated parts: (page, start marker, end marker, what renders the text between them).
GENERATED = [("docs/configuration.md", "<!-- config-table:start -->", "<!-- config-table:end -->", config_markdown)]


def generated_text(text, start, end, render):
    """`text` with the part between the markers `start` and `end` rendered anew."""
    head, rest = text.split(start)
    _, tail = rest.split(end)
    return f"{head}{start}\n{render().strip()}\n{end}{tail}"


def main():
    for page, start, end, render in GENERATED:
        path = os.path.join(REPO, page)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        new = generated_text(text, start, end, render)
        if new != text:
            with atomic_output(path) as tmp:
                with open(tmp, "w", encoding="utf-8") as f:
                    f.write(new)
            print(f"{page}: generated part updated")


if __name__ == "__main__":
    main()

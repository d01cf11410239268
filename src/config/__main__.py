"""``python -m src.config [--config FILE] [--key value ...]`` prints the resolved config;
``python -m src.config --markdown`` prints the key table for the README."""
import sys

from ..platform.errors import run_cli
from .cli import config_markdown, load_config


def main(argv):
    if argv and argv[0] == "--markdown":
        sys.stdout.write(config_markdown() + "\n")
        sys.stdout.flush()
        return 0
    print(load_config(argv).to_yaml(), end="")
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])

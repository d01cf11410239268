"""The repository's user cache folder, in one place, so that everything cached per user (compiled
kernels, compiled graphs, downloads) lands under the same root and honours ``$XDG_CACHE_HOME``."""
import os

__all__ = ["cache_dir"]


def cache_dir(*parts) -> str:
    """The one home of the repository's user cache folder: ``$XDG_CACHE_HOME/convmlp_mindspore/<parts>``,
    or ``~/.cache/convmlp_mindspore/<parts>`` when ``XDG_CACHE_HOME`` is unset or empty. Returns the
    path only; creating the folder is left to the caller."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "convmlp_mindspore", *parts)

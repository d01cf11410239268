"""The one home of the repository's user cache folder: built C++ kernels, compiled graphs and
downloaded weights live under ``$XDG_CACHE_HOME/convmlp_mindspore`` (default
``~/.cache/convmlp_mindspore``)."""
import os

__all__ = ["cache_dir"]


def cache_dir(*parts) -> str:
    """``$XDG_CACHE_HOME/convmlp_mindspore/<parts>`` (``~/.cache/...`` when XDG_CACHE_HOME is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "convmlp_mindspore", *parts)

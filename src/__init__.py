"""Everything the entry scripts import besides the network (``model/``), one package per concern:
``config`` (settings), ``data`` (datasets and the input pipeline), ``train`` (a training run),
``checkpoint`` (models and their files), ``convert`` (other formats) and ``platform`` (device,
files, errors). Imports point one way: entry scripts -> these packages -> ``model``.

Importing ``src`` keeps MindSpore's C++ log to errors (``GLOG_v=3``), so that a first run does not
print the framework's cache-miss warnings, unless ``GLOG_v`` is set already or ``--verbose`` is on
the command line. It must happen before MindSpore is imported, so it happens here. It also points
the folder where MindSpore writes the report of a failed or interrupted compile
(``rank_<N>/om/analyze_fail.ir``, by default under the current folder, that is in the user's
working directory) at :data:`FRAMEWORK_DIR`, a folder of the user's in the temporary folder,
unless ``MS_OM_PATH`` is set already.
"""
import os
import sys
import tempfile

#: The repository's top folder (entry scripts, ``config.yaml``, ``model/``, ``src/``).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: MindSpore's C++ log level for a quiet run (0 debug, 1 info, 2 warning, 3 error).
QUIET_GLOG_LEVEL = "3"


def verbose_requested(argv) -> bool:
    """Whether the command line asks for the framework's own log (``--verbose`` [true])."""
    for i, arg in enumerate(argv):
        name, _, value = arg.partition("=")
        if name == "--verbose":
            if not value and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value = argv[i + 1]
            return value.strip().lower() not in ("false", "no", "off", "0")
    return False


if "GLOG_v" not in os.environ and not verbose_requested(sys.argv[1:]):
    os.environ["GLOG_v"] = QUIET_GLOG_LEVEL

#: Where MindSpore's own reports go (``MS_OM_PATH``: ``analyze_fail.ir``), never the working directory.
FRAMEWORK_DIR = os.environ.setdefault(
    "MS_OM_PATH", os.path.join(tempfile.gettempdir(), f"convmlp_mindspore_{os.getuid()}", "framework"))

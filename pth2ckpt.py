"""Convert official PyTorch ConvMLP weights (``.pth``) into a MindSpore checkpoint (``.ckpt``), and back.

    python pth2ckpt.py --arch convmlp_s --dst convmlp_s.ckpt --verify         # download release
    python pth2ckpt.py --src IN.pth --dst OUT.ckpt --arch convmlp_s --num_classes 10
    python pth2ckpt.py --reverse --src output/best.ckpt --dst best.pth --verify  # back to PyTorch

The MindSpore model uses the official parameter names (https://github.com/SHI-Labs/Convolutional-MLPs),
so conversion is a rename of the norm parameters (:mod:`src.convert.names`); the two directions are
:mod:`src.convert.from_torch` and :mod:`src.convert.to_torch`. Files are read without running pickled
code (:mod:`src.convert.torch_files`). Accepted inputs and options: docs/training.md and
docs/deployment.md.
"""
import src  # noqa: F401  (first: it keeps MindSpore's C++ log quiet, see src/__init__.py)
import argparse

from src.config import path_arg
from src.convert.names import VERIFY_ATOL
from src.platform.errors import ArgumentParser, run_cli
from model import list_models
from model.cache import cache_dir


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", type=path_arg, help="official .pth (released state_dict or training checkpoint); "
                   "default: download the release of --arch; with --reverse a MindSpore .ckpt")
    p.add_argument("--dst", required=True, type=path_arg, help="output MindSpore .ckpt (with --reverse: .pth)")
    p.add_argument("--reverse", action="store_true", help="MindSpore .ckpt -> official PyTorch .pth "
                   "(topology from the checkpoint's config or its shapes)")
    p.add_argument("--arch", choices=list_models(),
                   help="released variant; the topology flags below override its settings")
    p.add_argument("--num_classes", type=int, help="classes of the target model; when it differs "
                   "from the checkpoint's head, the head is left out (re-created at fine-tune time)")
    p.add_argument("--ema", "--use_ema", dest="ema", action="store_true", help="the EMA weights: 'state_dict_ema' "
                   "of an official training checkpoint; with --reverse the ema.* weights of a train.py checkpoint "
                   "(model_ema)")
    p.add_argument("--verify", action="store_true", help="compare the logits of the PyTorch reference "
                   f"and the MindSpore model; fail above {VERIFY_ATOL:g}")
    p.add_argument("--verify_size", type=int, help="input size for --verify (default 224 for a "
                   "released arch, 64 for a custom topology)")
    p.add_argument("--cache_dir", type=path_arg, default=cache_dir("weights"),
                   help="where downloaded releases are kept (default: the user cache, $XDG_CACHE_HOME or "
                   "~/.cache, /convmlp_mindspore/weights)")
    p.add_argument("--verbose", action="store_true", help="also show MindSpore's own log lines")
    # lists as in train.py: "--blocks 2 4 2" or "--blocks 2,4,2"
    p.add_argument("--blocks", nargs="+", metavar="N")
    p.add_argument("--dims", nargs="+", metavar="N")
    p.add_argument("--mlp_ratios", nargs="+", metavar="R")
    p.add_argument("--channels", type=int)
    p.add_argument("--n_conv_blocks", type=int)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.reverse:
        from src.convert.to_torch import reverse_main
        return reverse_main(args)
    from src.convert.from_torch import convert
    return convert(args)


if __name__ == "__main__":
    run_cli(main)

"""The released variants' settings (timm's default configs): topology, input size, mean/std,
interpolation, the classifier's name and the official weights' URL; the names of the topology
arguments and the classifier's prefix. Plain data: no MindSpore import."""

__all__ = ["default_cfgs", "TOPOLOGY_KEYS", "HEAD_PREFIX"]


def _cfg(url="", **kwargs):
    cfg = {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "interpolation": "bicubic",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "first_conv": "tokenizer.block.0",
        "classifier": "head",
    }
    cfg.update(kwargs)
    return cfg


_URL = "https://shi-labs.com/projects/convmlp/checkpoints/{}_imagenet.pth"


#: Per-variant architecture and pretrained-weight settings, read by pth2ckpt.py, train.py and the
#: tests instead of repeating constants.
default_cfgs = {
    "convmlp_s": _cfg(_URL.format("convmlp_s"), blocks=(2, 4, 2), dims=(128, 256, 512),
                      mlp_ratios=(2, 2, 2), channels=64, n_conv_blocks=2),
    "convmlp_m": _cfg(_URL.format("convmlp_m"), blocks=(3, 6, 3), dims=(128, 256, 512),
                      mlp_ratios=(3, 3, 3), channels=64, n_conv_blocks=3),
    "convmlp_l": _cfg(_URL.format("convmlp_l"), blocks=(4, 8, 3), dims=(192, 384, 768),
                      mlp_ratios=(3, 3, 3), channels=96, n_conv_blocks=3),
}


#: The arguments of :class:`ConvMLP` that describe a topology (the keys of ``default_cfgs`` that a
#: custom configuration can change; config keys, pth2ckpt.py flags and checkpoint metadata too).
TOPOLOGY_KEYS = ("blocks", "dims", "mlp_ratios", "channels", "n_conv_blocks")


#: Parameter-name prefix of the classifier (re-created when the class count differs).
HEAD_PREFIX = "head."

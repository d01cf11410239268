"""ConvMLP as the backbone of a Semantic FPN, trained on generated shape masks.

    python examples/segmentation_fpn.py                       # a tiny topology at 64 px
    python examples/segmentation_fpn.py --arch convmlp_s --pretrained_ckpt backbone.ckpt --epochs 20

The network is the official segmentation config's (an FPN neck and head on the backbone's four
maps); the data are generated shapes whose colour says nothing about their class; the held-out mean
IoU is printed beside chance. What each part is: docs/deployment.md, "Use as a backbone".
"""
import os
import sys

if __package__ in (None, ""):   # python examples/segmentation_fpn.py: the repository's packages
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import src  # noqa: E402,F401  (first: it keeps MindSpore's C++ log quiet, see src/__init__.py)
import argparse  # noqa: E402

import numpy as np  # noqa: E402

from src.platform.errors import ArgumentParser, run_cli  # noqa: E402

NUM_CLASSES = 4   # background, disc, square, triangle
CLASS_NAMES = ("background", "disc", "square", "triangle")
#: The tiny backbone of the default run.
TINY = dict(blocks=[1, 1, 1], dims=[32, 64, 128], mlp_ratios=[2, 2, 2], channels=32, n_conv_blocks=1)


# ------------------------------------------------------------------------------------------------
# Data

def generate(n, size, seed):
    """``n`` images (float32, NCHW, about zero mean) with their masks (int32, N x H x W)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.empty((n, 3, size, size), np.float32)
    masks = np.zeros((n, size, size), np.int32)
    for i in range(n):
        img = rng.uniform(-1, 1, (3, 1, 1)) + 0.2 * rng.standard_normal((3, size, size))
        for _ in range(rng.integers(1, 3)):
            cls = int(rng.integers(1, NUM_CLASSES))
            r = rng.uniform(0.16, 0.28) * size
            cy, cx = rng.uniform(r, size - r, 2)
            if cls == 1:
                inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            elif cls == 2:
                inside = (np.abs(yy - cy) <= r * 0.85) & (np.abs(xx - cx) <= r * 0.85)
            else:   # upward triangle: below the apex, above the base, within the sides
                inside = (yy <= cy + r) & (yy >= cy - r) & (np.abs(xx - cx) <= (yy - (cy - r)) * 0.6)
            img[:, inside] = rng.uniform(-1, 1, (3, 1)) + 0.2 * rng.standard_normal((3, int(inside.sum())))
            masks[i][inside] = cls
        images[i] = img
    return images, masks


def confusion(pred, target, k=NUM_CLASSES):
    return np.bincount(target.ravel() * k + pred.ravel(), minlength=k * k).reshape(k, k)


def mean_iou(conf):
    """Mean over classes of intersection / union (a class absent from both counts as 0)."""
    inter = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - inter
    return float(np.mean(np.where(union > 0, inter / np.maximum(union, 1), 0.0)))


def chance_miou(train_masks, val_masks, seed=0):
    """The better of two guesses that do not look at the image: background everywhere, and each
    pixel's class drawn at random with the training frequencies."""
    freq = np.bincount(train_masks.ravel(), minlength=NUM_CLASSES) / train_masks.size
    background = mean_iou(confusion(np.zeros_like(val_masks), val_masks))
    drawn = np.random.default_rng(seed).choice(NUM_CLASSES, size=val_masks.shape, p=freq).astype(np.int32)
    return max(background, mean_iou(confusion(drawn, val_masks)))


# ------------------------------------------------------------------------------------------------
# Network

def build_network(args):
    """Semantic FPN on the ConvMLP backbone."""
    import mindspore as ms
    from mindspore import nn, ops
    from model import create_model
    from model.cpu_kernels import apply_cpu_kernels

    def conv_bn_relu(cin, cout):
        return nn.SequentialCell([nn.Conv2d(cin, cout, 3, pad_mode="pad", padding=1, has_bias=False),
                                  nn.BatchNorm2d(cout), nn.ReLU()])

    class SemanticFPN(nn.Cell):
        def __init__(self, backbone, channels, head_channels, num_classes, dropout=0.1):
            super().__init__()
            self.backbone = backbone
            info = backbone.feature_info
            self.lateral_convs = nn.CellList([nn.Conv2d(c, channels, 1, has_bias=True) for c in info.channels()])
            self.fpn_convs = nn.CellList([nn.Conv2d(channels, channels, 3, pad_mode="pad", padding=1, has_bias=True)
                                          for _ in info.channels()])
            base = info.reduction(0)
            self.upsamples = tuple(int(np.log2(r // base)) for r in info.reduction())
            self.scale_heads = nn.CellList([
                nn.CellList([conv_bn_relu(channels if j == 0 else head_channels, head_channels)
                             for j in range(max(1, n))])
                for n in self.upsamples])
            self.dropout = nn.Dropout(p=dropout)
            self.conv_seg = nn.Conv2d(head_channels, num_classes, 1, has_bias=True)
            self.output_stride = base

        def construct(self, x):
            feats = self.backbone(x)
            lat = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
            for i in range(len(lat) - 1, 0, -1):   # top-down: nearest upsampling and sum
                lat[i - 1] = lat[i - 1] + ops.interpolate(lat[i], size=lat[i - 1].shape[2:], mode="nearest")
            outs = [conv(t) for conv, t in zip(self.fpn_convs, lat)]
            size = outs[0].shape[2:]
            fused = None
            for level, (convs, n) in enumerate(zip(self.scale_heads, self.upsamples)):
                y = outs[level]
                for j, conv in enumerate(convs):
                    y = conv(y)
                    if n > 0:   # 2x bilinear; the last step lands on the stride-4 size
                        target = size if j == n - 1 else (y.shape[2] * 2, y.shape[3] * 2)
                        y = ops.interpolate(y, size=target, mode="bilinear", align_corners=False)
                fused = y if fused is None else fused + y
            logits = self.conv_seg(self.dropout(fused))
            return ops.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)

    ms.set_seed(args.seed)
    topo = TINY if args.arch == "tiny" else {}
    arch = "convmlp_s" if args.arch == "tiny" else args.arch
    backbone = create_model(arch, features_only=True, pretrained_ckpt=args.pretrained_ckpt, drop_path_rate=0.0,
                            **topo)
    # On the CPU, the repository's C++ kernels for the BatchNorm+ReLU, LayerNorm, GELU, ... cells of
    # the whole network (the same function; elsewhere, or without a compiler, it stays as it is).
    return apply_cpu_kernels(SemanticFPN(backbone, args.fpn_channels, args.head_channels, NUM_CLASSES))


# ------------------------------------------------------------------------------------------------
# Training and evaluation

def train(net, images, masks, args):
    import mindspore as ms
    from mindspore import nn

    class PixelLoss(nn.Cell):
        def __init__(self, net):
            super().__init__(auto_prefix=False)
            self.net, self.ce = net, nn.CrossEntropyLoss()

        def construct(self, x, y):
            logits = self.net(x)
            k = logits.shape[1]
            return self.ce(logits.transpose(0, 2, 3, 1).reshape(-1, k), y.reshape(-1))

    steps = args.epochs * (len(images) // args.batch_size)
    lr = nn.polynomial_decay_lr(args.lr, 0.0, steps, steps, 1, power=0.9)
    opt = nn.AdamWeightDecay(net.trainable_params(), learning_rate=lr, weight_decay=1e-4)
    step = nn.TrainOneStepCell(PixelLoss(net), opt)
    step.set_train(True)
    rng = np.random.default_rng(args.seed)
    for epoch in range(args.epochs):
        order = rng.permutation(len(images))
        losses = []
        for b in range(len(images) // args.batch_size):
            idx = order[b * args.batch_size:(b + 1) * args.batch_size]
            losses.append(float(step(ms.Tensor(images[idx]), ms.Tensor(masks[idx])).asnumpy()))
        print(f"epoch {epoch + 1}/{args.epochs}: loss {np.mean(losses):.4f}", flush=True)


def evaluate(net, images, masks, batch_size):
    import mindspore as ms
    net.set_train(False)
    conf = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for b in range(0, len(images), batch_size):
        pred = net(ms.Tensor(images[b:b + batch_size])).asnumpy().argmax(1).astype(np.int32)
        conf += confusion(pred, masks[b:b + batch_size])
    return conf


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="tiny", choices=["tiny", "convmlp_s", "convmlp_m", "convmlp_l"],
                   help="backbone: 'tiny' (blocks 1 1 1, dims 32 64 128) or a released variant")
    p.add_argument("--pretrained_ckpt", help="backbone or classifier checkpoint for the backbone")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--train_images", type=int, default=256)
    p.add_argument("--val_images", type=int, default=64)
    p.add_argument("--fpn_channels", type=int, default=32)
    p.add_argument("--head_channels", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "image_size", "train_images", "val_images", "fpn_channels",
                 "head_channels"):
        if getattr(args, name) < 1:
            p.error(f"--{name} {getattr(args, name)}: expected an integer >= 1")
    if args.train_images < args.batch_size:
        p.error(f"--train_images {args.train_images}: expected at least --batch_size ({args.batch_size})")
    if not args.lr > 0:
        p.error(f"--lr {args.lr}: expected a number > 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    import mindspore as ms
    ms.set_context(mode=ms.GRAPH_MODE)
    train_x, train_y = generate(args.train_images, args.image_size, args.seed)
    val_x, val_y = generate(args.val_images, args.image_size, args.seed + 1)
    net = build_network(args)
    info = net.backbone.feature_info
    print(f"backbone {args.arch}: feature maps of {info.channels()} channels at strides {info.reduction()}; "
          f"{args.train_images} training and {args.val_images} held-out {args.image_size}px images, "
          f"{NUM_CLASSES} classes ({', '.join(CLASS_NAMES)})", flush=True)
    train(net, train_x, train_y, args)
    conf = evaluate(net, val_x, val_y, args.batch_size)
    inter = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - inter
    per_class = ", ".join(f"{n} {i / max(u, 1):.3f}" for n, i, u in zip(CLASS_NAMES, inter, union))
    print(f"IoU per class: {per_class}")
    print(f"mIoU {mean_iou(conf):.3f} (chance {chance_miou(train_y, val_y):.3f}) on {args.val_images} held-out images")
    return 0


if __name__ == "__main__":
    run_cli(main)

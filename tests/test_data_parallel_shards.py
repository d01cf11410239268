"""What each rank of a data-parallel run trains on, epoch by epoch: its shard of a new shuffle of
the training records, the shards disjoint and together covering every record, for CIFAR binary
folders and image trees alike.

Each rank builds its train pipeline with ``create_dataset(epoch_config(cfg, epoch), "train",
num_shards=world, shard_id=rank)`` (train.py); the tests here make the very same calls in this
process, one per rank, and name the record behind every image the pipelines yield. Which records a
shard holds is the sampler's choice, made before any transform, so the tests switch the per-image
augmentation and the batch mixer off (``NO_AUG``, no smoothing) and recognise each record by its
pixels: the pipeline's image of record i is then the train transform (resize where needed,
normalise, HWC -> CHW) of record i alone.

The promise (docs/distributed.md, "Which images each rank trains on"): with N records and W ranks, each rank's
shard of an epoch holds ceil(N / W) distinct records; together the shards hold every record; when
W does not divide N, the first W x ceil(N / W) - N records of the epoch's shuffle are repeated on
the last ranks, so that every rank runs the same number of steps; no record is in one shard twice.
The shuffle is another each epoch. (A shard's incomplete last batch is dropped, so the batch sizes
here divide the shards.)
"""
import collections

import numpy as np
import pytest

from helpers import NO_AUG, generated

#: Per test: records, ranks, batch size per rank (dividing ceil(records / ranks)), epochs.
CASES = {"divisible": (512, 2, 32, 3), "padded": (509, 2, 15, 2), "padded_three_ranks": (509, 3, 10, 2)}


def _config(train, val, *extra):
    from src.config import load_config
    return load_config(["--train_data_path", train, "--val_data_path", val, "--image_size", "32", *NO_AUG,
                        "--smoothing", "0", "--seed", "0", "--num_parallel_workers", "1", *extra])


def _record_images(cfg):
    """Every train record as the pipeline yields it with the augmentation off, (N, 3 * 32 * 32)."""
    import mindspore.dataset.transforms as T
    from src.data.catalog import data_format
    from src.data.images import read_image
    from src.data.pipeline import image_split, load_split
    from src.data.transforms import train_transforms
    if data_format(cfg.dataset_choose) == "imagefolder":
        images, shape = [read_image(f) for f in image_split(cfg, "train").files], None
    else:
        arrays = load_split(cfg, "train")
        images, shape = arrays.images, arrays.images.shape[1:3]
    transform = T.Compose(train_transforms(cfg, shape))
    return np.stack([np.asarray(transform(image), np.float32).ravel() for image in images])


def _shards(cfg, epoch, world, records):
    """``[rank 0's record indices, rank 1's, ...]`` in the order each rank's pipeline of `epoch`
    (0-based) yields them: each yielded image named by the one of `records` (:func:`_record_images`)
    it equals."""
    from src.config import epoch_config
    from src.data.pipeline import create_dataset
    shards = []
    for rank in range(world):
        pipeline = create_dataset(epoch_config(cfg, epoch), "train", num_shards=world, shard_id=rank)
        read = []
        for images, _ in pipeline.create_tuple_iterator(num_epochs=1, output_numpy=True):
            for image in images.reshape(len(images), -1):
                distance = np.abs(records - image).max(axis=1)
                same = np.flatnonzero(distance < 1e-4)
                assert len(same) == 1, f"rank {rank}: an image equal to records {same.tolist()}"
                read.append(int(same[0]))
        assert len(read) == pipeline.get_dataset_size() * cfg.batch_size
        shards.append(read)
    return shards


def _assert_disjoint_cover(shards, n):
    """The promise of the module docstring for one epoch's shards of `n` records."""
    world = len(shards)
    per_rank = -(-n // world)
    extra = world * per_rank - n
    assert [len(s) for s in shards] == [per_rank] * world
    assert all(len(set(s)) == per_rank for s in shards), "a record twice in one shard"
    assert set().union(*shards) == set(range(n)), "records no rank read"
    copies = collections.Counter(i for s in shards for i in s)
    assert sorted(copies.values()) == [1] * (n - extra) + [2] * extra
    for a in range(world):
        for b in range(a + 1, world):
            assert len(set(shards[a]) & set(shards[b])) <= extra
    if extra == 0:
        assert all(not set(shards[a]) & set(shards[b]) for a in range(world) for b in range(a + 1, world))


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_epoch_the_ranks_read_disjoint_shards_covering_the_cifar_records(tmp_path, case):
    n, world, batch, epochs = CASES[case]
    data = generated(tmp_path, "cifar10", n, 20, seed=5)
    cfg = _config(data, data, "--batch_size", str(batch))
    records, orders = _record_images(cfg), []
    for epoch in range(epochs):
        shards = _shards(cfg, epoch, world, records)
        _assert_disjoint_cover(shards, n)
        orders.append(shards)
    assert all(orders[e][0] != orders[e + 1][0] for e in range(epochs - 1)), "the same shard in two epochs"


@pytest.mark.parametrize("n_train,batch", [(256, 16), (255, 16)], ids=["divisible", "padded"])
def test_each_epoch_the_ranks_read_disjoint_shards_covering_the_image_tree(tmp_path, n_train, batch):
    from src.data.synthetic import write_image_tree
    world, epochs = 2, 2
    tree = write_image_tree(str(tmp_path / "tree"), 5, n_train, 10, seed=6)
    cfg = _config(tree["train"], tree["val"], "--dataset_choose", "imagefolder", "--batch_size", str(batch))
    records, orders = _record_images(cfg), []
    for epoch in range(epochs):
        shards = _shards(cfg, epoch, world, records)
        _assert_disjoint_cover(shards, n_train)
        orders.append(shards)
    assert orders[0][0] != orders[1][0], "the same shard in two epochs"

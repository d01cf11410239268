"""src/data/cifar.py (binary format, validation, generator) and src/data/pipeline.py (MindSpore pipelines).

The reference decoding is written here with plain NumPy, independent of cifar.py: a record is the
label byte(s) followed by 1024 R, 1024 G and 1024 B bytes of a row-major 32x32 image.
"""
import os

import numpy as np
import pytest

from helpers import override
from src.data import cifar, mixing, pipeline, randaugment, synthetic
from src.config import load_config
from src.platform.errors import ConfigError, DataError

MEAN10 = np.array([0.4914, 0.4822, 0.4465], np.float32)
STD10 = np.array([0.2470, 0.2435, 0.2616], np.float32)


# ---------------------------------------------------------------------------------- helpers
def random_records(rng, n, dataset_name):
    """Random bytes forming `n` valid records; returns the bytes."""
    label_bytes = 1 if dataset_name == "cifar10" else 2
    raw = rng.integers(0, 256, (n, label_bytes + 3072), dtype=np.uint8)
    if dataset_name == "cifar10":
        raw[:, 0] = rng.integers(0, 10, n)
    else:
        raw[:, 0] = rng.integers(0, 20, n)
        raw[:, 1] = rng.integers(0, 100, n)
    return raw.tobytes()


def numpy_decode(data, dataset_name):
    """Reference decoding: (labels, coarse or None, HWC images)."""
    label_bytes = 1 if dataset_name == "cifar10" else 2
    raw = np.frombuffer(data, np.uint8).reshape(-1, label_bytes + 3072)
    images = np.stack([np.dstack([r[label_bytes + c * 1024: label_bytes + (c + 1) * 1024].reshape(32, 32)
                                  for c in range(3)]) for r in raw]) if len(raw) else np.zeros((0, 32, 32, 3))
    if dataset_name == "cifar10":
        return raw[:, 0].astype(np.int32), None, images
    return raw[:, 1].astype(np.int32), raw[:, 0].astype(np.int32), images


def write(folder, name, data):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)
    return os.path.join(folder, name)


def make_cfg(train, val=None, *extra, **keys):
    """Config for `train`/`val` folders at 32 px with every augmentation off, plus `keys` overrides."""
    argv = ["--train_data_path", train, "--val_data_path", val or train, "--image_size", "32",
            "--batch_size", "8", "--num_parallel_workers", "1", "--aa", "null", "--hflip", "0",
            "--reprob", "0", "--mixup", "0", "--cutmix", "0", "--smoothing", "0", "--crop_scale", "1,1"]
    return load_config(override(argv, *extra, *[a for k, v in keys.items() for a in (f"--{k}", str(v))]))


def collect(ds):
    images, labels = [], []
    for batch in ds.create_dict_iterator(num_epochs=1, output_numpy=True):
        images.append(batch["image"])
        labels.append(batch["label"])
    return np.concatenate(images), np.concatenate(labels)


def normalise(images_hwc, mean=MEAN10, std=STD10):
    return ((images_hwc.astype(np.float32) / 255 - mean) / std).transpose(0, 3, 1, 2)


# ---------------------------------------------------------------------------------- decoding
def test_cifar10_decoding_matches_numpy_over_several_files_with_odd_counts(tmp_path):
    rng = np.random.default_rng(0)
    folder = str(tmp_path / "c10")
    parts = {"data_batch_1.bin": 7, "data_batch_2.bin": 1, "data_batch_10.bin": 13, "test_batch.bin": 5}
    data = {name: random_records(rng, n, "cifar10") for name, n in parts.items()}
    for name, d in data.items():
        write(folder, name, d)
    train = cifar.read_split(folder, "cifar10", "train")
    # natural order: data_batch_2 before data_batch_10
    assert [os.path.basename(p) for p in train.files] == ["data_batch_1.bin", "data_batch_2.bin", "data_batch_10.bin"]
    ref = [numpy_decode(data[n], "cifar10") for n in ("data_batch_1.bin", "data_batch_2.bin", "data_batch_10.bin")]
    np.testing.assert_array_equal(train.labels, np.concatenate([r[0] for r in ref]))
    np.testing.assert_array_equal(train.images, np.concatenate([r[2] for r in ref]))
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int32 and train.coarse is None
    val = cifar.read_split(folder, "cifar10", "val")
    labels, _, images = numpy_decode(data["test_batch.bin"], "cifar10")
    np.testing.assert_array_equal(val.labels, labels)
    np.testing.assert_array_equal(val.images, images)


def test_cifar100_decoding_matches_numpy_fine_and_coarse_labels(tmp_path):
    rng = np.random.default_rng(1)
    folder = str(tmp_path / "c100")
    data = {"train.bin": random_records(rng, 11, "cifar100"), "train_2.bin": random_records(rng, 3, "cifar100"),
            "test.bin": random_records(rng, 9, "cifar100")}
    for name, d in data.items():
        write(folder, name, d)
    train = cifar.read_split(folder, "cifar100", "train")
    fine, coarse, images = numpy_decode(data["train.bin"] + data["train_2.bin"], "cifar100")
    np.testing.assert_array_equal(train.labels, fine)
    np.testing.assert_array_equal(train.coarse, coarse)
    np.testing.assert_array_equal(train.images, images)
    val = cifar.read_split(folder, "cifar100", "val")
    assert len(val) == 9


def test_separate_folders_may_use_any_file_names(tmp_path):
    rng = np.random.default_rng(2)
    a = random_records(rng, 3, "cifar10")
    write(str(tmp_path / "tr"), "part-a.bin", a)
    write(str(tmp_path / "tr"), "part-b.bin", random_records(rng, 2, "cifar10"))
    arr = cifar.read_split(str(tmp_path / "tr"), "cifar10", "train", any_names=True)
    assert len(arr) == 5
    np.testing.assert_array_equal(arr.labels[:3], numpy_decode(a, "cifar10")[0])
    with pytest.raises(DataError, match="no train files for CIFAR-10 .*different folders"):
        cifar.read_split(str(tmp_path / "tr"), "cifar10", "train", any_names=False)


def test_real_photo_crops_decode_as_mindspore_own_cifar10_reader(tmp_path):
    """Cross-check with MindSpore's Cifar10Dataset (which needs exactly 10,000 records per file) on
    crops of a real photo when matplotlib's sample image is there, else random pixels."""
    import mindspore.dataset as ds
    rng = np.random.default_rng(11)
    n = 10000
    try:
        import matplotlib.cbook
        from PIL import Image
        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
            photo = np.asarray(Image.open(f).convert("RGB"))
        ys, xs = rng.integers(0, photo.shape[0] - 32, n), rng.integers(0, photo.shape[1] - 32, n)
        images = np.stack([photo[y:y + 32, x:x + 32] for y, x in zip(ys, xs)])
    except (ImportError, OSError, ValueError):
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    records = np.concatenate([labels[:, None], images.transpose(0, 3, 1, 2).reshape(n, -1)], 1).tobytes()
    folder = str(tmp_path / "cifar-10-batches-bin")
    write(folder, "data_batch_1.bin", records)
    write(folder, "test_batch.bin", records)
    ours = cifar.read_split(folder, "cifar10", "train")
    theirs = list(ds.Cifar10Dataset(folder, usage="train", shuffle=False).create_tuple_iterator(output_numpy=True,
                                                                                             num_epochs=1))
    np.testing.assert_array_equal(ours.images, np.stack([t[0] for t in theirs]))
    np.testing.assert_array_equal(ours.labels, np.array([t[1] for t in theirs]))
    np.testing.assert_array_equal(ours.images, images)


def test_hidden_files_are_ignored(tmp_path):
    rng = np.random.default_rng(12)
    write(str(tmp_path / "tr"), "a.bin", random_records(rng, 2, "cifar10"))
    write(str(tmp_path / "tr"), "._a.bin", b"\x00" * 4096)          # macOS resource fork
    assert len(cifar.read_split(str(tmp_path / "tr"), "cifar10", "train", any_names=True)) == 2


def test_class_names_from_meta_files_or_official(tiny_cifar100, tmp_path):
    assert cifar.class_names(tiny_cifar100, "cifar100")[:2] == ["synthetic_0", "synthetic_1"]
    assert len(cifar.class_names(tiny_cifar100, "cifar100", coarse=True)) == 20
    write(str(tmp_path), "batches.meta.txt", b"airplane\nautomobile\n\n")   # wrong count -> generic
    assert cifar.class_names(str(tmp_path), "cifar10") == list(cifar.CIFAR10_CLASSES)  # official names
    write(str(tmp_path), "batches.meta.txt", "".join(f"n{i}\n" for i in range(10)).encode())
    assert cifar.class_names(str(tmp_path), "cifar10")[9] == "n9"


# ---------------------------------------------------------------------------------- errors
def _c10_folder(tmp_path, **files):
    folder = str(tmp_path / "c10")
    for name, data in files.items():
        write(folder, name.replace("__", "."), data)
    return folder


REC10, REC100 = 3073, 3074


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="dataset folder .*nope does not exist"):
        cifar.read_split(str(tmp_path / "nope"), "cifar10", "train")


def test_folder_without_bin_files(tmp_path):
    folder = _c10_folder(tmp_path, readme__txt=b"hi")
    with pytest.raises(DataError, match=f"dataset folder {folder} has no .bin files"):
        cifar.read_split(folder, "cifar10", "train")


def test_truncated_file_names_size_record_size_and_cause(tmp_path):
    rng = np.random.default_rng(3)
    data = random_records(rng, 3, "cifar10")[:-100]
    folder = _c10_folder(tmp_path, data_batch_1__bin=data)
    with pytest.raises(DataError) as e:
        cifar.read_split(folder, "cifar10", "train")
    msg = str(e.value)
    assert os.path.join(folder, "data_batch_1.bin") in msg and f"size {len(data)} bytes" in msg
    assert "3073-byte CIFAR-10 records" in msg and "truncated or trailing bytes" in msg


def test_cifar100_folder_given_as_cifar10_and_the_reverse(tiny_cifar10, tiny_cifar100):
    with pytest.raises(DataError, match=f"{tiny_cifar100} looks like CIFAR-100 .*set dataset_choose: cifar100"):
        cifar.read_split(tiny_cifar100, "cifar10", "train")
    with pytest.raises(DataError, match=f"{tiny_cifar10} looks like CIFAR-10 .*set dataset_choose: cifar10"):
        cifar.read_split(tiny_cifar10, "cifar100", "val")


def test_cifar100_records_under_cifar10_names_detected_by_record_size(tmp_path):
    rng = np.random.default_rng(4)
    folder = _c10_folder(tmp_path, data_batch_1__bin=random_records(rng, 5, "cifar100"))
    with pytest.raises(DataError, match="not a whole number of 3073-byte CIFAR-10 records but is of 3074-byte "
                                        "CIFAR-100 records"):
        cifar.read_split(folder, "cifar10", "train")


def test_size_divisible_by_both_record_sizes_falls_back_to_label_plausibility(tmp_path):
    """3073 CIFAR-100 records = 3074 CIFAR-10 records by size; the labels tell them apart."""
    rng = np.random.default_rng(5)
    raw = np.full((REC10, REC100), 200, np.uint8)            # pixels 200: impossible as CIFAR-10 labels
    raw[:, 0], raw[:, 1] = rng.integers(0, 10, REC10), rng.integers(0, 100, REC10)
    folder = str(tmp_path / "custom")
    write(folder, "mine.bin", raw.tobytes())
    with pytest.raises(DataError, match=r"mine.bin: record 1 has label 200, expected 0..9 for CIFAR-10; the file "
                                        r"parses as CIFAR-100 records, set dataset_choose: cifar100"):
        cifar.read_split(folder, "cifar10", "train", any_names=True)
    assert len(cifar.read_split(folder, "cifar100", "train", any_names=True)) == REC10


def test_label_out_of_range_names_file_record_value_and_range(tmp_path):
    rng = np.random.default_rng(6)
    raw = np.frombuffer(random_records(rng, 4, "cifar10"), np.uint8).reshape(4, REC10).copy()
    raw[2, 0] = 10
    folder = _c10_folder(tmp_path, data_batch_1__bin=random_records(rng, 2, "cifar10"),
                         data_batch_2__bin=raw.tobytes())
    with pytest.raises(DataError, match=r"data_batch_2.bin: record 2 has label 10, expected 0..9 for CIFAR-10"):
        cifar.read_split(folder, "cifar10", "train")


@pytest.mark.parametrize("column, value, what", [(1, 100, "fine label 100, expected 0..99"),
                                                 (0, 20, "coarse label 20, expected 0..19")])
def test_cifar100_label_out_of_range(tmp_path, column, value, what):
    rng = np.random.default_rng(7)
    raw = np.frombuffer(random_records(rng, 3, "cifar100"), np.uint8).reshape(3, REC100).copy()
    raw[1, column] = value
    folder = str(tmp_path / "c100")
    write(folder, "train.bin", raw.tobytes())
    with pytest.raises(DataError, match=f"train.bin: record 1 has {what} for CIFAR-100"):
        cifar.read_split(folder, "cifar100", "train")


def test_folder_named_like_a_bin_file_is_not_a_regular_file(tmp_path):
    folder = str(tmp_path / "c10")
    os.makedirs(os.path.join(folder, "data_batch_1.bin"))
    with pytest.raises(DataError, match="data_batch_1.bin is not a regular file"):
        cifar.read_split(folder, "cifar10", "train")


def test_split_without_records(tmp_path):
    rng = np.random.default_rng(8)
    folder = _c10_folder(tmp_path, data_batch_1__bin=random_records(rng, 2, "cifar10"), test_batch__bin=b"")
    with pytest.raises(DataError, match=f"the val split in {folder} has no records .*test_batch.bin"):
        cifar.read_split(folder, "cifar10", "val")


def test_shared_folder_without_val_files(tmp_path):
    rng = np.random.default_rng(9)
    folder = _c10_folder(tmp_path, data_batch_1__bin=random_records(rng, 2, "cifar10"))
    with pytest.raises(DataError, match="has no val files for CIFAR-10 \\(expected test_batch.bin; found "
                                        "data_batch_1.bin\\)"):
        cifar.read_split(folder, "cifar10", "val")


def test_unreadable_file_is_named(tmp_path, monkeypatch):
    rng = np.random.default_rng(10)
    folder = _c10_folder(tmp_path, data_batch_1__bin=random_records(rng, 2, "cifar10"))
    path = os.path.join(folder, "data_batch_1.bin")
    if os.geteuid() != 0:                       # a real permission error (root reads anything)
        os.chmod(path, 0)
        try:
            with pytest.raises(DataError, match=f"{path} cannot be read"):
                cifar.read_split(folder, "cifar10", "train")
        finally:
            os.chmod(path, 0o644)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(cifar, "open", refuse, raising=False)
    with pytest.raises(DataError, match=f"{path} cannot be read \\(Permission denied\\)"):
        cifar.read_split(folder, "cifar10", "train")


# ---------------------------------------------------------------------------------- generator
def test_write_synthetic_layout_sizes_and_determinism(tmp_path):
    a = synthetic.write_synthetic(str(tmp_path / "a"), "cifar10", 23, 7, seed=3, files=[5, 11, 7])
    sizes = {n: os.path.getsize(os.path.join(a, n)) for n in os.listdir(a) if n.endswith(".bin")}
    assert sizes == {"data_batch_1.bin": 5 * REC10, "data_batch_2.bin": 11 * REC10,
                     "data_batch_3.bin": 7 * REC10, "test_batch.bin": 7 * REC10}
    b = synthetic.write_synthetic(str(tmp_path / "b"), "cifar10", 23, 7, seed=3, files=[5, 11, 7])
    for n in sizes:
        assert open(os.path.join(a, n), "rb").read() == open(os.path.join(b, n), "rb").read()
    c100 = synthetic.write_synthetic(str(tmp_path / "c"), "cifar100", 250, 0, files=2)
    assert sorted(os.listdir(c100)) == ["coarse_label_names.txt", "fine_label_names.txt", "train_1.bin",
                                        "train_2.bin"]
    arr = cifar.read_split(c100, "cifar100", "train")
    assert np.bincount(arr.labels).min() >= 2 and arr.coarse.max() < 20


def test_write_synthetic_leaves_no_temporary_folder(tmp_path):
    synthetic.write_synthetic(str(tmp_path / "new" / "cifar-10-batches-bin"), "cifar10", 10, 2)
    assert os.listdir(tmp_path / "new") == ["cifar-10-batches-bin"]


def test_synthetic_classes_differ_more_between_than_within():
    """A cheap learnability check: nearest class mean on 4x4-pooled colour beats chance by far on CIFAR-10
    hue pairs, and the two classes sharing a hue are told apart by stripe orientation."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 60)
    images = synthetic.synthetic_images(labels, 10, rng).astype(np.float32) / 255
    # horizontal stripes make the row means vary, vertical stripes the column means
    grey = images.mean(3)
    horizontal = grey.mean(2).var(1) > grey.mean(1).var(1)
    assert (horizontal == (labels % 2 == 0)).mean() > 0.9
    feats = images.reshape(len(labels), 8, 4, 8, 4, 3).mean((2, 4)).reshape(len(labels), -1)
    train, test = np.arange(len(labels)) % 2 == 0, np.arange(len(labels)) % 2 == 1
    means = np.stack([feats[train & (labels == c)].mean(0) for c in range(10)])
    pred = np.argmin(((feats[test, None] - means[None]) ** 2).sum(-1), 1)
    assert (pred // 2 == labels[test] // 2).mean() > 0.8       # hue group recognised


# ---------------------------------------------------------------------------------- pipelines
def test_val_pipeline_is_the_normalised_images_in_order(tiny_cifar10):
    cfg = make_cfg(tiny_cifar10, eval_batch_size=16)
    images, labels = collect(pipeline.create_dataset(cfg, "val"))
    ref = cifar.read_split(tiny_cifar10, "cifar10", "val")
    assert images.dtype == np.float32 and labels.dtype == np.int32 and images.shape == (61, 3, 32, 32)
    np.testing.assert_array_equal(labels, ref.labels)
    np.testing.assert_allclose(images, normalise(ref.images), atol=1e-5)


def _baseline_train(tiny_cifar10, **keys):
    return collect(pipeline.create_dataset(make_cfg(tiny_cifar10, **keys), "train"))


def test_train_with_every_switch_off_is_the_normalised_images_with_one_hot_labels(tiny_cifar10):
    images, labels = _baseline_train(tiny_cifar10)
    ref = cifar.read_split(tiny_cifar10, "cifar10", "train")
    assert images.shape == (200, 3, 32, 32) and labels.shape == (200, 10) and labels.dtype == np.float32
    by_bytes = {normalise(ref.images[i:i + 1])[0].round(4).tobytes(): i for i in range(len(ref))}
    idx = [by_bytes[img.round(4).tobytes()] for img in images]      # every output is an unchanged input
    assert len(set(idx)) == len(idx)                                # shuffled, no repeats
    np.testing.assert_array_equal(labels, np.eye(10, dtype=np.float32)[ref.labels[idx]])


@pytest.mark.parametrize("keys", [
    {"crop_scale": "0.8,1.0"}, {"hflip": 0.5}, {"aa": "rand-m9-mstd0.5-inc1"}, {"reprob": 0.25},
    {"mixup": 0.8}, {"cutmix": 1.0}, {"smoothing": 0.1}])
def test_each_switch_changes_the_train_output_when_on(tiny_cifar10, keys):
    off_images, off_labels = _baseline_train(tiny_cifar10)
    on_images, on_labels = _baseline_train(tiny_cifar10, **keys)
    changed = not np.array_equal(off_images, on_images) or not np.array_equal(off_labels, on_labels)
    assert changed, keys
    assert on_images.shape == off_images.shape and on_labels.shape == off_labels.shape


def test_hflip_one_flips_every_image_and_nothing_else(tiny_cifar10):
    off_images, off_labels = _baseline_train(tiny_cifar10)
    on_images, on_labels = _baseline_train(tiny_cifar10, hflip=1.0)
    np.testing.assert_array_equal(on_images, off_images[..., ::-1])
    np.testing.assert_array_equal(on_labels, off_labels)


def test_switches_with_zero_effect_settings_do_not_change_the_output(tiny_cifar10):
    """mixup_prob 0 disables mixup/cutmix even with alphas set; with the same seed the output is identical."""
    off = _baseline_train(tiny_cifar10)
    same = _baseline_train(tiny_cifar10, mixup=0.8, cutmix=1.0, mixup_prob=0.0)
    np.testing.assert_array_equal(off[0], same[0])
    np.testing.assert_array_equal(off[1], same[1])


def test_full_recipe_is_reproducible_with_a_seed_and_labels_are_distributions(tiny_cifar10):
    full = dict(crop_scale="0.8,1", hflip=0.5, aa="rand-m9-mstd0.5-inc1", reprob=0.25, mixup=0.8, cutmix=1.0,
                smoothing=0.1, seed=7)
    a_img, a_lab = _baseline_train(tiny_cifar10, **full)
    b_img, b_lab = _baseline_train(tiny_cifar10, **full)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    np.testing.assert_allclose(a_lab.sum(1), 1.0, rtol=1e-5)
    assert a_lab.min() >= 0.01 - 1e-6          # smoothing 0.1 over 10 classes
    assert (a_lab.max(1) < 0.9).mean() > 0.5   # most batches are mixed


def test_image_size_224_shapes(tiny_cifar10):
    cfg = make_cfg(tiny_cifar10, image_size=224, batch_size=4, eval_batch_size=5, aa="rand-m9-mstd0.5-inc1",
                   crop_scale="0.8,1", reprob=0.25, mixup=0.8, cutmix=1.0)
    batch = next(pipeline.create_dataset(cfg, "train").create_dict_iterator(num_epochs=1, output_numpy=True))
    assert batch["image"].shape == (4, 3, 224, 224) and batch["label"].shape == (4, 10)
    batch = next(pipeline.create_dataset(cfg, "val").create_dict_iterator(num_epochs=1, output_numpy=True))
    assert batch["image"].shape == (5, 3, 224, 224) and batch["label"].shape == (5,)


def test_cifar100_pipeline_uses_its_mean_std_and_100_classes(tiny_cifar100):
    cfg = load_config(["--dataset_choose", "cifar100", "--train_data_path", tiny_cifar100,
                       "--val_data_path", tiny_cifar100, "--image_size", "32", "--batch_size", "8"])
    batch = next(pipeline.create_dataset(cfg, "train").create_dict_iterator(num_epochs=1, output_numpy=True))
    assert batch["label"].shape == (8, 100)
    images, labels = collect(pipeline.create_dataset(cfg, "val"))
    ref = cifar.read_split(tiny_cifar100, "cifar100", "val")
    mean, std = np.array([0.5071, 0.4867, 0.4408], np.float32), np.array([0.2675, 0.2565, 0.2761], np.float32)
    np.testing.assert_allclose(images, normalise(ref.images, mean, std), atol=1e-5)
    np.testing.assert_array_equal(labels, ref.labels)
    assert pipeline.get_class_names(cfg)[0] == "synthetic_0"
    assert pipeline.dataset_size(cfg, "train") == 301


# ---------------------------------------------------------------------------------- sharding
def _index(ref_images):
    return {normalise(ref_images[i:i + 1])[0].round(4).tobytes(): i for i in range(len(ref_images))}


def test_val_shards_are_disjoint_and_cover_every_record(tiny_cifar10):
    cfg = make_cfg(tiny_cifar10, eval_batch_size=7)
    index = _index(cifar.read_split(tiny_cifar10, "cifar10", "val").images)
    seen = []
    for shard in range(3):
        images, _ = collect(pipeline.create_dataset(cfg, "val", num_shards=3, shard_id=shard))
        seen.append({index[img.round(4).tobytes()] for img in images})
    assert sum(len(s) for s in seen) == 61 and set().union(*seen) == set(range(61))


def test_train_shards_are_disjoint_and_cover_every_record(tmp_path):
    folder = synthetic.write_synthetic(str(tmp_path / "cifar-10-batches-bin"), "cifar10", 24, 4, seed=4)
    cfg = make_cfg(folder, batch_size=2)
    index = _index(cifar.read_split(folder, "cifar10", "train").images)
    seen = []
    for shard in range(4):
        images, _ = collect(pipeline.create_dataset(cfg, "train", num_shards=4, shard_id=shard))
        seen.append([index[img.round(4).tobytes()] for img in images])
    assert all(len(s) == 6 for s in seen)
    assert sorted(i for s in seen for i in s) == list(range(24))


def test_bad_shard_arguments_and_batch_larger_than_the_data(tiny_cifar10):
    cfg = make_cfg(tiny_cifar10)
    with pytest.raises(ConfigError, match="expected both or neither"):
        pipeline.create_dataset(cfg, "train", num_shards=2)
    with pytest.raises(ConfigError, match="shard_id 2 is outside 0..1"):
        pipeline.create_dataset(cfg, "train", num_shards=2, shard_id=2)
    with pytest.raises(ConfigError, match="batch_size 500 is larger than the 203 train records"):
        pipeline.create_dataset(make_cfg(tiny_cifar10, batch_size=500), "train")


def test_changed_files_are_read_again(tmp_path):
    folder = synthetic.write_synthetic(str(tmp_path / "cifar-10-batches-bin"), "cifar10", 20, 9, seed=1)
    cfg = make_cfg(folder, eval_batch_size=9)
    first = pipeline.load_split(cfg, "val")
    assert pipeline.load_split(cfg, "val") is first                    # cached
    synthetic.write_synthetic(folder, "cifar10", 20, 11, seed=2)
    assert len(pipeline.load_split(cfg, "val")) == 11


# ---------------------------------------------------------------------------------- demo, data errors
def test_demo_generates_data_when_the_folder_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "DEMO_SIZES", {"train": 40, "val": 12})
    folder = str(tmp_path / "demo" / "cifar-10-batches-bin")
    cfg = make_cfg(folder, demo="true")
    assert pipeline.dataset_size(cfg, "train") == 40 and pipeline.dataset_size(cfg, "val") == 12


def test_create_dataset_reports_data_errors_before_iterating(tmp_path):
    cfg = make_cfg(str(tmp_path / "absent"))
    with pytest.raises(DataError, match="absent does not exist.*set download: true"):
        pipeline.create_dataset(cfg, "train")


# ---------------------------------------------------------------------------------- building blocks
def test_rand_augment_mapping():
    assert randaugment._magnitude_choices(9, 0.0) == [9]
    choices = randaugment._magnitude_choices(9, 0.5)
    assert len(choices) == 20 and {k: choices.count(k) for k in set(choices)} == {8: 3, 9: 14, 10: 3}
    assert len(randaugment.rand_augment_ops("rand-m9-mstd0.5-inc1")) == 2
    assert len(randaugment.rand_augment_ops("rand-m5-n3-inc1")) == 3
    assert randaugment.rand_augment_ops(None) == []


class _Info:
    def get_epoch_num(self):
        return 0

    def get_batch_num(self):
        return 0


def test_cutmix_lambda_equals_the_pasted_area():
    mixer = mixing.BatchMixer(4, smoothing=0.0, mixup=0.0, cutmix=1.0, reprob=0.0, seed=3)
    images = [np.full((3, 16, 16), float(i), np.float32) for i in range(4)]
    for seed in range(5):
        mixer.seed = seed
        x, y = mixer(images, [0, 1, 2, 3], _Info())
        pasted = (x[0] == 3.0).mean()              # image 0 receives the patch of image 3
        np.testing.assert_allclose(y[0], [1 - pasted, 0, 0, pasted], atol=1e-6)


def test_mixup_mixes_images_and_targets_with_the_same_lambda():
    mixer = mixing.BatchMixer(3, smoothing=0.0, mixup=0.8, cutmix=0.0, reprob=0.0, seed=1)
    x, y = mixer([np.zeros((3, 4, 4), np.float32), np.ones((3, 4, 4), np.float32)], [0, 2], _Info())
    lam = y[0, 0]
    np.testing.assert_allclose(x[0], 1 - lam, atol=1e-6)
    np.testing.assert_allclose(y[1], [1 - lam, 0, lam], atol=1e-6)


def test_random_erasing_fills_one_box_with_noise():
    mixer = mixing.BatchMixer(2, smoothing=0.0, mixup=0.0, cutmix=0.0, reprob=1.0, seed=0)
    x, _ = mixer([np.full((3, 32, 32), 7.0, np.float32) for _ in range(8)], [0] * 8, _Info())
    for img in x:
        erased = img[0] != 7.0
        rows, cols = np.flatnonzero(erased.any(1)), np.flatnonzero(erased.any(0))
        assert 0.02 * 1024 * 0.8 <= erased.sum() <= 1024 / 3 * 1.2
        assert erased[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()   # a rectangle

"""The image-folder train pipeline's input (src/data/encoded.py, src/data/native.py, the source and
transforms of src/data/pipeline.py and src/data/transforms.py). Training with the recipe's bicubic
crop: each record is decoded by ``images.read_image`` (the one rule: EXIF orientation, CMYK, alpha,
16-bit, its errors) and cut by one C++ call in the map's threads, with the pixels of Pillow's
bicubic resize of the box torchvision's ``get_params`` draws, whatever the number of threads.
Elsewhere (evaluation, other filters, no compiler): plain JPEG files go into the dataset engine as
their bytes and are decoded by its C++ ``Decode`` with exactly read_image's pixels; every other file
is decoded by read_image and handed over without loss; the batches are those of read_image's arrays
decoded in worker processes. No process is started; the crop keeps the recipe's distribution; the
same seed gives the same batches. In-process."""
import io
import math
import os

import numpy as np
import pytest
from PIL import Image

import mindspore.dataset.vision as vision

from src.config import load_config
from src.data import encoded, native, pipeline, records
from src.data.images import read_image
from src.data.synthetic import synthetic_images
from src.platform.errors import DataError


def picture(h, w, seed=0):
    """A photo-like picture (the generated set's shapes and noise) of `h` x `w` pixels."""
    rng = np.random.default_rng(seed)
    pic = next(iter(synthetic_images(np.array([seed % 10]), 10, rng)))
    return np.asarray(Image.fromarray(pic).resize((w, h), Image.BICUBIC))


def save(path, image, fmt=None, **kw):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, format=fmt, **kw)
    return str(path)


def engine_pixels(path):
    """What the train pipeline decodes for `path`: its bytes as the source hands them over, through
    the engine's ``vision.Decode``."""
    return vision.Decode()(encoded.read_encoded(path))


#: Plain JPEGs as cameras and encoders write them: chroma subsampling 4:2:0, 4:2:2, 4:4:4,
#: progressive, grey, odd sizes, low and high quality, EXIF without rotation.
PLAIN = {
    "420.jpg": dict(quality=90),
    "422.jpg": dict(quality=75, subsampling=1),
    "444.jpg": dict(quality=95, subsampling=0),
    "progressive.jpg": dict(quality=85, progressive=True),
    "q30.jpg": dict(quality=30),
    "grey.jpg": dict(quality=90, mode="L"),
    "exif_upright.jpg": dict(quality=90, orientation=1),
}


def plain_jpeg(folder, name, h=375, w=500, seed=0):
    kw = dict(PLAIN[name])
    mode, orientation = kw.pop("mode", "RGB"), kw.pop("orientation", None)
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif
    return save(os.path.join(folder, name), Image.fromarray(picture(h, w, seed)).convert(mode), "JPEG", **kw)


@pytest.mark.parametrize("name", sorted(PLAIN))
def test_plain_jpegs_go_to_the_engine_as_bytes_and_decode_to_read_images_pixels(tmp_path, name):
    """Measured: equal to the last bit (max |difference| 0) for every kind here and sizes from 1 x 1
    to 640 x 480: Pillow and MindSpore's Decode both run libjpeg-turbo's default (islow) IDCT and
    fancy upsampling."""
    for k, (h, w) in enumerate([(375, 500), (333, 500), (481, 367), (17, 9), (1, 1)]):
        path = plain_jpeg(str(tmp_path / str(k)), name, h, w, seed=k)
        data = encoded.read_encoded(path)
        assert encoded.engine_decodes(data.tobytes()), path
        np.testing.assert_array_equal(data, np.fromfile(path, np.uint8))         # the file itself
        got = engine_pixels(path)
        assert got.shape == (h, w, 3) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, read_image(path), err_msg=path)


def other_files(folder):
    """Files the engine's decoder would read differently or not at all."""
    base = picture(30, 40, seed=3)
    files = {}

    def put(name, image, fmt, **kw):
        files[name] = save(os.path.join(folder, name), image, fmt, **kw)

    exif = Image.Exif()
    exif[0x0112] = 6
    put("exif_rotated.jpg", Image.fromarray(base), "JPEG", quality=95, exif=exif)
    put("cmyk.jpg", Image.fromarray(base).convert("CMYK"), "JPEG", quality=95)
    put("rgba.png", Image.fromarray(np.dstack([base, base[..., :1]]), "RGBA"), "PNG")
    put("grey16.png", Image.fromarray(base[..., 0].astype(np.uint16) * 257), "PNG")
    put("palette.png", Image.fromarray(base).convert("P", palette=Image.ADAPTIVE), "PNG", transparency=0)
    put("rgb.png", Image.fromarray(base), "PNG")
    put("rgb.bmp", Image.fromarray(base), "BMP")
    xmp = io.BytesIO()
    Image.fromarray(base).save(xmp, "JPEG", quality=95)
    packet = b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta><rdf:Description tiff:Orientation=\"3\"/></x:xmpmeta>"
    segment = b"\xff\xe1" + (len(packet) + 2).to_bytes(2, "big") + packet
    path = os.path.join(folder, "xmp_rotated.jpg")
    with open(path, "wb") as f:
        f.write(xmp.getvalue()[:2] + segment + xmp.getvalue()[2:])
    files["xmp_rotated.jpg"] = path
    return files


def test_other_files_are_decoded_by_read_image_and_handed_over_without_loss(tmp_path):
    """CMYK, EXIF- or XMP-rotated JPEGs, PNGs (alpha, 16-bit, palette, RGB), BMP: not passed as
    they are; the engine decodes read_image's pixels, exactly (rotation applied)."""
    for name, path in other_files(str(tmp_path)).items():
        assert not encoded.engine_decodes(open(path, "rb").read()), name
        want = read_image(path)
        np.testing.assert_array_equal(engine_pixels(path), want, err_msg=name)
        assert want.shape[:2] == ((40, 30) if "rotated" in name and "exif" in name else (30, 40)), name


def test_a_jpeg_that_read_image_decodes_at_reduced_size_goes_through_read_image(tmp_path):
    """A JPEG large enough for read_image's reduced-size decoding (here 1/2, with min_side 200) is
    not passed as bytes: the engine gets read_image's reduced pixels."""
    path = plain_jpeg(str(tmp_path), "420.jpg", 600, 800)
    data = open(path, "rb").read()
    assert encoded.engine_decodes(data) and not encoded.engine_decodes(data, min_side=200)
    got = vision.Decode()(encoded.read_encoded(path, min_side=200))
    assert got.shape == (300, 400, 3)
    np.testing.assert_array_equal(got, read_image(path, min_side=200))


def test_a_broken_jpeg_is_read_images_error_naming_it(tmp_path):
    """A JPEG cut short (no end-of-image marker) is not passed on as bytes: read_image decides,
    with its DataError naming the file."""
    path = plain_jpeg(str(tmp_path), "420.jpg")
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 3])
    assert not encoded.engine_decodes(data[: len(data) // 3])
    with pytest.raises(DataError, match=f"cannot read image '{path}'"):
        encoded.read_encoded(path)


def test_header_reading_refuses_what_is_not_a_plain_jpeg():
    assert encoded.jpeg_info(b"") is None and encoded.jpeg_info(b"\x89PNG\r\n\x1a\n") is None
    assert encoded.jpeg_info(b"\xff\xd8\xff\xe0\x00") is None                 # cut inside a segment
    arithmetic = b"\xff\xd8\xff\xc9\x00\x0b\x08\x00\x10\x00\x10\x01\x01\x11\x00\xff\xda\x00\x02"
    assert encoded.jpeg_info(arithmetic) == () and not encoded.engine_decodes(arithmetic + b"\xff\xd9")


# ------------------------------------------------------------------------------------------------
# The train pipeline

def tree_cfg(root, *extra):
    flags = {"--dataset_choose": "imagefolder", "--train_data_path": str(root), "--val_data_path": str(root),
             "--image_size": "32", "--batch_size": "8", "--num_parallel_workers": "2"}
    flags.update(zip(extra[::2], extra[1::2]))
    return load_config([x for pair in flags.items() for x in pair])


def batches(cfg, epochs=1, check=None):
    """The train batches of `epochs` epochs; `check()` is asserted after the first batch."""
    data = pipeline.create_dataset(cfg, "train")
    it = data.create_tuple_iterator(num_epochs=epochs, output_numpy=True)
    out = []
    for _ in range(epochs):
        for x, y in it:
            out.append((x.copy(), y.copy()))
            if check and len(out) == 1:
                assert check()
    return out


@pytest.fixture
def mixed_tree(tmp_path):
    """Two classes of 12 files each: plain JPEGs and the other kinds, about 60 x 80 px."""
    root = tmp_path / "tree"
    for c in range(2):
        folder = str(root / f"class_{c}")
        for k, name in enumerate(sorted(PLAIN)):
            plain_jpeg(folder, name, 60 + 7 * k, 80 - 3 * k, seed=10 * c + k)
        for name, path in other_files(str(tmp_path / f"other_{c}")).items():
            os.replace(path, os.path.join(folder, name))
    return root


def child_processes():
    """The process ids of this process's forked children (started by any of its threads, with this
    process's command line: a data pipeline's worker processes). The suite's background jobs, which
    run entry scripts from other threads meanwhile, are other command lines and left out; a thread
    that ends while it is listed is skipped."""
    def cmdline(pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return f.read()
        except OSError:
            return None

    found, own = [], cmdline("self")
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                found += [pid for pid in f.read().split() if cmdline(pid) == own]
        except FileNotFoundError:
            continue
    return found


def pillow_crop(image, box, size):
    """torchvision's crop and bicubic resize of `box` = (top, left, height, width) with Pillow, its
    horizontal pass first, then the vertical one (as the C++ crop)."""
    top, left, h, w = box
    crop = Image.fromarray(image).crop((left, top, left + w, top + h))
    return np.asarray(crop.resize((size, h), Image.BICUBIC).resize((size, size), Image.BICUBIC))


def test_the_crop_is_pillows_bicubic_resize_of_its_box():
    """Shrinking, enlarging, one axis of each and none, boxes at the edges, 1-pixel crops: the C++
    crop gives Pillow's pixels exactly; on photos Pillow's one-call resize (which may take the
    vertical pass first) is within 2 levels."""
    rng = np.random.default_rng(0)
    for k in range(120):
        h, w = int(rng.integers(1, 200)), int(rng.integers(1, 200))
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        bh, bw = int(rng.integers(1, h + 1)), int(rng.integers(1, w + 1))
        box = (int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1)), bh, bw)
        size = int(rng.integers(1, 160))
        top, left = box[:2]
        want = np.asarray(Image.fromarray(image).crop((left, top, left + bw, top + bh))
                          .resize((size, bh), Image.BICUBIC).resize((size, size), Image.BICUBIC))
        np.testing.assert_array_equal(native.resized_crop(image, box, (size, size)), want, err_msg=f"{box} -> {size}")
    photo = picture(375, 500)
    for key in range(8):
        got, (top, left, bh, bw) = native.random_resized_crop(photo, 224, (0.08, 1.0), (3 / 4, 4 / 3), key)
        one_call = np.asarray(Image.fromarray(photo).crop((left, top, left + bw, top + bh)).resize((224, 224), Image.BICUBIC))
        assert np.abs(got.astype(int) - one_call).max() <= 2


def test_the_train_batches_are_read_images_pixels_cut_by_pillow_and_no_process_is_started(mixed_tree, monkeypatch):
    """The whole recipe (crop, flip, RandAugment, normalise, erasing, mixup/cutmix), same seed, on
    plain JPEGs and every other kind of file: the C++ crop in the map's threads gives, bit for bit,
    the batches of the same boxes cut from read_image's pixels by Pillow; no process is started."""
    before = child_processes()
    fast = batches(tree_cfg(mixed_tree), check=lambda: child_processes() == before)
    cut = native.random_resized_crop

    def by_pillow(image, size, scale, ratio, key):
        box = cut(image, size, scale, ratio, key)[1]
        return pillow_crop(image, box, size), box

    monkeypatch.setattr(pipeline.native, "random_resized_crop", by_pillow)
    slow = batches(tree_cfg(mixed_tree))
    assert len(fast) == len(slow) == 3
    for (x, y), (px, py) in zip(fast, slow):
        np.testing.assert_array_equal(x, px)
        np.testing.assert_array_equal(y, py)


def test_the_crops_do_not_depend_on_the_number_of_threads_and_differ_between_shards(mixed_tree):
    """The crop alone (the engine's own random ops, flip and RandAugment, draw per thread, so they are
    off here): one thread and two give the same batches."""
    crop_only = ("--hflip", "0", "--aa", "null", "--reprob", "0", "--mixup", "0", "--cutmix", "0")
    one = batches(tree_cfg(mixed_tree, "--num_parallel_workers", "1", *crop_only))
    two = batches(tree_cfg(mixed_tree, "--num_parallel_workers", "2", *crop_only))
    for (x, y), (tx, ty) in zip(one, two):
        np.testing.assert_array_equal(x, tx)
        np.testing.assert_array_equal(y, ty)
    assert not np.array_equal(one[0][0], batches(tree_cfg(mixed_tree, "--seed", "5", *crop_only))[0][0])
    keys = {native.record_key(seed, shard, index) for seed in (0, 1) for shard in range(8) for index in range(1000)}
    assert len(keys) == 2 * 8 * 1000


def test_the_engine_path_gives_the_batches_of_read_image_in_worker_processes_and_starts_none(mixed_tree, monkeypatch):
    """Without the C++ crop (no compiler: the engine's RandomResizedCrop crops), the whole recipe, same
    seed: the engine-decoded bytes read in the source's threads give, bit for bit, the batches of
    read_image's arrays decoded in worker processes (python_multiprocessing: the pipeline before), so
    the augmentation's distribution is unchanged; and no process is started."""
    monkeypatch.setattr(pipeline.native, "library", lambda: None)
    before = child_processes()
    fast = batches(tree_cfg(mixed_tree), check=lambda: child_processes() == before)
    find_records, generator = pipeline._records, pipeline.ds.GeneratorDataset

    def decoded_arrays(cfg, split, shard_id=None):
        source, shape, where = find_records(cfg, split, shard_id)
        return records.Source(source.images, source.labels, read_image), shape, where

    monkeypatch.setattr(pipeline, "_records", decoded_arrays)
    monkeypatch.setattr(pipeline.ds, "GeneratorDataset",
                        lambda *a, **kw: generator(*a, **dict(kw, python_multiprocessing=True)))
    processes = batches(tree_cfg(mixed_tree), check=lambda: child_processes() != before)
    assert len(fast) == len(processes) == 3
    for (x, y), (px, py) in zip(fast, processes):
        np.testing.assert_array_equal(x, px)
        np.testing.assert_array_equal(y, py)


def test_a_file_that_breaks_during_training_stops_it_with_its_name(mixed_tree):
    data = pipeline.create_dataset(tree_cfg(mixed_tree), "train")          # the tree is checked here
    victim = mixed_tree / "class_1" / "420.jpg"
    cut = victim.read_bytes()[:200]
    victim.write_bytes(cut)
    with pytest.raises(RuntimeError) as e:
        for _ in data.create_tuple_iterator(num_epochs=1, output_numpy=True):
            pass
    err = records.data_failure(e.value)
    assert isinstance(err, DataError) and f"cannot read image '{victim}'" in str(err)


def test_the_same_seed_gives_the_same_batches_and_another_seed_others(mixed_tree):
    first, again = batches(tree_cfg(mixed_tree)), batches(tree_cfg(mixed_tree))
    other = batches(tree_cfg(mixed_tree, "--seed", "7"))
    for (x, y), (ax, ay) in zip(first, again):
        np.testing.assert_array_equal(x, ax)
        np.testing.assert_array_equal(y, ay)
    assert not np.array_equal(first[0][0], other[0][0])


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])     # the C++ crop; the engine's
def test_the_crop_follows_the_recipes_distribution(tmp_path, interpolation):
    """RandomResizedCrop(scale 0.08-1, ratio 3/4-4/3) on 320 x 240 ramps (red = column, green = row)
    read back from the output's corners: the crop's area fraction and log aspect ratio have the
    distribution of torchvision's/timm's ``get_params`` (sampled here in NumPy), within sampling
    noise: Kolmogorov-Smirnov distance < 0.12 between 240 crops and 20,000 reference draws (1 %
    critical value 0.11 at these sizes, a little more for reading the corners; measured 0.05 for the
    area, 0.08 for the ratio)."""
    h, w = 240, 320
    ramp = np.zeros((h, w, 3), np.uint8)
    ramp[..., 0] = np.linspace(0, 255, w).round()[None, :]
    ramp[..., 1] = np.linspace(0, 255, h).round()[:, None]
    for k in range(60):
        save(str(tmp_path / "tree" / f"c{k % 2}" / f"{k}.png"), Image.fromarray(ramp), "PNG")
    cfg = tree_cfg(tmp_path / "tree", "--image_size", "64", "--crop_scale", "0.08,1", "--aa", "null",
                   "--hflip", "0", "--reprob", "0", "--mixup", "0", "--cutmix", "0", "--interpolation", interpolation,
                   "--batch_size", "30")
    mean, std = np.float32(cfg.mean) * 255, np.float32(cfg.std) * 255
    areas, ratios = [], []
    for x, _ in batches(cfg, epochs=4):
        px = x.transpose(0, 2, 3, 1) * std + mean                                  # back to 0..255
        for img in px:
            cols = img[32, [0, -1], 0] * (w - 1) / 255.0
            rows = img[[0, -1], 32, 1] * (h - 1) / 255.0
            cw, ch = (cols[1] - cols[0]) * 64 / 63, (rows[1] - rows[0]) * 64 / 63  # centre to centre
            areas.append(cw * ch / (w * h))
            ratios.append(math.log(cw / ch))
    want_area, want_ratio = reference_crops(h, w, (0.08, 1.0), (3 / 4, 4 / 3), 20000)
    assert len(areas) == 240
    assert ks(areas, want_area) < 0.12 and ks(ratios, want_ratio) < 0.12


def reference_crops(h, w, scale, ratio, n, seed=0):
    """torchvision's ``RandomResizedCrop.get_params`` (timm's is the same), `n` times: area
    fractions and log aspect ratios of the crops."""
    rng = np.random.default_rng(seed)
    log_ratio = np.log(ratio)
    areas, ratios = [], []
    for _ in range(n):
        for _ in range(10):
            target = h * w * rng.uniform(*scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                break
        else:
            cw, ch = (w, int(round(w / ratio[0]))) if w / h < ratio[0] else (
                (int(round(h * ratio[1])), h) if w / h > ratio[1] else (w, h))
        areas.append(cw * ch / (w * h))
        ratios.append(math.log(cw / ch))
    return np.array(areas), np.array(ratios)


def ks(a, b):
    """Kolmogorov-Smirnov distance of two samples."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b))))


def test_normalising_after_the_transpose_gives_the_numbers_of_normalising_before():
    """normalize_ops transposes the uint8 image to CHW first, then normalises: bit for bit the
    float32 of normalising the HWC image, then transposing (the order before)."""
    import mindspore.dataset.vision as vision
    from src.data.transforms import normalize_ops
    cfg = load_config(["--dataset_choose", "imagefolder"])
    image = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    got = image
    for op in normalize_ops(cfg):
        got = op(got)
    mean, std = [255.0 * v for v in cfg.mean], [255.0 * v for v in cfg.std]
    before = vision.HWC2CHW()(vision.Normalize(mean=mean, std=std, is_hwc=True)(image))
    assert got.dtype == np.float32 and got.shape == (3, 37, 53)
    np.testing.assert_array_equal(got, before)


def test_the_batch_normalised_in_one_cpp_pass_has_the_engines_numbers():
    """native.normalize_batch (the train batch's normalisation where the C++ parts are built): bit
    for bit the engine's HWC2CHW + Normalize of each image, for every dataset's mean and std and an
    image size that is not a multiple of the C++ run length."""
    from src.data.transforms import normalize_ops, normalize_values
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (37, 53, 3), dtype=np.uint8) for _ in range(5)]
    images[0][:] = 0
    images[1][:] = 255
    for dataset in ("imagefolder", "cifar10", "cifar100"):
        cfg = load_config(["--dataset_choose", dataset])
        want = []
        for image in images:
            for op in normalize_ops(cfg):
                image = op(image)
            want.append(image)
        got = native.normalize_batch(images, *normalize_values(cfg))
        assert got.dtype == np.float32 and got.shape == (5, 3, 37, 53)
        np.testing.assert_array_equal(got, np.stack(want))

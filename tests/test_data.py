import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import make_folder, write_image
from edgecnn import data
from edgecnn.data import archive, cifar10
from edgecnn.errors import EdgeCNNError


def test_shapes_is_deterministic_balanced_and_split():
    a = data.load("shapes:200", image_size=16, seed=3)
    b = data.load("shapes:200", image_size=16, seed=3)
    c = data.load("shapes:200", image_size=16, seed=4)
    assert a.input_shape == (16, 16, 3) and a.num_classes == 10
    assert np.array_equal(a.x_train, b.x_train) and not np.array_equal(a.x_train, c.x_train)
    assert len(a.x_train) == 200 and len(a.x_val) == 100 and len(a.x_test) == 100
    assert np.bincount(a.y_train).tolist() == [20] * 10
    assert not np.array_equal(a.x_train[:100], a.x_test)  # disjoint generators
    gray = data.load("shapes:50", image_size=16, channels=1)
    assert gray.input_shape == (16, 16, 1)


def test_folder_without_split_is_stratified_and_resized(tmp_path):
    root = make_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=10, size=(120, 50), ext=".jpg")
    ds = data.load(str(root), image_size=24, val_split=0.2, test_split=0.2, seed=1)
    assert ds.class_names == ["a", "b", "c"]
    assert ds.x_train.shape[1:] == (24, 24, 3) and ds.x_train.dtype == np.uint8
    assert len(ds.x_train) + len(ds.x_val) + len(ds.x_test) == 30
    assert np.bincount(ds.y_test).tolist() == [2, 2, 2] and np.bincount(ds.y_val).tolist() == [2, 2, 2]
    again = data.load(str(root), image_size=24, val_split=0.2, test_split=0.2, seed=1)  # from the cache
    assert np.array_equal(ds.x_test, again.x_test) and "cache" in again.info
    # The cache holds decoded images, not a split: new fractions or a new seed split anew.
    other = data.load(str(root), image_size=24, val_split=0.1, test_split=0.3, seed=1)
    assert (len(other.x_train), len(other.x_val), len(other.x_test)) == (18, 3, 9) and "cache" in other.info


def _thirds(path: Path, size: tuple[int, int], colors) -> Path:
    """An image cut in three bands of ``colors``: left to right when wide, top to bottom when tall."""
    from PIL import Image

    w, h = size
    arr = np.zeros((h, w, 3), np.uint8)
    for k, c in enumerate(colors):
        if w >= h:
            arr[:, k * w // 3:(k + 1) * w // 3] = c
        else:
            arr[k * h // 3:(k + 1) * h // 3] = c
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def test_crop_resize_keeps_the_centre_squash_the_whole_image_and_pad_letterboxes_it(tmp_path):
    """--resize crop cuts the centre to the input's aspect ratio before resizing: a 48x16 image of red, green
    and blue thirds becomes all green; squash keeps all three; pad scales it to fit inside, on black bands.
    Folder loads follow the mode (and cache it apart), and the arrays of an .npz are fitted the same way."""
    from edgecnn.data.images import load_image

    red, green, blue = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    for size in ((48, 16), (16, 48)):
        f = _thirds(tmp_path / f"{size[0]}x{size[1]}.png", size, (red, green, blue))
        crop = load_image(f, 8, 3, "crop")
        assert (crop == green).all(), crop[..., 1]
        squash = load_image(f, 8, 3)
        corner = squash[0, 0] if size[0] > size[1] else squash[0, 3]
        assert tuple(corner) == red and tuple(squash[-1, -1]) == blue
        pad = load_image(f, 8, 3, "pad")  # scaled to 8x3 (or 3x8), on black rows 2..4 (or columns)
        band = pad if size[0] > size[1] else pad.transpose(1, 0, 2)
        assert not band[:2].any() and not band[5:].any(), band.max(axis=(1, 2))
        assert tuple(band[3, 0]) == red and tuple(band[3, -1]) == blue, band[3]
    root = tmp_path / "folder"
    for cls, colors in (("g", (red, green, blue)), ("b", (green, blue, red))):
        for j in range(10):
            _thirds(root / cls / f"{j}.png", (30 + j, 10), colors)
    by_crop = data.load(str(root), image_size=8, resize="crop", val_split=0.0, test_split=0.2)
    by_squash = data.load(str(root), image_size=8, val_split=0.0, test_split=0.2)
    centre = {by_crop.class_names[y]: tuple(x[4, 4]) for x, y in zip(by_crop.x_train, by_crop.y_train)}
    assert centre == {"g": green, "b": blue}
    assert all(len(set(map(tuple, x.reshape(-1, 3)))) == 1 for x in by_crop.x_train), "one colour each"
    assert all(len(set(map(tuple, x.reshape(-1, 3)))) >= 3 for x in by_squash.x_train), "all three bands"
    by_pad = data.load(str(root), image_size=8, resize="pad", val_split=0.0, test_split=0.2)
    assert all(not x[:2].any() and x[3].any() for x in by_pad.x_train), "black bands above and below"
    wide = np.zeros((6, 8, 24, 3), np.uint8)
    wide[:, :, 8:16] = green
    np.savez(tmp_path / "wide.npz", x_train=wide, y_train=np.arange(6) % 2, x_test=wide[:2], y_test=np.arange(2))
    assert (data.load(str(tmp_path / "wide.npz"), image_size=8, resize="crop").x_test == green).all()
    padded = data.load(str(tmp_path / "wide.npz"), image_size=8, resize="pad").x_test
    assert not padded[:, :2].any() and not padded[:, 5:].any() and (padded[:, 3, 3:5] == green).all()
    with pytest.raises(EdgeCNNError, match="--resize must be one of squash, crop"):
        data.load(str(root), resize="fit")


def test_heic_photos_decode_upright_like_a_jpeg_and_name_the_extra_when_it_is_missing(tmp_path, tiny_exports, capsys):
    """An iPhone-style HEIC stored sideways (EXIF orientation 6) decodes upright, as the same JPEG does; a folder
    of them loads; predict and the standalone ONNX script read it alike; without pillow-heif it is one line
    naming the extra."""
    pytest.importorskip("pillow_heif").register_heif_opener()  # to write the test files
    import json
    import subprocess
    import sys

    from PIL import Image

    from conftest import NO_TF_BLOCK, run_main
    from edgecnn.data.images import load_image

    arr = np.zeros((48, 64, 3), np.uint8)  # stored 64 wide, 48 tall; four quadrants
    arr[:24, :32], arr[:24, 32:], arr[24:, :32], arr[24:, 32:] = (250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    heic, jpeg = tmp_path / "photo.HEIC", tmp_path / "photo.jpg"
    Image.fromarray(arr).save(heic, quality=95, exif=exif.tobytes())
    Image.fromarray(arr).save(jpeg, quality=95, exif=exif)
    h_img, j_img = load_image(heic, (32, 24)), load_image(jpeg, (32, 24))
    assert h_img.shape == (32, 24, 3) and np.abs(h_img.astype(int) - j_img.astype(int)).mean() < 12
    assert np.abs(h_img[2, 2].astype(int) - (0, 0, 250)).max() < 40, h_img[2, 2]  # bottom-left comes to the top
    root = tmp_path / "folder"
    for cls, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        (root / cls).mkdir(parents=True)
        for j in range(6):
            Image.fromarray(np.full((20, 30, 3), colour, np.uint8)).save(root / cls / f"{j}.heic", quality=90)
    ds = data.load(str(root), image_size=8, val_split=0.0, test_split=0.34)
    assert len(ds.x_train) + len(ds.x_test) == 12 and "not read" not in ds.summary()
    code, out, _ = run_main(capsys, "predict", str(tiny_exports / "model_float32.onnx"), str(heic), "--json")
    assert code == 0
    top = json.loads(out)["results"][0]["top"][0]
    res = subprocess.run([sys.executable, "-c", NO_TF_BLOCK, str(tiny_exports / "infer_onnx.py"),
                          str(tiny_exports / "model_float32.onnx"), str(heic)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and res.stdout.split(": ")[1].split(",")[0].split() == [
        top["class"], f"{top['probability']:.3f}"], res.stdout + res.stderr[-1000:]
    missing = subprocess.run([sys.executable, "-c", "import sys; sys.modules['pillow_heif'] = None\n"
                              "from edgecnn.data.images import load_image, ImageError\n"
                              "try:\n    load_image(sys.argv[1], 8)\nexcept ImageError as e:\n    print(e)",
                              str(heic)], capture_output=True, text=True, timeout=120)
    assert missing.stdout.strip() == f"{heic}: HEIC/HEIF images need pillow-heif: pip install 'edgecnn[heic]'"


def test_split_folder_cache_honours_val_split(tmp_path):
    root = tmp_path / "ds"
    make_folder(root / "train", per_class=10, ext=".png")
    make_folder(root / "test", per_class=2, ext=".png")
    first = data.load(str(root), val_split=0.1)
    second = data.load(str(root), val_split=0.3)  # decoded images from the cache, split again
    assert "cache" in second.info
    assert (len(first.x_val), len(second.x_val)) == (2, 6)
    assert len(first.x_train) + len(first.x_val) == len(second.x_train) + len(second.x_val) == 20


def test_folder_with_train_test_split_and_modes(tmp_path):
    root = tmp_path / "ds"
    make_folder(root / "train", per_class=8, ext=".png")
    make_folder(root / "test", per_class=3, ext=".bmp")
    write_image(root / "train" / "cat" / "gray.png", mode="L")
    write_image(root / "train" / "dog" / "rgba.png", mode="RGBA")
    write_image(root / "train" / "dog" / "web.webp")
    (root / "train" / "cat" / "notes.txt").write_text("not an image, ignored")
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"hidden: not mentioned")
    write_image(root / "test" / "dog" / "2023" / "nested.png")  # class folders are read one level deep
    ds = data.load(str(root), val_split=0.25)
    assert len(ds.x_test) == 6 and len(ds.x_train) + len(ds.x_val) == 19
    assert ds.info["unread"] == 2 and ds.info["unread_example"].endswith("notes.txt")
    assert ("; not read: 2 entries of class folders that are not JPEG, PNG, BMP, WebP, GIF, TIFF or HEIC images"
            in ds.summary())
    gray = data.load(str(root), channels=1, image_size=16)
    assert gray.input_shape == (16, 16, 1)


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_archives_of_folders(tmp_path, kind):
    root = make_folder(tmp_path / "src" / "mydata", per_class=5)
    out = tmp_path / f"data.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(out, "w") as zf:
            for p in root.rglob("*.png"):
                zf.write(p, p.relative_to(root.parent))
    else:
        with tarfile.open(out, "w:gz") as tf:
            tf.add(root, arcname="mydata")
    ds = data.load(str(out), image_size=16)
    assert ds.class_names == ["cat", "dog"] and len(ds.x_train) + len(ds.x_val) + len(ds.x_test) == 10


def test_archive_path_traversal_and_links_are_refused(tmp_path):
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tf:
        payload = b"x"
        info = tarfile.TarInfo("../escape.txt")
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    with pytest.raises(EdgeCNNError, match="unsafe member"):
        data.load(str(evil))
    assert not (tmp_path / "escape.txt").exists()
    link = tmp_path / "link.tar.gz"
    with tarfile.open(link, "w:gz") as tf:
        info = tarfile.TarInfo("a/b.png")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(EdgeCNNError, match="link"):
        data.load(str(link))
    z = tmp_path / "abs.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("/abs/x.png", b"1")
    with pytest.raises(EdgeCNNError, match="unsafe member"):
        data.load(str(z))


def test_npz_source_and_its_errors(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (30, 12, 12, 3), dtype=np.uint8)
    y = np.arange(30) % 3
    good = tmp_path / "good.npz"
    np.savez(good, x_train=x, y_train=y, x_test=x[:6], y_test=y[:6], class_names=np.array(["r", "g", "b"]))
    ds = data.load(str(good))
    assert ds.class_names == ["r", "g", "b"] and ds.input_shape == (12, 12, 3) and len(ds.x_val) == 3
    floats = tmp_path / "floats.npz"
    np.savez(floats, x_train=x / 255.0, y_train=y, x_test=x[:6] / 255.0, y_test=y[:6])
    assert data.load(str(floats)).x_train.max() > 200
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=x, y_train=y[:10], x_test=x[:6], y_test=y[:6])
    with pytest.raises(EdgeCNNError, match="30 images but y_train has 10 labels"):
        data.load(str(bad))
    missing = tmp_path / "missing.npz"
    np.savez(missing, x_train=x, y_train=y)
    with pytest.raises(EdgeCNNError, match="lacks x_test, y_test"):
        data.load(str(missing))
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip at all")
    with pytest.raises(EdgeCNNError, match="garbage.npz"):
        data.load(str(garbage))


def _cifar_tarball(path: Path, n_per_batch=20) -> Path:
    """A small archive in the original CIFAR-10 python format (pickled dicts, protocol 2)."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tf:
        def add(name, obj):
            blob = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))

        for i in range(1, 6):
            add(f"data_batch_{i}", {b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                                    b"labels": [int(v) for v in np.arange(n_per_batch) % 10]})
        add("test_batch", {b"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8), b"labels": list(range(10))})
        add("batches.meta", {b"label_names": [c.encode() for c in cifar10.CLASSES]})
    return path


def test_cifar10_local_archive_and_folder(tmp_path):
    tarball = _cifar_tarball(tmp_path / "cifar-10-python.tar.gz")
    ds = data.load(str(tarball), val_split=0.1)
    assert ds.class_names == cifar10.CLASSES and ds.input_shape == (32, 32, 3)
    assert len(ds.x_train) == 90 and len(ds.x_val) == 10 and len(ds.x_test) == 10
    extracted = archive.extract(tarball, tmp_path / "x")
    ds2 = data.load(str(extracted / "cifar-10-batches-py"), image_size=16)
    assert ds2.input_shape == (16, 16, 3)


def test_cifar10_download_path_uses_a_local_url(tmp_path):
    tarball = _cifar_tarball(tmp_path / "served.tar.gz")
    cache = tmp_path / "keras" / "datasets"
    folder = cifar10.download(origin=tarball.as_uri(), file_hash=None, cache_dir=cache)
    assert (folder / "test_batch").is_file() and (cache / "cifar-10-python.tar.gz").is_file()
    assert cifar10.download(origin="http://127.0.0.1:9/never", cache_dir=cache) == folder  # cached: no fetch


def test_cifar10_offline_without_cache_is_one_clear_line(tmp_path):
    with pytest.raises(EdgeCNNError) as exc:
        cifar10.download(origin=(tmp_path / "absent.tar.gz").as_uri(), file_hash=None, cache_dir=tmp_path / "c")
    assert "--data path/to/cifar-10-python.tar.gz" in str(exc.value) and "\n" not in str(exc.value)


def test_cifar_unpickler_refuses_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(Evil()))
    with pytest.raises(EdgeCNNError, match="refused global builtins.print"):
        data.load(str(folder))


@pytest.mark.parametrize(
    "setup, needle",
    [
        (lambda p: p / "nope", "no such file or folder"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "no class folders"),
        (lambda p: make_folder(p / "one", classes=("only",)), "only one class"),
        (lambda p: (make_folder(p / "hole"), (p / "hole" / "bird").mkdir())[0], "bird: class folder has no images"),
        (lambda p: (p / "x.csv").write_text("a") and p / "x.csv", "unsupported file type"),
        (lambda p: (make_folder(p / "s" / "train"), make_folder(p / "s" / "test", classes=("cat", "dog")),
                    make_folder(p / "s" / "test", classes=("Dog",)))[0].parent,
         "test/Dog: class folder not in the training split (classes: cat, dog)"),
        (lambda p: (make_folder(p / "m" / "train"), make_folder(p / "m" / "test", classes=("cat",)))[0].parent,
         "class folder 'dog' is missing (it exists in the training split)"),
    ],
)
def test_bad_sources_give_one_line(tmp_path, setup, needle):
    with pytest.raises(EdgeCNNError) as exc:
        data.load(str(setup(tmp_path)))
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_corrupt_images_are_named_and_can_be_skipped(tmp_path):
    root = make_folder(tmp_path / "imgs", per_class=6)
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    good = write_image(tmp_path / "full.png", size=(64, 64))
    (root / "dog" / "truncated.png").write_bytes(good.read_bytes()[:80])
    with pytest.raises(EdgeCNNError) as exc:
        data.load(str(root))
    msg = str(exc.value)
    assert "broken.jpg" in msg and "truncated.png" in msg and "--skip-bad-images" in msg
    ds = data.load(str(root), skip_bad_images=True)
    assert ds.info["skipped_images"] == 2 and len(ds.x_train) + len(ds.x_val) + len(ds.x_test) == 12


@pytest.mark.parametrize("text, size", [("32", 32), (" 96x128 ", (96, 128)), ("96X128", (96, 128)),
                                        ("96,128", (96, 128)), ("24x24", 24), ((24, 40), (24, 40)), ([16, 16], 16),
                                        (None, None)])
def test_image_size_spellings(text, size):
    assert data.parse_image_size(text) == size


@pytest.mark.parametrize("text", ["x32", "32x", "32x32x3", "7", "8x513", "-8"])
def test_bad_image_sizes_name_the_option(text):
    with pytest.raises(EdgeCNNError, match="--image-size"):
        data.parse_image_size(text)


def test_shapes_at_a_non_square_size_keep_their_proportions():
    """Drawn at height x width (not drawn square and squashed): a circle's outline is as high as it is wide."""
    from edgecnn.data import shapes

    ds = data.load("shapes:200", image_size=(16, 64))
    ratios = []
    for img in ds.x_train[ds.y_train == shapes.CLASSES.index("circle")].astype(int):
        bg = np.median(np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]]), axis=0)  # mostly background
        ys, xs = np.nonzero(np.abs(img - bg).sum(-1) > 120)  # foreground: the colours differ by more than 240
        if len(xs):
            ratios.append((xs.max() - xs.min() + 1) / (ys.max() - ys.min() + 1))
    assert len(ratios) >= 10 and 0.7 < np.median(ratios) < 1.4, np.median(ratios)  # squashed: about 4


def test_non_square_sizes_load_every_source_at_height_by_width(tmp_path):
    from conftest import make_folder

    assert data.load("shapes:40", image_size=(16, 24)).x_test.shape[1:] == (16, 24, 3)
    root = make_folder(tmp_path / "f", per_class=6, size=(60, 20))  # 60 wide, 20 high
    for mode in ("squash", "crop", "pad"):
        ds = data.load(str(root), image_size=(10, 30), resize=mode, val_split=0.0, test_split=0.3)
        assert ds.x_train.shape[1:] == (10, 30, 3) and ds.input_shape == (10, 30, 3), mode
    x = np.zeros((6, 20, 20, 3), np.uint8)
    np.savez(tmp_path / "a.npz", x_train=x, y_train=np.arange(6) % 2, x_test=x[:2], y_test=np.arange(2))
    assert data.load(str(tmp_path / "a.npz"), image_size=(8, 12)).x_test.shape == (2, 8, 12, 3)


def test_bad_split_options():
    with pytest.raises(EdgeCNNError, match="--val-split"):
        data.load("shapes", val_split=1.5)
    with pytest.raises(EdgeCNNError, match="--image-size"):
        data.load("shapes", image_size=4)
    with pytest.raises(EdgeCNNError, match="shapes:N"):
        data.load("shapes:abc")


def test_photos_load_upright_and_large_jpegs_decode_at_a_reduced_scale(tmp_path):
    from PIL import Image

    from edgecnn.data.images import load_image

    # Top half red, bottom half blue, stored sideways with EXIF orientation 6 ("rotate 90 clockwise to
    # view"), as phones store portrait photos: it loads upright, as a photo viewer shows it.
    upright = np.zeros((64, 48, 3), np.uint8)
    upright[:32, :, 0] = 255
    upright[32:, :, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(tmp_path / "p.jpg", exif=exif, quality=95)
    x = load_image(tmp_path / "p.jpg", 16).astype(int)
    assert x.shape == (16, 16, 3)
    assert (x[:6, :, 0] > 200).all() and (x[:6, :, 2] < 60).all(), "red on top"
    assert (x[-6:, :, 2] > 200).all() and (x[-6:, :, 0] < 60).all(), "blue below"

    # A 12-megapixel photo decodes at 1/8 scale (504x378, still over twice 32) and matches a full decode.
    yy, xx = np.mgrid[0:3024, 0:4032]
    photo = np.stack([(xx // 16) % 256, (yy // 12) % 256, ((xx + yy) // 20) % 256], -1).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "big.jpg", quality=90)
    with Image.open(tmp_path / "big.jpg") as img:
        full = np.asarray(img.convert("RGB").resize((32, 32), Image.BILINEAR), dtype=int)
    reduced = load_image(tmp_path / "big.jpg", 32).astype(int)
    assert np.abs(reduced - full).max() <= 2 and np.abs(reduced - full).mean() < 0.5
    with Image.open(tmp_path / "big.jpg") as img:
        img.draft("RGB", (64, 64))
        assert img.size == (504, 378)
        assert (np.asarray(img.resize((32, 32), Image.BILINEAR), dtype=int) == reduced).all()

    # 48 megapixels, as phones take them, is a photo, not a bomb (PNG, BMP and WebP keep the 40-megapixel limit).
    Image.new("RGB", (8000, 6000), (10, 200, 30)).save(tmp_path / "48mp.jpg")
    assert (np.abs(load_image(tmp_path / "48mp.jpg", 8).astype(int) - (10, 200, 30)) <= 3).all()


def test_16_bit_grayscale_pngs_are_scaled_not_clipped(tmp_path):
    from PIL import Image

    from edgecnn.data.images import load_image

    ramp = np.repeat(np.linspace(0, 65535, 16).astype(np.uint16)[None], 16, 0)  # left to right, black to white
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as img:
        assert img.mode.startswith("I")
    expected = np.round(ramp / 257.0)
    assert np.abs(load_image(tmp_path / "g16.png", 16, 1)[..., 0] - expected).max() <= 1
    rgb = load_image(tmp_path / "g16.png", 16, 3)
    assert (rgb[..., 0] == rgb[..., 2]).all() and np.abs(rgb[..., 1] - expected).max() <= 1


def test_gif_and_tiff_files_are_read_first_frame_first(tmp_path):
    """GIF (Keras's image_dataset_from_directory reads it) and TIFF (machine-vision cameras write it): the first
    frame of an animation or a multi-page file, 16-bit TIFFs scaled like 16-bit PNGs, CMYK converted."""
    from PIL import Image

    from edgecnn.data.images import ImageError, load_image

    frames = [np.full((16, 16, 3), v, np.uint8) for v in (40, 200, 120)]
    pil = [Image.fromarray(f) for f in frames]
    pil[0].save(tmp_path / "anim.gif", save_all=True, append_images=pil[1:])
    pil[0].save(tmp_path / "pages.tif", save_all=True, append_images=pil[1:], compression="tiff_lzw")
    for name in ("anim.gif", "pages.tif"):
        with Image.open(tmp_path / name) as img:
            assert img.n_frames == 3
        assert np.abs(load_image(tmp_path / name, 16).astype(int) - 40).max() <= 1, name
    ramp = np.repeat(np.linspace(0, 65535, 16).astype(np.uint16)[None], 16, 0)
    Image.fromarray(ramp).save(tmp_path / "g16.tif")
    assert np.abs(load_image(tmp_path / "g16.tif", 16, 1)[..., 0] - np.round(ramp / 257.0)).max() <= 1
    Image.fromarray(frames[1]).convert("CMYK").save(tmp_path / "cmyk.tif")
    assert np.abs(load_image(tmp_path / "cmyk.tif", 16).astype(int) - 200).max() <= 2
    Image.fromarray(np.ones((16, 16), np.float32) / 2).save(tmp_path / "depth.tif")
    with pytest.raises(ImageError, match=r"depth\.tif: 32-bit floating-point image; edgecnn reads 8- and 16-bit"):
        load_image(tmp_path / "depth.tif", 16)
    # in a class folder they are images, not "not read" entries
    for c, v in (("a", 40), ("b", 200)):
        (tmp_path / "ds" / c).mkdir(parents=True)
        for i in range(3):
            for ext in (".gif", ".tiff"):
                Image.fromarray(np.full((16, 16, 3), v, np.uint8)).save(tmp_path / "ds" / c / f"{i}{ext}")
    ds = data.load(str(tmp_path / "ds"), val_split=0.0, test_split=0.5)
    assert len(ds.x_train) + len(ds.x_test) == 12 and "not read" not in ds.summary()

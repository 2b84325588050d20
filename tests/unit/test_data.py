"""Tests for profit_edu.data: CIFAR-10 sources and cache, ImageNet folders, synthetic data, DeviceLoader.

Every test builds its own tiny data sets in ``tmp_path`` and hides the machine's real data (the environment
variables that choose the folders are set to empty places), so the suite passes on a fresh clone. Only
``test_real_cifar10_test_split`` reads the offline copy (``../shared/data`` beside the checkout, or
``$PROFIT_EDU_SHARED_DATA``), and skips when it is absent.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import pickle
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.datasets import CIFAR10

from profit_edu import _paths
from profit_edu import data as D
from profit_edu.data import cifar as C  # the module, for patching its decoder

_SHARED = _paths.shared_data_dir()  # the real offline copy, found before any test patches the environment
SHARED_CIFAR10 = _SHARED / "cifar10-jpeg" if _SHARED is not None else Path("no-shared-data")


# ---------------------------------------------------------------------------------------------------------------
# Helpers: tiny data sets on disk
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def isolated(tmp_path, monkeypatch) -> Path:
    """Hide every real CIFAR-10 source: no env root, an empty cache, no offline copy. Returns the cache dir."""
    cache = tmp_path / "cache"
    monkeypatch.delenv(D.CIFAR10_ENV, raising=False)
    monkeypatch.setenv(D.CACHE_ENV, str(cache))
    monkeypatch.setenv(_paths.SHARED_DATA_ENV, str(tmp_path / "no-shared-data"))
    return cache


def shared_copy(tmp_path, monkeypatch, name: str = "shared") -> Path:
    """Point ``$PROFIT_EDU_SHARED_DATA`` at ``tmp_path/name``; return where its CIFAR-10 copy goes."""
    monkeypatch.setenv(_paths.SHARED_DATA_ENV, str(tmp_path / name))
    return tmp_path / name / "cifar10-jpeg"


def _red(label: int) -> int:
    return 20 * label + 10  # each class a distinct red level, recoverable after JPEG


def make_jpeg_tree(root: Path, split: str, per_class: int = 2, classes=D.CIFAR10_CLASSES) -> Path:
    """Write ``root/split/<class>/NNNN.jpg``: 32x32 images whose red channel encodes the label."""
    rng = np.random.default_rng(len(split) + per_class)
    for label, name in enumerate(classes):
        folder = root / split / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.zeros((32, 32, 3), dtype=np.uint8)
            pixels[..., 0] = _red(label)
            pixels[..., 1] = rng.integers(0, 256)
            pixels[..., 2] = 40 * i
            Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=95)
    return root


def make_tarball(root: Path, split: str) -> Path:
    """Pack ``root/split`` as ``root/split.tar.gz`` (members ``split/<class>/NNNN.jpg``) and remove the folder."""
    tar_path = root / f"{split}.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(root / split, arcname=split)
    for path in sorted((root / split).rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (root / split).rmdir()
    return tar_path


def check_tiny(data: D.ImageArrays, per_class: int = 2) -> None:
    assert data.images.shape == (10 * per_class, 3, 32, 32) and data.images.dtype == torch.uint8
    assert data.labels.dtype == torch.int64 and data.classes == D.CIFAR10_CLASSES
    assert data.class_counts() == [per_class] * 10
    red = data.images[:, 0].float().mean(dim=(1, 2))
    assert torch.allclose(red, torch.tensor([float(_red(int(k))) for k in data.labels]), atol=6)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# CIFAR-10 from local copies
# ---------------------------------------------------------------------------------------------------------------


def test_cifar10_from_folder_and_tarball_agree(isolated, tmp_path):
    folder_root = make_jpeg_tree(tmp_path / "folders", "test")
    tar_root = make_jpeg_tree(tmp_path / "tarballs", "test")
    make_tarball(tar_root, "test")
    from_folder = D.cifar10(folder_root, train=False, cache_dir=tmp_path / "c1")
    from_tar = D.cifar10(tar_root, train=False, cache_dir=tmp_path / "c2")
    check_tiny(from_folder)
    check_tiny(from_tar)
    assert "JPEG folder" in from_folder.source and "JPEG tarball" in from_tar.source
    assert torch.equal(from_folder.images, from_tar.images) and torch.equal(from_folder.labels, from_tar.labels)
    image, label = from_tar[3]
    assert image.shape == (3, 32, 32) and isinstance(label, int)


def test_cifar10_train_split_and_env_root(isolated, tmp_path, monkeypatch):
    root = make_jpeg_tree(tmp_path / "env-root", "train", per_class=3)
    monkeypatch.setenv(D.CIFAR10_ENV, str(root))
    check_tiny(D.cifar10(train=True), per_class=3)
    assert (isolated / "cifar10-train.safetensors").is_file()  # the default cache dir is $PROFIT_EDU_DATA
    with pytest.raises(FileNotFoundError, match=r"PROFIT_EDU_CIFAR10"):
        D.cifar10(train=False)  # an explicit root is the only place searched


def test_cifar10_default_candidates(isolated, tmp_path, monkeypatch):
    shared = make_jpeg_tree(shared_copy(tmp_path, monkeypatch), "test")
    make_tarball(shared, "test")
    check_tiny(D.cifar10(train=False))
    make_jpeg_tree(isolated / "cifar10", "test", per_class=1)  # <cache>/cifar10 comes first
    check_tiny(D.cifar10(train=False), per_class=1)


def test_cifar10_second_load_reads_the_cache(isolated, tmp_path, monkeypatch):
    root = make_jpeg_tree(tmp_path / "root", "test")
    first = D.cifar10(root, train=False)

    def no_decoding(blob, name):
        raise AssertionError(f"decoded {name} although the cache is fresh")

    monkeypatch.setattr(C, "_decode_jpeg", no_decoding)
    second = D.cifar10(root, train=False)
    assert second.source.startswith("cache ") and str(root / "test") in second.source
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert second.classes == D.CIFAR10_CLASSES


def test_cifar10_changed_source_invalidates_the_cache(isolated, tmp_path, monkeypatch):
    root = make_jpeg_tree(tmp_path / "root", "test")
    before = D.cifar10(root, train=False)
    changed = root / "test" / "cat" / "0001.jpg"
    Image.fromarray(np.full((32, 32, 3), 255, dtype=np.uint8)).save(changed, quality=95)
    calls = []
    real_decode = C._decode_jpeg
    monkeypatch.setattr(C, "_decode_jpeg", lambda blob, name: calls.append(name) or real_decode(blob, name))
    after = D.cifar10(root, train=False)
    assert len(calls) == 20 and "cache" not in after.source
    index = 3 * 2 + 1  # cat is class 3, its second image
    assert not torch.equal(before.images[index], after.images[index])
    assert int(after.images[index].float().mean()) > 250


def test_cifar10_uses_a_leftover_cache_when_the_source_is_gone(isolated, tmp_path, monkeypatch):
    make_jpeg_tree(shared_copy(tmp_path, monkeypatch), "test")
    first = D.cifar10(train=False)
    shared_copy(tmp_path, monkeypatch, "gone")
    again = D.cifar10(train=False)
    assert again.source.startswith("cache ") and torch.equal(first.images, again.images)


def test_cifar10_not_found_lists_every_place(isolated, tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        D.cifar10(train=False)
    message = str(info.value)
    for place in (isolated / "cifar10", tmp_path / "no-shared-data" / "cifar10-jpeg",
                  isolated / "cifar10-test.safetensors"):
        assert str(place) in message
    assert "download=True" in message and D.CIFAR10_ENV in message
    with pytest.raises(FileNotFoundError, match=r"nowhere.*the root argument"):
        D.cifar10(tmp_path / "nowhere", train=False)


def test_cifar10_rejects_bad_layouts_and_arguments(isolated, tmp_path):
    wrong = make_jpeg_tree(tmp_path / "wrong", "test", classes=("cats", "dogs"))
    with pytest.raises(ValueError, match=r"one folder per CIFAR-10 class"):
        D.cifar10(wrong, train=False)
    big = make_jpeg_tree(tmp_path / "big", "test", per_class=1)
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(big / "test" / "dog" / "0000.jpg")
    with pytest.raises(ValueError, match=r"dog/0000.jpg is \(40, 40\), expected 32x32"):
        D.cifar10(big, train=False)
    with pytest.raises(TypeError, match=r"train must be a bool"):
        D.cifar10(big, train="test")


# ---------------------------------------------------------------------------------------------------------------
# CIFAR-10: the download path, offline (a small release in the official python format, served on localhost)
# ---------------------------------------------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the test output clean
        pass


@pytest.fixture
def fake_release(tmp_path, monkeypatch) -> Iterator[dict[str, np.ndarray]]:
    """Build a 2-images-per-batch ``cifar-10-python.tar.gz``, serve it over HTTP on localhost, and point
    torchvision's URL and MD5s at it (a file:// URL does not work: torchvision reads the response's length)."""
    folder = tmp_path / "release" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays, md5s = {}, {}
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        arrays[name] = rng.integers(0, 256, (2, 3072), dtype=np.uint8)  # rows: R plane, G plane, B plane
        with open(folder / name, "wb") as f:
            pickle.dump({"data": arrays[name], "labels": [i, 9 - i]}, f)
        md5s[name] = _md5(folder / name)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(D.CIFAR10_CLASSES)}, f)
    tarball = tmp_path / "release" / "cifar-10-python.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=tarball.parent)
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(CIFAR10, "url", f"http://127.0.0.1:{server.server_port}/{tarball.name}")
    monkeypatch.setattr(CIFAR10, "tgz_md5", _md5(tarball))
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{k}", md5s[f"data_batch_{k}"]] for k in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5s["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": _md5(folder / "batches.meta")})
    yield arrays
    server.shutdown()
    server.server_close()


def test_cifar10_download_checks_md5_and_loads(isolated, fake_release):
    with pytest.raises(FileNotFoundError):
        D.cifar10(train=False)  # no download unless asked
    test = D.cifar10(train=False, download=True)
    assert (isolated / "cifar10" / "cifar-10-batches-py" / "test_batch").is_file()
    assert "official python batches" in test.source
    assert torch.equal(test.images, torch.from_numpy(fake_release["test_batch"]).view(2, 3, 32, 32))
    assert test.labels.tolist() == [5, 4]
    train = D.cifar10(train=True)  # found in <cache>/cifar10 now, no download needed
    expected = np.concatenate([fake_release[f"data_batch_{k}"] for k in range(1, 6)])
    assert torch.equal(train.images, torch.from_numpy(expected).view(10, 3, 32, 32))
    assert train.labels.tolist() == [0, 9, 1, 8, 2, 7, 3, 6, 4, 5]


def test_cifar10_download_rejects_a_tampered_batch(isolated, fake_release):
    D.cifar10(train=False, download=True)
    batch = isolated / "cifar10" / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes() + b"tampered")
    with pytest.raises(RuntimeError, match=r"failed torchvision's MD5 check"):
        D.cifar10(train=False)


# ---------------------------------------------------------------------------------------------------------------
# ImageNet folders
# ---------------------------------------------------------------------------------------------------------------


def test_imagenet_folder_shapes_and_errors(tmp_path):
    for split in ("train", "val"):
        for wnid, size, mode in (("n01", (50, 80), "RGB"), ("n02", (90, 60), "L")):  # one grayscale class
            folder = tmp_path / split / wnid
            folder.mkdir(parents=True)
            for i in range(2):
                Image.new(mode, size, color=100 + i).save(folder / f"img_{i}.JPEG")
    val = D.imagenet_folder(tmp_path, "val", image_size=64)
    assert len(val) == 4 and val.classes == ["n01", "n02"]
    for x, _ in (val[0], val[3]):
        assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert val[3][1] == 1
    train = D.imagenet_folder(tmp_path, "train", image_size=48)
    assert train[0][0].shape == (3, 48, 48)
    with pytest.raises(ValueError, match=r"'train' or 'val'"):
        D.imagenet_folder(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match=r"missing.*val"):
        D.imagenet_folder(tmp_path / "missing", "val")


def test_imagenet_transforms_are_the_standard_ones():
    val = D.imagenet_transforms(False, 64).transforms
    assert val[0].size == round(64 * 256 / 224) == 73 and val[1].size == (64, 64)
    assert val[-1].mean == D.IMAGENET_MEAN and val[-1].std == D.IMAGENET_STD
    train = D.imagenet_transforms(True).transforms
    assert type(train[0]).__name__ == "RandomResizedCrop" and train[0].size == (224, 224)
    assert train[0].interpolation.value == "bicubic" and type(train[1]).__name__ == "RandomHorizontalFlip"
    with pytest.raises(ValueError, match=r"image_size must be an int >= 8"):
        D.imagenet_transforms(False, 4)


# ---------------------------------------------------------------------------------------------------------------
# Synthetic data and subsets
# ---------------------------------------------------------------------------------------------------------------


def test_synthetic_is_seeded_balanced_and_shaped():
    a, b, c = D.synthetic(100, seed=3), D.synthetic(100, seed=3), D.synthetic(100, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (100, 3, 32, 32) and a.images.dtype == torch.uint8 and a.labels.dtype == torch.int64
    assert a.class_counts() == [10] * 10 and len(set(a.classes)) == 10
    small = D.synthetic(15, num_classes=4, image_size=16, seed=0)
    assert small.images.shape == (15, 3, 16, 16) and sorted(small.class_counts()) == [3, 4, 4, 4]
    for bad, error in (({"n": 0}, ValueError), ({"num_classes": 21}, ValueError), ({"seed": 1.5}, TypeError)):
        with pytest.raises(error, match=next(iter(bad))):
            D.synthetic(**{"n": 10, **bad})


def test_synthetic_is_learnable_by_a_tiny_cnn():
    data = D.synthetic(512, seed=0)
    mean, std = D.pixel_stats(data)
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 5, stride=2, padding=2), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )  # fmt: skip
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    train = D.DeviceLoader(data, 32, train=True, mean=mean, std=std, crop_padding=0, flip=False)
    evaluate = D.DeviceLoader(data, 256, train=False, mean=mean, std=std)
    accuracy, start, threads = 0.0, time.perf_counter(), torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread is faster, and immune to busy shared cores
    try:
        for epoch in range(10):  # about 0.2 s an epoch; colour alone gives 50%, the stripes' orientation the rest
            train.set_epoch(epoch)
            net.train()
            for x, y in train:
                loss = F.cross_entropy(net(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            net.eval()
            with torch.no_grad():
                accuracy = sum(int((net(x).argmax(1) == y).sum()) for x, y in evaluate) / len(data)
            if accuracy >= 0.6:
                break
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - start
    assert accuracy >= 0.6, f"train accuracy {accuracy:.2f} after {epoch + 1} epochs ({seconds:.1f} s)"


def test_subset_is_balanced_seeded_and_checked():
    data = D.synthetic(200, seed=0)
    part = D.subset(data, 25, seed=1)
    assert len(part) == 25 and sorted(part.class_counts()) == [2] * 5 + [3] * 5
    assert torch.equal(part.images, D.subset(data, 25, seed=1).images)
    assert not torch.equal(part.images, D.subset(data, 25, seed=2).images)
    uniform = D.subset(data, 30, seed=0, stratified=False)
    assert len(uniform) == 30 and "uniform subset" in uniform.source
    with pytest.raises(ValueError, match=r"at most len\(data\) = 200"):
        D.subset(data, 201)
    two = D.synthetic(12, num_classes=2, seed=0)
    lopsided = two.select(torch.cat([torch.nonzero(two.labels == 0).flatten(), torch.nonzero(two.labels == 1)[:1, 0]]))
    assert lopsided.class_counts() == [6, 1]
    with pytest.raises(ValueError, match=r"has 1 images, fewer than its share 3"):
        D.subset(lopsided, 6)


def test_image_arrays_validates():
    with pytest.raises(TypeError, match=r"uint8"):
        D.ImageArrays(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.int64), ("a",), "x")
    with pytest.raises(ValueError, match=r"labels must lie in 0..0"):
        D.ImageArrays(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), ("a",), "x")
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        D.ImageArrays(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 0]), ("a",), "x")


def test_pixel_stats_match_numpy():
    data = D.synthetic(50, seed=0)
    pixels = data.images.numpy().astype(np.float64) / 255
    mean, std = D.pixel_stats(data)
    np.testing.assert_allclose(mean, pixels.mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(std, pixels.std(axis=(0, 2, 3)), rtol=1e-9)


def test_cifar10_or_synthetic_falls_back_only_when_nothing_is_found(isolated, tmp_path, monkeypatch):
    train, fell_back = D.cifar10_or_synthetic(True, n=40, seed=0)
    test, _ = D.cifar10_or_synthetic(False, n=40, seed=0)
    assert fell_back and len(train) == 40 and train.source.startswith("synthetic(")
    assert not torch.equal(train.images, test.images)  # independent draws for the two splits
    make_jpeg_tree(shared_copy(tmp_path, monkeypatch), "test", per_class=3)
    real, fell_back = D.cifar10_or_synthetic(False, n=20, seed=0)
    assert not fell_back and real.class_counts() == [2] * 10 and real.classes == D.CIFAR10_CLASSES


# ---------------------------------------------------------------------------------------------------------------
# DeviceLoader
# ---------------------------------------------------------------------------------------------------------------


def _unique_images(n: int = 10, size: int = 8) -> D.ImageArrays:
    images = torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    return D.ImageArrays(images, torch.arange(n) % 3, ("a", "b", "c"), "random")


IDENTITY = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}  # x = pixels / 255


def _as_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round().to(torch.uint8)


def _epoch(loader: D.DeviceLoader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return list(loader)


def test_device_loader_epochs_are_pure_functions_of_seed_and_epoch():
    data = _unique_images(24)
    uninterrupted = D.DeviceLoader(data, 5, train=True, seed=7, **IDENTITY)
    history = [_epoch(uninterrupted, e) for e in range(3)]
    resumed = D.DeviceLoader(data, 5, train=True, seed=7, **IDENTITY)
    for (x1, y1), (x2, y2) in zip(history[2], _epoch(resumed, 2)):  # resumed at epoch 2: the same batches
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(history[0][0][0], history[1][0][0])  # epochs differ
    other_seed = _epoch(D.DeviceLoader(data, 5, train=True, seed=8, **IDENTITY), 2)
    assert not torch.equal(other_seed[0][0], history[2][0][0])
    assert len(uninterrupted) == 4 and len(history[0]) == 4  # 24 // 5, last partial batch dropped
    x, y = history[0][0]
    assert x.shape == (5, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_device_loader_eval_covers_every_image_once_in_order():
    data = _unique_images(10)
    loader = D.DeviceLoader(data, 4, train=False)
    batches = list(loader)
    assert len(loader) == len(batches) == 3 and [len(y) for _, y in batches] == [4, 4, 2]
    x = torch.cat([x for x, _ in batches])
    assert torch.equal(torch.cat([y for _, y in batches]), data.labels)
    mean, std = torch.tensor(D.CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(D.CIFAR10_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (data.images.float() / 255 - mean) / std)
    with pytest.raises(ValueError, match=r"drop_last=True with train=False"):
        D.DeviceLoader(data, 4, train=False, drop_last=True)


def test_device_loader_shuffles_without_losing_images():
    data = _unique_images(12)
    batches = _epoch(D.DeviceLoader(data, 4, train=True, crop_padding=0, flip=False, **IDENTITY), 0)
    images, labels = _as_uint8(torch.cat([x for x, _ in batches])), torch.cat([y for _, y in batches])
    order = [next(i for i in range(12) if torch.equal(data.images[i], img)) for img in images]
    assert sorted(order) == list(range(12)) and order != list(range(12))
    assert torch.equal(labels, data.labels[order])


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_device_loader_augmentation_matches_a_per_image_oracle(padding_mode):
    data, p = _unique_images(16), 2
    loader = D.DeviceLoader(data, 16, train=True, crop_padding=p, padding_mode=padding_mode, **IDENTITY)
    x, y = next(iter(loader))
    changed = 0
    for out, label in zip(_as_uint8(x), y):
        # the oracle: pad one source image with F.pad, try every crop offset and flip
        mode = "constant" if padding_mode == "zeros" else "reflect"
        matches = []
        for i in torch.nonzero(data.labels == label).flatten().tolist():
            padded = F.pad(data.images[i].float()[None], (p, p, p, p), mode=mode)[0].to(torch.uint8)
            for dy in range(2 * p + 1):
                for dx in range(2 * p + 1):
                    crop = padded[:, dy : dy + 8, dx : dx + 8]
                    for flipped in (False, True):
                        if torch.equal(crop.flip(-1) if flipped else crop, out):
                            matches.append((i, dy, dx, flipped))
        assert matches, "an augmented image is no crop/flip of any source image"
        changed += all((dy, dx, flipped) != (p, p, False) for _, dy, dx, flipped in matches)
    assert changed >= 10  # with 25 offsets x 2 flips, most images change


def test_device_loader_checks_its_arguments():
    data = _unique_images(6)
    with pytest.raises(ValueError, match=r"batch_size must be an int >= 1"):
        D.DeviceLoader(data, 0, train=True)
    with pytest.raises(ValueError, match=r"exceeds the 6 images"):
        D.DeviceLoader(data, 8, train=True)
    assert len(D.DeviceLoader(data, 8, train=True, drop_last=False)) == 1
    with pytest.raises(ValueError, match=r"'zeros' or 'reflect'"):
        D.DeviceLoader(data, 2, train=True, padding_mode="edge")
    with pytest.raises(TypeError, match=r"ImageArrays"):
        D.DeviceLoader(data.images, 2, train=True)
    with pytest.raises(ValueError, match=r"epoch must be an int >= 0"):
        D.DeviceLoader(data, 2, train=True).set_epoch(-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_device_loader_on_cuda_matches_cpu():
    data = _unique_images(20)
    cpu = _epoch(D.DeviceLoader(data, 8, train=True, seed=1), 3)
    gpu = _epoch(D.DeviceLoader(data, 8, train=True, seed=1, device="cuda"), 3)
    for (x1, y1), (x2, y2) in zip(cpu, gpu):
        assert x2.is_cuda and torch.equal(y1, y2.cpu())
        torch.testing.assert_close(x1, x2.cpu())


# ---------------------------------------------------------------------------------------------------------------
# The real offline copy (skipped on a fresh clone)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(
    not (SHARED_CIFAR10 / "test.tar.gz").is_file(),
    reason=f"the offline CIFAR-10 copy {SHARED_CIFAR10}/test.tar.gz is absent (it lives beside the repository)",
)
def test_real_cifar10_test_split(tmp_path, record_property):
    start = time.perf_counter()
    decoded = D.cifar10(SHARED_CIFAR10, train=False, cache_dir=tmp_path)
    decode_s = time.perf_counter() - start
    start = time.perf_counter()
    cached = D.cifar10(SHARED_CIFAR10, train=False, cache_dir=tmp_path)
    cached_s = time.perf_counter() - start
    record_property("decode_s", round(decode_s, 2))
    record_property("cached_load_s", round(cached_s, 3))
    print(f"CIFAR-10 test split: decode {decode_s:.2f} s, cached load {cached_s:.3f} s")
    assert len(decoded) == 10_000 and decoded.class_counts() == [1000] * 10
    assert decoded.images.shape == (10_000, 3, 32, 32) and cached.source.startswith("cache ")
    assert torch.equal(decoded.images, cached.images) and torch.equal(decoded.labels, cached.labels)
    mean, std = D.pixel_stats(decoded)  # the test split's statistics are close to the train split's
    np.testing.assert_allclose(mean, D.CIFAR10_MEAN, atol=0.01)
    np.testing.assert_allclose(std, D.CIFAR10_STD, atol=0.01)

"""profit_edu.reproduce in one process: the recipe as a run trains it, inputs refused before training, seeded
ImageNet augmentation, unreadable images, the teacher's weights, damaged checkpoints, the compute estimate."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest
import torch
import torchvision
from torch import nn

from profit_edu import checkpoint as ckpt
from profit_edu.data import ImageNetFolderError, SeededImages, check_imagenet_root, imagenet_folder, imagenet_transforms
from profit_edu.distributed import World
from profit_edu.pretrained import fetch_weights
from profit_edu.recipe import RecipeError, load_recipe, parse_recipe
from profit_edu.reproduce import (
    ShardLoader,
    add_arguments,
    compute_estimate,
    load_teacher,
    make_loaders,
    prepare_recipe,
    recover_run,
    reproduce,
)
from tests.imagenet_folder import TINY_RECIPE, make_imagenet_folder, write_recipe


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_imagenet_folder(tmp_path_factory.mktemp("imagenet"), classes=4, train=8, val=2, size=36)


def _tiny(**changes) -> object:
    text = TINY_RECIPE
    for old, new in changes.items():
        text = text.replace(old, new)
    return parse_recipe(text, "tiny.yaml")


# --------------------------------------------------------------------------------------------
# The recipe as this run trains it
# --------------------------------------------------------------------------------------------
def test_the_global_batch_scales_the_learning_rates_as_the_recipe_says(folder):
    recipe = prepare_recipe(load_recipe("mobilenet_v2_w4a4_imagenet"), data=folder, world_size=8, batch_size=1024)
    assert recipe.data.batch_size == 1024 and recipe.data.root == str(folder)
    assert recipe.train.lr == pytest.approx(0.005 * 4)  # linear: 1024 / 256
    same = prepare_recipe(_tiny(**{"lr_scaling: linear": "lr_scaling: none"}), data=folder, batch_size=64)
    assert same.train.lr == 0.005
    assert prepare_recipe(_tiny(), data=folder, world_size=2).train.lr == 0.005  # the recipe's own batch


def test_a_world_size_that_does_not_divide_the_batch_is_refused_before_training(folder):
    with pytest.raises(RecipeError, match="global batch 16 does not split evenly over 3 processes"):
        prepare_recipe(_tiny(), data=folder, world_size=3)
    with pytest.raises(RecipeError, match="does not split evenly over 8"):
        prepare_recipe(load_recipe("mobilenet_v2_w4a4_imagenet"), data=folder, world_size=8, batch_size=100)


def test_only_imagenet_recipes_of_whole_folders(folder):
    with pytest.raises(RecipeError, match="reproduce trains ImageNet-layout folders"):
        prepare_recipe(load_recipe("tiny"), data=folder)
    with pytest.raises(RecipeError, match="train_images and val_images must be null"):
        prepare_recipe(_tiny(**{"workers: 0": "workers: 0, train_images: 8"}), data=folder)


def test_every_imagenet_recipe_says_what_it_should_reach():
    for name in ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large"):
        for bits in ("w4a4", "w3a3"):
            recipe = load_recipe(f"{name}_{bits}_imagenet")
            spec = recipe.reproduce
            assert spec is not None and spec.expected_source, recipe.name
            assert recipe.schedule.profit_bits == (int(bits[1]),)
    assert load_recipe("mobilenet_v2_w4a4_imagenet").reproduce.expected_top1 is not None
    assert "reproduce" not in load_recipe("tiny").to_dict()  # recipes without it keep their recipe.json
    with pytest.raises(RecipeError, match="expected_source must say where"):
        _tiny(**{"lr_scaling: linear}": "lr_scaling: linear, expected_top1: 70.0}"})


# --------------------------------------------------------------------------------------------
# The ImageNet folders, checked before training
# --------------------------------------------------------------------------------------------
def test_a_good_folder_passes_with_its_counts(folder):
    assert check_imagenet_root(folder, 4) == {"classes": 4, "train": 32, "val": 8}


def _unsort_val(root):
    """val/ as ImageNet ships it: every image loose in one folder."""
    for f in list((root / "val").glob("*/*.JPEG")):
        shutil.move(str(f), root / "val" / f.name)
    for d in (root / "val").iterdir():
        if d.is_dir():
            d.rmdir()


@pytest.mark.parametrize(("damage", "error", "match"), [
    (lambda r: shutil.rmtree(r / "val"), FileNotFoundError, "val folder .* not found"),
    (_unsort_val, ImageNetFolderError, "holds 8 images but no class folders"),
    (lambda r: (r / "train" / "n99999999").mkdir(), ImageNetFolderError, "hold no images"),
    (lambda r: (r / "val" / "n00000003").rename(r / "val" / "n00000009"), ImageNetFolderError, "different classes"),
    (lambda r: sorted((r / "train" / "n00000000").iterdir())[0].write_bytes(b"not a jpeg"), ImageNetFolderError,
     "cannot decode"),
], ids=["no-val", "unsorted-val", "empty-class", "other-classes", "undecodable"])
def test_a_malformed_folder_is_refused_with_what_to_do(folder, tmp_path, damage, error, match):
    root = shutil.copytree(folder, tmp_path / "copy")
    damage(root)
    with pytest.raises(error, match=match):
        check_imagenet_root(root, 4)


def test_a_class_count_that_does_not_match_the_model_is_refused(folder, tmp_path):
    with pytest.raises(ImageNetFolderError, match="has 4 classes, but the model predicts 1000"):
        check_imagenet_root(folder, 1000)
    with pytest.raises(FileNotFoundError, match="pass the folder that holds train/ and val/"):
        check_imagenet_root(tmp_path / "nowhere")


# --------------------------------------------------------------------------------------------
# Images augmented by (seed, epoch, index); unreadable images
# --------------------------------------------------------------------------------------------
def test_augmentation_depends_on_seed_epoch_and_index_only(folder):
    images = SeededImages(imagenet_folder(folder, "train", image_size=24), imagenet_transforms(True, 24), seed=3)
    first = images[(5, 2)][0]
    torch.rand(100)  # the caller's generator does not matter ...
    assert torch.equal(images[(1, 2)][0], images[(1, 2)][0]) and torch.equal(images[(5, 2)][0], first)
    assert not torch.equal(images[(5, 3)][0], first)  # ... the epoch does
    state = torch.get_rng_state()
    images[(0, 0)]
    assert torch.equal(torch.get_rng_state(), state)  # and it is left untouched


def test_an_unreadable_image_stops_the_run_or_is_replaced_and_counted(folder, tmp_path):
    root = shutil.copytree(folder, tmp_path / "copy")
    bad = sorted((root / "train" / "n00000001").iterdir())[0]
    bad.write_bytes(b"\xff\xd8 truncated")
    data = imagenet_folder(root, "train", image_size=24)
    index = [p for p, _ in data.samples].index(str(bad))
    with pytest.raises(ValueError, match=f"cannot read image {bad}.*--bad-images skip"):
        SeededImages(data, imagenet_transforms(False, 24), seed=0)[index]
    skipping = SeededImages(data, imagenet_transforms(False, 24), seed=0, bad_images="skip")
    x, label, replaced = skipping[index]  # the next image, with its label
    assert replaced == 1 and torch.equal(x, skipping[index + 1][0]) and label == skipping[index + 1][1]
    loader = ShardLoader(skipping, list(range(len(skipping))), 8, workers=0, pin_memory=False, train=False)
    assert sum(len(y) for _, y in loader) == 32 and loader.replaced == 1
    with pytest.raises(ValueError, match="bad_images must be one of"):
        SeededImages(data, imagenet_transforms(False, 24), seed=0, bad_images="ignore")


def test_loaders_give_one_process_its_share_of_whole_batches(folder):
    recipe = prepare_recipe(_tiny(), data=folder, world_size=2)
    train, val = make_loaders(recipe, World(rank=1, size=2))
    assert len(train) == 32 // 16 and len(val) == 1
    train.set_epoch(0)
    assert [tuple(x.shape) for x, _ in train] == [(8, 3, 32, 32)] * 2
    assert sum(len(y) for _, y in val) == 4  # 8 validation images, every other one


# --------------------------------------------------------------------------------------------
# The teacher
# --------------------------------------------------------------------------------------------
def test_fetch_weights_checks_the_sha256_in_the_name(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    blob = b"some weights"
    good = source / f"net-{__import__('hashlib').sha256(blob).hexdigest()[:8]}.pth"
    good.write_bytes(blob)
    path = fetch_weights(good.as_uri(), tmp_path / "cache")
    assert path.read_bytes() == blob and path.parent == tmp_path / "cache"
    assert fetch_weights(good.as_uri(), tmp_path / "cache") == path  # cached
    bad = source / "net-00000000.pth"
    bad.write_bytes(blob)
    with pytest.raises(ckpt.CheckpointError, match="does not have the sha256 its name promises"):
        fetch_weights(bad.as_uri(), tmp_path / "cache")
    path.write_bytes(b"damaged")
    with pytest.raises(ckpt.CheckpointError, match="delete it to download it again"):
        fetch_weights(good.as_uri(), tmp_path / "cache")


def test_teacher_from_a_local_file_loads_strictly(tmp_path):
    recipe = _tiny(**{"teacher: none": "teacher: mobilenet_v3_small"})
    net = torchvision.models.mobilenet_v3_small(num_classes=4)
    torch.save(net.state_dict(), tmp_path / "teacher.pth")
    teacher = load_teacher(recipe, weights=tmp_path / "teacher.pth")
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert torch.equal(teacher.classifier[-1].weight, net.classifier[-1].weight)
    torch.save(torchvision.models.mobilenet_v3_small(num_classes=5).state_dict(), tmp_path / "other.pth")
    with pytest.raises(ckpt.CheckpointError, match=r"classifier\.3\.weight"):
        load_teacher(recipe, weights=tmp_path / "other.pth")
    assert load_teacher(_tiny()) is None
    with pytest.raises(RecipeError, match="not a torchvision classifier"):
        load_teacher(_tiny(**{"teacher: none": "teacher: resnet9000"}))


# --------------------------------------------------------------------------------------------
# Damaged checkpoints
# --------------------------------------------------------------------------------------------
def _save(directory, epoch, model):
    ckpt.save_checkpoint(directory, epoch=epoch, model=model, keep_previous=True)


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    model = nn.Linear(2, 2)
    unit = tmp_path / "00_a4_ft"
    for epoch in range(3):
        _save(unit, epoch, model)
    assert json.loads((unit / ckpt.PREVIOUS_JSON_NAME).read_text())["epoch"] == 1
    assert len(list(unit.glob("*.safetensors"))) == 2  # the latest and the previous
    assert recover_run(tmp_path) == []
    tensors = unit / json.loads((unit / ckpt.JSON_NAME).read_text())["tensors"]["file"]
    tensors.write_bytes(tensors.read_bytes()[:-3])  # truncated
    (messages,) = recover_run(tmp_path)
    assert "damaged" in messages and "fell back to the previous one: training goes on with epoch 2" in messages
    assert ckpt.load_checkpoint(unit).epoch == 1


def test_without_a_previous_checkpoint_the_unit_starts_over(tmp_path):
    model = nn.Linear(2, 2)
    first, second = tmp_path / "00_a4_ft", tmp_path / "01_w4_ft"
    _save(first, 0, model)
    (first / "done.json").write_text("{}")
    ckpt.save_checkpoint(second, epoch=0, model=model)
    (second / "done.json").write_text("{}")
    (second / ckpt.JSON_NAME).write_text("{broken")
    (messages,) = recover_run(tmp_path)
    assert "no usable previous one" in messages
    assert not (second / "done.json").exists() and not ckpt.has_checkpoint(second)
    assert (first / "done.json").exists()  # the unit before is sound: it stays finished


# --------------------------------------------------------------------------------------------
# The compute estimate and the dry run
# --------------------------------------------------------------------------------------------
def test_compute_estimate_counts_the_schedule_and_the_models():
    recipe = load_recipe("mobilenet_v2_w4a4_imagenet")
    est = compute_estimate(recipe, images_per_epoch=1000, tflops_per_gpu=10.0)
    assert est["epochs"] == 200 and est["images"] == 200_000
    assert est["student_gmacs"] == pytest.approx(0.30, abs=0.01)  # MobileNet-v2 at 224: 300 M MACs
    assert est["teacher_gmacs"] == pytest.approx(7.8, abs=0.1)  # ResNet-101: 7.8 G MACs
    flops = 2 * 1000 * 200 * (3 * est["student_gmacs"] + est["teacher_gmacs"]) * 1e9
    assert est["pflops"] == pytest.approx(flops / 1e15)
    assert est["gpu_hours"] == pytest.approx(flops / 10e12 / 3600)


def test_dry_run_checks_the_inputs_and_prints_the_plan(folder, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "tiny.yaml")
    args = add_arguments(argparse.ArgumentParser()).parse_args(
        ["--recipe", str(recipe), "--data", str(folder), "--dry-run", "--device", "cpu"])
    assert reproduce(args) is None
    out = capsys.readouterr().out
    assert "4 classes, 32 train and 8 val images" in out and "w4_sampling" in out and "GPU-hours" in out
    bad = add_arguments(argparse.ArgumentParser()).parse_args(
        ["--recipe", "mobilenet_v2_w4a4_imagenet", "--data", str(folder), "--dry-run", "--device", "cpu"])
    with pytest.raises(ImageNetFolderError, match="has 4 classes, but the model predicts 1000"):
        reproduce(bad)

"""The evaluation view of a folder of images as a pretrained model's timm data config describes
it: crop fraction, interpolation, the training views that start from it, the statistics cache
and the run's record."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from folder_helpers import gradient_photo, photo_folder, shifts_of

from symtrain.data import ImageFolder
from symtrain.data.images import BasePipeline, read_image
from symtrain.errors import SymtrainError

# --- the evaluation view as a pretrained model's timm data config describes it ---------------------


def evaluation_image(root: Path, storage: str = "memory", **options: object) -> torch.Tensor:
    """The folder's test image (uint8 (C, S, S)) as evaluation sees it."""
    data = ImageFolder(str(root), storage=storage, num_workers=0, mean=[0.5] * 3, std=[0.2] * 3, **options)
    data.setup()
    return next(iter(data.test_dataloader()))[0][0]


@pytest.mark.parametrize("storage", ["memory", "stream"])
def test_crop_fraction_resizes_the_shorter_side_to_size_over_it_then_crops_the_centre(
    storage: str, tmp_path: Path
) -> None:
    from torchvision.transforms import v2

    photo = read_image(photo_folder(tmp_path), 3)
    half = evaluation_image(tmp_path, storage, image_size=16, crop_fraction=0.5)
    assert torch.equal(half, v2.CenterCrop(16)(v2.Resize(32, antialias=True)(photo)))
    default = evaluation_image(tmp_path, storage, image_size=16)  # as before: 16, then the centre 16
    assert torch.equal(default, v2.CenterCrop(16)(v2.Resize(16, antialias=True)(photo)))
    whole = evaluation_image(tmp_path, storage, image_size=16, crop_fraction=1.0)
    assert torch.equal(whole, default) and not torch.equal(half, default)
    # Kept 100%: the top row is the border (the shorter side is whole); kept 50%: no border at all.
    magenta = torch.tensor([250, 20, 200])[:, None]
    assert (default[:, 0] - magenta).abs().max(dim=0).values.lt(40).all()
    assert not (half[:, 0] - magenta).abs().max(dim=0).values.lt(40).any()


def test_bicubic_interpolation_is_torchvisions_and_differs_from_bilinear(tmp_path: Path) -> None:
    from torchvision.transforms import v2

    photo = read_image(photo_folder(tmp_path), 3)
    bicubic = evaluation_image(tmp_path, image_size=16, interpolation="bicubic")
    bilinear = evaluation_image(tmp_path, image_size=16, interpolation="bilinear")
    expected = v2.Resize(16, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)(photo)
    assert torch.equal(bicubic, v2.CenterCrop(16)(expected))
    assert not torch.equal(bicubic, bilinear)
    assert torch.equal(bilinear, evaluation_image(tmp_path, image_size=16))  # None: bilinear
    nearest = evaluation_image(tmp_path, image_size=16, crop_fraction=0.8, interpolation="nearest")
    expected = v2.Resize(20, interpolation=v2.InterpolationMode.NEAREST)(photo)
    assert torch.equal(nearest, v2.CenterCrop(16)(expected))


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_the_evaluation_view_is_timms_for_its_crop_pct_and_interpolation(
    interpolation: str, tmp_path: Path
) -> None:
    import timm.data

    photo_folder(tmp_path)
    image = evaluation_image(tmp_path, image_size=24, crop_fraction=0.875, interpolation=interpolation)
    timms = timm.data.create_transform(
        input_size=(3, 24, 24), interpolation=interpolation, crop_pct=0.875, is_training=False,
        mean=(0, 0, 0), std=(1, 1, 1),
    )(gradient_photo())  # fmt: skip
    assert timms.shape == image.shape == (3, 24, 24)  # floor(24 / 0.875) = 27, then the centre 24
    # timm resizes the PIL image (fixed-point, rounded), symtrain the uint8 tensor (torchvision's
    # antialiased kernels, the same as PIL's): measured, at most one uint8 level apart here
    # (torch 2.14, torchvision 0.29, Pillow 13), so half a level of slack above that.
    torch.testing.assert_close(image.float() / 255, timms, atol=1.5 / 255, rtol=0)


@pytest.mark.parametrize(
    "options,message",
    [
        ({"image_size": 16, "crop_fraction": 0}, "data.crop_fraction is 0: pass a share in \\(0, 1\\]"),
        ({"image_size": 16, "crop_fraction": 1.5}, "data.crop_fraction is 1.5: pass a share in \\(0, 1\\]"),
        ({"image_size": 16, "crop_fraction": -0.5}, "data.crop_fraction is -0.5"),
        ({"crop_fraction": 0.875}, "data.crop_fraction is 0.875 but .* pass --data.image_size SIZE"),
        ({"image_size": 16, "interpolation": "lanczos"}, "data.interpolation is 'lanczos': pass one of"),
    ],
)
def test_bad_evaluation_options_are_one_line(options: dict, message: str, tmp_path: Path) -> None:
    photo_folder(tmp_path)
    with pytest.raises(SymtrainError, match=message) as raised:
        ImageFolder(str(tmp_path), **options)
    assert "\n" not in str(raised.value)


def test_training_views_start_from_the_evaluation_view_and_resize_with_its_interpolation(
    tmp_path: Path,
) -> None:
    from torchvision.transforms import v2

    photo_folder(tmp_path)
    shutil.copytree(tmp_path / "test", tmp_path / "val")  # every training image trains
    settings = dict(image_size=16, crop_fraction=0.5, storage="stream", num_workers=0,
                    mean=[0.5] * 3, std=[0.2] * 3)  # fmt: skip
    reference = evaluation_image(tmp_path, "stream", image_size=16, crop_fraction=0.5)
    for train_transform in ("none", "pad_crop"):
        data = ImageFolder(str(tmp_path), train_transform=train_transform, **settings)
        data.setup()
        trained = next(iter(data.train_dataloader()))[0][0]
        assert shifts_of(trained, reference), train_transform  # the evaluation view, maybe shifted
    resized_crop = BasePipeline("resized_crop").image_transform(16, True, interpolation="bicubic")
    (crop,) = [step for step in resized_crop.transforms if isinstance(step, v2.RandomResizedCrop)]
    assert crop.interpolation == v2.InterpolationMode.BICUBIC and crop.antialias


def test_the_statistics_cache_keeps_its_old_key_without_the_evaluation_options(tmp_path: Path) -> None:
    import hashlib

    photo_folder(tmp_path)
    train = tmp_path / "train" / "a" / "photo.png"
    state = train.stat()
    old = hashlib.sha1(b"3:16:True")  # the key's settings before the evaluation options
    old.update(
        os.fsencode(os.path.join("train", "a", "photo.png"))
        + f":{state.st_size}:{state.st_mtime_ns}".encode()
    )
    cache = tmp_path / ".symtrain-stats.json"
    cache.write_text(json.dumps({old.hexdigest(): {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}}))
    for options in (
        {},
        {"crop_fraction": None, "interpolation": None},
        {"crop_fraction": 1.0},
        {"interpolation": "bilinear"},
    ):  # fmt: skip  (the same pixels: the same key)
        data = ImageFolder(str(tmp_path), image_size=16, **options)
        assert (data.mean, data.std) == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6)), options
    cropped = ImageFolder(str(tmp_path), image_size=16, crop_fraction=0.5)  # other pixels: estimated
    bicubic = ImageFolder(str(tmp_path), image_size=16, interpolation="bicubic")
    assert cropped.mean != (0.1, 0.2, 0.3) and bicubic.mean != (0.1, 0.2, 0.3)
    assert cropped.mean != bicubic.mean
    assert len(json.loads(cache.read_text())) == 3  # the old entry, and one for each new setting


def test_the_evaluation_options_are_recorded_with_the_run(tmp_path: Path) -> None:
    photo_folder(tmp_path)
    data = ImageFolder(str(tmp_path), image_size=16, crop_fraction=0.875, interpolation="bicubic",
                       mean=[0.5] * 3, std=[0.2] * 3)  # fmt: skip
    data.setup()
    described = data.describe()
    assert (described["crop_fraction"], described["interpolation"]) == (0.875, "bicubic")
    plain = ImageFolder(str(tmp_path), image_size=16, mean=[0.5] * 3, std=[0.2] * 3)
    plain.setup()
    assert (plain.describe()["crop_fraction"], plain.describe()["interpolation"]) == (None, None)

"""The image-caption folder: reading, cropping, flipping, and a clear error for every broken
folder."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from jaxgen import image_folder
from jaxgen.errors import UserError


@pytest.fixture()
def shapes(tmp_path) -> str:
    return image_folder.write_shapes_folder(str(tmp_path / "shapes"), n=4, size=12)


def test_reads_pairs_in_metadata_order(shapes):
    folder = image_folder.read_image_folder(shapes)
    assert folder.files == ("0000.png", "0001.png", "0002.png", "0003.png")
    assert folder.captions == ("a red square", "a green square", "a blue square",
                               "a yellow square")
    image = image_folder.load_image(os.path.join(shapes, "0000.png"), 8)
    assert image.shape == (8, 8, 3) and image.dtype == np.uint8
    # The shape is drawn in its colour on a grey ground.
    assert (image.reshape(-1, 3) == (220, 40, 40)).all(1).any()


def test_resizes_the_shorter_side_then_crops_and_flips(tmp_path):
    wide = np.zeros((10, 20, 3), np.uint8)
    wide[:, :, 0] = np.arange(20, dtype=np.uint8)[None] * 10  # red ramps left to right
    Image.fromarray(wide).save(tmp_path / "wide.png")
    image = image_folder.load_image(str(tmp_path / "wide.png"), 5)
    assert image.shape == (5, 10, 3)
    left, centre = image_folder.crop(image, 5, 0.0), image_folder.crop(image, 5)
    assert left.shape == centre.shape == (5, 5, 3)
    assert left[0, 0, 0] < centre[0, 0, 0]  # the centre crop starts further right
    flipped = image_folder.crop(image, 5, 0.5, flip=True)
    np.testing.assert_array_equal(flipped, centre[:, ::-1])


@pytest.mark.parametrize("problem, match", [
    ("no folder", "does not exist"),
    ("no metadata", "has no metadata.jsonl"),
    ("not json", "line 2 is not JSON"),
    ("no text", "line 1 lacks a string file_name or text"),
    ("missing image", "names 0009.png, which is not in"),
    ("not an image", "is not an image that PIL can read"),
    ("empty", "lists no images"),
])
def test_broken_folders_raise_user_errors_with_a_fix(shapes, problem, match):
    meta = os.path.join(shapes, "metadata.jsonl")
    path = shapes
    lines = open(meta).read().splitlines()
    if problem == "no folder":
        path = shapes + "_missing"
    elif problem == "no metadata":
        os.remove(meta)
    elif problem == "not json":
        lines[1] = "{file_name: 0001.png}"
    elif problem == "no text":
        lines[0] = json.dumps({"file_name": "0000.png", "caption": "a red square"})
    elif problem == "missing image":
        lines[2] = json.dumps({"file_name": "0009.png", "text": "a blue square"})
    elif problem == "not an image":
        with open(os.path.join(shapes, "0003.png"), "w") as f:
            f.write("not a png")
    elif problem == "empty":
        lines = []
    if problem not in ("no folder", "no metadata"):
        with open(meta, "w") as f:
            f.write("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=match) as error:
        image_folder.read_image_folder(path)
    assert "Fix:" in str(error.value)


def test_a_gan_reads_any_folder_of_images_grayscale_or_rgb(tmp_path, shapes):
    # With a metadata.jsonl: its order; the 32x32 RGB shapes at 28x28, in RGB and in grayscale.
    files = image_folder.list_images(shapes)
    assert files == image_folder.read_image_folder(shapes).files
    rgb = image_folder.load_images(shapes, files, 28, 3)
    gray = image_folder.load_images(shapes, files, 28, 1)
    assert rgb.shape == (len(files), 28, 28, 3) and gray.shape == (len(files), 28, 28, 1)
    assert rgb.dtype == gray.dtype == np.uint8
    assert abs(float(gray.mean()) - float(rgb.mean())) < 25  # the same pictures, luminance
    # Without one: every image under the folder, subfolders included, sorted; a wide image is
    # resized by its shorter side and cut at the centre.
    plain = tmp_path / "plain"
    (plain / "b").mkdir(parents=True)
    Image.new("L", (60, 30), 200).save(plain / "b" / "wide.png")
    Image.new("RGB", (28, 28), (0, 0, 255)).save(plain / "a.jpg")
    (plain / "notes.txt").write_text("not an image")
    assert image_folder.list_images(str(plain)) == ("a.jpg", os.path.join("b", "wide.png"))
    images = image_folder.load_images(str(plain), image_folder.list_images(str(plain)), 28, 1)
    assert images.shape == (2, 28, 28, 1) and int(images[1].min()) == 200
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder, message in ((empty, "holds no images"), (tmp_path / "missing", "does not exist")):
        with pytest.raises(UserError, match=message):
            image_folder.list_images(str(folder))

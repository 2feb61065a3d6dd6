"""Image-caption pairs from a folder, in the Hugging Face image-folder convention: the images and a
`metadata.jsonl` with one JSON object per line, `{"file_name": "0001.png", "text": "a caption"}`
(`file_name` relative to the folder, subfolders allowed).

Images are read when needed (a fine-tuning set need not fit in memory), converted to RGB, resized
so that their shorter side is the resolution (bilinear, as diffusers' training scripts do), then
cropped to a square, at the centre or at a given offset along the longer side, and optionally
flipped left to right. A GAN reads a folder without captions too (`list_images`,
`load_images`: grayscale or RGB at the model's size). `write_shapes_folder` writes a small
generated set (coloured shapes with their captions) for tests and for trying the code without a
data set.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from jaxgen.errors import UserError

METADATA_FILE = "metadata.jsonl"
_FORMAT = ('one JSON object per line, {"file_name": "0001.png", "text": "a caption"}, '
           "file_name relative to the folder (the Hugging Face image-folder convention)")


@dataclass(frozen=True)
class ImageFolder:
    root: str
    files: tuple[str, ...]  # paths relative to `root`, in metadata.jsonl's order
    captions: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.files)


def read_image_folder(path: str) -> ImageFolder:
    """The folder's pairs, checked: raises `UserError` naming the problem and its fix for a
    missing folder, a missing or empty metadata.jsonl, a line that is not a pair, and an image
    file that is missing or that PIL cannot read (headers only are read here)."""
    if not path:
        raise UserError("No image folder given. Fix: pass --data_dir=FOLDER (or "
                        "--config.data_dir=FOLDER), a folder of images with a metadata.jsonl of "
                        + _FORMAT + ".")
    if not os.path.isdir(path):
        raise UserError(f"The image folder {path} does not exist. Fix: pass --data_dir=FOLDER, "
                        f"a folder of images with a {METADATA_FILE} of {_FORMAT}.")
    meta = os.path.join(path, METADATA_FILE)
    if not os.path.isfile(meta):
        raise UserError(f"The image folder {path} has no {METADATA_FILE}. Fix: write one there "
                        f"with {_FORMAT}.")
    files, captions = [], []
    with open(meta, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{meta} line {number} is not JSON ({e.msg}): {line.strip()!r}. "
                                f"Fix: write {_FORMAT}.") from None
            if not (isinstance(record, dict) and isinstance(record.get("file_name"), str)
                    and isinstance(record.get("text"), str)):
                raise UserError(f"{meta} line {number} lacks a string file_name or text: "
                                f"{line.strip()!r}. Fix: write {_FORMAT}.")
            image = os.path.join(path, record["file_name"])
            if not os.path.isfile(image):
                raise UserError(f"{meta} line {number} names {record['file_name']}, which is "
                                f"not in {path}. Fix: add the image, or remove its line.")
            files.append(record["file_name"])
            captions.append(record["text"])
    if not files:
        raise UserError(f"{meta} lists no images. Fix: write {_FORMAT}.")
    for name in files:
        try:
            with Image.open(os.path.join(path, name)) as image:
                image.verify()
        except (OSError, SyntaxError) as e:
            raise UserError(f"{os.path.join(path, name)} is not an image that PIL can read "
                            f"({e}). Fix: replace it, or remove its line from {meta}.") from None
    return ImageFolder(os.path.abspath(path), tuple(files), tuple(captions))


def load_image(path: str, resolution: int, mode: str = "RGB") -> np.ndarray:
    """(H, W, 3) uint8, RGB (or (H, W) for `mode="L"`, grayscale), resized so that its shorter
    side is `resolution`."""
    with Image.open(path) as image:
        image = image.convert(mode)
        scale = resolution / min(image.size)
        size = (max(resolution, round(image.width * scale)),
                max(resolution, round(image.height * scale)))
        return np.asarray(image.resize(size, Image.Resampling.BILINEAR))


def crop(image: np.ndarray, resolution: int, offset: float = 0.5, flip: bool = False
         ) -> np.ndarray:
    """A `resolution` square of an image whose shorter side is `resolution`: `offset` places it
    along the longer side (0: start, 0.5: centre, 1: end); `flip` mirrors it left to right."""
    h, w = image.shape[:2]
    top, left = round(offset * (h - resolution)), round(offset * (w - resolution))
    out = image[top:top + resolution, left:left + resolution]
    return out[:, ::-1] if flip else out


def batch_images(folder: ImageFolder, indices, resolution: int, offsets=None,
                 flips=None) -> np.ndarray:
    """(B, resolution, resolution, 3) uint8: the images at `indices`, cropped at `offsets`
    (default: centred) and flipped where `flips` (default: none)."""
    n = len(indices)
    offsets = np.full(n, 0.5) if offsets is None else offsets
    flips = np.zeros(n, bool) if flips is None else flips
    return np.stack([crop(load_image(os.path.join(folder.root, folder.files[i]), resolution),
                          resolution, o, f) for i, o, f in zip(indices, offsets, flips)])


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def list_images(path: str) -> tuple[str, ...]:
    """The images of a folder for a GAN, which needs no captions: those its `metadata.jsonl`
    lists (`read_image_folder`), in its order, if it has one; else every file with an image
    extension under it (subfolders included), sorted. Raises `UserError` for a missing folder
    or one without images."""
    if not path or not os.path.isdir(path):
        raise UserError(f"The image folder {path!r} does not exist. Fix: pass "
                        "--data_dir=FOLDER, a folder of images (PNG, JPEG, ...; subfolders "
                        "allowed).")
    if os.path.isfile(os.path.join(path, METADATA_FILE)):
        return read_image_folder(path).files
    files = sorted(os.path.relpath(os.path.join(root, name), path)
                   for root, _, names in os.walk(path) for name in names
                   if name.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise UserError(f"The image folder {path} holds no images (files ending in "
                        f"{', '.join(IMAGE_EXTENSIONS)}). Fix: pass the folder that holds them.")
    return tuple(files)


def load_images(path: str, files, size: int, channels: int) -> np.ndarray:
    """(N, size, size, channels) uint8: each image converted to grayscale (`channels=1`) or RGB
    (3), its shorter side resized to `size` (bilinear), and the centre square cut out."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), not {channels}")
    mode = "L" if channels == 1 else "RGB"
    images = []
    for name in files:
        try:
            image = crop(load_image(os.path.join(path, name), size, mode), size)
        except (OSError, SyntaxError) as e:
            raise UserError(f"{os.path.join(path, name)} is not an image that PIL can read "
                            f"({e}). Fix: replace it or remove it from the folder.") from None
        images.append(image.reshape(size, size, channels))
    return np.stack(images)


COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220),
          "yellow": (235, 200, 30)}
SHAPES = ("square", "circle")


def write_shapes_folder(path: str, n: int = 8, size: int = 32, seed: int = 0) -> str:
    """Writes `n` PNG images of `size` pixels to `path`, each one coloured shape (every colour and
    shape in turn, at a random place and scale) on a light grey ground, with a metadata.jsonl of
    captions such as "a red square"; returns `path`."""
    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] + 0.5
    lines = []
    for i in range(n):
        color = list(COLORS)[i % len(COLORS)]
        shape = SHAPES[(i // len(COLORS)) % len(SHAPES)]
        radius = rng.uniform(0.2, 0.35) * size
        cy, cx = rng.uniform(radius, size - radius, 2)
        if shape == "square":
            mask = (np.abs(yy - cy) < radius) & (np.abs(xx - cx) < radius)
        else:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2
        image = np.full((size, size, 3), 230, np.uint8)
        image[mask] = COLORS[color]
        name = f"{i:04d}.png"
        Image.fromarray(image).save(os.path.join(path, name))
        lines.append(json.dumps({"file_name": name, "text": f"a {color} {shape}"}))
    with open(os.path.join(path, METADATA_FILE), "w") as f:
        f.write("\n".join(lines) + "\n")
    return path

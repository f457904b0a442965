"""The demo's dataset: real photos bundled inside the scikit-image wheel, cropped to 64 px, with captions.

The files are read straight from the installed package with Pillow (no scikit-image import, no
pooch, no network): only images that ship in the wheel are listed here.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from PIL import Image

TRIGGER_WORD = "lfdemo"


@dataclass(frozen=True)
class DemoImage:
    file: str  # name inside skimage/data/
    caption: str


# Bundled in scikit-image 0.26.0's wheel (skimage/data/*): public-domain or CC0 photographs.
DEMO_IMAGES = (
    DemoImage("astronaut.png", "[trigger], a photo of an astronaut in a white space suit in front of a flag"),
    DemoImage("chelsea.png", "[trigger], a photo of a tabby cat looking to the side"),
    DemoImage("coffee.png", "[trigger], a photo of a cup of coffee on a saucer, seen from above"),
    DemoImage("rocket.jpg", "[trigger], a photo of a rocket on the launch pad under a blue sky"),
    DemoImage("motorcycle_left.png", "[trigger], a photo of a motorcycle parked in a garage"),
    DemoImage("camera.png", "[trigger], a black and white photo of a man with a camera on a tripod"),
    DemoImage("hubble_deep_field.jpg", "[trigger], a telescope photo of distant galaxies in the dark sky"),
    DemoImage("retina.jpg", "[trigger], a photo of the retina of an eye, orange with red blood vessels"),
    DemoImage("moon.png", "[trigger], a black and white photo of the cratered surface of the moon"),
    DemoImage("coins.png", "[trigger], a black and white photo of old coins on a table"),
)

DROP_CONFIG = f"""# loraforge.yaml: the drop-to-train job options (a CreateJobRequest without dataset_id)
preset: tiny-sd
name: demo
trigger_word: {TRIGGER_WORD}
samples:
  prompts:
    - "{TRIGGER_WORD}, a photo of a cat"
"""


def _load(name: str) -> Image.Image:
    path = resources.files("skimage").joinpath("data", name)
    with resources.as_file(path) as local, Image.open(local) as image:
        image.load()
        return image.convert("RGB")


def square(image: Image.Image, size: int) -> Image.Image:
    """Centre crop to a square, then downscale (LANCZOS) to `size`."""
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)


def build_demo_dataset(folder: Path, *, size: int = 64, images: tuple[DemoImage, ...] = DEMO_IMAGES, with_config: bool = True) -> Path:
    """Writes `<stem>.png` + `<stem>.txt` pairs (and `loraforge.yaml`) into `folder`; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    for item in images:
        stem = item.file.rsplit(".", 1)[0]
        square(_load(item.file), size).save(folder / f"{stem}.png", format="PNG", optimize=True)
        (folder / f"{stem}.txt").write_text(item.caption + "\n", encoding="utf-8")
    if with_config:
        (folder / "loraforge.yaml").write_text(DROP_CONFIG, encoding="utf-8")
    return folder


def zip_dataset(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as out:
        for path in sorted(folder.iterdir()):
            if path.is_file():
                out.write(path, path.name)
    return archive

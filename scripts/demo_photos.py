"""Gather the demo's photo set: the real sample photographs scikit-image ships.

Usage: python scripts/demo_photos.py DEST
Copies them (never links into site-packages) into DEST, sorted into a few folders.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

# The photographs among scikit-image's sample data (its diagrams and masks are left out).
PHOTOS = {
    "people": ["astronaut.png", "camera.png"],
    "animals": ["chelsea.png"],
    "food": ["coffee.png"],
    "space": ["hubble_deep_field.jpg", "moon.png", "rocket.jpg"],
    "textures": ["brick.png", "grass.png", "gravel.png"],
    "things": ["motorcycle_left.png", "motorcycle_right.png", "coins.png", "clock_motion.png"],
    "medical": ["retina.jpg", "ihc.png", "cell.png"],
}


def main() -> None:
    dest = Path(sys.argv[1])
    try:
        import skimage
    except ImportError:
        sys.exit("scikit-image is not installed: run `make demo`, which installs it")
    source = Path(skimage.__file__).parent / "data"
    copied = 0
    for folder, names in PHOTOS.items():
        for name in names:
            src = source / name
            if src.is_file():
                (dest / folder).mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / folder / name)
                copied += 1
    if copied == 0:
        sys.exit(f"no sample photos found in {source}")
    print(f"{copied} demo photos in {dest}")


if __name__ == "__main__":
    main()

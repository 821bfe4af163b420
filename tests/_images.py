"""Image files for the unlabeled-folder tests: random pictures and a crawled folder's odd cases."""
import io

import numpy as np
from PIL import Image

RNG = np.random.default_rng(0)


def random_rgb(h=24, w=32):
    return RNG.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def save_image(image_or_array, path, **kwargs):
    image = image_or_array if isinstance(image_or_array, Image.Image) else Image.fromarray(image_or_array)
    image.save(path, **kwargs)


def make_odd_folder(root):
    """A crawled folder's odd cases: banners, a 1x1 pixel, truncated PNG/JPEG, a GIF,
    a symlinked sub-folder, a link loop, a symlinked duplicate of a file, a broken link.
    Returns (folder, names expected in the listing, names expected among the skipped)."""
    (root / "real" / "inner").mkdir(parents=True)
    save_image(random_rgb(32, 48), root / "real" / "ok.png")
    save_image(random_rgb(90, 728), root / "real" / "wide_banner.jpg", quality=90)  # 8:1, usable
    save_image(random_rgb(1, 4000), root / "real" / "banner_4000x1.png")
    save_image(random_rgb(10, 4000), root / "real" / "banner_4000x10.png")
    save_image(random_rgb(1, 1), root / "real" / "pixel.png")
    save_image(random_rgb(40, 40), root / "real" / "inner" / "deep.webp")
    frames = [Image.fromarray(random_rgb(30, 30)).convert("P") for _ in range(3)]
    frames[0].save(root / "real" / "anim.gif", save_all=True, append_images=frames[1:])
    data = png_bytes(Image.fromarray(random_rgb(64, 64)))
    (root / "real" / "cut.png").write_bytes(data[: len(data) // 2])
    buffer = io.BytesIO()
    Image.fromarray(random_rgb(64, 64)).save(buffer, format="JPEG", quality=90)
    (root / "real" / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    outside = root.parent / (root.name + "_outside")
    outside.mkdir()
    save_image(random_rgb(24, 24), outside / "linked_in.png")
    (root / "real" / "linked_dir").symlink_to(outside, target_is_directory=True)
    (root / "real" / "loop").symlink_to(root / "real", target_is_directory=True)
    (root / "real" / "dup_of_ok.png").symlink_to(root / "real" / "ok.png")
    (root / "real" / "dangling.png").symlink_to(root / "real" / "nothing_here.png")
    listed = ["anim.gif", "inner/deep.webp", "linked_dir/linked_in.png", "ok.png", "wide_banner.jpg"]
    skipped = ["banner_4000x1.png", "banner_4000x10.png", "cut.jpg", "cut.png", "dangling.png", "pixel.png"]
    return root / "real", listed, skipped

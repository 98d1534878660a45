"""224x224 test and calibration images from real photographs that ship offline.

Sources: scikit-image's ``skimage.data`` (bundled files only; ``eagle``, ``lily`` and the
like need a download and are not used; ``cat`` is the same photo as ``chelsea``) and
scikit-learn's ``load_sample_images()`` (``china.jpg``, ``flower.jpg``). Grey photos are
repeated to 3 channels.

The two sets are disjoint **by photograph** (no view of a calibration photo is a test
image):

* :data:`TEST_PHOTOS`: chelsea (tabby cat), coffee (cup of espresso), astronaut, rocket,
  stereo_motorcycle (left view), flower (sklearn), camera (grey), coins (grey), clock (grey),
  gravel (grey);
* :data:`CALIBRATION_PHOTOS`: china (sklearn), colorwheel, hubble_deep_field,
  immunohistochemistry, retina, grass (grey), brick (grey), moon (grey).

Every photo gives :data:`VIEWS` square views, each resized to 224x224 with anti-aliasing
(``skimage.transform.resize``): the largest centred square, the first and the last largest
square along the long side (the top-left and bottom-right squares of 90% of the side for
a square photo), a centred square of 80% of the short side, and each of those
four mirrored left-right, so 8 views per photo (80 test images, 64 calibration images).
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["TEST_PHOTOS", "CALIBRATION_PHOTOS", "VIEWS", "KNOWN_CLASSES", "photo",
           "views", "test_images", "calibration_images", "reference_images"]

TEST_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "stereo_motorcycle", "flower",
               "camera", "coins", "clock", "gravel")
CALIBRATION_PHOTOS = ("china", "colorwheel", "hubble_deep_field", "immunohistochemistry",
                      "retina", "grass", "brick", "moon")
VIEWS = ("centre", "start", "end", "zoom", "centre-flip", "start-flip", "end-flip",
         "zoom-flip")
#: ImageNet classes a clear photo must show in the float model's top 5 (centre view).
KNOWN_CLASSES = {
    "chelsea": {281, 282, 285},          # tabby, tiger cat, Egyptian cat
    "coffee": {967, 968, 504},           # espresso, cup, coffee mug
    "rocket": {744, 657, 812},           # projectile/missile, missile, space shuttle
    "stereo_motorcycle": {670, 665},     # motor scooter, moped
    "flower": {985},                     # daisy
    "camera": {872},                     # tripod (the cameraman's)
}


@functools.lru_cache(maxsize=None)
def photo(name: str) -> np.ndarray:
    """The photograph *name* as (H, W, 3) uint8 RGB (read-only)."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_images

        imgs = load_sample_images()
        img = imgs.images[[f.rsplit("/", 1)[-1] for f in imgs.filenames].index(f"{name}.jpg")]
    else:
        import skimage.data

        if name not in TEST_PHOTOS + CALIBRATION_PHOTOS:
            raise KeyError(f"unknown photo {name!r}")
        img = getattr(skimage.data, name)()
        if isinstance(img, tuple):                  # stereo_motorcycle: (left, right, disp)
            img = img[0]
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    img = np.ascontiguousarray(img[:, :, :3], dtype=np.uint8)
    img.setflags(write=False)
    return img


def _view(img: np.ndarray, view: str, size: int) -> np.ndarray:
    from skimage.transform import resize

    h, w, _ = img.shape
    kind, _, flip = view.partition("-")
    side = min(h, w)
    if kind == "zoom":
        side = int(round(0.8 * side))
    y0, x0 = (h - side) // 2, (w - side) // 2
    if kind in ("start", "end"):
        side = min(side, int(round(0.9 * max(h, w))))      # square photos: 90% corners
        y0, x0 = (0, 0) if kind == "start" else (h - side, w - side)
    crop = img[y0:y0 + side, x0:x0 + side]
    if flip:
        crop = crop[:, ::-1]
    out = resize(crop, (size, size), order=1, anti_aliasing=True, preserve_range=True)
    return np.clip(out, 0, 255).astype(np.float32) / 255.0


def views(name: str, which=VIEWS, size: int = 224) -> np.ndarray:
    """(len(which), 3, size, size) float32 views of photo *name*, ImageNet-normalized."""
    from .efficientnet_lite0 import normalize

    img = photo(name)
    return np.stack([normalize(_view(img, v, size)) for v in which])


@functools.lru_cache(maxsize=4)
def _images(names: tuple, which: tuple, size: int) -> np.ndarray:
    out = np.concatenate([views(n, which, size) for n in names])
    out.setflags(write=False)
    return out


def test_images(photos=TEST_PHOTOS, which=VIEWS, size: int = 224):
    """Test images: ``(images, labels)`` with labels ``"photo/view"``, photo-major order."""
    return (_images(tuple(photos), tuple(which), size),
            [f"{p}/{v}" for p in photos for v in which])


def calibration_images(which=VIEWS, size: int = 224) -> np.ndarray:
    """Calibration images (views of :data:`CALIBRATION_PHOTOS`, none a test photo)."""
    return _images(CALIBRATION_PHOTOS, tuple(which), size)


def reference_images() -> tuple[np.ndarray, list[str]]:
    """The images the stored torch reference was computed on: the centre view of every test
    photo and the mirrored start view of chelsea and coffee (12 images)."""
    a, la = test_images(TEST_PHOTOS, ("centre",))
    b, lb = test_images(("chelsea", "coffee"), ("start-flip",))
    return np.concatenate([a, b]), la + lb

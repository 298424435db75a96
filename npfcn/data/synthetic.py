"""The built-in synthetic dataset: coloured shapes on a textured, noisy background.

Each image shows 1-4 shapes (disc, square, triangle, ring) of random size,
position, rotation and colour.  Later shapes are drawn over earlier ones and the
mask follows (a pixel is labelled with the shape you can see there).  Shape
colours and background colours come from ONE distribution (uniform over the RGB
cube) for every class, so the colour of a pixel says nothing about its class:
the network has to learn shapes.

Determinism: item ``i`` of split ``s`` is generated from its own random stream,
seeded with ``(seed, split id, i)``, so it is the same whatever order items are
read in and whatever the size of the dataset.

Sizes: every shape class has the same area for the same size -- ``size`` is the
side of the square of equal area -- so no class is recognisable by its area and
the classes cover similar numbers of pixels.  It is drawn uniformly between
``min_scale`` and ``max_scale`` times the image side.
"""
import numpy as np

SHAPE_CLASSES = ("background", "disc", "square", "triangle", "ring")
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
DEFAULT_SIZES = {"train": 1000, "val": 200, "test": 200}     # items per split when not given


def _check_positive_int(value, name, minimum=1):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


# --- shape rasterisers: each returns a boolean (H, W) mask ------------------------------
# ``yy``/``xx`` are pixel-centre coordinates; (cy, cx) the centre; ``size`` the side of the
# square of equal area; ``angle`` a rotation in radians.  Edges are crisp (no
# anti-aliasing) so the mask is exact.

RING_INNER_RATIO = 0.5      # inner radius / outer radius


def _disc(yy, xx, cy, cx, size, angle):
    radius = size / np.sqrt(np.pi)                       # pi r^2 = size^2
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2


def _ring(yy, xx, cy, cx, size, angle, inner_ratio=RING_INNER_RATIO):
    # pi r^2 (1 - ratio^2) = size^2
    radius = size / np.sqrt(np.pi * (1 - inner_ratio ** 2))
    d2 = (yy - cy) ** 2 + (xx - cx) ** 2
    return (d2 <= radius ** 2) & (d2 >= (inner_ratio * radius) ** 2)


def _square(yy, xx, cy, cx, size, angle):
    # Rotate the coordinates into the square's own frame, then an axis-aligned test.
    c, s = np.cos(angle), np.sin(angle)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    half = size / 2
    return (np.abs(u) <= half) & (np.abs(v) <= half)


def _triangle(yy, xx, cy, cx, size, angle):
    # Equilateral triangle centred on (cy, cx): the intersection of three half-planes
    # whose outward normals are 120 degrees apart, each at the inradius (side / (2 sqrt 3))
    # from the centre.  Area sqrt(3)/4 side^2 = size^2.
    side = size * np.sqrt(4 / np.sqrt(3))
    inradius = side / (2 * np.sqrt(3))
    inside = np.ones(np.broadcast_shapes(yy.shape, xx.shape), dtype=bool)
    for k in range(3):
        theta = angle + k * 2 * np.pi / 3
        inside &= (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta) <= inradius
    return inside


_RASTERISERS = (_disc, _square, _triangle, _ring)   # class id = position + 1


def _box(centre, size, length):
    """The pixels within ``size`` (plus one) of ``centre`` along an axis of ``length``: a slice."""
    return slice(max(int(centre - size) - 1, 0), min(int(centre + size) + 2, length))


def _texture(rng, yy, xx, image_size, amplitude, waves=3):
    """A smooth random pattern in [-amplitude, amplitude]: a sum of random plane waves."""
    pattern = np.zeros(np.broadcast_shapes(yy.shape, xx.shape), dtype=np.float64)
    for _ in range(waves):
        cycles = rng.uniform(0.5, 4.0)              # periods across the image
        theta = rng.uniform(0, 2 * np.pi)
        phase = rng.uniform(0, 2 * np.pi)
        k = 2 * np.pi * cycles / image_size
        pattern += np.sin(k * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
    return amplitude * pattern / waves


def _pick_colour(rng, others, min_contrast, tries=100):
    """A colour uniform in the RGB cube, at least ``min_contrast`` away from every colour
    in ``others`` (so a shape never vanishes into what it is drawn on).  The rejection does
    not look at the class, so every class keeps the same colour distribution."""
    colour = rng.uniform(0, 255, size=3)
    for _ in range(tries):
        if all(np.linalg.norm(colour - o) >= min_contrast for o in others):
            break
        colour = rng.uniform(0, 255, size=3)
    return colour


def generate_item(rng, image_size=64, min_shapes=1, max_shapes=4, min_scale=0.25,
                  max_scale=0.45, noise=8.0, texture=24.0, min_contrast=80.0,
                  max_occlusion=0.5):
    """Draw one synthetic image and its mask from the Generator ``rng``.

    Returns ``image`` (H, W, 3) uint8 RGB and ``mask`` (H, W) uint8 with values in
    0..4 (see ``SHAPE_CLASSES``).  A new shape is re-placed (up to 10 tries, then
    skipped) if it would hide more than ``max_occlusion`` of a shape already drawn, so
    no shape is reduced to an unrecognisable sliver.
    """
    h = w = image_size
    # Pixel centres as a column and a row: every formula below broadcasts them.
    yy = np.arange(h, dtype=np.float64)[:, None] + 0.5
    xx = np.arange(w, dtype=np.float64)[None, :] + 0.5

    background = _pick_colour(rng, [], 0.0)
    image = background + _texture(rng, yy, xx, image_size, texture)[..., None]
    image = np.broadcast_to(image, (h, w, 3)).copy()
    mask = np.zeros((h, w), dtype=np.uint8)
    # owner[y, x] = index of the drawn shape visible there (-1: background), to measure occlusion
    owner = np.full((h, w), -1, dtype=np.int64)
    areas = []              # full pixel count of each drawn shape
    visible = []            # pixels of each drawn shape still visible
    colours = [background]

    for _ in range(int(rng.integers(min_shapes, max_shapes + 1))):
        class_id = int(rng.integers(1, len(SHAPE_CLASSES)))
        for _attempt in range(10):
            size = rng.uniform(min_scale, max_scale) * image_size
            cy, cx = rng.uniform(0.15 * h, 0.85 * h), rng.uniform(0.15 * w, 0.85 * w)
            angle = rng.uniform(0, 2 * np.pi)
            # Only the shape's bounding box is rasterised: every shape lies within
            # ``size`` of its centre (the triangle's corners, the farthest, at 0.88 size).
            rows, cols = _box(cy, size, h), _box(cx, size, w)
            region = _RASTERISERS[class_id - 1](yy[rows], xx[:, cols], cy, cx, size, angle)
            if not region.any():
                continue
            # What would each earlier shape keep visible if this one were drawn?
            under = owner[rows, cols][region]
            hidden = np.bincount(under[under >= 0], minlength=len(areas))
            if all(visible[k] - hidden[k] >= (1 - max_occlusion) * areas[k]
                   for k in range(len(areas))):
                break
        else:
            continue        # no acceptable place found: leave this shape out

        colour = _pick_colour(rng, colours, min_contrast)
        colours.append(colour)
        # A gentle linear shading so shapes are not perfectly flat either.
        theta = rng.uniform(0, 2 * np.pi)
        shading = 12.0 * ((xx[:, cols] - cx) * np.cos(theta)
                          + (yy[rows] - cy) * np.sin(theta)) / max(size, 1.0)
        image[rows, cols][region] = colour + shading[region][:, None]
        mask[rows, cols][region] = class_id
        owner[rows, cols][region] = len(areas)
        visible = [v - int(n) for v, n in zip(visible, hidden)] + [int(region.sum())]
        areas.append(int(region.sum()))

    image += rng.normal(0.0, noise, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask


class SyntheticShapes:
    """A fixed, seeded split of the shapes dataset (``size`` items; default 1000 for train,
    200 for val and test).

    ``ds[i] -> (image (H, W, 3) uint8, mask (H, W) uint8)``; items are generated on first
    access and kept in memory (``cache=True``), each returned as a fresh copy.

    Options (all keyword): ``image_size`` (side in pixels), ``min_shapes``/``max_shapes``
    per image, ``min_scale``/``max_scale`` (shape size -- side of the square of equal area -- as a
    fraction of the image side),
    ``noise`` (std of the Gaussian pixel noise, 0-255 scale), ``texture`` (amplitude of the
    background pattern), ``min_contrast`` (RGB distance between a shape's colour and the
    colours under it), ``max_occlusion``.
    """

    num_classes = len(SHAPE_CLASSES)

    def __init__(self, size=None, split="train", seed=0, image_size=64, min_shapes=1,
                 max_shapes=4, min_scale=0.25, max_scale=0.45, noise=8.0, texture=24.0,
                 min_contrast=80.0, max_occlusion=0.5, cache=True):
        if split not in SPLIT_IDS:
            raise ValueError(f"split must be one of {sorted(SPLIT_IDS)}, got {split!r}")
        if size is None:
            size = DEFAULT_SIZES[split]
        self.size = _check_positive_int(size, "size", minimum=0)
        self.image_size = _check_positive_int(image_size, "image_size", minimum=8)
        min_shapes = _check_positive_int(min_shapes, "min_shapes", minimum=0)
        max_shapes = _check_positive_int(max_shapes, "max_shapes", minimum=max(min_shapes, 1))
        if not 0 < min_scale <= max_scale <= 1.5:
            raise ValueError(f"need 0 < min_scale <= max_scale <= 1.5, got {min_scale}, {max_scale}")
        if noise < 0 or texture < 0 or min_contrast < 0:
            raise ValueError("noise, texture and min_contrast must be >= 0")
        if not 0 < max_occlusion <= 1:
            raise ValueError(f"max_occlusion must be in (0, 1], got {max_occlusion}")
        if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.split = split
        self.seed = int(seed)
        self.class_names = list(SHAPE_CLASSES)
        self.options = dict(image_size=self.image_size, min_shapes=min_shapes,
                            max_shapes=max_shapes, min_scale=float(min_scale),
                            max_scale=float(max_scale), noise=float(noise),
                            texture=float(texture), min_contrast=float(min_contrast),
                            max_occlusion=float(max_occlusion))
        self.names = [f"synthetic-{split}-{i:06d}" for i in range(self.size)]
        self._cache = [None] * self.size if cache else None

    def __len__(self):
        return self.size

    def item_rng(self, index):
        """The Generator item ``index`` is drawn from: seeded by (seed, split, index)."""
        return np.random.default_rng([self.seed, SPLIT_IDS[self.split], int(index)])

    def __getitem__(self, index):
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} items")
        if self._cache is not None and self._cache[index] is not None:
            image, mask = self._cache[index]
        else:
            image, mask = generate_item(self.item_rng(index), **self.options)
            if self._cache is not None:
                self._cache[index] = (image, mask)
        return image.copy(), mask.copy()

    def __repr__(self):
        return (f"SyntheticShapes(size={self.size}, split={self.split!r}, seed={self.seed}, "
                + ", ".join(f"{k}={v!r}" for k, v in self.options.items()) + ")")


def synthetic_splits(train_size=DEFAULT_SIZES["train"], val_size=DEFAULT_SIZES["val"], image_size=64, seed=0, **options):
    """The fixed train and val splits: ``(SyntheticShapes train, SyntheticShapes val)``.

    The two splits draw from different streams (split id in the seed), so they never share
    an image.  ``options`` go to ``SyntheticShapes`` (shapes per image, scales, noise, ...).
    """
    train = SyntheticShapes(train_size, split="train", seed=seed, image_size=image_size, **options)
    val = SyntheticShapes(val_size, split="val", seed=seed, image_size=image_size, **options)
    return train, val

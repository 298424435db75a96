"""Mini-batches of preprocessed images and integer label maps."""
import numpy as np

from .transforms import preprocess, resolve_preprocessing


def iterate_batches(dataset, batch_size, rng=None, transform=None, preprocessing="unit",
                    drop_last=False):
    """Yield ``(x, y)`` batches over ``dataset``.

    x: (N, 3, H, W) float32, normalised by ``preprocessing`` (a name in PREPROCESSING or a spec);
    y: (N, H, W) int64 labels (255 = void).

    ``rng`` (a numpy Generator) shuffles the order and drives ``transform``; ``rng=None`` keeps
    the dataset order (for evaluation), and a transform then gets a fixed Generator seeded
    with 0 so the result is still repeatable.  Images in one batch must end up the same size
    (use a RandomCrop, or ``batch_size=1`` for datasets of mixed sizes): otherwise ValueError.
    """
    if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size must be an int, got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy Generator or None, got {type(rng).__name__}")
    spec = resolve_preprocessing(preprocessing)
    n = len(dataset)
    order = rng.permutation(n) if rng is not None else np.arange(n)
    transform_rng = rng if rng is not None else np.random.default_rng(0)
    names = getattr(dataset, "names", None)

    for start in range(0, n, batch_size):
        indices = order[start:start + batch_size]
        if drop_last and len(indices) < batch_size:
            return
        images, masks = [], []
        for i in indices:
            image, mask = dataset[int(i)]
            if transform is not None:
                image, mask = transform(image, mask, transform_rng)
            images.append(preprocess(image, spec))
            masks.append(mask)
        shapes = {m.shape for m in masks}
        if len(shapes) > 1:
            described = ", ".join(
                f"{names[int(i)] if names else int(i)}: {m.shape[0]}x{m.shape[1]}"
                for i, m in zip(indices, masks))
            raise ValueError(
                f"images in one batch differ in size ({described}); add a crop transform "
                "that makes them equal or use batch_size=1")
        yield np.stack(images), np.stack(masks).astype(np.int64)

"""Pictures, drawn with Pillow only: colourised masks, overlays, grids, training curves and
confusion matrices.  Every function takes and returns uint8 RGB arrays (H, W, 3)."""
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .data.colormap import VOID_LABEL, voc_colormap

VOID_COLOUR = (224, 224, 192)       # the VOC palette entry 255


def colorize(mask, colormap=None):
    """Class-index ``mask`` (H, W) -> (H, W, 3) uint8 colours (VOC palette; 255 -> VOID_COLOUR).

    ``colormap``: optional (K, 3) uint8 array replacing the VOC colours for classes < K.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must have shape (H, W), got {mask.shape}")
    if mask.dtype.kind not in "iub":
        raise TypeError(f"mask must hold integers, got dtype {mask.dtype}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(f"mask values must be class ids in 0..254 or 255 (void), "
                         f"got range {mask.min()}..{mask.max()}")
    table = voc_colormap(256).copy()
    if colormap is not None:
        colormap = np.asarray(colormap, dtype=np.uint8)
        if colormap.ndim != 2 or colormap.shape[1] != 3 or len(colormap) > 255:
            raise ValueError(f"colormap must have shape (K, 3) with K <= 255, got {colormap.shape}")
        table[:len(colormap)] = colormap
    table[VOID_LABEL] = VOID_COLOUR
    return table[mask.astype(np.int64)]


def _check_rgb(image, name="image"):
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must be a (H, W, 3) uint8 array, got {image.dtype} {image.shape}")
    return image


def overlay(image, mask, alpha=0.5, colormap=None):
    """Blend the colourised ``mask`` over ``image`` (H, W, 3) uint8 with weight ``alpha``.

    Background (class 0) pixels keep the plain image so the objects stand out.
    ``colormap``: as for ``colorize``.
    """
    image = _check_rgb(image)
    mask = np.asarray(mask)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape} differ in size")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    colours = colorize(mask, colormap).astype(np.float64)
    blended = (1 - alpha) * image + alpha * colours
    out = np.where((mask == 0)[..., None], image, np.rint(blended))
    return out.astype(np.uint8)


def save_png(path, array):
    """Write a (H, W, 3) or (H, W) uint8 array as a PNG, creating the folder if needed."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(f"save_png needs a (H, W), (H, W, 3) or (H, W, 4) uint8 array, "
                         f"got {array.dtype} {array.shape}")
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(os.fspath(path), format="PNG")
    return path


# --- text and layout helpers ------------------------------------------------------------

def load_font(size=12):
    """A scalable font when Pillow has FreeType, else its small built-in bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):       # older Pillow or no FreeType
        return ImageFont.load_default()


def text_size(draw, text, font):
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _as_rgb_cell(cell):
    cell = np.asarray(cell)
    if cell.ndim == 2:
        cell = np.repeat(cell[..., None], 3, axis=2)
    return _check_rgb(cell, "grid cell")


def image_grid(rows, titles=None, scale=None, pad=4, font_size=12):
    """Paste images into a grid: ``rows`` is a list of rows, each a list of (H, W, 3) uint8
    images (cells may differ in size; (H, W) uint8 is shown as gray).

    ``titles``: None, a list of column titles (drawn once above the grid), or a list of lists
    with one title per cell (drawn above each cell).  ``scale``: integer enlargement (nearest
    neighbour) so small images stay legible; None picks the smallest factor making cells at
    least 128 pixels high (up to 8).  Returns the grid as (H, W, 3) uint8 on white.
    """
    rows = [[_as_rgb_cell(c) for c in row] for row in rows]
    if not rows or not any(rows):
        raise ValueError("image_grid needs at least one image")
    cell_h = max(c.shape[0] for row in rows for c in row)
    cell_w = max(c.shape[1] for row in rows for c in row)
    if scale is None:
        scale = int(min(8, max(1, int(np.ceil(128 / cell_h)))))
    if not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"scale must be a positive int, got {scale!r}")
    ncols = max(len(row) for row in rows)
    per_cell = titles is not None and len(titles) > 0 and isinstance(titles[0], (list, tuple))
    if titles is not None and not per_cell and len(titles) > ncols:
        raise ValueError(f"{len(titles)} column titles for {ncols} columns")
    if per_cell and (len(titles) != len(rows) or any(len(t) > len(r) for t, r in zip(titles, rows))):
        raise ValueError("per-cell titles must have one list per row, no longer than the row")

    font = load_font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_h = text_size(probe, "Ag", font)[1] + 6 if titles is not None else 0
    header = text_h if (titles is not None and not per_cell) else 0
    row_title = text_h if per_cell else 0
    w_cell, h_cell = cell_w * scale, cell_h * scale
    width = ncols * w_cell + (ncols + 1) * pad
    height = header + len(rows) * (h_cell + row_title) + (len(rows) + 1) * pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)

    def centred_text(x0, y0, text):
        text = str(text)
        tw, _ = text_size(draw, text, font)
        draw.text((x0 + max(0, (w_cell - tw) // 2), y0 + 2), text, fill=(0, 0, 0), font=font)

    if header:
        for j, title in enumerate(titles):
            centred_text(pad + j * (w_cell + pad), pad // 2, title)
    y = header + pad
    for i, row in enumerate(rows):
        for j, cell in enumerate(row):
            x = pad + j * (w_cell + pad)
            if per_cell and j < len(titles[i]):
                centred_text(x, y, titles[i][j])
            big = np.repeat(np.repeat(cell, scale, axis=0), scale, axis=1)
            canvas.paste(Image.fromarray(big), (x, y + row_title))
        y += h_cell + row_title + pad
    return np.asarray(canvas, dtype=np.uint8).copy()


def legend(class_names, colormap=None, width=600, classes=None, font_size=12):
    """A colour key: a swatch and the name of each class, in rows no wider than ``width``.

    class_names: the names of classes 0..K-1; colormap: as for ``colorize`` (None: VOC's);
    classes: the class ids to show (None: all; 255 shows "void").  Returns (H, W, 3) uint8.
    """
    table = colorize(np.arange(256, dtype=np.uint8)[None], colormap)[0]
    ids = range(len(class_names)) if classes is None else sorted(set(int(c) for c in classes))
    entries = [(("void" if c == VOID_LABEL else str(class_names[c]) if c < len(class_names)
                 else f"class {c}"), tuple(int(v) for v in table[c])) for c in ids]
    font = load_font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = text_size(probe, "Ag", font)[1] + 10
    box = line_h - 8
    placed, x, y = [], 6, 4
    for name, colour in entries:
        w = box + 6 + text_size(probe, name, font)[0] + 14
        if x > 6 and x + w > width:
            x, y = 6, y + line_h
        placed.append((x, y, name, colour))
        x += w
    canvas = Image.new("RGB", (max(1, width), y + line_h + 2 if entries else 1), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for x, y, name, colour in placed:
        draw.rectangle([x, y + 3, x + box, y + 3 + box], fill=colour, outline=(0, 0, 0))
        draw.text((x + box + 6, y + 2), name, fill=(0, 0, 0), font=font)
    return np.asarray(canvas, dtype=np.uint8).copy()


def with_legend(picture, class_names, colormap=None, classes=None):
    """``picture`` (H, W, 3) with ``legend`` below it, as wide as the picture."""
    picture = _check_rgb(np.asarray(picture), "picture")
    key = legend(class_names, colormap, width=picture.shape[1], classes=classes)
    return np.concatenate([picture, key[:, :picture.shape[1]]], axis=0)


# --- training curves --------------------------------------------------------------------

def _nice_ticks(lo, hi, count=5):
    """About ``count`` round tick values (1, 2, 2.5 or 5 times a power of ten) covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(count - 1, 1)
    power = 10.0 ** np.floor(np.log10(raw))
    step = min((m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw), default=10 * power)
    first = np.floor(lo / step + 1e-9) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-6:
        if t >= lo - step * 1e-6:
            ticks.append(round(t, 10))
        t += step
    return ticks, step


def _format_tick(value, step):
    """``value`` with as many decimals as the tick step needs (0.25 -> 2, 0.5 -> 1, 5 -> 0)."""
    decimals = 0
    while decimals < 6 and abs(step * 10 ** decimals - round(step * 10 ** decimals)) > 1e-6:
        decimals += 1
    return f"{value:.{decimals}f}"


def _panel(draw, box, series, title, y_range=None, font=None, x_label="epoch", legend="top"):
    """Draw one line chart into ``box`` = (left, top, right, bottom) of ``draw``.

    ``series``: list of (label, xs, ys, colour); None values in ys are skipped.  ``legend``:
    "top" or "bottom" right corner (where falling or rising curves leave room).
    """
    left, top, right, bottom = box
    font = font or load_font(12)
    title_h = text_size(draw, title, font)[1]
    draw.text((left + (right - left - text_size(draw, title, font)[0]) // 2, top), title,
              fill=(0, 0, 0), font=font)
    # plot area inside the box, leaving room for tick labels
    px0, py0, px1, py1 = left + 52, top + title_h + 10, right - 10, bottom - 36
    xs_all = [x for _, xs, ys, _ in series for x, y in zip(xs, ys) if y is not None]
    ys_all = [y for _, xs, ys, _ in series for y in ys if y is not None]
    x_lo, x_hi = (min(xs_all), max(xs_all)) if xs_all else (0, 1)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    if y_range is not None:
        y_lo, y_hi = y_range
    else:
        y_lo = min(0.0, min(ys_all)) if ys_all else 0.0
        y_hi = max(ys_all) * 1.05 if ys_all and max(ys_all) > y_lo else y_lo + 1.0

    def to_px(x, y):
        return (px0 + (x - x_lo) / (x_hi - x_lo) * (px1 - px0),
                py1 - (y - y_lo) / (y_hi - y_lo) * (py1 - py0))

    grey, black = (220, 220, 220), (0, 0, 0)
    y_ticks, y_step = _nice_ticks(y_lo, y_hi)
    for t in y_ticks:
        _, ty = to_px(x_lo, t)
        draw.line([(px0, ty), (px1, ty)], fill=grey)
        label = _format_tick(t, y_step)
        tw, th = text_size(draw, label, font)
        draw.text((px0 - tw - 6, ty - th // 2 - 2), label, fill=black, font=font)
    x_ticks, x_step = _nice_ticks(x_lo, x_hi, count=6)
    if all(float(x).is_integer() for x in xs_all):
        x_ticks = [t for t in x_ticks if float(t).is_integer()]
        x_step = max(x_step, 1)
    for t in x_ticks:
        tx, _ = to_px(t, y_lo)
        draw.line([(tx, py1), (tx, py1 + 4)], fill=black)
        label = _format_tick(t, x_step)
        tw, _ = text_size(draw, label, font)
        draw.text((tx - tw // 2, py1 + 6), label, fill=black, font=font)
    draw.rectangle([px0, py0, px1, py1], outline=black)
    lw, _ = text_size(draw, x_label, font)
    draw.text(((px0 + px1 - lw) // 2, bottom - 16), x_label, fill=black, font=font)

    line_h = text_size(draw, "Ag", font)[1] + 6
    shown = sum(1 for _, _, ys, _ in series if any(y is not None for y in ys))
    legend_y = py0 + 4 if legend == "top" else py1 - 6 - shown * line_h
    for label, xs, ys, colour in series:
        points = [to_px(x, y) for x, y in zip(xs, ys) if y is not None]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for (x, y) in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        if points:
            lw, lh = text_size(draw, label, font)
            draw.line([(px1 - lw - 30, legend_y + lh // 2 + 2), (px1 - lw - 12, legend_y + lh // 2 + 2)],
                      fill=colour, width=3)
            draw.text((px1 - lw - 6, legend_y), label, fill=black, font=font)
            legend_y += line_h


def _lookup(entry, *keys):
    """The first of ``keys`` found in ``entry`` (dotted keys look into nested dicts)."""
    for key in keys:
        value = entry
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, (int, float, np.floating, np.integer)) and np.isfinite(value):
            return float(value)
    return None


def plot_curves(history, path=None, title=None):
    """Training loss and validation mean IoU per epoch, side by side, drawn with Pillow.

    ``history``: list of per-epoch dicts.  Read keys (first found): epoch from ``epoch``
    (else 1, 2, ...); training loss from ``train_loss`` / ``loss`` / ``train.loss``;
    validation loss (optional) from ``val_loss`` / ``val.loss``; mean IoU from
    ``val_mean_iou`` / ``mean_iou`` / ``val.mean_iou`` / ``metrics.mean_iou``; pixel accuracy
    (optional) likewise.  Writes a PNG to ``path`` if given; returns the (H, W, 3) uint8 picture.
    """
    if not isinstance(history, (list, tuple)) or not all(isinstance(e, dict) for e in history):
        raise TypeError("history must be a list of per-epoch dicts")
    epochs = [_lookup(e, "epoch") for e in history]
    epochs = [e if e is not None else i + 1 for i, e in enumerate(epochs)]
    train_loss = [_lookup(e, "train_loss", "loss", "train.loss") for e in history]
    val_loss = [_lookup(e, "val_loss", "val.loss") for e in history]
    miou = [_lookup(e, "val_mean_iou", "mean_iou", "val.mean_iou", "metrics.mean_iou") for e in history]
    pixel_acc = [_lookup(e, "val_pixel_accuracy", "pixel_accuracy", "val.pixel_accuracy",
                         "metrics.pixel_accuracy") for e in history]

    font = load_font(12)
    panel_w, panel_h = 420, 300
    head = 24 if title else 0
    canvas = Image.new("RGB", (2 * panel_w, panel_h + head), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        big = load_font(14)
        tw, _ = text_size(draw, title, big)
        draw.text(((2 * panel_w - tw) // 2, 4), title, fill=(0, 0, 0), font=big)
    loss_series = [("train loss", epochs, train_loss, (31, 119, 180))]
    if any(v is not None for v in val_loss):
        loss_series.append(("val loss", epochs, val_loss, (255, 127, 14)))
    _panel(draw, (0, head + 4, panel_w, head + panel_h), loss_series, "loss", font=font)
    score_series = [("val mean IoU", epochs, miou, (44, 160, 44))]
    if any(v is not None for v in pixel_acc):
        score_series.append(("val pixel acc.", epochs, pixel_acc, (148, 103, 189)))
    _panel(draw, (panel_w, head + 4, 2 * panel_w, head + panel_h), score_series,
           "validation", y_range=(0.0, 1.0), font=font, legend="bottom")
    picture = np.asarray(canvas, dtype=np.uint8).copy()
    if path is not None:
        save_png(path, picture)
    return picture


# --- confusion matrix -------------------------------------------------------------------

def confusion_matrix_image(hist, class_names=None, path=None, title=None, cell=40):
    """A row-normalised heat map of ``hist`` (K, K) with ``hist[true, pred]`` pixel counts.

    Each row shows where the pixels of one true class went (percent of that row, printed in
    the cell); rows without pixels are grey.  Writes a PNG to ``path`` if given and returns
    the (H, W, 3) uint8 picture.
    """
    hist = np.asarray(hist)
    if hist.ndim != 2 or hist.shape[0] != hist.shape[1] or hist.shape[0] == 0:
        raise ValueError(f"hist must be a square (K, K) matrix, got shape {hist.shape}")
    if np.any(hist < 0) or not np.all(np.isfinite(hist)):
        raise ValueError("hist must hold finite, non-negative counts")
    k = hist.shape[0]
    if class_names is None:
        class_names = [str(i) for i in range(k)]
    class_names = [str(n) for n in class_names]
    if len(class_names) != k:
        raise ValueError(f"{len(class_names)} class names for a {k}x{k} matrix")
    rows = hist.sum(axis=1, keepdims=True).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(rows > 0, hist / np.where(rows > 0, rows, 1), np.nan)

    font = load_font(max(9, min(13, cell // 3)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(text_size(probe, n, font)[0] for n in class_names) + 10
    label_h = text_size(probe, "Ag", font)[1]
    head = (label_h + 12) if title else 0
    left = label_w + label_h + 12                 # row labels + rotated "true class"
    top = head + label_w + label_h + 12           # rotated column labels + "predicted class"
    width, height = left + k * cell + 10, top + k * cell + 10
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    black = (0, 0, 0)
    if title:
        tw, _ = text_size(draw, title, font)
        draw.text(((width - tw) // 2, 4), title, fill=black, font=font)

    low, high = np.array([247, 251, 255.0]), np.array([8, 48, 107.0])   # white -> dark blue
    for i in range(k):
        for j in range(k):
            x0, y0 = left + j * cell, top + i * cell
            value = share[i, j]
            if np.isnan(value):
                draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=(200, 200, 200))
                continue
            colour = tuple(int(round(c)) for c in low + (high - low) * value)
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=colour)
            text = f"{100 * value:.0f}"
            tw, th = text_size(draw, text, font)
            draw.text((x0 + (cell - tw) // 2, y0 + (cell - th) // 2 - 2), text,
                      fill=(255, 255, 255) if value > 0.5 else black, font=font)
    draw.rectangle([left - 1, top - 1, left + k * cell, top + k * cell], outline=black)

    for i, name in enumerate(class_names):          # row labels (true classes)
        tw, th = text_size(draw, name, font)
        draw.text((left - tw - 6, top + i * cell + (cell - th) // 2 - 2), name, fill=black, font=font)
    for j, name in enumerate(class_names):          # column labels, rotated to read upwards
        tw, th = text_size(draw, name, font)
        strip = Image.new("RGB", (tw + 4, th + 6), (255, 255, 255))
        ImageDraw.Draw(strip).text((2, 0), name, fill=black, font=font)
        strip = strip.rotate(90, expand=True)
        canvas.paste(strip, (left + j * cell + (cell - strip.width) // 2, top - 6 - strip.height))
    axis = "predicted class"
    tw, _ = text_size(draw, axis, font)
    draw.text((left + (k * cell - tw) // 2, head + 2), axis, fill=black, font=font)
    axis = "true class"
    tw, th = text_size(draw, axis, font)
    strip = Image.new("RGB", (tw + 4, th + 6), (255, 255, 255))
    ImageDraw.Draw(strip).text((2, 0), axis, fill=black, font=font)
    strip = strip.rotate(90, expand=True)
    canvas.paste(strip, (2, top + (k * cell - strip.height) // 2))

    picture = np.asarray(canvas, dtype=np.uint8).copy()
    if path is not None:
        save_png(path, picture)
    return picture

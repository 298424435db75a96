"""Pictures of small arrays for ``npfcn explain``: grids of numbers with coloured cells,
laid out in rows of panels with titles.  Pillow only; saved with ``npfcn.viz.save_png``."""
import os

import numpy as np
from PIL import Image, ImageDraw

from ..viz import load_font, save_png, text_size

WHITE, BLACK, GREY = (255, 255, 255), (0, 0, 0), (150, 150, 150)
# Cell colours, named for what they mark.
HIGHLIGHT = (255, 214, 153)      # the part being looked at
CURRENT = (166, 206, 227)        # the stamp or window of this step
ZERO = (235, 235, 235)           # nothing landed here
CREAM, ORANGE, YELLOW = (255, 240, 200), (255, 160, 60), (255, 230, 0)   # TP, FP, FN


def number(value):
    """A number as short as it is exact: 3, -0.5, 0.125, 1.2e+03."""
    value = float(value)
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.4g}"


def grid(values, colours=None, title=None, cell=34, fmt=number):
    """A panel: ``values`` (H, W) as a grid of numbers; ``colours`` (H, W) of RGB tuples
    or None per cell (white).  Returns a PIL image."""
    values = np.asarray(values)
    h, w = values.shape
    fnt, title_font = load_font(max(9, cell // 3)), load_font(13)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = title.split("\n") if title else []
    line_h = text_size(probe, "Ag", title_font)[1] + 5
    head = len(lines) * line_h + (4 if lines else 0)
    title_w = max([text_size(probe, t, title_font)[0] for t in lines], default=0)
    width = max(w * cell, title_w) + 2
    image = Image.new("RGB", (width, head + h * cell + 2), WHITE)
    draw = ImageDraw.Draw(image)
    for k, text in enumerate(lines):
        draw.text((0, k * line_h), text, fill=BLACK, font=title_font)
    for i in range(h):
        for j in range(w):
            x0, y0 = j * cell, head + i * cell
            colour = colours[i][j] if colours is not None and colours[i][j] is not None else WHITE
            draw.rectangle([x0, y0, x0 + cell, y0 + cell], fill=colour, outline=GREY)
            text = fmt(values[i, j])
            tw, th = text_size(draw, text, fnt)
            draw.text((x0 + (cell - tw) / 2, y0 + (cell - th) / 2 - 2), text, fill=BLACK, font=fnt)
    return image


def text_panel(lines, size=13):
    """A panel of plain text lines."""
    fnt = load_font(size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = text_size(probe, "Ag", fnt)[1] + 6
    width = max(text_size(probe, t, fnt)[0] for t in lines) + 4
    image = Image.new("RGB", (width, line_h * len(lines) + 4), WHITE)
    draw = ImageDraw.Draw(image)
    for k, text in enumerate(lines):
        draw.text((2, k * line_h), text, fill=BLACK, font=fnt)
    return image


def row(panels, gap=18):
    """Panels side by side, top-aligned."""
    width = sum(p.width for p in panels) + gap * (len(panels) + 1)
    height = max(p.height for p in panels) + 2 * gap
    image = Image.new("RGB", (width, height), WHITE)
    x = gap
    for p in panels:
        image.paste(p, (x, gap))
        x += p.width + gap
    return image


def column(rows, title=None):
    """Rows (images) stacked, left-aligned, under an optional title."""
    if title:
        rows = [text_panel([title], size=15)] + list(rows)
    width = max(r.width for r in rows)
    image = Image.new("RGB", (width, sum(r.height for r in rows)), WHITE)
    y = 0
    for r in rows:
        image.paste(r, (0, y))
        y += r.height
    return image


def colours_where(mask, colour, base=None):
    """A colour table (H, W): ``colour`` where mask is true, else ``base``'s entry (or None)."""
    mask = np.asarray(mask)
    return [[colour if mask[i, j] else (base[i][j] if base is not None else None)
             for j in range(mask.shape[1])] for i in range(mask.shape[0])]


def save(image, folder, name):
    """Write ``image`` as folder/name (PNG); returns the path."""
    path = os.path.join(folder, name)
    save_png(path, np.asarray(image.convert("RGB"), dtype=np.uint8))
    return path

"""Drawing what the prompt modules report: regions on the frames, per-frame / per-gap values as bar charts.

Nothing here knows a model variant: a region mask `[T, g, g]` is drawn on the frame with the layout the model
states (`"patch"`: cell (i, j) is a ViT patch; `"official"`: every pixel whose row mod g is i and column mod g is j),
and every other diagnostic is a series over frames or over the gaps between them.
"""

from __future__ import annotations

import numpy as np

DISPLAY_SIZE = 256  # frames are enlarged (nearest neighbour, so the regions stay sharp) to at least this
REGION_COLOUR = np.array([255, 40, 40], dtype=np.float32)
OUTLINE_COLOUR = np.array([255, 220, 0], dtype=np.uint8)
SERIES_COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd")


def cells_to_pixels(mask: np.ndarray, patch: int, layout: str) -> np.ndarray:
    """`[T, g, g]` bool cells -> `[T, g * patch, g * patch]` bool pixels, expanded with the mask's layout."""
    mask = np.asarray(mask, dtype=bool)
    if layout == "official":
        return np.tile(mask, (1, patch, patch))  # pixel (h, w) belongs to cell (h mod g, w mod g)
    return mask.repeat(patch, axis=1).repeat(patch, axis=2)


def overlay_regions(frames: np.ndarray, mask, patch: int, layout: str) -> list[np.ndarray]:
    """Frames `[T, S, S, 3]` uint8 with the selected cells of `mask` `[T, g, g]` tinted red, enlarged to at least
    `DISPLAY_SIZE`; patch regions also get a yellow outline."""
    scale = max(1, -(-DISPLAY_SIZE // frames.shape[1]))
    mask = None if mask is None else np.asarray(mask, dtype=bool)
    selected = None if mask is None else cells_to_pixels(mask, patch, layout)
    out = []
    for t, frame in enumerate(frames):
        image = frame.astype(np.float32)
        if selected is not None:
            inside = selected[t, : image.shape[0], : image.shape[1], None]
            image = np.where(inside, 0.35 * image + 0.65 * REGION_COLOUR, 0.7 * image)
        image = np.repeat(np.repeat(image.round().astype(np.uint8), scale, axis=0), scale, axis=1)
        if selected is not None and layout != "official":
            cell = patch * scale
            for i, j in zip(*np.nonzero(mask[t])):
                box = image[i * cell : (i + 1) * cell, j * cell : (j + 1) * cell]
                for edge in (box[:2], box[-2:], box[:, :2], box[:, -2:]):
                    edge[...] = OUTLINE_COLOUR
        out.append(image)
    return out


def series_plot(series: list[tuple[str, str, np.ndarray]], num_frames: int) -> np.ndarray:
    """One bar chart per `(title, per, values)` (`per` "frame" or "gap"), stacked, as an RGB image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = max(len(series), 1)
    figure = Figure(figsize=(7, 1.2 + 1.6 * rows), dpi=100)
    axes = figure.subplots(rows, 1, squeeze=False)[:, 0]
    if not series:
        axes[0].text(0.5, 0.5, "this model reports no temporal prompt values", ha="center", va="center")
        axes[0].set_axis_off()
    for axis, (title, per, values), colour in zip(axes, series, SERIES_COLOURS * rows):
        positions = np.arange(1, len(values) + 1)
        axis.bar(positions, values, color=colour)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("frame" if per == "frame" else "gap after frame")
        axis.set_xticks(positions)
        axis.set_xlim(0.4, max(num_frames - (per == "gap"), 1) + 0.6)
    figure.tight_layout()
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()

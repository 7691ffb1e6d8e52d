"""A temporal video dataset that looks unlike `training.synthetic`: a held-out check of the default recipe.

    python -m benchmarks.heldout_world --output_dir data/heldout_world     # 480 / 80 / 160 clips, 16 frames, 80 px

Other colours (pink, teal, brown, lime, navy, grey), other shapes (ring, bar, ellipse, hexagon), sizes drawn from a
continuous range, textured backgrounds (waves, dots, concentric rings, colour noise) in other palettes, one object
that slides, falls or rises, grows or shrinks, fades in or out, with its own caption wording. Every clip has a
reversed twin (the same frames backwards) whose caption says the opposite. Written as a `videofolder`:

    DIR/{train,validation,test}/NNNNNa.mp4, NNNNNb.mp4, ..., metadata.jsonl
    columns: file_name, caption, label, pair_id, motion, reversed
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from training.synthetic import write_video

COLOURS = {
    "pink": (250, 120, 190),
    "teal": (20, 140, 140),
    "brown": (140, 85, 40),
    "lime": (170, 235, 60),
    "navy": (25, 35, 120),
    "grey": (135, 135, 135),
}
SHAPES = ("ring", "bar", "ellipse", "hexagon")
MOTIONS = ("slide", "fall_rise", "grow_shrink", "fade")
BACKGROUNDS = ("waves", "dots", "rings", "colour_noise")
SPLITS = ("train", "validation", "test")
SUPERSAMPLE = 3


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test for a shape of radius 1 in local coordinates."""
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.45)
    if shape == "bar":
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 0.4)
    if shape == "ellipse":
        return u * u + (v / 0.6) ** 2 <= 1.0
    if shape == "hexagon":
        au, av = np.abs(u), np.abs(v)
        return (av <= 0.87) & (0.87 * au + 0.5 * av <= 0.87)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured float background [size, size, 3] in 0-255."""
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    x, y = c[None, :], c[:, None]
    base = rng.uniform(40, 215, 3).astype(np.float32)
    tint = rng.uniform(-1, 1, 3).astype(np.float32)
    if kind == "waves":
        f1, f2, a = rng.uniform(2, 6), rng.uniform(3, 9), rng.uniform(0, np.pi)
        pattern = np.sin(2 * np.pi * f1 * (x * np.cos(a) + y * np.sin(a))) * 0.6 + 0.4 * np.sin(2 * np.pi * f2 * x * y)
    elif kind == "dots":
        period = rng.uniform(0.08, 0.16)
        pattern = np.cos(2 * np.pi * x / period) * np.cos(2 * np.pi * y / period)
        pattern = (pattern > 0.5).astype(np.float32) * 2 - 1
    elif kind == "rings":
        cx, cy, period = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.07, 0.15)
        pattern = np.sin(2 * np.pi * np.sqrt((x - cx) ** 2 + (y - cy) ** 2) / period)
    else:
        grid = rng.uniform(-1, 1, (5, 5, 3))
        idx = np.linspace(0, 4, size)
        rows = np.stack([[np.interp(idx, np.arange(5), grid[r, :, ch]) for ch in range(3)] for r in range(5)])
        full = np.stack([[np.interp(idx, np.arange(5), rows[:, ch, col]) for col in range(size)] for ch in range(3)])
        return np.clip(base + 55 * full.transpose(2, 1, 0), 0, 255).astype(np.float32)  # [y, x, ch]
    pattern = np.broadcast_to(pattern, (size, size)).astype(np.float32)
    return np.clip(base + 40 * pattern[..., None] * (0.6 + 0.4 * tint), 0, 255).astype(np.float32)


def draw(image: np.ndarray, shape: str, rgb, centre, radius: float, opacity: float):
    """Alpha-composite an anti-aliased shape onto `image` [H, W, 3] (in place)."""
    if opacity <= 0 or radius <= 0:
        return
    size, f = image.shape[0], SUPERSAMPLE
    xs = (np.arange(size * f, dtype=np.float32) + 0.5) / (size * f)
    mask = shape_mask(shape, (xs[None, :] - centre[0]) / radius, (xs[:, None] - centre[1]) / radius)
    cover = mask.reshape(size, f, size, f).mean(axis=(1, 3), dtype=np.float32)[..., None] * opacity
    image += (np.asarray(rgb, np.float32) - image) * cover


def sample_clip(rng: np.random.Generator, motion: str, size: int, num_frames: int):
    """Frames [T, size, size, 3] uint8 of one clip and its (label, caption) forwards."""
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    radius = float(rng.uniform(0.08, 0.2))
    background = render_background(rng, size)
    t = np.linspace(0.0, 1.0, num_frames)
    cx, cy = float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.3, 0.7))
    centres = np.stack([np.full(num_frames, cx), np.full(num_frames, cy)], 1)
    radii, opacities = np.full(num_frames, radius), np.ones(num_frames)
    obj = f"{colour} {shape}"
    if motion == "slide":
        a, b = float(rng.uniform(0.15, 0.3)), float(rng.uniform(0.7, 0.85))
        centres[:, 0] = a + (b - a) * t
        label, caption = "sliding right", f"the {obj} slides over to the right side"
    elif motion == "fall_rise":
        centres[:, 1] = 0.18 + 0.64 * t
        label, caption = "falling", f"the {obj} drops down towards the bottom"
    elif motion == "grow_shrink":
        radii = 0.05 + (float(rng.uniform(0.2, 0.3)) - 0.05) * t
        label, caption = "growing", f"the {obj} swells up and gets larger"
    elif motion == "fade":
        opacities = t
        label, caption = "appearing", f"the {obj} gradually appears out of nothing"
    else:
        raise ValueError(f"unknown motion {motion!r}; expected one of {MOTIONS}")
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    for i in range(num_frames):
        image = background.copy()
        draw(image, shape, COLOURS[colour], centres[i], float(radii[i]), float(opacities[i]))
        frames[i] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return frames, (label, caption), obj


REVERSED = {
    "slide": ("sliding left", "the {obj} slides over to the left side"),
    "fall_rise": ("rising", "the {obj} climbs up towards the top"),
    "grow_shrink": ("shrinking", "the {obj} contracts and gets smaller"),
    "fade": ("vanishing", "the {obj} gradually vanishes into nothing"),
}


def write_dataset(
    output_dir,
    seed: int = 0,
    num_train: int = 480,
    num_validation: int = 80,
    num_test: int = 160,
    num_frames: int = 16,
    size: int = 80,
    fps: int = 10,
) -> dict:
    """Write the held-out world; returns {split: number of clips}. Motion kinds balanced within every split."""
    if size % 2:
        raise ValueError(f"--size must be even (H.264 yuv420p), got {size}")
    counts = {}
    for split_index, (split, num_clips) in enumerate(zip(SPLITS, (num_train, num_validation, num_test))):
        if num_clips % 2:
            raise ValueError(f"--num_{split} must be even (clips come in reversed pairs), got {num_clips}")
        split_dir = Path(output_dir) / split
        split_dir.mkdir(parents=True, exist_ok=True)
        rows = []
        for pair in range(num_clips // 2):
            rng = np.random.default_rng([seed, 100 + split_index, pair])
            motion = MOTIONS[pair % len(MOTIONS)]
            frames, (label, caption), obj = sample_clip(rng, motion, size, num_frames)
            back_label, back_caption = REVERSED[motion]
            for suffix, clip, lab, cap in (
                ("a", frames, label, caption),
                ("b", frames[::-1], back_label, back_caption.format(obj=obj)),
            ):
                file_name = f"{pair:05d}{suffix}.mp4"
                write_video(split_dir / file_name, np.ascontiguousarray(clip), fps)
                rows.append(
                    {
                        "file_name": file_name,
                        "caption": cap,
                        "label": lab,
                        "pair_id": f"{split}-{pair:05d}",
                        "motion": motion,
                        "reversed": suffix == "b",
                    }
                )
        with open(split_dir / "metadata.jsonl", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        counts[split] = len(rows)
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_train", type=int, default=480)
    parser.add_argument("--num_validation", type=int, default=80)
    parser.add_argument("--num_test", type=int, default=160)
    parser.add_argument("--num_frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=80)
    args = parser.parse_args(argv)
    start = time.time()
    counts = write_dataset(
        args.output_dir, args.seed, args.num_train, args.num_validation, args.num_test, args.num_frames, args.size
    )
    print(f"wrote {counts} to {args.output_dir} in {time.time() - start:.1f}s")


if __name__ == "__main__":
    main()

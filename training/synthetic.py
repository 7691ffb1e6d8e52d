"""A synthetic world that runs offline: stills to pretrain a small CLIP, and a video benchmark of temporal order.

Every scene is a textured background with a few flat-coloured shapes on it. A still shows one object (colour,
shape, size, position), optionally with a second one; its caption says all of that. A clip animates one object
(or two, one after the other) and its caption depends on frame ORDER: every clip in the benchmark has a twin made
of the same frames in reverse, whose caption and label say the opposite ("a red circle moving left" / "... moving
right"). A model that pools frames without order scores 0.5 on telling twins apart.

    python -m training.synthetic --output_dir data/synthetic     # ~600/100/100 clips, 16 frames, 64 px

writes a `videofolder` dataset, loadable with `datasets.load_dataset("videofolder", data_dir=DIR)`:

    DIR/{train,validation,test}/NNNNNa.mp4, NNNNNb.mp4, ..., metadata.jsonl
    columns: file_name, caption, captions (paraphrases, caption first), label (one of `CLASS_NAMES`),
             pair_id (shared by a clip and its reversed twin), motion (one of `MOTIONS`), reversed (bool)

Scenes are described in normalised coordinates (x right, y down, both in [0, 1]; sizes are radii as a fraction of
the frame side), so the same spec renders at any resolution.
"""

import argparse
import json
import time
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# The backbone pretrained on `render_still` images and the benchmark's class names live in `training.defaults`
# (shared with training and benchmarks); re-exported here.
from training.defaults import CLASS_NAMES, DEFAULT_CLIP  # noqa: F401

COLOURS = {
    "red": (220, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 225, 40),
    "green": (35, 175, 55),
    "cyan": (40, 205, 225),
    "blue": (35, 65, 225),
    "purple": (145, 45, 200),
    "white": (250, 250, 250),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
# Radius (fraction of the frame side) of the two named sizes; stills jitter it by +-12%.
SIZES = {"small": 0.1, "large": 0.2}
# A 3 x 3 grid of named positions: (x, y) centres (stills jitter them by +-0.06) and the phrase a caption uses.
POSITIONS = {
    "top left": ((0.2, 0.2), "in the top left corner"),
    "top": ((0.5, 0.2), "at the top"),
    "top right": ((0.8, 0.2), "in the top right corner"),
    "left": ((0.2, 0.5), "on the left"),
    "center": ((0.5, 0.5), "in the center"),
    "right": ((0.8, 0.5), "on the right"),
    "bottom left": ((0.2, 0.8), "in the bottom left corner"),
    "bottom": ((0.5, 0.8), "at the bottom"),
    "bottom right": ((0.8, 0.8), "in the bottom right corner"),
}
BACKGROUNDS = ("plain", "gradient", "stripes", "checker", "noise")

# Motion kinds of the benchmark; each has two directions that are each other's reversal.
MOTIONS = ("slide", "fall_rise", "grow_shrink", "fade", "colour_change", "sequence")
# Colour changes stay inside four well separated hues so that "turning <colour>" is a small set of classes.
CHANGE_COLOURS = ("red", "yellow", "green", "blue")
SPLITS = ("train", "validation", "test")


# ----------------------------------------------------------------------------------------------------------------
# Scene description
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Background:
    """A static, low-contrast texture: `kind` in `BACKGROUNDS`, around a base RGB colour."""

    kind: str = "plain"
    base: tuple = (128, 128, 128)
    contrast: float = 0.0  # amplitude of the texture, in 0-255 levels
    angle: float = 0.0  # stripes / gradient direction (radians)
    period: float = 0.25  # stripes / checker period (fraction of the frame)
    seed: int = 0  # noise texture


@dataclass(frozen=True)
class Track:
    """One object over a clip. Each property goes from its start value (t=0) to its `end_` value (t=1)."""

    shape: str
    colour: str
    centre: tuple
    radius: float
    end_colour: str = None
    end_centre: tuple = None
    end_radius: float = None
    opacity: float = 1.0
    end_opacity: float = None
    visible: tuple = (0.0, 1.0)  # the object is drawn for t in [visible[0], visible[1]]

    def at(self, t):
        """(colour rgb, centre, radius, opacity) at time t in [0, 1], or None when hidden."""
        if not self.visible[0] <= t <= self.visible[1]:
            return None
        lerp = lambda a, b, w: a if b is None else a + (b - a) * w  # noqa: E731
        # Colour turns happen in the middle half of the clip (symmetric in time, so a reversed track is exact).
        turn = np.clip((t - 0.25) / 0.5, 0.0, 1.0)
        turn = turn * turn * (3 - 2 * turn)
        rgb = np.asarray(COLOURS[self.colour], np.float32)
        if self.end_colour is not None:
            rgb = rgb + (np.asarray(COLOURS[self.end_colour], np.float32) - rgb) * turn
        end_centre = self.end_centre or self.centre
        centre = (lerp(self.centre[0], end_centre[0], t), lerp(self.centre[1], end_centre[1], t))
        return rgb, centre, lerp(self.radius, self.end_radius, t), lerp(self.opacity, self.end_opacity, t)

    def reversed(self):
        """The same track played backwards."""
        swap = lambda a, b: (a, b) if b is None else (b, a)  # noqa: E731
        colour, end_colour = swap(self.colour, self.end_colour)
        centre, end_centre = swap(self.centre, self.end_centre)
        radius, end_radius = swap(self.radius, self.end_radius)
        opacity, end_opacity = swap(self.opacity, self.end_opacity)
        return Track(
            self.shape,
            colour,
            centre,
            radius,
            end_colour,
            end_centre,
            end_radius,
            opacity,
            end_opacity,
            (1.0 - self.visible[1], 1.0 - self.visible[0]),
        )


@dataclass(frozen=True)
class ClipSpec:
    """A benchmark clip: `subjects` are what the caption talks about, `distractor` is a static object."""

    motion: str
    subjects: tuple
    background: Background
    distractor: Track = None

    def reversed(self):
        return replace(self, subjects=tuple(s.reversed() for s in self.subjects))


@dataclass(frozen=True)
class StillSpec:
    """A still: one object with named attributes (jittered inside its cell), optionally a second object."""

    colour: str
    shape: str
    size: str
    position: str
    centre: tuple
    radius: float
    background: Background
    second: "StillSpec" = None


# ----------------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------------

_SUPERSAMPLE = 3  # shapes are drawn at 3x and box-filtered: anti-aliased edges, sub-pixel motion


def _grid(size):
    """Pixel-centre coordinates in [0, 1]: x [1, size], y [size, 1]."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return c[None, :], c[:, None]


def _shape_mask(shape, u, v):
    """Inside test for a shape of radius 1 in local coordinates (u right, v down)."""
    au, av_ = np.abs(u), np.abs(v)
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(au, av_) <= 0.82
    if shape == "diamond":
        return au + av_ <= 1.05
    if shape == "cross":
        return ((au <= 0.34) & (av_ <= 1.0)) | ((av_ <= 0.34) & (au <= 1.0))
    if shape == "triangle":  # apex up, base at v = 0.75
        return (v <= 0.75) & (v >= -1.0 + 1.75 * au / 0.95)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _draw(image, shape, rgb, centre, radius, opacity):
    """Alpha-composite an anti-aliased shape onto a float image [H, W, 3] (in place)."""
    if opacity <= 0 or radius <= 0:
        return
    size = image.shape[0]
    f = _SUPERSAMPLE
    # Only the pixels of the bounding box are rasterised.
    lo = lambda c: max(int(np.floor((c - radius) * size)) - 1, 0)  # noqa: E731
    hi = lambda c: min(int(np.ceil((c + radius) * size)) + 1, size)  # noqa: E731
    x0, x1, y0, y1 = lo(centre[0]), hi(centre[0]), lo(centre[1]), hi(centre[1])
    if x0 >= x1 or y0 >= y1:
        return
    xs = (np.arange(x0 * f, x1 * f, dtype=np.float32) + 0.5) / (size * f)
    ys = (np.arange(y0 * f, y1 * f, dtype=np.float32) + 0.5) / (size * f)
    mask = _shape_mask(shape, (xs[None, :] - centre[0]) / radius, (ys[:, None] - centre[1]) / radius)
    cover = mask.reshape(y1 - y0, f, x1 - x0, f).mean(axis=(1, 3), dtype=np.float32)[..., None] * opacity
    patch = image[y0:y1, x0:x1]
    patch += (np.asarray(rgb, np.float32) - patch) * cover


def _upsample(grid, size):
    """Bilinear upsampling of a small [h, w] grid to [size, size] (resolution independent)."""
    h, w = grid.shape
    x, y = _grid(size)
    xi, yi = x[0] * (w - 1), y[:, 0] * (h - 1)
    rows = np.stack([np.interp(xi, np.arange(w), r) for r in grid])  # [h, size]
    return np.stack([np.interp(yi, np.arange(h), c) for c in rows.T], axis=1)  # [size, size]


def render_background(background, size):
    """The background texture as a float32 image [size, size, 3] in 0-255."""
    x, y = _grid(size)
    along = x * np.cos(background.angle) + y * np.sin(background.angle)
    if background.kind == "plain":
        pattern = np.zeros((size, size), np.float32)
    elif background.kind == "gradient":
        pattern = 2 * along - 1
    elif background.kind == "stripes":
        pattern = np.sign(np.sin(2 * np.pi * along / background.period)) * 0.8
    elif background.kind == "checker":
        pattern = np.sign(np.sin(np.pi * x / (background.period / 2)) * np.sin(np.pi * y / (background.period / 2)))
    elif background.kind == "noise":
        grid = np.random.default_rng(background.seed).uniform(-1, 1, (7, 7))
        pattern = _upsample(grid, size)
    else:
        raise ValueError(f"unknown background kind {background.kind!r}; expected one of {BACKGROUNDS}")
    pattern = np.broadcast_to(pattern, (size, size)).astype(np.float32)
    return np.asarray(background.base, np.float32) + background.contrast * pattern[..., None]


def _to_uint8(image):
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def render_clip(spec, size=64, num_frames=16):
    """Render a `ClipSpec` to uint8 frames [num_frames, size, size, 3]. Frame i shows time i / (num_frames - 1)."""
    if num_frames < 2:
        raise ValueError(f"num_frames must be at least 2, got {num_frames}")
    background = render_background(spec.background, size)
    if spec.distractor is not None:
        rgb, centre, radius, opacity = spec.distractor.at(0.0)
        _draw(background, spec.distractor.shape, rgb, centre, radius, opacity)
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    for i in range(num_frames):
        image = background.copy()
        for track in spec.subjects:
            state = track.at(i / (num_frames - 1))
            if state is not None:
                _draw(image, track.shape, *state)
        frames[i] = _to_uint8(image)
    return frames


def render_still(spec, size=64):
    """Render a `StillSpec` to a uint8 image [size, size, 3]."""
    image = render_background(spec.background, size)
    for obj in (spec, spec.second):
        if obj is not None:
            _draw(image, obj.shape, COLOURS[obj.colour], obj.centre, obj.radius, 1.0)
    return _to_uint8(image)


# ----------------------------------------------------------------------------------------------------------------
# Sampling scenes
# ----------------------------------------------------------------------------------------------------------------


def sample_background(rng):
    """A random low-contrast, low-saturation background."""
    grey = rng.uniform(70, 170)
    base = tuple(float(np.clip(grey + rng.uniform(-18, 18), 0, 255)) for _ in range(3))
    kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    return Background(
        kind=kind,
        base=base,
        contrast=0.0 if kind == "plain" else float(rng.uniform(8, 28)),
        angle=float(rng.uniform(0, np.pi)),
        period=float(rng.uniform(0.12, 0.4)),
        seed=int(rng.integers(2**31)),
    )


def _other(rng, options, exclude):
    options = [o for o in options if o not in exclude]
    return options[rng.integers(len(options))]


def sample_still(rng, second_prob=0.0):
    """A random still with named attributes; with probability `second_prob` a second object in another cell."""

    def one(exclude_positions=(), exclude_colours=()):
        colour = _other(rng, list(COLOURS), exclude_colours)
        shape = SHAPES[rng.integers(len(SHAPES))]
        size = _other(rng, list(SIZES), ())
        position = _other(rng, list(POSITIONS), exclude_positions)
        (cx, cy), _ = POSITIONS[position]
        centre = (float(cx + rng.uniform(-0.06, 0.06)), float(cy + rng.uniform(-0.06, 0.06)))
        radius = float(SIZES[size] * rng.uniform(0.88, 1.12))
        return StillSpec(colour, shape, size, position, centre, radius, None)

    main = one()
    second = None
    if rng.random() < second_prob:
        # Another cell, not a neighbour where there is one, so that the two objects rarely touch.
        (mx, my), _ = POSITIONS[main.position]
        far = [p for p, ((x, y), _) in POSITIONS.items() if max(abs(x - mx), abs(y - my)) > 0.5]
        near = [p for p in POSITIONS if p not in far] if far else [main.position]
        second = one(exclude_positions=near, exclude_colours=[main.colour])
        second = replace(second, size="small", radius=float(SIZES["small"] * rng.uniform(0.88, 1.12)))
    return replace(main, background=sample_background(rng), second=second)


def an(phrase):
    """`phrase` with its indefinite article: "a red circle", "an orange circle"."""
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def still_caption(spec, template=0):
    """Caption of a still. Template 0 is the canonical "a small red circle in the top left corner"."""
    phrase = POSITIONS[spec.position][1]
    templates = (
        f"a {spec.size} {spec.colour} {spec.shape} {phrase}",
        f"a photo of a {spec.size} {spec.colour} {spec.shape} {phrase}",
        f"{phrase}, a {spec.size} {spec.colour} {spec.shape}",
        f"{an(spec.colour)} {spec.shape}, {spec.size}, {phrase}",
    )
    caption = templates[template % len(templates)]
    if spec.second is not None:
        second = spec.second
        caption += f" and a {second.size} {second.colour} {second.shape} {POSITIONS[second.position][1]}"
    return caption


STILL_TEMPLATES = 4


def all_still_captions():
    """Every canonical single-object caption with its attributes: [(caption, (colour, shape, size, position))]."""
    out = []
    for colour in COLOURS:
        for shape in SHAPES:
            for size in SIZES:
                for position in POSITIONS:
                    spec = StillSpec(colour, shape, size, position, None, None, None)
                    out.append((still_caption(spec), (colour, shape, size, position)))
    return out


def _far_from(rng, paths, radius, margin=0.04, tries=50):
    """A point at least `radius + margin` away from every (start, end, r) segment, or None."""
    for _ in range(tries):
        p = rng.uniform(0.12, 0.88, 2)
        ok = True
        for a, b, r in paths:
            a, b = np.asarray(a), np.asarray(b)
            d = b - a
            s = np.clip(np.dot(p - a, d) / max(np.dot(d, d), 1e-9), 0, 1)
            if np.linalg.norm(p - (a + s * d)) < r + radius + margin:
                ok = False
                break
        if ok:
            return (float(p[0]), float(p[1]))
    return None


def sample_clip_spec(rng, motion, distractor_prob=0.75):
    """A random clip of the given motion kind; its direction (and so which twin is "forward") is random too."""
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    shape = SHAPES[rng.integers(len(SHAPES))]
    radius = float(rng.uniform(0.09, 0.18))
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    if motion == "slide":
        y = u(0.2, 0.8)
        subjects = (Track(shape, colour, (u(0.15, 0.25), y), radius, end_centre=(u(0.75, 0.85), y)),)
    elif motion == "fall_rise":
        x = u(0.2, 0.8)
        subjects = (Track(shape, colour, (x, u(0.15, 0.25)), radius, end_centre=(x, u(0.75, 0.85))),)
    elif motion == "grow_shrink":
        subjects = (Track(shape, colour, (u(0.3, 0.7), u(0.3, 0.7)), u(0.04, 0.07), end_radius=u(0.2, 0.25)),)
    elif motion == "fade":
        subjects = (Track(shape, colour, (u(0.25, 0.75), u(0.25, 0.75)), radius, opacity=0.0, end_opacity=1.0),)
    elif motion == "colour_change":
        first = CHANGE_COLOURS[rng.integers(len(CHANGE_COLOURS))]
        second = _other(rng, CHANGE_COLOURS, [first])
        subjects = (Track(shape, first, (u(0.3, 0.7), u(0.3, 0.7)), u(0.13, 0.2), end_colour=second),)
    elif motion == "sequence":
        other_colour = _other(rng, list(COLOURS), [colour])
        other_shape = _other(rng, SHAPES, [shape])
        subjects = (
            Track(shape, colour, (u(0.18, 0.32), u(0.3, 0.7)), radius, visible=(0.0, 0.5)),
            Track(other_shape, other_colour, (u(0.68, 0.82), u(0.3, 0.7)), radius, visible=(0.5, 1.0)),
        )
    else:
        raise ValueError(f"unknown motion {motion!r}; expected one of {MOTIONS}")
    if rng.random() < 0.5:
        subjects = tuple(s.reversed() for s in subjects)

    distractor = None
    if rng.random() < distractor_prob:
        paths = [(s.centre, s.end_centre or s.centre, max(s.radius, s.end_radius or 0)) for s in subjects]
        d_radius = u(0.05, 0.08)
        centre = _far_from(rng, paths, d_radius)
        if centre is not None:
            used = {s.colour for s in subjects} | {s.end_colour for s in subjects}
            distractor = Track(SHAPES[rng.integers(len(SHAPES))], _other(rng, list(COLOURS), used), centre, d_radius)
    return ClipSpec(motion, subjects, sample_background(rng), distractor)


def describe_clip(spec):
    """(label, captions) of a clip; captions[0] is the canonical caption, the rest paraphrases."""
    s = spec.subjects[0]
    obj = f"{s.colour} {s.shape}"
    if spec.motion == "slide":
        right = s.end_centre[0] > s.centre[0]
        to, frm = ("right", "left") if right else ("left", "right")
        return f"moving {to}", [
            f"{an(obj)} moving {to}",
            f"{an(obj)} slides to the {to}",
            f"{an(obj)} moves from the {frm} to the {to}",
        ]
    if spec.motion == "fall_rise":
        down = s.end_centre[1] > s.centre[1]
        if down:
            return "moving down", [
                f"{an(obj)} moving down",
                f"{an(obj)} falls",
                f"{an(obj)} moves from the top to the bottom",
            ]
        return "moving up", [f"{an(obj)} moving up", f"{an(obj)} rises", f"{an(obj)} moves from the bottom to the top"]
    if spec.motion == "grow_shrink":
        if s.end_radius > s.radius:
            return "growing", [f"{an(obj)} growing", f"{an(obj)} gets bigger", f"a small {obj} becomes large"]
        return "shrinking", [f"{an(obj)} shrinking", f"{an(obj)} gets smaller", f"a large {obj} becomes small"]
    if spec.motion == "fade":
        if s.end_opacity > s.opacity:
            return "fading in", [f"{an(obj)} fading in", f"{an(obj)} slowly appears", f"{an(obj)} fades into view"]
        return "fading out", [f"{an(obj)} fading out", f"{an(obj)} slowly disappears", f"{an(obj)} fades away"]
    if spec.motion == "colour_change":
        a, b = s.colour, s.end_colour
        return f"turning {b}", [
            f"a {s.shape} turning from {a} to {b}",
            f"a {a} {s.shape} turns {b}",
            f"a {s.shape} changes colour from {a} to {b}",
        ]
    if spec.motion == "sequence":
        first, second = sorted(spec.subjects, key=lambda track: track.visible[0])
        side = lambda track: "left" if track.centre[0] < 0.5 else "right"  # noqa: E731
        one, two = f"{first.colour} {first.shape}", f"{second.colour} {second.shape}"
        return f"{side(first)} then {side(second)}", [
            f"{an(one)} on the {side(first)}, then {an(two)} on the {side(second)}",
            f"first {an(one)} on the {side(first)}, then {an(two)} on the {side(second)}",
            f"{an(one)} on the {side(first)} is replaced by {an(two)} on the {side(second)}",
        ]
    raise ValueError(f"unknown motion {spec.motion!r}; expected one of {MOTIONS}")


# ----------------------------------------------------------------------------------------------------------------
# Benchmark writer
# ----------------------------------------------------------------------------------------------------------------


def write_video(path, frames, fps=8, crf=18):
    """Write uint8 frames [T, H, W, 3] to an H.264 (yuv420p) mp4. Single-threaded x264: the same bytes every run."""
    num_frames, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"{path}: yuv420p needs even frame sizes, got {width}x{height}")
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "medium", "threads": "1", "bf": "0"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())


def write_benchmark(
    output_dir,
    seed=0,
    num_train=600,
    num_validation=100,
    num_test=600,
    num_frames=16,
    size=64,
    fps=8,
    distractor_prob=0.75,
):
    """Write the reversed-twin benchmark as a `videofolder` dataset; returns {split: number of clips}.

    Every split holds whole pairs, with the motion kinds balanced. Each clip is drawn from its own random stream
    (seed, split, pair), so a split's first pairs do not change when the split grows.
    """
    if size % 2:
        raise ValueError(f"--size must be even (H.264 yuv420p), got {size}")
    output_dir = Path(output_dir)
    counts = {}
    for split_index, (split, num_clips) in enumerate(zip(SPLITS, (num_train, num_validation, num_test))):
        if num_clips % 2:
            raise ValueError(f"--num_{split} must be even (clips come in reversed pairs), got {num_clips}")
        if num_clips == 0:
            continue
        split_dir = output_dir / split
        split_dir.mkdir(parents=True, exist_ok=True)
        num_pairs = num_clips // 2
        order = np.random.default_rng([seed, split_index]).permutation(num_pairs)
        rows = []
        for pair in range(num_pairs):
            rng = np.random.default_rng([seed, split_index, pair])
            spec = sample_clip_spec(rng, MOTIONS[order[pair] % len(MOTIONS)], distractor_prob)
            frames = render_clip(spec, size, num_frames)
            for suffix, clip_spec, clip_frames in (("a", spec, frames), ("b", spec.reversed(), frames[::-1])):
                label, captions = describe_clip(clip_spec)
                file_name = f"{pair:05d}{suffix}.mp4"
                write_video(split_dir / file_name, clip_frames, fps)
                rows.append(
                    {
                        "file_name": file_name,
                        "caption": captions[0],
                        "captions": captions,
                        "label": label,
                        "pair_id": f"{split}-{pair:05d}",
                        "motion": spec.motion,
                        "reversed": suffix == "b",
                    }
                )
        with open(split_dir / "metadata.jsonl", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        counts[split] = len(rows)
    settings = dict(seed=seed, num_frames=num_frames, size=size, fps=fps, distractor_prob=distractor_prob)
    (output_dir / "README.md").write_text(_dataset_card(counts, settings))
    return counts


def _dataset_card(counts, settings):
    splits = ", ".join(f"{split} {n}" for split, n in counts.items())
    flags = " ".join(f"--{k} {v}" for k, v in settings.items())
    return f"""# Synthetic reversed-twin video benchmark

Clips of flat shapes on textured backgrounds whose captions depend on the ORDER of their frames. Every clip has a
twin made of the same frames in reverse (same `pair_id`, `reversed` true) whose caption and label say the
opposite, so a model that ignores frame order cannot tell the two apart (pair accuracy 0.5).

Made by `python -m training.synthetic --output_dir DIR --num_train {counts.get("train", 0)} \
--num_validation {counts.get("validation", 0)} --num_test {counts.get("test", 0)} {flags}`
(H.264 mp4, yuv420p, {settings["num_frames"]} frames of {settings["size"]}x{settings["size"]} px at \
{settings["fps"]} fps). Clips per split: {splits}.

Load with `datasets.load_dataset("videofolder", data_dir=DIR)`. Columns:

- `video`: the clip (`datasets.Video`).
- `caption`: e.g. "a red circle moving left"; `captions`: the caption then two paraphrases.
- `label`: the order-dependent class, one of: {", ".join(CLASS_NAMES)}
  (`training.synthetic.CLASS_NAMES`; cast with `ClassLabel(names=CLASS_NAMES)`).
- `pair_id`: shared by a clip and its reversed twin; `reversed`: whether this clip is the reversed one.
- `motion`: {", ".join(MOTIONS)}.

A static distractor object (in {settings["distractor_prob"]:.0%} of the clips) and the background are never
named in the caption.
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_train", type=int, default=600, help="clips (an even number: twins)")
    parser.add_argument("--num_validation", type=int, default=100)
    parser.add_argument("--num_test", type=int, default=600)
    parser.add_argument("--num_frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels (even)")
    parser.add_argument("--fps", type=float, default=8)
    parser.add_argument("--distractor_prob", type=float, default=0.75, help="share of clips with a static object")
    args = parser.parse_args()
    start = time.perf_counter()
    counts = write_benchmark(
        args.output_dir,
        args.seed,
        args.num_train,
        args.num_validation,
        args.num_test,
        args.num_frames,
        args.size,
        args.fps,
        args.distractor_prob,
    )
    print(f"wrote {counts} to {args.output_dir} in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()

"""The demo's videos: where the gallery comes from, the checks a visitor's video must pass, and bounded caches.

Everything here needs only PyAV, torch and huggingface_hub (no code of the model's repository):

- `find_gallery`: the gallery folder of a model (`gallery/` or `examples/` inside its folder or Hub repository),
  or a folder / Hub dataset named explicitly; `scan_videos` lists its videos with captions from `metadata.jsonl`.
- `VideoLimits` / `check_video`: size, duration, frame count, frame rate and frame size, read from the container
  before anything is decoded, so the cost of one request is bounded by the frames it can decode.
- `BoundedCache`: an LRU with an entry bound and an age bound, for per-session uploads and per-video analyses.
- `GalleryEmbeddings`: gallery embeddings on disk, one file per model fingerprint, written at start-up only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v")
GALLERY_FOLDERS = ("gallery", "examples")  # looked up, in this order, inside a model folder or Hub repository
_IMAGE_DEMUXERS = ("image2", "image2pipe")

logger = logging.getLogger("stop-demo")


class VideoCheckError(ValueError):
    """A user-supplied video breaks one of the demo's limits or cannot be read; the message says which and why."""


@dataclass(frozen=True)
class GalleryVideo:
    path: str
    name: str
    caption: str | None
    source: str  # the gallery folder's name, or "upload"
    sha256: str
    label: str | None = None


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# Where the gallery comes from
# ----------------------------------------------------------------------------------------------------------------


def is_local_path(name: str) -> bool:
    path = Path(name).expanduser()
    return path.exists() or path.is_absolute() or name.startswith((".", "~"))


def find_gallery(model: str, gallery: str | None = None) -> Path | None:
    """
    The folder of gallery clips: `gallery` when given (a folder, or a Hub dataset id), else the first of
    `GALLERY_FOLDERS` inside the model's folder (or its Hub repository); `None` when there is none.
    """
    if gallery:
        if is_local_path(gallery):
            folder = Path(gallery).expanduser()
            if not folder.is_dir():
                raise SystemExit(f"Gallery folder {gallery} does not exist: pass a folder of videos or a dataset id.")
            return folder
        return _hub_folder(gallery, repo_type="dataset", patterns=None)
    if is_local_path(model):
        root = Path(model).expanduser()
    else:
        root = _hub_folder(model, repo_type="model", patterns=[f"{name}/**" for name in GALLERY_FOLDERS])
        if root is None:
            return None
    return next((root / name for name in GALLERY_FOLDERS if (root / name).is_dir()), None)


def _hub_folder(repo_id: str, repo_type: str, patterns) -> Path | None:
    from huggingface_hub import snapshot_download

    allow = patterns or [f"**/*{suffix}" for suffix in VIDEO_SUFFIXES] + ["**/metadata.jsonl", "*.jsonl"]
    try:
        return Path(snapshot_download(repo_id, repo_type=repo_type, allow_patterns=allow))
    except Exception as error:  # offline, gated, missing: the demo still runs on uploads
        if repo_type == "dataset":
            raise SystemExit(f"Cannot fetch the gallery dataset {repo_id} from the Hub: {error}") from None
        logger.warning(f"no gallery clips fetched from {repo_id} ({type(error).__name__}: {error})")
        return None


def scan_videos(folder, source: str | None = None, limit: int | None = None) -> list[GalleryVideo]:
    """Videos under `folder` (sorted; at most `limit`), captioned from a `metadata.jsonl` beside them
    (`file_name`, `caption`, optional `label`)."""
    folder = Path(folder)
    rows = {}
    for metadata in sorted(folder.rglob("metadata.jsonl")):
        for number, line in enumerate(metadata.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                rows[(metadata.parent / row["file_name"]).resolve()] = row
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise SystemExit(
                    f"{metadata}, line {number}: not a JSON object with a file_name ({error}); fix or remove the line."
                ) from None
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    videos = []
    for path in paths[:limit]:
        row = rows.get(path.resolve(), {})
        caption, label = row.get("caption"), row.get("label")
        videos.append(
            GalleryVideo(
                path=str(path.resolve()),
                name=path.name,
                caption=caption if isinstance(caption, str) and caption.strip() else None,
                source=source or folder.name,
                sha256=file_sha256(path),
                label=label if isinstance(label, str) else None,
            )
        )
    return videos


# ----------------------------------------------------------------------------------------------------------------
# What a visitor's video must satisfy before it is decoded
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoLimits:
    """Bounds on one uploaded video. Decoding costs about frames x pixels, so both are bounded, from the
    container's metadata and a demux pass that reads packets without decoding them."""

    max_upload_mb: float = 50
    max_duration_s: float = 120
    max_frames: int = 3600
    max_fps: float = 60
    max_pixels: int = 1920 * 1088

    def describe(self) -> str:
        return (
            f"Videos up to {self.max_upload_mb:g} MB, {self.max_duration_s:g} s, {self.max_frames} frames, "
            f"{self.max_fps:g} fps and {self.max_pixels / 1e6:.1f} megapixels per frame."
        )


def _frame_rate(stream) -> float | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(Fraction(rate))
    return None


def check_video(path, limits: VideoLimits) -> dict:
    """
    Raise `VideoCheckError` unless `path` is a readable video within `limits`; returns what was read
    (`duration_s`, `frames`, `fps`, `width`, `height`). Nothing is decoded: the header, then the packets.
    """
    path = Path(path)
    size_mb = path.stat().st_size / 1e6
    if size_mb > limits.max_upload_mb:
        raise VideoCheckError(
            f"{path.name} is {size_mb:.1f} MB; this demo takes videos up to {limits.max_upload_mb:g} MB."
        )
    try:
        with av.open(str(path)) as container:
            demuxer = container.format.name
            if demuxer in _IMAGE_DEMUXERS or demuxer.endswith("_pipe"):  # png_pipe, jpeg_pipe, ...
                raise VideoCheckError(f"{path.name} is a still image, not a video.")
            if not container.streams.video:
                raise VideoCheckError(f"{path.name} has no video stream (is it an audio file?).")
            stream = container.streams.video[0]
            info = _header(container, stream)
            _check_header(path.name, info, limits)
            info["frames"] = _count_packets(container, stream, path.name, limits.max_frames)
    except av.FFmpegError as error:
        raise VideoCheckError(
            f"Cannot read {path.name}: it is not a video file, or it is corrupt ({error.strerror})."
        ) from None
    if info["frames"] == 0:
        raise VideoCheckError(f"Cannot read {path.name}: it is not a video file, or it is corrupt (no video frames).")
    return info


def _header(container, stream) -> dict:
    if container.duration is not None:
        duration = container.duration / av.time_base
    elif stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    else:
        duration = 0.0
    fps = _frame_rate(stream)
    frames = stream.frames or (round(duration * fps) if fps and duration else 0)
    return dict(duration_s=duration, frames=frames, fps=fps, width=stream.width or 0, height=stream.height or 0)


def _check_header(name: str, info: dict, limits: VideoLimits) -> None:
    if info["duration_s"] > limits.max_duration_s:
        raise VideoCheckError(
            f"{name} lasts {info['duration_s']:.0f} s; this demo takes videos up to {limits.max_duration_s:g} s. "
            "Trim it first."
        )
    if info["fps"] is not None and info["fps"] > limits.max_fps:
        raise VideoCheckError(
            f"{name} has {info['fps']:g} frames per second; this demo takes up to {limits.max_fps:g} fps. "
            "Re-encode it at a lower frame rate."
        )
    if info["frames"] > limits.max_frames:
        raise VideoCheckError(_too_many_frames(name, info["frames"], limits.max_frames))
    if info["width"] * info["height"] > limits.max_pixels:
        raise VideoCheckError(
            f"{name} has {info['width']}x{info['height']} frames; this demo takes up to "
            f"{limits.max_pixels / 1e6:.1f} megapixels per frame. Scale it down first."
        )


def _too_many_frames(name: str, frames, limit: int) -> str:
    return (
        f"{name} has {frames} frames; this demo takes videos of up to {limit} frames. Trim it or lower its frame rate."
    )


def _count_packets(container, stream, name: str, limit: int) -> int:
    """Video packets (one per frame) up to `limit + 1`: a header that under-reports its frames is caught here."""
    count = 0
    for packet in container.demux(stream):
        if packet.size:
            count += 1
            if count > limit:
                raise VideoCheckError(_too_many_frames(name, f"more than {limit}", limit))
    return count


# ----------------------------------------------------------------------------------------------------------------
# Bounded, expiring caches
# ----------------------------------------------------------------------------------------------------------------


class BoundedCache:
    """
    A thread-safe LRU mapping with at most `max_entries` entries, each dropped `max_age_s` seconds after it was
    last written. `clock` is injectable for tests.
    """

    def __init__(self, max_entries: int, max_age_s: float, clock=time.monotonic):
        if max_entries < 1 or max_age_s <= 0:
            raise ValueError(f"BoundedCache needs max_entries >= 1 and max_age_s > 0, got {max_entries}, {max_age_s}")
        self.max_entries, self.max_age_s, self.clock = max_entries, max_age_s, clock
        self._items: OrderedDict = OrderedDict()  # key -> (written_at, value)
        self._lock = threading.Lock()

    def _expire(self, now: float) -> None:
        for key in [k for k, (written, _) in self._items.items() if now - written > self.max_age_s]:
            del self._items[key]

    def get(self, key, default=None):
        with self._lock:
            self._expire(self.clock())
            if key not in self._items:
                return default
            self._items.move_to_end(key)
            return self._items[key][1]

    def put(self, key, value) -> None:
        with self._lock:
            now = self.clock()
            self._expire(now)
            self._items[key] = (now, value)
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def __contains__(self, key) -> bool:
        return self.get(key, _MISSING) is not _MISSING

    def __len__(self) -> int:
        with self._lock:
            self._expire(self.clock())
            return len(self._items)


_MISSING = object()


class GalleryEmbeddings:
    """Normalised gallery embeddings of one model in `cache_dir/embeddings/<fingerprint>.pt`, keyed by each video's
    SHA-256. Loaded and, when the gallery holds videos not seen before, written once at start-up; uploads never
    touch it."""

    def __init__(self, cache_dir, fingerprint: str):
        self.file = Path(cache_dir) / "embeddings" / f"{fingerprint[:20]}.pt"

    def load(self) -> dict:
        import torch

        if not self.file.is_file():
            return {}
        try:
            return torch.load(self.file, weights_only=True)
        except Exception as error:  # a truncated file from a killed start: recompute
            logger.warning(f"ignoring unreadable embedding cache {self.file} ({type(error).__name__})")
            return {}

    def save(self, embeddings: dict) -> None:
        import torch

        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(".tmp")
        torch.save(embeddings, tmp)
        tmp.replace(self.file)

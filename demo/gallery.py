"""The demo's video gallery: which videos it holds, their checks, and their embeddings cached on disk.

A gallery embedding depends on the model (weights, config, frame sampling) and on the video's bytes, so the cache
is one file per model fingerprint, mapping each video's SHA-256 to its normalised embedding. A second start with
the same model and videos decodes nothing; an uploaded video that was seen before is embedded instantly.
Videos are embedded one at a time (`batch_size=1`): the official variant normalises its frame weights over the
batch, so this keeps a video's embedding the same whether it comes from the gallery or from an upload.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import av
import torch

from modeling_stop.retrieval import embed_videos
from training.synthetic import write_benchmark

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v")
SYNTHETIC_SPLIT = "test"  # held-out clips: the model never trained on them


class VideoCheckError(ValueError):
    """A user-supplied video breaks one of the demo's limits or cannot be read; the message says which and why."""


@dataclass
class GalleryVideo:
    path: str
    name: str
    caption: str | None
    source: str  # "synthetic", "sample", "upload" or a folder name
    sha256: str


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_fingerprint(model, processor) -> str:
    """SHA-256 of everything that changes a video embedding: config, frame sampling and every weight."""
    digest = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    digest.update(json.dumps(processor.video_processor.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def ensure_synthetic_clips(folder, num_clips: int = 12, seed: int = 0) -> Path:
    """Render `num_clips` held-out clips of the synthetic benchmark into `folder` unless they are there already."""
    folder = Path(folder)
    split_dir = folder / SYNTHETIC_SPLIT
    if not (split_dir / "metadata.jsonl").is_file():
        write_benchmark(folder, seed=seed, num_train=0, num_validation=0, num_test=num_clips)
    return split_dir


def scan_videos(folder, source: str | None = None) -> list[GalleryVideo]:
    """Every video under `folder` (sorted), captioned from a `metadata.jsonl` beside it (`file_name`, `caption`)."""
    folder = Path(folder)
    captions = {}
    for metadata in sorted(folder.rglob("metadata.jsonl")):
        for line in metadata.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                captions[(metadata.parent / row["file_name"]).resolve()] = row.get("caption")
    videos = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()):
        videos.append(
            GalleryVideo(
                path=str(path.resolve()),
                name=path.name,
                caption=captions.get(path.resolve()),
                source=source or folder.name,
                sha256=file_sha256(path),
            )
        )
    return videos


def check_video(path, max_upload_mb: float, max_duration_s: float) -> float:
    """
    Raise `VideoCheckError` unless `path` is a readable video within the size and duration limits; returns its
    duration in seconds. Only the container header is read.
    """
    path = Path(path)
    size_mb = path.stat().st_size / 1e6
    if size_mb > max_upload_mb:
        raise VideoCheckError(f"{path.name} is {size_mb:.1f} MB; this demo takes videos up to {max_upload_mb:g} MB.")
    try:
        with av.open(str(path)) as container:
            demuxer = container.format.name
            if demuxer in ("image2", "image2pipe") or demuxer.endswith("_pipe"):  # png_pipe, jpeg_pipe, ...
                raise VideoCheckError(f"{path.name} is a still image, not a video.")
            if not container.streams.video:
                raise VideoCheckError(f"{path.name} has no video stream (is it an audio file?).")
            stream = container.streams.video[0]
            if container.duration is not None:
                duration = container.duration / av.time_base
            elif stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            else:
                duration = 0.0
    except av.FFmpegError as error:
        raise VideoCheckError(
            f"Cannot read {path.name}: it is not a video file, or it is corrupt ({error.strerror})."
        ) from None
    if duration > max_duration_s:
        raise VideoCheckError(
            f"{path.name} lasts {duration:.0f} s; this demo takes videos up to {max_duration_s:g} s. Trim it first."
        )
    return duration


class EmbeddingCache:
    """Normalised video embeddings of one model, in memory and in `cache_dir/embeddings/<fingerprint>.pt`."""

    def __init__(self, model, processor, cache_dir):
        self.model, self.processor = model, processor
        self.file = Path(cache_dir) / "embeddings" / f"{model_fingerprint(model, processor)[:20]}.pt"
        self.embeddings: dict[str, torch.Tensor] = {}
        if self.file.is_file():
            self.embeddings = torch.load(self.file, weights_only=True)
        self._lock = threading.Lock()

    def embed(self, videos: list[GalleryVideo]) -> torch.Tensor:
        """`[len(videos), projection_dim]`, computing (and saving) only the videos not seen before."""
        with self._lock:
            missing = [v for v in videos if v.sha256 not in self.embeddings]
            for video in missing:
                self.embeddings[video.sha256] = embed_videos(self.model, self.processor, [video.path], batch_size=1)[0]
            if missing:
                self.file.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.file.with_suffix(".tmp")
                torch.save(self.embeddings, tmp)
                tmp.replace(self.file)
            if not videos:
                return torch.empty(0, self.model.config.projection_dim)
            return torch.stack([self.embeddings[v.sha256] for v in videos])

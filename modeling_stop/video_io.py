"""Read the few frames STOP needs from a video, without decoding the rest.

`read_video_frames` takes a path, the bytes of a file, a uint8 array `[T, H, W, 3]` or a
`torchcodec.decoders.VideoDecoder` (what `datasets`' `Video` feature returns), picks `num_frames`
frames spread over the video's duration and decodes only those.

Two decoding backends give the same pixels: torchcodec (preferred; needs FFmpeg's shared libraries
from the system) and PyAV (bundles its own FFmpeg, always installed). `backend=` or the
`STOP_VIDEO_BACKEND` environment variable (`torchcodec`, `pyav` or `auto`) picks one. In both cases
PyAV first reads the file's packet index (timestamps and keyframes, no decoding): frames are chosen
by display time, which handles variable-frame-rate video, and the same frames are chosen whichever
backend decodes them.
"""

import bisect
import functools
import io
import math
import os
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
import torch
import torch.nn.functional as F

BACKEND_ENV_VAR = "STOP_VIDEO_BACKEND"
BACKENDS = ("auto", "torchcodec", "pyav")
SAMPLINGS = ("uniform", "random")

# Demuxers that read single pictures: a still image is not a video.
_IMAGE_DEMUXERS = ("image2", "image2pipe")
# Rows of a full-size frame converted to float at a time while resizing (bounds memory on 8K video).
_RESIZE_ROWS_PER_STRIP = 256
# Frames are looked up at time `t + _TIME_EPS`, so that a time landing exactly on a frame's start
# (up to float rounding) selects that frame.
_TIME_EPS = 1e-6


class VideoDecodeError(ValueError):
    """A video could not be read. The message names the file (or `<bytes>`, `<array>`) and the problem."""


def read_video_frames(
    video,
    num_frames: int,
    sampling: str = "uniform",
    target_fps: float | None = None,
    generator: torch.Generator | None = None,
    max_frames: int | None = None,
    resize_to: int | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, list[int]]:
    """
    Decode `num_frames` frames spread over a video.

    The video's time line (optionally resampled to `target_fps`) is split into `num_frames` equal
    segments; `"uniform"` takes the frame shown at each segment's centre, `"random"` the frame shown
    at a random time inside each segment. A video with fewer frames than `num_frames` returns all of
    them.

    Args:
        video: a path (`str` / `Path`), the bytes of a video file, a uint8 array (numpy or torch) of
            shape `[T, H, W, 3]`, or a `torchcodec.decoders.VideoDecoder`.
        num_frames: frames wanted.
        sampling: `"uniform"` or `"random"`.
        target_fps: resample the time line to this frame rate first (e.g. `1.0`: one candidate frame
            per second, as the CLIP4Clip family of loaders does). Needs timestamps, so not for arrays.
        generator: random generator of `"random"` sampling, for reproducible draws.
        max_frames: only sample from the first `max_frames` frames of the (resampled) time line.
        resize_to: resize each frame right after decoding so that its shortest edge is `resize_to`
            (see `resize_shortest_edge`); a full-size frame is then never kept, whatever its size.
        backend: `"torchcodec"`, `"pyav"` or `"auto"`; defaults to `$STOP_VIDEO_BACKEND`, else
            `"auto"` (torchcodec when it loads, else PyAV). Only for paths and bytes: a `VideoDecoder`
            decodes itself (with the timestamps of its file when it comes from `datasets`; a decoder of
            unknown origin is sampled as if its frame rate were constant).

    Returns:
        `(frames, frame_indices)`: `frames` a uint8 tensor `[t, H, W, 3]` (`t = min(num_frames,
        available frames)`), rotated as a player shows them; `frame_indices` the index of each
        returned frame in the video, in display order.

    Raises:
        VideoDecodeError: missing, empty, truncated or corrupt file, no video stream, still image.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if target_fps is not None and not target_fps > 0:
        raise ValueError(f"target_fps must be > 0, got {target_fps}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    sample = dict(
        num_frames=num_frames, sampling=sampling, target_fps=target_fps, generator=generator, max_frames=max_frames
    )

    if isinstance(video, (np.ndarray, torch.Tensor)):
        return _read_array(video, resize_to, **sample)

    decoder_class = _torchcodec_decoder_class()
    if decoder_class is not None and isinstance(video, decoder_class):
        return _read_torchcodec_decoder(video, resize_to, **sample)

    backend = _resolve_backend(backend)
    source, name = _as_source(video)
    timeline = _scan(source, name)
    indices = sample_frame_indices(timeline.seconds, timeline.end_seconds, **sample)
    if backend == "torchcodec":
        decoder = _open_torchcodec(source, name)
        if len(decoder) == len(timeline.seconds):
            return _decode_torchcodec(decoder, name, indices, resize_to), indices
        # The two demuxers disagree on the frame count (rare, odd files): PyAV knows the indices it chose.
    return _decode_pyav(source, name, timeline, indices, resize_to), indices


def sample_frame_indices(
    frame_times,
    end_time: float,
    num_frames: int,
    sampling: str = "uniform",
    target_fps: float | None = None,
    generator: torch.Generator | None = None,
    max_frames: int | None = None,
) -> list[int]:
    """
    Choose the frames to decode from the display times of all frames.

    Args:
        frame_times: display time (seconds) of every frame, increasing.
        end_time: when the last frame stops being displayed.
        (others): as in `read_video_frames`.

    Returns:
        Indices into `frame_times`, in time order (`min(num_frames, candidates)` of them). A frame shown
        for a long time in a variable-frame-rate video can be chosen twice.
    """
    times = np.asarray(frame_times, dtype=np.float64)
    assert times.ndim == 1 and len(times) > 0
    start = float(times[0])

    def frame_shown_at(t):
        return int(np.clip(np.searchsorted(times, t + _TIME_EPS, side="right") - 1, 0, len(times) - 1))

    def offsets():
        if sampling == "uniform":
            return [0.5] * num_frames
        return torch.rand(num_frames, generator=generator, dtype=torch.float64).tolist()

    if target_fps is None:
        count = len(times) if max_frames is None else min(len(times), max_frames)
        if count <= num_frames:
            return list(range(count))
        end = end_time if count == len(times) else float(times[count])
        step = (end - start) / num_frames
        return [frame_shown_at(start + (i + u) * step) for i, u in enumerate(offsets())]

    # Resample the time line at target_fps, then take num_frames of these candidates.
    count = max(1, math.ceil((end_time - start) * target_fps - _TIME_EPS))
    if max_frames is not None:
        count = min(count, max_frames)
    candidates = [frame_shown_at(start + m / target_fps) for m in range(count)]
    if count <= num_frames:
        return candidates
    step = count / num_frames
    return [candidates[min(int((i + u) * step), count - 1)] for i, u in enumerate(offsets())]


def resize_shortest_edge(frames: torch.Tensor, size: int) -> torch.Tensor:
    """
    Resize uint8 frames `[T, H, W, 3]` so that their shortest edge is `size` (the other edge scaled
    and floored, as CLIP's preprocessing), with bicubic interpolation and antialiasing computed on
    float, then rounded back to uint8 as a PIL resize would.

    The two passes of the separable filter (width, then height, exactly as `F.interpolate` computes
    them) run on strips of rows, so a 7680x4320 frame never exists as float in full.
    """
    assert frames.dtype == torch.uint8 and frames.ndim == 4 and frames.shape[-1] == 3
    height, width = frames.shape[1:3]
    short, long = min(height, width), max(height, width)
    new_long = int(size * long / short)
    new_h, new_w = (size, new_long) if height <= width else (new_long, size)
    if (new_h, new_w) == (height, width):
        return frames

    def interpolate(x, out_size):
        return F.interpolate(x, size=out_size, mode="bicubic", antialias=True, align_corners=False)

    # One float strip buffer, reused: allocating a fresh one per strip fragments the heap (RSS grows).
    strip = torch.empty((1, 3, min(_RESIZE_ROWS_PER_STRIP, height), width), dtype=torch.float32)
    strip = strip.contiguous(memory_format=torch.channels_last)  # the layout of HWC frames: a plain copy
    resized = []
    for frame in frames:
        rows = []
        for top in range(0, height, _RESIZE_ROWS_PER_STRIP):
            part = frame[top : top + _RESIZE_ROWS_PER_STRIP].permute(2, 0, 1)[None]
            buffer = strip[:, :, : part.shape[2]]
            buffer.copy_(part)
            rows.append(interpolate(buffer, (part.shape[2], new_w)))
        out = interpolate(torch.cat(rows, dim=2), (new_h, new_w))
        resized.append(out[0].clamp_(0, 255).round_().to(torch.uint8).permute(1, 2, 0))
    return torch.stack(resized)


def available_backends() -> list[str]:
    """Decoding backends that work in this environment, preferred first."""
    return (["torchcodec"] if _torchcodec_decoder_class() is not None else []) + ["pyav"]


# --------------------------------------------------------------------------------------------
# Sources, time lines and the checks that turn FFmpeg's errors into messages naming the file
# --------------------------------------------------------------------------------------------


@dataclass
class _Timeline:
    """Where each frame is, from the packet index: display order, no decoding needed."""

    pts: list[int]  # presentation timestamps, stream time base, increasing
    keyframes: list[int]  # display indices of the keyframes
    time_base: Fraction
    end_pts: int

    @property
    def seconds(self) -> np.ndarray:
        return np.array([float(p * self.time_base) for p in self.pts])

    @property
    def end_seconds(self) -> float:
        return float(self.end_pts * self.time_base)


def _as_source(video) -> tuple[str | bytes, str]:
    if isinstance(video, (bytes, bytearray, memoryview)):
        data = bytes(video)
        if not data:
            raise VideoDecodeError("Cannot read video <bytes>: the data is empty (0 bytes).")
        return data, "<bytes>"
    if isinstance(video, (str, os.PathLike)):
        path = os.fspath(video)
        if not os.path.exists(path):
            raise VideoDecodeError(f"Cannot read video {path!r}: no such file.")
        if os.path.isdir(path):
            raise VideoDecodeError(f"Cannot read video {path!r}: it is a directory, not a video file.")
        if os.path.getsize(path) == 0:
            raise VideoDecodeError(f"Cannot read video {path!r}: the file is empty (0 bytes).")
        return path, repr(path)
    raise TypeError(
        "video must be a path, bytes, a uint8 array [T, H, W, 3] or a torchcodec VideoDecoder, "
        f"got {type(video).__name__}"
    )


def _reason(error: Exception) -> str:
    """FFmpeg's own words, without PyAV's errno or torchcodec's C++ source location."""
    message = getattr(error, "strerror", None) or str(error)
    if ".cpp:" in message:
        message = message.split(".cpp:", 1)[1].split(", ", 1)[-1]
    return message.strip()


def _open_pyav(source, name):
    try:
        return av.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (av.FFmpegError, OSError) as error:
        raise VideoDecodeError(
            f"Cannot read video {name}: FFmpeg cannot open it ({_reason(error)}); it is not a media file, "
            "or a truncated or corrupt one."
        ) from error


def _video_stream(container, name):
    if not container.streams.video:
        found = ", ".join(f"{s.type} ({s.codec_context.name})" for s in container.streams) or "none"
        raise VideoDecodeError(f"Cannot read video {name}: it has no video stream (streams found: {found}).")
    if container.format.name in _IMAGE_DEMUXERS or container.format.name.endswith("_pipe"):
        raise VideoDecodeError(
            f"Cannot read video {name}: it is a still image ({container.format.name}), not a video. "
            "Pass a video file, or a uint8 array [T, H, W, 3] for frames you already have."
        )
    return container.streams.best("video")


def _scan(source, name) -> _Timeline:
    """Read the packet index of the video stream (what torchcodec's exact mode does too)."""
    with _open_pyav(source, name) as container:
        stream = _video_stream(container, name)
        packets = []
        try:
            for packet in container.demux(stream):
                timestamp = packet.pts if packet.pts is not None else packet.dts
                if packet.size == 0 or packet.is_discard or timestamp is None:
                    continue
                packets.append((timestamp, packet.duration or 0, packet.is_keyframe))
        except av.FFmpegError as error:
            raise VideoDecodeError(f"Cannot read video {name}: the file is corrupt ({_reason(error)}).") from error
        if not packets:
            raise VideoDecodeError(f"Cannot read video {name}: its video stream has no frames (truncated file?).")
        packets.sort()
        pts = [p for p, _, _ in packets]
        typical = int(np.median(np.diff(pts))) if len(pts) > 1 else 0
        if typical <= 0:  # one frame, no durations: show it for one nominal frame period
            rate = stream.average_rate or stream.guessed_rate or 1
            typical = max(1, round(1 / (Fraction(rate) * stream.time_base)))
        end_pts = max(p + (d if d > 0 else typical) for p, d, _ in packets)
        keyframes = [i for i, (_, _, key) in enumerate(packets) if key] or [0]
        return _Timeline(pts=pts, keyframes=keyframes, time_base=Fraction(stream.time_base), end_pts=end_pts)


def _resolve_backend(backend: str | None) -> str:
    backend = backend or os.environ.get(BACKEND_ENV_VAR) or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"video backend must be one of {BACKENDS} (argument or ${BACKEND_ENV_VAR}), got {backend!r}")
    if backend == "auto":
        return available_backends()[0]
    if backend == "torchcodec" and _torchcodec_decoder_class() is None:
        raise ImportError(
            f"The torchcodec video backend is not usable here ({_load_torchcodec()[1]}). Install torchcodec==0.13.0 "
            f"and FFmpeg's shared libraries (apt-get install ffmpeg), or use {BACKEND_ENV_VAR}=pyav."
        )
    return backend


@functools.cache
def _load_torchcodec():
    """`(torchcodec.decoders.VideoDecoder or None, why it does not load)`."""
    try:
        from torchcodec.decoders import VideoDecoder
    except Exception as error:  # ImportError, or OSError/RuntimeError when FFmpeg's libraries are missing
        return None, f"{type(error).__name__}: {error}"
    return VideoDecoder, ""


def _torchcodec_decoder_class():
    return _load_torchcodec()[0]


# --------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------


def _finish(frame: np.ndarray | torch.Tensor, rotation: float, resize_to: int | None) -> torch.Tensor:
    """One decoded HWC uint8 frame -> as displayed (rotated), optionally resized."""
    frame = torch.as_tensor(frame)
    quarter_turns = round(rotation / 90) % 4
    if quarter_turns:  # rotation is counter-clockwise, as FFmpeg's display matrix and np.rot90
        frame = torch.rot90(frame, quarter_turns, dims=(0, 1))
    if resize_to is not None:
        frame = resize_shortest_edge(frame.contiguous()[None], resize_to)[0]
    return frame.contiguous()


def _decode_pyav(source, name, timeline: _Timeline, indices: list[int], resize_to) -> torch.Tensor:
    decoded = {}
    with _open_pyav(source, name) as container:
        stream = container.streams.best("video")
        frames, position = None, -1  # the running decoder and the display index it last returned
        try:
            for index in sorted(set(indices)):
                target = timeline.pts[index]
                k = bisect.bisect_right(timeline.keyframes, index) - 1
                frame = None
                if frames is not None and timeline.keyframes[k] <= position < index:
                    frame, _ = _decode_until(frames, target)  # no keyframe in between: decode on
                # Seek to the keyframe before the target; if the demuxer lands after the target
                # (B-frame reordering), seek to the keyframe before that one, and so on.
                for key in reversed(timeline.keyframes[: k + 1] if frame is None else []):
                    container.seek(timeline.pts[key], stream=stream, backward=True, any_frame=False)
                    frames = container.decode(stream)
                    frame, landed_late = _decode_until(frames, target)
                    if frame is not None or not landed_late:
                        break
                if frame is None:
                    seconds = float(target * timeline.time_base)
                    raise VideoDecodeError(
                        f"Cannot read video {name}: frame {index} (t={seconds:.3f}s) could not be decoded; "
                        "the file is truncated or corrupt."
                    )
                # Convert (and shrink) right away: no full-size decoded frame is kept.
                decoded[index] = _finish(frame.to_ndarray(format="rgb24"), getattr(frame, "rotation", 0), resize_to)
                position = index
        except av.FFmpegError as error:
            raise VideoDecodeError(
                f"Cannot read video {name}: decoding failed, the file is truncated or corrupt ({_reason(error)})."
            ) from error
    return torch.stack([decoded[i] for i in indices])


def _decode_until(frames, target: int):
    """Decode on to the frame whose timestamp is `target`: `(frame or None, whether the first frame was past it)`."""
    first = True
    for frame in frames:
        pts = frame.pts if frame.pts is not None else frame.dts
        if pts is None:
            continue
        if pts == target:
            return frame, False
        if pts > target:
            return None, first
        first = False
    return None, False


def _open_torchcodec(source, name):
    decoder_class = _torchcodec_decoder_class()
    try:
        return decoder_class(source, dimension_order="NHWC", seek_mode="exact")
    except (RuntimeError, ValueError) as error:
        raise VideoDecodeError(f"Cannot read video {name}: torchcodec cannot open it ({_reason(error)}).") from error


def _decode_torchcodec(decoder, name, indices: list[int], resize_to) -> torch.Tensor:
    width = decoder.metadata.width

    def to_hwc(data):  # a decoder made by the caller may be NCHW
        return data if data.shape[-2] == width and data.shape[-1] == 3 else data.movedim(-3, -1)

    wanted = sorted(set(indices))
    try:
        if resize_to is None:
            batch = to_hwc(decoder.get_frames_at(wanted).data)
            decoded = dict(zip(wanted, batch))
        else:  # one frame at a time, shrunk before the next one is decoded
            decoded = {i: _finish(to_hwc(decoder.get_frame_at(i).data), 0, resize_to) for i in wanted}
    except (RuntimeError, IndexError) as error:
        raise VideoDecodeError(
            f"Cannot read video {name}: decoding failed, the file is truncated or corrupt ({_reason(error)})."
        ) from error
    return torch.stack([decoded[i] for i in indices]).contiguous()


def _read_torchcodec_decoder(decoder, resize_to, **sample):
    """A `VideoDecoder` from `datasets`: its file's packet index when the file is known, else its metadata."""
    encoded = getattr(decoder, "_hf_encoded", None) or {}
    path = encoded.get("path") or getattr(decoder.metadata, "path", None)
    name = repr(path) if path else "<VideoDecoder>"
    source = encoded.get("bytes") or (path if path and os.path.isfile(path) else None)
    timeline = _scan(source, name) if source is not None else None
    if timeline is not None and len(timeline.pts) == len(decoder):
        times, end = timeline.seconds, timeline.end_seconds
    else:  # no file to read timestamps from: frames assumed evenly spaced
        begin, end = decoder.metadata.begin_stream_seconds, decoder.metadata.end_stream_seconds
        times = begin + (end - begin) * np.arange(len(decoder)) / max(len(decoder), 1)
    if len(times) == 0:
        raise VideoDecodeError(f"Cannot read video {name}: its video stream has no frames.")
    indices = sample_frame_indices(times, end, **sample)
    return _decode_torchcodec(decoder, name, indices, resize_to), indices


def _read_array(video, resize_to, target_fps, **sample):
    shape, dtype = tuple(video.shape), video.dtype
    if len(shape) != 4 or shape[-1] != 3 or shape[0] < 1 or dtype not in (np.uint8, torch.uint8):
        raise VideoDecodeError(
            f"Cannot read video <array>: expected uint8 frames of shape [T, H, W, 3], got {dtype} {list(shape)}."
        )
    if target_fps is not None:
        raise ValueError(
            "Cannot read video <array>: target_fps needs timestamps and an array has none; "
            "resample the frames yourself or pass the video file."
        )
    indices = sample_frame_indices(np.arange(shape[0], dtype=np.float64), float(shape[0]), **sample)
    if isinstance(video, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(video[indices]))
    else:
        frames = video[indices].cpu().contiguous()
    if resize_to is not None:
        frames = resize_shortest_edge(frames, resize_to)
    return frames, indices

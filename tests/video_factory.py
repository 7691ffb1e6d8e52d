"""Small test videos, written with PyAV (its bundled FFmpeg: no system tools needed).

Frames are solid grey levels that encode their own index (`level_of(i)`), so a test can read back
which source frame a decoder returned with `index_of(frame)`.
"""

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

LEVEL_STEP = 7
LEVEL_OFFSET = 16


def level_of(index: int) -> int:
    return LEVEL_OFFSET + LEVEL_STEP * index


def index_of(frame) -> int:
    """Source index of a frame made by `indexed_frames` (robust to codec rounding)."""
    return int(round((float(np.asarray(frame, dtype=np.float64).mean()) - LEVEL_OFFSET) / LEVEL_STEP))


def indexed_frames(num_frames: int, height: int = 48, width: int = 64) -> np.ndarray:
    """uint8 `[num_frames, height, width, 3]`; frame i is solid grey `level_of(i)` (up to 34 frames)."""
    assert level_of(num_frames - 1) <= 255
    levels = np.array([level_of(i) for i in range(num_frames)], dtype=np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (num_frames, height, width, 3)).copy()


def moving_frames(num_frames: int, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """uint8 `[num_frames, height, width, 3]`: a random texture sliding 2 px per frame (real motion for a codec)."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (height, width + 2 * num_frames, 3), dtype=np.uint8)
    return np.stack([texture[:, 2 * i : 2 * i + width] for i in range(num_frames)])


def write_video(
    path,
    frames: np.ndarray,
    fps: int = 10,
    codec: str = "libx264",
    pix_fmt: str = "yuv444p",
    times: list[float] | None = None,
    rotation: int | None = None,
    options: dict | None = None,
) -> Path:
    """
    Encode uint8 RGB frames `[T, H, W, 3]` into `path` (container from the suffix).

    `times` (seconds, increasing) gives each frame its own timestamp (variable frame rate);
    `rotation` writes a display matrix (degrees, counter-clockwise) as phone videos carry.
    Defaults are lossless-ish (x264 at qp 0, 4:4:4) so decoded pixels match the input within 1-2.
    """
    path = Path(path)
    if options is None:
        options = {"qp": "0", "preset": "ultrafast"} if codec == "libx264" else {}
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        if times is not None:
            stream.time_base = Fraction(1, 1000)
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            if times is not None:
                frame.pts, frame.time_base = round(times[i] * 1000), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_solid_8k(path, num_frames: int = 3) -> Path:
    """A 7680x4320 H.264 video of `num_frames` solid frames, built directly in YUV (fast)."""
    path = Path(path)
    width, height = 7680, 4320
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=1, options={"preset": "ultrafast", "crf": "30"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(num_frames):
            planes = np.full((height * 3 // 2, width), 128, dtype=np.uint8)
            planes[:height] = 16 + round(level_of(i) * 219 / 255)  # limited-range luma of grey level_of(i)
            frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_audio_only(path, seconds: float = 0.5) -> Path:
    """An .mp4 with one AAC audio track and no video."""
    path = Path(path)
    rate = 16000
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=rate)
        t = np.arange(int(seconds * rate)) / rate
        samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def png_bytes(height: int = 48, width: int = 64) -> bytes:
    """The bytes of a PNG image."""
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "rgb24"
    frame = av.VideoFrame.from_ndarray(indexed_frames(1, height, width)[0], format="rgb24")
    return b"".join(bytes(packet) for packet in [*codec.encode(frame), *codec.encode()])

"""Processor for STOP: CLIP's tokenizer for the text, a plain-torch video processor for the frames."""

import numbers
import os
from typing import TypedDict

import torch
from transformers import AutoTokenizer, BatchFeature, CLIPTokenizer, PretrainedConfig
from transformers.processing_utils import ProcessorMixin
from transformers.video_processing_utils import VideoProcessorMixin

from .video_io import SAMPLINGS, read_video_frames, resize_shortest_edge

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class STOPVideoProcessorKwargs(TypedDict, total=False):
    num_frames: int
    size: int
    mean: list[float]
    std: list[float]
    target_fps: float | None


# Settings of the video processor that `STOPProcessor.from_pretrained(folder, num_frames=16)` overrides.
VIDEO_SETTINGS = ("num_frames", "size", "mean", "std", "target_fps")


def _check_num_frames(num_frames) -> int:
    if isinstance(num_frames, bool) or not isinstance(num_frames, numbers.Integral) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive integer (frames per video), got {num_frames!r}")
    return int(num_frames)


class STOPVideoProcessor(VideoProcessorMixin):
    r"""
    Turns videos into the `pixel_values` and `video_mask` a [`STOPModel`] takes: `num_frames` frames per
    video (decoded with `read_video_frames`, only those frames), each resized so that its shortest edge
    is `size` (bicubic, antialiased), centre-cropped to `size` x `size`, scaled to [0, 1] and normalised
    with CLIP's mean and std. A video with fewer frames is padded with zero frames (zeros after
    normalisation, as the authors' loader) that `video_mask` marks 0.

    Plain torch: transformers' `BaseVideoProcessor` needs torchvision, which this project does not use.

    Args:
        num_frames (`int`, defaults to 12): frames per video.
        size (`int`, defaults to 224): side of the square frames (the CLIP vision tower's `image_size`).
        mean (`list[float]`, defaults to OpenAI CLIP's): per-channel mean of the normalisation.
        std (`list[float]`, defaults to OpenAI CLIP's): per-channel std of the normalisation.
        target_fps (`float`, *optional*): resample each video to this frame rate before choosing frames
            (e.g. 1.0 as the CLIP4Clip family of loaders); by default frames are spread over the whole video.
    """

    model_input_names = ["pixel_values", "video_mask"]
    valid_kwargs = STOPVideoProcessorKwargs

    def __init__(
        self,
        num_frames: int = 12,
        size: int = 224,
        mean=OPENAI_CLIP_MEAN,
        std=OPENAI_CLIP_STD,
        target_fps: float | None = None,
        **kwargs,
    ):
        for key in ("video_processor_type", "auto_map", "processor_class"):  # bookkeeping keys of saved configs
            kwargs.pop(key, None)
        super().__init__(**kwargs)
        if num_frames < 1 or size < 1:
            raise ValueError(f"STOPVideoProcessor: num_frames and size must be >= 1, got {num_frames} and {size}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"STOPVideoProcessor: mean and std need 3 values (std > 0), got {mean} and {std}")
        self.num_frames = int(num_frames)
        self.size = int(size)
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self.target_fps = target_fps

    def __call__(
        self,
        videos,
        sampling: str = "uniform",
        generator: torch.Generator | None = None,
        backend: str | None = None,
        return_frame_indices: bool = False,
        return_tensors: str | None = "pt",
        num_frames: int | None = None,
    ) -> BatchFeature:
        """
        Args:
            videos: one video or a list of videos; a video is anything `read_video_frames` reads (path,
                bytes, uint8 array `[T, H, W, 3]`, torchcodec `VideoDecoder`). A 5-D array is a batch.
            sampling: `"uniform"` (segment centres) or `"random"` (a random frame in each segment).
            generator: random generator for `"random"` sampling.
            backend: decoding backend (`"torchcodec"`, `"pyav"`), see `read_video_frames`.
            return_frame_indices: also return `frame_indices` `[B, num_frames]` (source frame of each
                frame, -1 for padding).
            num_frames: frames per video for this call (default: the processor's `num_frames`).

        Returns:
            [`BatchFeature`] with `pixel_values` float32 `[B, num_frames, 3, size, size]` and `video_mask`
            long `[B, num_frames]` (1 = real frame).
        """
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        if not isinstance(videos, (list, tuple)):
            videos = list(videos) if getattr(videos, "ndim", 0) == 5 else [videos]
        if len(videos) == 0:
            raise ValueError("STOPVideoProcessor got an empty list of videos")
        num_frames = self.num_frames if num_frames is None else _check_num_frames(num_frames)

        pixel_values = torch.zeros(len(videos), num_frames, 3, self.size, self.size)
        video_mask = torch.zeros(len(videos), num_frames, dtype=torch.long)
        frame_indices = torch.full((len(videos), num_frames), -1, dtype=torch.long)
        for b, video in enumerate(videos):
            frames, indices = read_video_frames(
                video,
                num_frames,
                sampling=sampling,
                target_fps=self.target_fps,
                generator=generator,
                resize_to=self.size,
                backend=backend,
            )
            pixel_values[b, : len(frames)] = self.frames_to_pixel_values(frames)
            video_mask[b, : len(frames)] = 1
            frame_indices[b, : len(frames)] = torch.tensor(indices)

        data = {"pixel_values": pixel_values, "video_mask": video_mask}
        if return_frame_indices:
            data["frame_indices"] = frame_indices
        return BatchFeature(data, tensor_type=return_tensors)

    def preprocess(self, videos, **kwargs) -> BatchFeature:
        return self(videos, **kwargs)

    def frames_to_pixel_values(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames `[t, H, W, 3]` -> normalised float32 `[t, 3, size, size]`."""
        frames = resize_shortest_edge(frames, self.size)  # a no-op when decoded with resize_to=size
        height, width = frames.shape[1:3]
        top, left = int(round((height - self.size) / 2.0)), int(round((width - self.size) / 2.0))
        frames = frames[:, top : top + self.size, left : left + self.size]
        pixels = frames.permute(0, 3, 1, 2).float() / 255.0
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (pixels - mean) / std

    def with_settings(self, **settings) -> "STOPVideoProcessor":
        """A copy with some of `num_frames`, `size`, `mean`, `std`, `target_fps` changed (validated as in `__init__`)."""
        unknown = set(settings) - set(VIDEO_SETTINGS)
        if unknown:
            raise TypeError(f"STOPVideoProcessor settings are {VIDEO_SETTINGS}, got {sorted(unknown)}")
        if "num_frames" in settings:
            _check_num_frames(settings["num_frames"])
        config = {k: v for k, v in self.to_dict().items() if k != "video_processor_type"}
        return type(self)(**{**config, **settings})

    def to_dict(self) -> dict:
        return {
            "video_processor_type": type(self).__name__,
            "num_frames": self.num_frames,
            "size": self.size,
            "mean": self.mean,
            "std": self.std,
            "target_fps": self.target_fps,
        }


class STOPProcessor(ProcessorMixin):
    r"""
    Prepares text and videos for a [`STOPModel`]: CLIP's tokenizer (texts padded and truncated to
    `max_words` tokens, start and end tokens included) and a [`STOPVideoProcessor`].

    ```python
    >>> processor = AutoProcessor.from_pretrained("path/to/stop-checkpoint", trust_remote_code=True)
    >>> inputs = processor(text=["a person cooking"], videos=["cooking.mp4"], padding="max_length")
    >>> inputs["input_ids"].shape, inputs["pixel_values"].shape, inputs["video_mask"].shape
    (torch.Size([1, 32]), torch.Size([1, 12, 3, 224, 224]), torch.Size([1, 12]))
    ```

    Args:
        video_processor ([`STOPVideoProcessor`]): the video processor.
        tokenizer ([`CLIPTokenizer`]): the CLIP tokenizer.
        max_words (`int`, defaults to 32): text length in tokens (the model's `config.max_words`).
    """

    def __init__(self, video_processor, tokenizer, max_words: int = 32, **kwargs):
        self.max_words = int(max_words)
        super().__init__(video_processor, tokenizer, **kwargs)

    def __call__(
        self, text=None, videos=None, return_tensors="pt", padding=True, sampling="uniform", **kwargs
    ) -> BatchFeature:
        """
        Args:
            text: a string or a list of strings.
            videos: one video or a list of videos (see [`STOPVideoProcessor.__call__`]).
            return_tensors: `"pt"` (default), `"np"` or None.
            padding: `True` pads to the longest text, `"max_length"` to exactly `max_words` tokens.
            sampling: `"uniform"` or `"random"` frame sampling.
            kwargs: `num_frames` (frames per video for this call), `generator`, `backend` and
                `return_frame_indices` go to the video processor, the rest to the tokenizer.

        Returns:
            [`BatchFeature`] with `input_ids` and `attention_mask` `[N, L]` (L <= max_words) when `text` is
            given, `pixel_values` `[B, T, 3, S, S]` and `video_mask` `[B, T]` when `videos` are.
        """
        if text is None and videos is None:
            raise ValueError("STOPProcessor needs `text`, `videos` or both")
        video_kwargs = {
            k: kwargs.pop(k) for k in ("num_frames", "generator", "backend", "return_frame_indices") if k in kwargs
        }
        data = {}
        if text is not None:
            data.update(
                self.tokenizer(
                    text,
                    padding=padding,
                    truncation=True,
                    max_length=self.max_words,
                    return_tensors=return_tensors,
                    **kwargs,
                )
            )
        if videos is not None:
            data.update(self.video_processor(videos, sampling=sampling, return_tensors=return_tensors, **video_kwargs))
        return BatchFeature(data, tensor_type=return_tensors)

    def check_argument_for_proper_class(self, argument_name, argument):
        # The base class resolves `VideoProcessorMixin` through AutoVideoProcessor's registry, which needs torchvision.
        if argument_name == "video_processor":
            if not isinstance(argument, STOPVideoProcessor):
                raise TypeError(f"STOPProcessor needs a STOPVideoProcessor, got {type(argument).__name__}")
            return STOPVideoProcessor
        return super().check_argument_for_proper_class(argument_name, argument)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs) -> "STOPProcessor":
        """`ProcessorMixin.from_pretrained`; video settings given as keyword arguments (`num_frames`, `size`,
        `mean`, `std`, `target_fps`) override the saved ones, as `max_words` does."""
        overrides = {k: kwargs.pop(k) for k in VIDEO_SETTINGS if k in kwargs}
        processor = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        if isinstance(processor, tuple):  # return_unused_kwargs=True
            processor[0].video_processor = processor[0].video_processor.with_settings(**overrides)
        else:
            processor.video_processor = processor.video_processor.with_settings(**overrides)
        return processor

    @classmethod
    def _resolve_subprocessors(cls, pretrained_model_name_or_path, processor_dict, **kwargs):
        # transformers >= 5.25 loads sub-processors here, the video processor through AutoVideoProcessor (which
        # requires torchvision); ours are read as `_get_arguments_from_pretrained` reads them on earlier versions.
        kwargs.pop("return_unused_kwargs", None)
        given = {name: kwargs.pop(name) for name in ("video_processor", "tokenizer") if kwargs.get(name) is not None}
        loading = {k: v for k, v in kwargs.items() if k != "max_words"}  # video settings: popped already
        if len(given) < 2:
            video_processor, tokenizer = cls._get_arguments_from_pretrained(
                pretrained_model_name_or_path, processor_dict, **loading
            )
            given = {"video_processor": video_processor, "tokenizer": tokenizer, **given}
        processor_dict.update(given)
        return processor_dict, kwargs

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        # ProcessorMixin would load the video processor with AutoVideoProcessor, which requires torchvision.
        # Ours is stored inside processor_config.json (or, saved on its own, in video_preprocessor_config.json).
        subfolder = kwargs.pop("subfolder", "")
        video_config = (processor_dict or {}).get("video_processor")
        if video_config is not None:
            video_processor = STOPVideoProcessor.from_dict(video_config)
        else:
            video_processor = STOPVideoProcessor.from_pretrained(
                pretrained_model_name_or_path, subfolder=subfolder, **kwargs
            )
        # A CLIP tokenizer, read directly: resolving it through AutoTokenizer would consult the folder's STOP
        # config.json and ask for trust_remote_code just to find the tokenizer.
        kwargs.pop("trust_remote_code", None)
        tokenizer = CLIPTokenizer.from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        return [video_processor, tokenizer]

    @classmethod
    def from_model_config(cls, config, tokenizer, target_fps: float | None = None, **kwargs) -> "STOPProcessor":
        """
        The processor a model expects: `num_frames`, `max_words` and the vision tower's `image_size` read from
        its [`STOPConfig`]. `tokenizer` is a CLIP tokenizer or a folder / Hub id holding one (`kwargs` go to
        its `from_pretrained`).
        """
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = AutoTokenizer.from_pretrained(tokenizer, **kwargs)
        video_processor = STOPVideoProcessor(
            num_frames=config.num_frames, size=config.vision_config.image_size, target_fps=target_fps
        )
        return cls(video_processor, tokenizer, max_words=config.max_words)

    @classmethod
    def from_clip(
        cls,
        clip_name_or_path,
        num_frames: int = 12,
        max_words: int = 32,
        target_fps: float | None = None,
        **kwargs,
    ) -> "STOPProcessor":
        """
        A processor for a new STOP model on a CLIP checkpoint (folder or Hub id): the checkpoint's tokenizer,
        frames at its vision tower's `image_size`. `kwargs` go to the Hub lookups (`revision`, `token`, ...).
        """
        config_dict, _ = PretrainedConfig.get_config_dict(clip_name_or_path, **kwargs)
        size = config_dict.get("vision_config", config_dict).get("image_size", 224)
        return cls(
            STOPVideoProcessor(num_frames=num_frames, size=size, target_fps=target_fps),
            AutoTokenizer.from_pretrained(clip_name_or_path, **kwargs),
            max_words=max_words,
        )


STOPProcessor.register_for_auto_class("AutoProcessor")

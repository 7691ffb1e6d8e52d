"""What the demo computes, independent of the UI: search, recognition and what the prompts look at.

The model, its processor and its pipeline code come from the model folder or Hub repository itself
(`trust_remote_code=True`); nothing here imports the code of the repository the model was trained in.
Every method raises `DemoInputError` (or `VideoCheckError`) with a message the visitor can act on.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

if __package__:
    from .gallery import (
        BoundedCache,
        GalleryEmbeddings,
        GalleryVideo,
        VideoCheckError,
        VideoLimits,
        check_video,
        file_sha256,
        is_local_path,
    )
else:  # app.py run as a script, beside this file
    from gallery import (
        BoundedCache,
        GalleryEmbeddings,
        GalleryVideo,
        VideoCheckError,
        VideoLimits,
        check_video,
        file_sha256,
        is_local_path,
    )

logger = logging.getLogger("stop-demo")

ZERO_SHOT_TASK = "zero-shot-video-classification"
FALLBACK_TEMPLATE = "a video of {}"
MAX_LABELS = 50
# Output fields that are results, not diagnostics of the prompt modules.
_RESULT_FIELDS = ("loss", "logits_per_text", "logits_per_video", "text_embeds", "video_embeds")


class DemoInputError(ValueError):
    """The request cannot be served as sent; the message says why and what to send instead."""


# ----------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------


def load_model(model_id: str):
    """The model (a classification folder gives its inner STOP model) and processor, with their own code."""
    from transformers import AutoModel, AutoProcessor

    if is_local_path(model_id) and not (Path(model_id).expanduser() / "config.json").is_file():
        raise SystemExit(
            f"No model at {model_id} (no config.json there). Set STOP_DEMO_MODEL (or --model) to a STOP model "
            "folder or Hub id."
        )
    model = AutoModel.from_pretrained(model_id, trust_remote_code=True)
    model = getattr(model, "stop", model).eval()
    processor = AutoProcessor.from_pretrained(model_id, trust_remote_code=True)
    return model, processor


def hypothesis_template(model, model_id: str) -> str:
    """The model's own label template (`config.label_template` of a classification folder), else the default of
    the zero-shot pipeline the model folder ships (its `preprocess` default)."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    own = getattr(model.config, "label_template", None)
    if isinstance(own, str) and ("{}" in own or "{label}" in own):
        return own

    impl = ((getattr(model.config, "custom_pipelines", None) or {}).get(ZERO_SHOT_TASK) or {}).get("impl")
    if not impl:
        return FALLBACK_TEMPLATE
    try:
        pipeline_class = get_class_from_dynamic_module(impl, model_id)
    except Exception as error:  # a folder without its pipelines.py: recognition still works with the default
        logger.warning(f"cannot load the {ZERO_SHOT_TASK} pipeline of {model_id} ({type(error).__name__}: {error})")
        return FALLBACK_TEMPLATE
    default = inspect.signature(pipeline_class.preprocess).parameters.get("hypothesis_template")
    if default is not None and isinstance(default.default, str):
        return default.default
    return getattr(sys.modules[pipeline_class.__module__], "DEFAULT_HYPOTHESIS_TEMPLATE", FALLBACK_TEMPLATE)


def format_label(template: str, label: str) -> str:
    return template.format(label) if "{}" in template else template.format(label=label)


def model_fingerprint(model, processor) -> str:
    """SHA-256 of everything that changes a video embedding: config, frame sampling and every weight."""
    digest = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    video_processor = getattr(processor, "video_processor", None)
    if video_processor is not None:
        digest.update(json.dumps(video_processor.to_dict(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# One video through the model: its embedding and whatever the prompt modules report
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Diagnostic:
    """One diagnostic field of the model's output for one video, laid out `[layers, time, ...]` (one layer when
    the field has no layer dimension). `kind` is `"regions"` (bool `[L, T, g, g]`), `"counts"` (integers) or
    `"values"` (floats); `per` is `"frame"` (time = frames) or `"gap"` (time = frames - 1)."""

    name: str
    kind: str
    per: str
    values: torch.Tensor
    layered: bool

    @property
    def num_layers(self) -> int:
        return self.values.shape[0]

    def at(self, layer: int) -> torch.Tensor:
        return self.values[min(max(layer, 1), self.num_layers) - 1]


@dataclass
class VideoAnalysis:
    embedding: torch.Tensor  # [E], L2-normalised
    frames: np.ndarray  # [T, H, W, 3] uint8: the sampled (valid) frames as the model saw them
    source_frames: list[int]
    diagnostics: list[Diagnostic]
    layout: str  # how a region cell maps to pixels: "patch" (ViT patches) or "official" (period-g lattice)


def _layer_first(value: torch.Tensor, time_sizes: tuple[int, ...], trailing: int) -> tuple[torch.Tensor, bool] | None:
    """`[T, ...]` -> `[1, T, ...]`; `[L, T, ...]` or `[T, L, ...]` -> `[L, T, ...]`; `trailing` dims kept at the end."""
    lead = value.dim() - trailing
    if lead == 1 and value.shape[0] in time_sizes:
        return value.unsqueeze(0), False
    if lead == 2:
        first, second = value.shape[0], value.shape[1]
        if second in time_sizes:
            return value, True
        if first in time_sizes:
            return value.transpose(0, 1), True
    return None


def collect_diagnostics(outputs, num_frames: int, num_valid: int) -> list[Diagnostic]:
    """Every tensor (or tuple of per-layer tensors) of a model output that is not a result, for video 0, cut to
    the valid frames (and the gaps between them)."""
    found = []
    for name, value in outputs.items():
        if name in _RESULT_FIELDS:
            continue
        if isinstance(value, (tuple, list)) and value and all(isinstance(v, torch.Tensor) for v in value):
            value = torch.stack([v.detach() for v in value], dim=1)  # per-layer tuple -> [B, L, ...]
        if not isinstance(value, torch.Tensor) or value.dim() < 2:
            continue
        value = value[0].detach().cpu()
        kind = "regions" if value.dtype == torch.bool else "values" if value.is_floating_point() else "counts"
        laid_out = _layer_first(value, (num_frames, num_frames - 1), trailing=2 if kind == "regions" else 0)
        if laid_out is None:
            continue
        value, layered = laid_out
        per = "frame" if value.shape[1] == num_frames else "gap"
        keep = num_valid if per == "frame" else max(num_valid - 1, 0)
        found.append(Diagnostic(name, kind, per, value[:, :keep], layered))
    return found


def region_layout(model, outputs) -> str:
    """Which pixels a region cell covers, as the model states it: an output field or the spatial prompter's
    `layout`; ViT patches otherwise."""
    for name, value in outputs.items():
        if isinstance(value, str) and name.endswith("layout"):
            return value
    return getattr(getattr(model, "spatial_prompter", None), "layout", None) or "patch"


def to_uint8(processor, pixel_values: torch.Tensor) -> np.ndarray:
    """`[T, 3, H, W]` normalised pixels -> `[T, H, W, 3]` uint8, undoing the processor's mean and std."""
    video_processor = getattr(processor, "video_processor", None)
    mean, std = getattr(video_processor, "mean", None), getattr(video_processor, "std", None)
    pixels = pixel_values.float()
    if mean is not None and std is not None:
        pixels = pixels * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    else:
        pixels = (pixels - pixels.amin()) / (pixels.amax() - pixels.amin()).clamp_min(1e-6)
    return (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def analyse_video(model, processor, path) -> VideoAnalysis:
    """One forward pass over one video (batch of one: an embedding never depends on other videos)."""
    try:
        inputs = processor(videos=[str(path)], return_tensors="pt", return_frame_indices=True)
    except ValueError as error:  # the processor names the file and what is wrong with it
        raise VideoCheckError(str(error)) from None
    pixel_values = inputs["pixel_values"]
    video_mask = inputs.get("video_mask")
    if video_mask is None:
        video_mask = torch.ones(pixel_values.shape[:2], dtype=torch.long)
    parameter = next(model.parameters())
    with torch.inference_mode():
        pixel_values = pixel_values.to(parameter.device, parameter.dtype)
        outputs = model(pixel_values=pixel_values, video_mask=video_mask.to(parameter.device))
    valid = video_mask[0].bool()
    num_valid = int(valid.sum())
    source = inputs["frame_indices"][0][valid].tolist() if "frame_indices" in inputs else list(range(num_valid))
    return VideoAnalysis(
        embedding=F.normalize(outputs.video_embeds.float().cpu(), dim=-1)[0],
        frames=to_uint8(processor, pixel_values[0].cpu()[valid.cpu()]),
        source_frames=[int(s) for s in source],
        diagnostics=collect_diagnostics(outputs, pixel_values.shape[1], num_valid),
        layout=region_layout(model, outputs),
    )


# ----------------------------------------------------------------------------------------------------------------
# The backend
# ----------------------------------------------------------------------------------------------------------------


def parse_labels(labels_text) -> list[str]:
    labels = list(dict.fromkeys(label.strip() for label in str(labels_text or "").split(",") if label.strip()))
    if len(labels) < 2:
        raise DemoInputError("Give at least two candidate labels, separated by commas.")
    if len(labels) > MAX_LABELS:
        raise DemoInputError(f"Give at most {MAX_LABELS} labels (got {len(labels)}).")
    return labels


def parse_count(value, name: str, maximum: int | None = None) -> int:
    """A whole number >= 1 from a UI or API value (capped at `maximum`), else `DemoInputError`."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DemoInputError(f"{name} must be a whole number of at least 1, got {value!r}.") from None
    if not math.isfinite(number) or number < 1 or number != int(number):
        raise DemoInputError(f"{name} must be a whole number of at least 1, got {value!r}.")
    return int(number) if maximum is None else min(int(number), max(maximum, 1))


def _as(video: GalleryVideo, same: GalleryVideo) -> str:
    return "" if video.name == same.name else f" (as {same.name})"


@dataclass
class Upload:
    video: GalleryVideo
    embedding: torch.Tensor


class DemoBackend:
    """
    The gallery's embeddings (computed at start-up, cached on disk per model), each session's uploads (at most
    `max_uploads` per session and `max_sessions` sessions, dropped `max_age_s` after the session last added
    one) and the analysis of each video for "what STOP looks at" (at most `max_analyses`, keyed by content hash).
    """

    def __init__(
        self,
        model,
        processor,
        videos: list[GalleryVideo],
        template: str = FALLBACK_TEMPLATE,
        limits: VideoLimits = VideoLimits(),
        cache_dir=None,
        max_uploads: int = 8,
        max_sessions: int = 256,
        max_age_s: float = 3600,
        max_analyses: int = 64,
    ):
        self.model, self.processor, self.template, self.limits = model, processor, template, limits
        self.max_uploads = max_uploads
        self.uploads = BoundedCache(max_sessions, max_age_s)  # session -> tuple[Upload, ...]
        self.analyses = BoundedCache(max_analyses, max_age_s)  # sha256 -> VideoAnalysis
        self.forward_passes = 0  # videos run through the model since start-up
        self.videos = list(videos)
        self.gallery_embeds = self._embed_gallery(cache_dir)

    # -------------------------------------------------------------------------------------------- videos
    def _analyse(self, path) -> VideoAnalysis:
        start = time.perf_counter()
        analysis = analyse_video(self.model, self.processor, path)
        self.forward_passes += 1
        logger.info(f"analysed {Path(path).name} in {time.perf_counter() - start:.2f}s")
        return analysis

    def _embed_gallery(self, cache_dir) -> torch.Tensor:
        if not self.videos:
            return torch.empty(0, self.model.config.projection_dim)
        store = GalleryEmbeddings(cache_dir, model_fingerprint(self.model, self.processor)) if cache_dir else None
        known = store.load() if store else {}
        missing = [v for v in self.videos if v.sha256 not in known]
        for video in missing:
            analysis = self._analyse(video.path)
            self.analyses.put(video.sha256, analysis)
            known[video.sha256] = analysis.embedding
        if store and missing:
            store.save(known)
        return torch.stack([known[v.sha256] for v in self.videos])

    def analysis(self, video: GalleryVideo) -> VideoAnalysis:
        cached = self.analyses.get(video.sha256)
        if cached is None:
            cached = self._analyse(video.path)
            self.analyses.put(video.sha256, cached)
        return cached

    def checked(self, path) -> GalleryVideo:
        """A visitor's (or a gallery) video, after the checks; gallery videos skip them."""
        if not path:
            raise DemoInputError("Upload a video first (or pick one from the gallery).")
        path = str(path)
        gallery = next((v for v in self.videos if v.path == path), None)
        if gallery is not None:
            return gallery
        check_video(path, self.limits)
        return GalleryVideo(path=path, name=Path(path).name, caption=None, source="upload", sha256=file_sha256(path))

    def session_uploads(self, session: str) -> tuple[Upload, ...]:
        """The uploads of `session` whose files still exist (the server's upload folder expires too)."""
        return tuple(u for u in self.uploads.get(session, ()) if Path(u.video.path).is_file())

    def gallery_size(self, session: str) -> int:
        return len(self.videos) + len(self.session_uploads(session))

    # -------------------------------------------------------------------------------------------- Search
    def add_video(self, path, session: str) -> str:
        video = self.checked(path)
        same = next((v for v in self.videos if v.sha256 == video.sha256), None)
        if same is not None:
            return f"**{video.name}** is already in the gallery{_as(video, same)}; it was not added again."
        uploads = self.session_uploads(session)
        same = next((u.video for u in uploads if u.video.sha256 == video.sha256), None)
        if same is not None:
            return f"**{video.name}** is already in your gallery{_as(video, same)}; it was not added again."
        upload = Upload(video, self.analysis(video).embedding)  # decodes now: a broken file fails here
        uploads = uploads + (upload,)
        note = ""
        if len(uploads) > self.max_uploads:
            oldest = uploads[0].video.name
            note = f" Your oldest upload, {oldest}, was removed (at most {self.max_uploads} per session)."
            uploads = uploads[-self.max_uploads :]
        self.uploads.put(session, uploads)
        return f"Added **{video.name}**: the gallery now holds {len(self.videos) + len(uploads)} videos.{note}"

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        inputs = self.processor(text=list(texts), return_tensors="pt", padding=True)
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            outputs = self.model(
                input_ids=inputs["input_ids"].to(device),
                attention_mask=None if inputs.get("attention_mask") is None else inputs["attention_mask"].to(device),
            )
        return F.normalize(outputs.text_embeds.float().cpu(), dim=-1)

    def search(self, query, top_k, session: str) -> list[tuple[GalleryVideo, float]]:
        query = str(query or "").strip()
        if not query:
            raise DemoInputError("Type a description to search for, e.g. “a red circle moving left”.")
        uploads = self.session_uploads(session)
        videos = self.videos + [u.video for u in uploads]
        k = parse_count(top_k, "The number of results", maximum=len(videos))
        if not videos:
            raise DemoInputError("The gallery is empty: add a video first.")
        embeds = torch.cat([self.gallery_embeds, *[u.embedding[None] for u in uploads]])
        scores = self.embed_texts([query])[0] @ embeds.t()
        top = scores.topk(k)
        return [(videos[i], float(s)) for s, i in zip(top.values.tolist(), top.indices.tolist())]

    # -------------------------------------------------------------------------------------------- Recognize
    def recognize(self, path, labels_text) -> dict[str, float]:
        labels = parse_labels(labels_text)
        video = self.analysis(self.checked(path)).embedding
        texts = self.embed_texts([format_label(self.template, label) for label in labels])
        logits = self.model.clip.logit_scale.exp().float().cpu() * (texts @ video)
        return dict(zip(labels, logits.softmax(-1).tolist()))

    # -------------------------------------------------------------------------------------------- What STOP looks at
    def explain(self, path, layer=1) -> tuple[VideoAnalysis, int]:
        """The (cached) analysis of the video and the layer to draw, 1-based, capped at the layers it reports."""
        analysis = self.analysis(self.checked(path))
        num_layers = max((d.num_layers for d in analysis.diagnostics if d.layered), default=1)
        return analysis, parse_count(layer, "The layer", maximum=num_layers)

"""STOP for Hugging Face transformers: configuration, models, processor, pipelines and checkpoint conversion."""

from .configuration_stop import STOPConfig
from .modeling_stop import STOPModel, STOPOutput, STOPPreTrainedModel, clip_loss, contrastive_loss
from .modeling_stop_classification import STOPForVideoClassification
from .processing_stop import STOPProcessor, STOPVideoProcessor
from .retrieval import embed_texts, embed_videos, rank
from .video_io import VideoDecodeError, read_video_frames

__all__ = [
    "STOPConfig",
    "STOPModel",
    "STOPOutput",
    "STOPPreTrainedModel",
    "STOPForVideoClassification",
    "STOPProcessor",
    "STOPVideoProcessor",
    "VideoDecodeError",
    "clip_loss",
    "contrastive_loss",
    "embed_texts",
    "embed_videos",
    "rank",
    "read_video_frames",
]

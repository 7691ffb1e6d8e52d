"""STOP as a video classifier: the class names, rendered through a template, are the classifier.

`STOPForVideoClassification` wraps a trained [`STOPModel`] (`model.stop`). The text embedding of every label
("a video of {label}") is computed once and kept as a buffer (`class_embeds`, saved with the weights), so
classifying a video runs only the video tower: the logits are CLIP's scaled cosine similarities between the
video and each class, exactly what the zero-shot pipeline computes for the same labels and template.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.utils import ModelOutput

from .configuration_stop import STOPConfig
from .modeling_stop import STOPModel, STOPPreTrainedModel
from .retrieval import embed_texts

DEFAULT_LABEL_TEMPLATE = "a video of {}"


@dataclass
class STOPVideoClassifierOutput(ModelOutput):
    """
    Output of [`STOPForVideoClassification`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): cross-entropy, returned when `labels` is given.
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`): `logit_scale * video_embeds @ class_embeds.T`.
        video_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`): normalised video embeddings.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    video_embeds: torch.FloatTensor | None = None


class STOPForVideoClassification(STOPPreTrainedModel):
    r"""
    A trained STOP model whose classifier is the text embeddings of its labels (`config.id2label`) rendered through
    `config.label_template`. Built with [`~STOPForVideoClassification.from_stop`]; the class embeddings are stored
    with the weights, so loading needs neither the tokenizer nor the text tower's forward.

    Example:

    ```python
    >>> clf = STOPForVideoClassification.from_stop("checkpoints/stop-synthetic", ["running", "swimming"])
    >>> clf(pixel_values=inputs["pixel_values"]).logits  # [B, 2]
    ```
    """

    def __init__(self, config: STOPConfig):
        super().__init__(config)
        self.stop = STOPModel(config)
        self.register_buffer("class_embeds", torch.zeros(config.num_labels, config.projection_dim))
        self.post_init()

    @classmethod
    def from_stop(
        cls,
        model_or_path: str | os.PathLike | STOPModel,
        labels: list[str],
        template: str = DEFAULT_LABEL_TEMPLATE,
        processor=None,
    ) -> STOPForVideoClassification:
        """
        Turn a trained STOP model into a classifier over `labels`.

        Args:
            model_or_path: a [`STOPModel`] or a folder / Hub id holding one (and, if `processor` is not given, its
                processor).
            labels: the class names, in label-id order.
            template: how a class name becomes a text, with `{}` where the name goes.
            processor: the model's [`STOPProcessor`]; tokenises the label texts.
        """
        if isinstance(model_or_path, STOPModel):
            stop = model_or_path
            if processor is None:
                raise ValueError(
                    "STOPForVideoClassification.from_stop(model, labels) needs processor= (the model's STOPProcessor) "
                    "to tokenise the label texts when it is given a model instead of a folder"
                )
        else:
            stop = STOPModel.from_pretrained(model_or_path)
            if processor is None:
                from .processing_stop import STOPProcessor

                processor = STOPProcessor.from_pretrained(model_or_path)
        config = copy.deepcopy(stop.config)
        config.auto_map = None  # written afresh by save_pretrained
        model = cls(config)
        model.stop.load_state_dict(stop.state_dict())
        model.set_labels(labels, processor, template=template)
        return model.to(next(stop.parameters()).device).eval()

    def set_labels(self, labels: list[str], processor, template: str | None = None) -> None:
        """(Re)compute the class embeddings for `labels` (after further training, or to change the classes)."""
        labels = [str(label) for label in labels]
        if not labels:
            raise ValueError("STOPForVideoClassification needs at least one label")
        if len(set(labels)) != len(labels):
            raise ValueError(f"STOPForVideoClassification labels must be unique, got {labels}")
        template = template if template is not None else getattr(self.config, "label_template", DEFAULT_LABEL_TEMPLATE)
        if "{}" not in template:
            raise ValueError(f"label template must contain '{{}}' where the label goes, got {template!r}")
        embeds = embed_texts(self.stop, processor, [template.format(label) for label in labels])
        self.config.id2label = dict(enumerate(labels))
        self.config.label2id = {label: i for i, label in enumerate(labels)}
        self.config.label_template = template
        # A copy made outside inference mode: the buffer takes part in autograd when the prompts are fine-tuned.
        self.class_embeds = embeds.to(self.class_embeds.device, self.class_embeds.dtype).clone()

    def forward(
        self,
        pixel_values: torch.Tensor,
        video_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        frame_indices: torch.Tensor | None = None,
    ) -> STOPVideoClassifierOutput:
        r"""
        frame_indices (`torch.LongTensor` of shape `(batch, frames)`, *optional*): the processor's
            `return_frame_indices=True` output; accepted so that `model(**processor(videos=...))` works, not used.
        """
        video_embeds = F.normalize(self.stop.get_video_features(pixel_values, video_mask), dim=-1)
        logits = self.stop.clip.logit_scale.exp() * video_embeds @ self.class_embeds.to(video_embeds.dtype).t()
        loss = F.cross_entropy(logits, labels.to(logits.device)) if labels is not None else None
        return STOPVideoClassifierOutput(loss=loss, logits=logits, video_embeds=video_embeds)

    def save_pretrained(self, save_directory, *args, **kwargs):
        # One folder serves both classes (AutoModel gives the plain STOPModel); the base class ships the pipelines.
        base_class = f"{STOPModel.__module__.split('.')[-1]}.{STOPModel.__name__}"
        self.config.auto_map = {**(self.config.auto_map or {}), "AutoModel": base_class}
        return super().save_pretrained(save_directory, *args, **kwargs)


STOPForVideoClassification.register_for_auto_class("AutoModelForVideoClassification")

__all__ = ["STOPForVideoClassification", "STOPVideoClassifierOutput"]

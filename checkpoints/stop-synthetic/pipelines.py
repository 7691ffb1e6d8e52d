"""`transformers` pipelines shipped with STOP model folders.

- `"video-classification"` ([`STOPVideoClassificationPipeline`], for a [`STOPForVideoClassification`] folder):
  `pipe(video, top_k=5)` -> `[{"score", "label"}, ...]`, best first, the call and output of the stock
  video-classification pipeline. The stock one cannot serve STOP: it needs a torchvision video processor or
  an image processor, and it reads the *first* `num_frames` frames of the video, where STOP was trained on
  frames spread over the whole video (the processor's sampling).
- `"zero-shot-video-classification"` ([`STOPZeroShotVideoClassificationPipeline`], any STOP folder):
  `pipe(video, candidate_labels=[...], hypothesis_template="a video of {}", top_k=None)` ->
  `[{"score", "label"}, ...]`, softmax over the candidates, best first, as the zero-shot image pipeline
  (`candidate_labels` may also be one comma-separated string).

A folder gets them through `custom_pipelines` in its `config.json` plus a copy of this file: the
`save_pretrained` of every STOP model writes both; [`register_pipelines`] adds them to a folder saved otherwise
and [`save_with_pipelines`] saves a model and its processor together. Then, offline:

```python
>>> pipe = pipeline("zero-shot-video-classification", model=folder, trust_remote_code=True)
>>> pipe("clip.mp4", candidate_labels=["running", "swimming"])
```

Videos are anything the processor reads: a path, the bytes of a file, a uint8 array `[T, H, W, 3]` or a
`torchcodec` decoder (a `datasets` `Video` value).
"""

from __future__ import annotations

import json
import numbers
import os
import shutil
from pathlib import Path

from transformers import Pipeline

ZERO_SHOT_TASK = "zero-shot-video-classification"
CLASSIFICATION_TASK = "video-classification"
DEFAULT_HYPOTHESIS_TEMPLATE = "a video of {}"
# What `pipeline()` loads for these pipelines: the STOP processor (tokenizer + video preprocessing), nothing else.
_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


def _check_top_k(top_k) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer (labels to return), got {top_k!r}")
    return int(top_k)


def _parse_labels(candidate_labels) -> list[str]:
    """A list of labels, or one string of comma-separated labels (as transformers' zero-shot pipelines)."""
    if isinstance(candidate_labels, str):
        candidate_labels = [label.strip() for label in candidate_labels.split(",") if label.strip()]
    return list(candidate_labels or [])


class _STOPPipeline(Pipeline):
    _load_processor = True
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.processor is None:
            raise ValueError(
                f"The {self.task} pipeline needs the model's STOPProcessor: pass processor= or save it into the "
                "model folder (processor.save_pretrained(folder))"
            )

    def _videos(self, video, sampling, text=None):
        inputs = self.processor(text=text, videos=[video], return_tensors="pt", padding=True, sampling=sampling)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        return inputs


class STOPVideoClassificationPipeline(_STOPPipeline):
    """
    Classify a video over the labels of a [`STOPForVideoClassification`] (`config.id2label`).

    Call arguments: `top_k` (default 5, capped at the number of labels), `function_to_apply` (`"softmax"`
    (default), `"sigmoid"` or `"none"` for the raw scaled cosine similarities) and `sampling` (`"uniform"`,
    the default, or `"random"` frames).
    """

    def _sanitize_parameters(self, top_k=None, function_to_apply=None, sampling=None):
        preprocess_params = {} if sampling is None else {"sampling": sampling}
        postprocess_params = {}
        if top_k is not None:
            postprocess_params["top_k"] = _check_top_k(top_k)
        if function_to_apply is not None:
            if function_to_apply not in ("softmax", "sigmoid", "none"):
                raise ValueError(f"function_to_apply must be 'softmax', 'sigmoid' or 'none', got {function_to_apply!r}")
            postprocess_params["function_to_apply"] = function_to_apply
        return preprocess_params, {}, postprocess_params

    def preprocess(self, video, sampling="uniform"):
        return self._videos(video, sampling)

    def _forward(self, model_inputs):
        return self.model(pixel_values=model_inputs["pixel_values"], video_mask=model_inputs.get("video_mask"))

    def postprocess(self, model_outputs, top_k=5, function_to_apply="softmax"):
        logits = model_outputs.logits[0].float()
        if function_to_apply == "softmax":
            scores = logits.softmax(-1)
        elif function_to_apply == "sigmoid":
            scores = logits.sigmoid()
        else:
            scores = logits
        values, ids = scores.topk(min(top_k, scores.shape[-1]))
        id2label = self.model.config.id2label
        return [{"score": value, "label": id2label[i]} for value, i in zip(values.tolist(), ids.tolist())]


class STOPZeroShotVideoClassificationPipeline(_STOPPipeline):
    """
    Zero-shot classification of a video over `candidate_labels`, each rendered through `hypothesis_template`
    (default `"a video of {}"`; pass `"{}"` for labels that are already sentences). Scores are the softmax of the
    scaled cosine similarities, as the zero-shot image pipeline. `candidate_labels` is a list or one string of
    comma-separated labels (`"running, swimming"`); `top_k` keeps the best k; `sampling` is `"uniform"` or `"random"`.
    """

    def __call__(self, video, candidate_labels=None, **kwargs):
        if video is None:
            raise ValueError(f"Cannot call the {ZERO_SHOT_TASK} pipeline without a video")
        return super().__call__(video, candidate_labels=candidate_labels, **kwargs)

    def _sanitize_parameters(self, candidate_labels=None, hypothesis_template=None, sampling=None, top_k=None):
        preprocess_params = {"candidate_labels": candidate_labels}
        if hypothesis_template is not None:
            preprocess_params["hypothesis_template"] = hypothesis_template
        if sampling is not None:
            preprocess_params["sampling"] = sampling
        postprocess_params = {} if top_k is None else {"top_k": _check_top_k(top_k)}
        return preprocess_params, {}, postprocess_params

    def preprocess(
        self, video, candidate_labels=None, hypothesis_template=DEFAULT_HYPOTHESIS_TEMPLATE, sampling="uniform"
    ):
        candidate_labels = _parse_labels(candidate_labels)
        if not candidate_labels:
            raise ValueError(f"The {ZERO_SHOT_TASK} pipeline needs candidate_labels=[...] (at least one label)")
        if "{}" not in hypothesis_template:
            raise ValueError(
                f"hypothesis_template must contain '{{}}' where the label goes, got {hypothesis_template!r}"
            )
        texts = [hypothesis_template.format(label) for label in candidate_labels]
        inputs = self._videos(video, sampling, text=texts)
        inputs["candidate_labels"] = list(candidate_labels)
        return inputs

    def _forward(self, model_inputs):
        candidate_labels = model_inputs.pop("candidate_labels")
        model = getattr(self.model, "stop", self.model)  # a STOPForVideoClassification holds its STOPModel
        outputs = model(
            input_ids=model_inputs["input_ids"],
            pixel_values=model_inputs["pixel_values"],
            video_mask=model_inputs.get("video_mask"),
        )
        return {"candidate_labels": candidate_labels, "logits": outputs.logits_per_video}

    def postprocess(self, model_outputs, top_k=None):
        scores = model_outputs["logits"][0].float().softmax(-1).tolist()
        ranked = sorted(zip(scores, model_outputs["candidate_labels"]), key=lambda pair: -pair[0])
        return [{"score": score, "label": label} for score, label in ranked[:top_k]]


# ----------------------------------------------------------------------------------------------------------
# Shipping the pipelines with a model folder
# ----------------------------------------------------------------------------------------------------------


def pipelines_for(architectures) -> dict:
    """The `custom_pipelines` entry of a STOP config with these `architectures`: zero-shot always,
    video-classification for a `STOPForVideoClassification`."""
    module = __name__.split(".")[-1]
    entries = {
        ZERO_SHOT_TASK: {"impl": f"{module}.STOPZeroShotVideoClassificationPipeline", "pt": ["AutoModel"]},
    }
    if "STOPForVideoClassification" in (architectures or ()):
        entries[CLASSIFICATION_TASK] = {
            "impl": f"{module}.STOPVideoClassificationPipeline",
            "pt": ["AutoModelForVideoClassification"],
        }
    return entries


def register_pipelines(folder: str | os.PathLike) -> dict:
    """
    Make a saved STOP folder serve the STOP pipelines: writes `custom_pipelines` into its `config.json` and copies
    this file beside the modeling files. Idempotent. Returns the `custom_pipelines` written.

    The folder must hold a STOP model (`save_pretrained`) and its processor (`processor.save_pretrained`).
    """
    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"register_pipelines: {config_file} not found; save the model there first (model.save_pretrained)"
        )
    config = json.loads(config_file.read_text())
    if config.get("model_type") != "stop":
        raise ValueError(
            f"register_pipelines: {config_file} is not a STOP model (model_type={config.get('model_type')!r})"
        )
    if not any((folder / name).is_file() for name in _PROCESSOR_FILES):
        raise FileNotFoundError(
            f"register_pipelines: no processor in {folder} (none of {', '.join(_PROCESSOR_FILES)}); the pipelines "
            "load it from there: processor.save_pretrained(folder)"
        )
    entries = pipelines_for(config.get("architectures"))
    config["custom_pipelines"] = {**config.get("custom_pipelines", {}), **entries}
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    shutil.copyfile(__file__, folder / Path(__file__).name)
    return config["custom_pipelines"]


def save_with_pipelines(model, processor, folder: str | os.PathLike, **kwargs) -> Path:
    """
    Save a [`STOPModel`] or [`STOPForVideoClassification`] and its processor to `folder`, with the STOP pipelines
    (see [`register_pipelines`]). `kwargs` go to `model.save_pretrained` (e.g. `safe_serialization`); upload the
    folder afterwards (`huggingface_hub.upload_folder`) rather than with `push_to_hub=True`.
    """
    if kwargs.get("push_to_hub"):
        raise ValueError(
            "save_with_pipelines saves locally; upload the folder afterwards with huggingface_hub.upload_folder"
        )
    folder = Path(folder)
    model.save_pretrained(folder, **kwargs)
    processor.save_pretrained(folder)
    register_pipelines(folder)
    return folder


__all__ = [
    "STOPVideoClassificationPipeline",
    "STOPZeroShotVideoClassificationPipeline",
    "pipelines_for",
    "register_pipelines",
    "save_with_pipelines",
]

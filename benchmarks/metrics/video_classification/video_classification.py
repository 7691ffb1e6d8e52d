"""Video classification metrics (top-k accuracy, per-class and mean per-class accuracy) as an `evaluate` module.

Load it by path, offline: `evaluate.load("<repo>/benchmarks/metrics/video_classification")`. This file is
loaded standalone, so it imports nothing from the project; `classification_metrics` is a plain numpy function
other code can reach through the loaded module (`sys.modules[type(metric).__module__]`).
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """\
Top-k accuracy (top-1 and top-5 by default), per-class accuracy and mean per-class accuracy, all in percent
(0-100), from per-class score rows or from predicted labels. A video counts as correct at k when its true
class ranks within the first k, where the rank is 1 + the number of OTHER classes scoring >= the true class:
a tie with another class counts against the prediction, whatever the class order. Per-class accuracy is the
top-1 accuracy over the videos of one class; the mean is taken over the classes present in the references.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: either `list` of `list` of `float`, one row of class scores (logits or probabilities,
        higher is better) per video, or `list` of `int`, one predicted label per video (then only top-1).
    references (`list` of `int`): the true class of each video.
    top_k (`tuple` of `int`, defaults to `(1, 5)`): the k of the `top{k}_accuracy` keys; a k larger than
        the number of classes is skipped (it would always be 100).
    num_classes (`int`, *optional*): number of classes when `predictions` are labels (defaults to the largest
        label seen + 1); score rows define it by their length.
Returns:
    `top{k}_accuracy` for each k (`float`, percent), `per_class_accuracy` (`dict` class index -> percent, for
    the classes present in `references`), `mean_class_accuracy` (`float`, percent).
Examples:
    >>> metric = evaluate.load("benchmarks/metrics/video_classification")
    >>> scores = [[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]]
    >>> metric.compute(predictions=scores, references=[1, 0, 1, 2], top_k=(1, 2))
    {'top1_accuracy': 50.0, 'top2_accuracy': 75.0, 'per_class_accuracy': {0: 100.0, 1: 50.0, 2: 0.0}, 'mean_class_accuracy': 50.0}
"""


def _check_labels(values, name, num_classes):
    values = np.asarray(values)
    if values.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer class indices, got dtype {values.dtype}")
    out_of_range = np.flatnonzero((values < 0) | (values >= num_classes))
    if out_of_range.size:
        first = out_of_range[0]
        raise ValueError(
            f"{name}[{first}] = {values[first]} is not a class index (0 to {num_classes - 1}); "
            f"{out_of_range.size} entries are out of range"
        )
    return values.astype(np.int64)


def classification_metrics(predictions, references, top_k=(1, 5), num_classes=None):
    """`{"top1_accuracy", "top5_accuracy", "per_class_accuracy", "mean_class_accuracy"}` in percent.

    `predictions` are [N, C] class scores or [N] predicted labels; `references` are [N] true labels.
    """
    references = np.asarray(references)
    if references.ndim != 1 or references.size == 0:
        raise ValueError(f"references must be a non-empty list of labels, got shape {references.shape}")
    try:
        predictions = np.asarray(predictions)
    except ValueError as error:
        raise ValueError(f"predictions must be equally long score rows or labels: {error}") from None
    if predictions.shape[0] != references.shape[0]:
        raise ValueError(f"{predictions.shape[0]} predictions but {references.shape[0]} references")

    if predictions.ndim == 2:
        scores = predictions.astype(np.float64)
        bad_rows = np.flatnonzero(~np.isfinite(scores).all(axis=1))
        if bad_rows.size:
            raise ValueError(
                f"predictions contain NaN or inf in {bad_rows.size} of {scores.shape[0]} rows "
                f"(first: row {bad_rows[0]})"
            )
        num_classes = scores.shape[1]
        references = _check_labels(references, "references", num_classes)
        true_scores = scores[np.arange(scores.shape[0]), references]
        ranks = (scores >= true_scores[:, None]).sum(axis=1)
        ks = [k for k in top_k if k <= num_classes]
    elif predictions.ndim == 1:
        if num_classes is None:
            num_classes = int(max(predictions.max(), references.max())) + 1
        predictions = _check_labels(predictions, "predictions", num_classes)
        references = _check_labels(references, "references", num_classes)
        ranks = np.where(predictions == references, 1, 2)
        ks = [k for k in top_k if k == 1]
    else:
        raise ValueError(f"predictions must be [N, num_classes] scores or [N] labels, got shape {predictions.shape}")

    metrics = {f"top{k}_accuracy": float(100.0 * np.mean(ranks <= k)) for k in ks}
    correct = ranks == 1
    per_class = {int(c): float(100.0 * np.mean(correct[references == c])) for c in np.unique(references)}
    metrics["per_class_accuracy"] = per_class
    metrics["mean_class_accuracy"] = float(np.mean(list(per_class.values())))
    return metrics


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class VideoClassification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
                datasets.Features(
                    {"predictions": datasets.Sequence(datasets.Value("float64")), "references": datasets.Value("int64")}
                ),
            ],
        )

    def _compute(self, predictions, references, top_k=(1, 5), num_classes=None):
        return classification_metrics(predictions, references, top_k=top_k, num_classes=num_classes)

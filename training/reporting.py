"""What a training run reports: `metrics.jsonl`, the console lines of its evaluations, `training_curves.png` and
the model card (`README.md` with a `model-index` of the test metrics)."""

import json
from pathlib import Path

import numpy as np

# Flags written into the model card's hyperparameter list.
CARD_HYPERPARAMETERS = (
    "task",
    "num_train_epochs",
    "max_train_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "optimizer",
    "learning_rate",
    "weight_decay",
    "lr_scheduler_type",
    "seed",
)
# Counts of an evaluation: reported in metrics.jsonl, not as model-index metrics.
_COUNT_KEYS = ("num_failed", "num_videos", "num_texts", "num_classes")


class MetricsLog:
    """`metrics.jsonl`: one JSON object per line (train steps, evaluations), written by the main process."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, record: dict):
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate(self, completed_steps: int, completed_epochs: int):
        """On resume: drop what the interrupted run logged after its checkpoint (train steps after it, epoch records
        of epochs it had not finished, the final test)."""
        if not self.enabled:
            return
        kept = [
            r
            for r in self.records()
            if r["split"].startswith("head_stage")
            or (r["split"] == "train" and r["step"] <= completed_steps)
            or (r["split"] in ("validation", "skipped") and r["epoch"] <= completed_epochs)
        ]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def format_results(results: dict) -> str:
    """`key=value, ...` of the float metrics: the console line of an evaluation."""
    return ", ".join(f"{k}={v:.4g}" for k, v in results.items() if isinstance(v, float))


def report_eval_failures(print_fn, split: str, results: dict) -> dict:
    """Prints the videos of an evaluation that failed to decode; returns the results without their names (for
    trackers)."""
    failed = results.get("failed_videos") or []
    if failed:
        print_fn(f"{split}: {len(failed)} videos failed to decode and were left out:\n  " + "\n  ".join(failed))
    return {k: v for k, v in results.items() if k != "failed_videos"}


def plot_training_curves(records: list[dict], path: Path, selection_metric: str):
    """`training_curves.png`: train loss per epoch (mean over logged steps) and validation metrics per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "validation"]
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = sorted({r["epoch"] for r in train})
    ax_loss.plot(epochs, [np.mean([r["loss"] for r in train if r["epoch"] == e]) for e in epochs], "o-")
    ax_loss.set(xlabel="epoch", ylabel="train loss (mean)", title="training loss")
    keys = [selection_metric] + [
        k
        for k in ("v2t_R@1", "t2v_R@5", "top5_accuracy", "mean_class_accuracy")
        if val and k in val[0] and k != selection_metric
    ]
    for key in keys:
        ax_val.plot([r["epoch"] for r in val], [r[key] for r in val], "o-", label=key)
    if val and "pair_accuracy" in val[0]:
        ax_val.plot([r["epoch"] for r in val], [100 * r["pair_accuracy"] for r in val], "o--", label="pair acc x100")
    ax_val.set(xlabel="epoch (0 = before training)", ylabel="percent", title="validation")
    for ax in (ax_loss, ax_val):
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax_val.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_model_card(
    output_dir,
    model_name: str,
    base_model: str | None,
    dataset_name: str,
    task: str,
    test_results: dict | None,
    config,
    hyperparameters: dict | None = None,
    model_path: str | None = None,
):
    """`README.md` with YAML metadata (library, pipeline tag, tags, datasets, base model) and a `model-index` of the
    test metrics (huggingface_hub `ModelCardData` / `EvalResult`). `config`: the model's `STOPConfig`. The snippet
    loads `model_path` (the Hub id or the folder as given; default `model_name`)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    dataset_id = Path(dataset_name).name if Path(dataset_name).exists() else dataset_name
    task_type = "text-to-video" if task == "retrieval" else "video-classification"
    eval_results = [
        EvalResult(
            task_type=task_type,
            dataset_type=dataset_id,
            dataset_name=dataset_id,
            dataset_split="test",
            metric_type=key,
            metric_name=key,
            metric_value=float(value),
        )
        for key, value in (test_results or {}).items()
        if isinstance(value, (int, float)) and key not in _COUNT_KEYS
    ]
    tags = [
        "stop",
        "video",
        "clip",
        "prompt-tuning",
        "video-text-retrieval" if task == "retrieval" else "video-classification",
    ]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="feature-extraction" if task == "retrieval" else "video-classification",
        tags=tags,
        datasets=[dataset_id],
        base_model=base_model if base_model and not Path(base_model).exists() else None,
        license="apache-2.0",
        model_name=model_name,
        eval_results=eval_results or None,
    )
    lines = [f"| {key} | {value:.2f} |" for key, value in (test_results or {}).items() if isinstance(value, float)]
    hparams = "\n".join(f"- {k}: {v}" for k, v in (hyperparameters or {}).items())
    content = f"""---
{card_data.to_yaml()}
---

# {model_name}

STOP (spatial-temporal dynamic prompting, CVPR 2025) over a frozen CLIP (`{base_model}`), trained for
{"text-video retrieval" if task == "retrieval" else "video classification"} on `{dataset_id}`. Only the prompt
modules are trained ({config.variant} variant, {config.num_frames} frames, {config.image_size} px).

```python
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("{model_path or model_name}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{model_path or model_name}", trust_remote_code=True)
inputs = processor(text=["a red circle moving left"], videos=["clip.mp4"], padding="max_length")
outputs = model(**inputs)  # outputs.logits_per_text [texts, videos]
```

## Test results

| metric | value |
|---|---|
{chr(10).join(lines)}

## Training hyperparameters

{hparams}
"""
    card = ModelCard(content)
    card.save(Path(output_dir) / "README.md")
    return card

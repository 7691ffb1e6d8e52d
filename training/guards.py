"""Guards of a training run against bad input: undecodable videos, a non-finite loss, truncated weight files.

Each names what it found (files, the batch's videos) and the fix; a run they stop raises `TrainingAborted`, which
the training script turns into a non-zero exit without writing a model.
"""

import math
from pathlib import Path

from accelerate.utils import gather_object


class TrainingAborted(RuntimeError):
    """A run that cannot produce a meaningful model: stops with a non-zero exit and writes no model."""


def check_safetensors_files(folder: Path):
    """Every `*.safetensors` file of `folder` must be complete: else a `ValueError` naming it (the loaders' own
    errors do not)."""
    from safetensors import safe_open

    for file in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(file), "pt"):
                pass
        except Exception as err:  # noqa: BLE001 - re-raised with the file name
            raise ValueError(
                f"{file}: not a readable .safetensors file (truncated or corrupt? {err}). Save or "
                "download it again, or resume from another checkpoint"
            ) from err


class BadVideoGuard:
    """Counts the training videos of an epoch that fail to decode, over all processes, and aborts the run when
    more than `max_fraction` of them fail. `num_videos` is the split size (map-style: checked at every step), or
    None for a stream (the share of the rows seen, checked once `min_rows` were seen and at the end of the epoch)."""

    def __init__(self, max_fraction: float, num_videos: int | None, min_rows: int = 64):
        self.max_fraction, self.num_videos, self.min_rows = max_fraction, num_videos, min_rows
        self.seen = self.failed = 0

    def start_epoch(self, num_failed: int, num_seen: int):
        self.failed, self.seen = num_failed, num_seen

    def update(self, num_seen: int, num_failed: int):
        self.seen += num_seen
        self.failed += num_failed

    def exceeded(self, end_of_epoch: bool = False) -> bool:
        if self.num_videos is not None:
            return self.failed > self.max_fraction * self.num_videos
        if not end_of_epoch and self.seen < self.min_rows:
            return False
        return self.seen > 0 and self.failed > self.max_fraction * self.seen

    def abort(self, failures: list[str], epoch: int):
        total = self.num_videos if self.num_videos is not None else self.seen
        raise TrainingAborted(
            f"epoch {epoch + 1}: {self.failed} of {total} training videos failed to decode, more than "
            f"--max_bad_video_fraction {self.max_fraction}. Fix or remove these files (or raise the bound):\n  "
            + "\n  ".join(failures)
        )


def check_bad_videos_in_cache(cache, max_fraction: float, num_videos: int):
    """Aborts the run when more than `max_fraction` of the cached training videos failed to decode."""
    guard = BadVideoGuard(max_fraction, num_videos)
    guard.update(num_videos, len(cache.failed))
    if guard.exceeded():
        guard.abort(sorted(cache.failed), 0)


def all_failures(accelerator, failures: list[str]) -> list[str]:
    """The failure messages of every process (a collective call: every process must make it)."""
    return sorted(set(gather_object(failures))) if accelerator.num_processes > 1 else sorted(set(failures))


def _video_names(dataset, indices) -> list[str]:
    while not hasattr(dataset, "video_name") and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    return [dataset.video_name(int(i)) for i in indices]


def abort_on_non_finite_loss(accelerator, loss: float, dataset, batch, step: int):
    """Stops the run, naming the batch's videos, when the (process-averaged) loss is NaN or infinite."""
    if math.isfinite(loss):
        return
    names = _video_names(dataset, batch["indices"].tolist())
    names = sorted(set(gather_object(names))) if accelerator.num_processes > 1 else names
    raise TrainingAborted(
        f"step {step + 1}: the training loss is {loss}. Videos of the batch:\n  "
        + "\n  ".join(names)
        + "\nLower --learning_rate, check these videos and the captions, or use --mixed_precision no"
    )

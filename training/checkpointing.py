"""Checkpoints and exact resume of a training run.

A checkpoint (`--output_dir/checkpoints/{step_N,epoch_N}`) is `accelerator.save_state` (model, optimizer,
scheduler, RNG, sampler) plus `training_state.json`: the `TrainState` of the run (steps, epoch, data position
inside the epoch, best validation metric, skipped videos, elapsed time, run-shaping arguments). Saves go through a
temporary folder and an atomic rename, so a run killed at any point leaves its last complete checkpoint intact.
"""

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from accelerate.logging import get_logger

from modeling_stop.pipelines import register_pipelines
from training.guards import check_safetensors_files

logger = get_logger(__name__)

STATE_FILE = "training_state.json"

# Arguments that shape the run: a resumed run that changes them would not continue the interrupted one.
RUN_SHAPING_ARGS = (
    "dataset_name",
    "dataset_config_name",
    "video_column",
    "caption_column",
    "label_column",
    "max_train_samples",
    "frame_sampling",
    "task",
    "label_template",
    "model_name_or_path",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "optimizer",
    "learning_rate",
    "weight_decay",
    "max_grad_norm",
    "max_train_steps",
    "lr_scheduler_type",
    "num_warmup_steps",
    "seed",
    "streaming",
    "shuffle_buffer_size",
    "stop_config_overrides",
    "variant",
    "num_frames",
)


@dataclass
class TrainState:
    """Where a run stands: what `training_state.json` holds. `epoch` counts finished epochs, `batches_in_epoch` the
    batches of the current one already trained on; `skipped` maps an epoch to its undecodable videos."""

    completed_steps: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None
    # The selection metric's own value at the best epoch (`best_metric` is the selection score it was chosen by).
    best_value: float | None = None
    skipped: dict = field(default_factory=dict)
    elapsed: float = 0.0
    run_args: dict = field(default_factory=dict)
    # Wall-clock origin of `elapsed` (not saved): a resumed run continues the interrupted run's clock.
    start_time: float = field(default=0.0, repr=False)

    @classmethod
    def from_dict(cls, saved: dict) -> "TrainState":
        names = {f.name for f in fields(cls)} - {"start_time"}
        return cls(**{k: v for k, v in saved.items() if k in names})

    def start_clock(self):
        self.start_time = time.time() - self.elapsed

    def seconds(self) -> float:
        """Training time so far, rounded as the logs write it."""
        return round(time.time() - self.start_time, 2)

    def at(self, epoch: int, batches_in_epoch: int) -> dict:
        """The JSON of a checkpoint taken now, at `batches_in_epoch` batches into `epoch`."""
        saved = asdict(self)
        del saved["start_time"]
        saved.update(epoch=epoch, batches_in_epoch=batches_in_epoch, elapsed=time.time() - self.start_time)
        return saved

    @property
    def is_fresh(self) -> bool:
        return self.completed_steps == 0 and self.epoch == 0 and self.batches_in_epoch == 0


def latest_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The complete checkpoint with the most optimizer steps (temporary folders of interrupted saves are ignored)."""
    best, best_step = None, -1
    for folder in checkpoints_dir.glob("*"):
        state = folder / STATE_FILE
        if folder.name.startswith(".") or not state.exists():
            continue
        step = json.loads(state.read_text())["completed_steps"]
        if step >= best_step:
            best, best_step = folder, step
    return best


def save_checkpoint(accelerator, checkpoints_dir: Path, name: str, state: dict, total_limit: int = 0):
    """`accelerator.save_state` into a temporary folder, then an atomic rename: a save that dies half-way never
    touches the last good checkpoint. Then only the newest `total_limit` checkpoints are kept (0: all)."""
    final = checkpoints_dir / name
    tmp = checkpoints_dir / f".tmp-{name}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
        if final.exists():  # re-saved after a resume: the old copy goes only once the new one is complete
            old = checkpoints_dir / f".old-{name}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        rotate_checkpoints(checkpoints_dir, total_limit, keep=final)
    accelerator.wait_for_everyone()


def rotate_checkpoints(checkpoints_dir: Path, total_limit: int, keep: Path | None = None) -> list[Path]:
    """Delete all but the `total_limit` complete checkpoints with the most optimizer steps (never `keep`, the one
    just written, nor `best`, which is a model folder); returns the deleted folders."""
    if total_limit <= 0:
        return []
    complete = []
    for folder in checkpoints_dir.glob("*"):
        if not folder.name.startswith(".") and (folder / STATE_FILE).exists():
            complete.append((json.loads((folder / STATE_FILE).read_text())["completed_steps"], folder.name, folder))
    complete.sort(reverse=True)
    deleted = []
    for _, _, folder in complete[total_limit:]:
        if folder != keep:
            old = folder.with_name(f".old-{folder.name}")
            os.replace(folder, old)  # a crash mid-delete leaves a hidden folder, never a half checkpoint
            shutil.rmtree(old)
            deleted.append(folder)
    return deleted


def save_model(model, processor, directory: Path):
    """`save_pretrained` of model and processor into a temporary folder, then swapped in atomically."""
    tmp = directory.with_name(f".tmp-{directory.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    register_pipelines(tmp)  # the zero-shot / video-classification pipelines travel with the folder
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)


def run_shaping_args(args, num_processes: int) -> dict:
    values = {name: getattr(args, name, None) for name in RUN_SHAPING_ARGS}
    values["num_processes"] = num_processes
    return values


def check_resume_args(saved: dict | None, current: dict, state: dict, allow_changed: bool, checkpoint: Path) -> dict:
    """Compares the run-shaping arguments of a checkpoint with this run's: a `ValueError` listing the differences
    (unless `allow_changed`: then a warning, and the epoch's data position converted to this run's global batch).
    Returns the state to resume from."""
    if saved is None:
        logger.warning(f"{checkpoint} records no run arguments (an older checkpoint): they cannot be checked")
        return state
    changed = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
    if not changed:
        return state
    listed = "\n  ".join(f"--{k}: checkpoint {old!r}, now {new!r}" for k, (old, new) in changed.items())
    if not allow_changed:
        raise ValueError(
            f"Resuming from {checkpoint} with different run arguments:\n  {listed}\nThe resumed run would not "
            "continue the interrupted one (data position, schedule). Pass the checkpoint's values, start a new "
            "--output_dir, or pass --allow_changed_args to resume anyway"
        )
    old_batch = saved["per_device_train_batch_size"] * saved["num_processes"]
    new_batch = current["per_device_train_batch_size"] * current["num_processes"]
    state = dict(state, batches_in_epoch=state["batches_in_epoch"] * old_batch // new_batch)
    logger.warning(
        f"--allow_changed_args: resuming from {checkpoint} with different run arguments:\n  {listed}\nThe "
        "optimizer, scheduler and RNG states come from the checkpoint (its learning-rate schedule continues); the "
        f"data position is converted by samples seen ({state['batches_in_epoch']} batches of this run into the "
        "epoch). This run will not match an uninterrupted one."
    )
    return state


def load_checkpoint(accelerator, checkpoint: str, checkpoints_dir: Path, run_args: dict, allow_changed: bool):
    """`accelerator.load_state` of `checkpoint` (a folder, or "latest" in `checkpoints_dir`) after checking its
    files and its run arguments against this run's; returns its `TrainState`."""
    path = latest_checkpoint(checkpoints_dir) if checkpoint == "latest" else Path(checkpoint)
    if path is None:
        raise FileNotFoundError(f"--resume_from_checkpoint latest: no checkpoint in {checkpoints_dir}")
    check_safetensors_files(path)
    saved = json.loads((path / STATE_FILE).read_text())
    state = TrainState.from_dict(check_resume_args(saved.get("run_args"), run_args, saved, allow_changed, path))
    state.run_args = run_args
    accelerator.print(f"Resumed from checkpoint: {path}")
    accelerator.load_state(str(path))
    return state


def resumed_batches(accelerator, train_dataloader, skip: int):
    """The train loader starting after the first `skip` batches of the epoch."""
    if not skip:
        return train_dataloader
    if hasattr(train_dataloader, "skip"):  # a streamed split: the stream is replayed without decoding
        return train_dataloader.skip(skip)
    return accelerator.skip_first_batches(train_dataloader, skip)

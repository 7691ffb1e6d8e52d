"""Train STOP's prompts over a frozen CLIP with Accelerate: text-video retrieval or video classification.

    accelerate launch training/train.py --dataset_name data/synthetic --output_dir runs/stop-synthetic

Reads top to bottom like the transformers `*_no_trainer.py` examples: arguments, Accelerator, data, model,
optimizer and schedule, `accelerator.prepare`, the training loop, checkpointing, evaluation, `push_to_hub`. Its flags
and the model and data they load are `training/arguments.py`; what it writes besides the model
`training/reporting.py`; checkpoints and exact resume `training/checkpointing.py`; the
guards against bad input `training/guards.py`; the evaluation `training/evaluation.py` (shared with
`benchmarks/run_eval.py`).

- `--task retrieval`: symmetric InfoNCE over the text-video pairs of the GLOBAL batch (embeddings are gathered
  across processes with their gradient, so 2 processes x batch n compute the loss of 1 process x batch 2n).
- `--task classification`: the class names through `--label_template` are the texts; cross-entropy over
  `logit_scale * video_embeds @ class_text_embeds.T`. The untrained model is evaluated zero-shot first.

The model is selected on the validation split (R@1 text-to-video / top-1 accuracy, each epoch) and evaluated once
on the test split. The best model, its processor, a model card, `all_results.json`, `metrics.jsonl` and
`training_curves.png` end up at the root of `--output_dir`; checkpoints (`save_state`: model, optimizer, scheduler,
RNG, data position) in `--output_dir/checkpoints/{step_N,epoch_N}`. A run killed at any point and resumed with
`--resume_from_checkpoint latest` ends with the same weights as an uninterrupted run. Only the newest
`--checkpoints_total_limit` step/epoch checkpoints are kept. Resuming with different run-shaping arguments (batch
size, learning rate, schedule, data, seed, ...) is an error that lists them; `--allow_changed_args` resumes anyway.

A run stops with a non-zero exit, naming the files, when more than `--max_bad_video_fraction` of an epoch's training
videos fail to decode or when the loss is not finite; it then writes no final or best model.

`--streaming` trains from a streamed train split (a Hub dataset, or local WebDataset `.tar` shards): see
`training/streaming.py`. It needs `--max_train_steps`; resume is exact there too.

Defaults are the two-stage recipe of `training/recipe.py` (one table of per-variant defaults): a new model over the
embedded synthetic backbone (`checkpoints/clip-synthetic`), paper variant with CLIP4Clip's seqTransf temporal head
over the frozen per-frame features, 8 frames. Stage 1 trains the head on cached frozen frame features (200 epochs,
at most 2000 steps of 32 clips); stage 2 trains STOP's prompts end to end (batch 16, 3 epochs) with the head gated
in. AdamW betas (0.9, 0.98), eps 1e-6, weight decay 0.2, lr 1e-3 per parameter group, cosine with 10% warmup.
"""

import argparse
import functools
import json
import logging
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

# On a busy shared CPU, OpenMP threads that spin while waiting make a step several times slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from modeling_stop import STOPModel
from modeling_stop.modeling_stop import clip_loss
from modeling_stop.processing_stop import STOPProcessor
from training import recipe as training_recipe
from training.arguments import load_model_and_processor, load_splits
from training.arguments import parse_args as parse_run_args
from training.checkpointing import (
    TrainState,
    load_checkpoint,
    resumed_batches,
    run_shaping_args,
    save_checkpoint,
    save_model,
)
from training.data import (
    VideoTextCollator,
    VideoTextDataset,
    build_dataloader,
    class_names,
)
from training.defaults import label_texts
from training.evaluation import embed_video_dataset, evaluate_classification, evaluate_retrieval, load_metric
from training.feature_cache import CachedFeatureCollator, CachedFeatureDataset, FrameFeatureCache
from training.guards import (
    BadVideoGuard,
    TrainingAborted,
    abort_on_non_finite_loss,
    all_failures,
    check_bad_videos_in_cache,
)
from training.reporting import (
    CARD_HYPERPARAMETERS,
    MetricsLog,
    format_results,
    plot_training_curves,
    report_eval_failures,
    write_model_card,
)
from training.streaming import build_streaming_dataloader

logger = get_logger(__name__)

# The validation metric each task selects its model on.
SELECTION_METRIC = {"retrieval": "t2v_R@1", "classification": "top1_accuracy"}


def parse_args(argv=None):
    """The flags of this script (`training/arguments.py`)."""
    return parse_run_args(argv, description=__doc__)


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


def dataset_columns(args, labels: list[str] | None) -> dict:
    """The column arguments of `VideoTextDataset` and the streaming loader for this task."""
    is_classification = labels is not None
    return dict(
        video_column=args.video_column,
        caption_column=None if is_classification else args.caption_column,
        label_column=args.label_column if is_classification else None,
        label_names=labels,
    )


def build_eval_dataloaders(args, raw, processor, columns: dict) -> tuple[dict, dict]:
    """Validation and test splits (those the dataset has) and their DataLoaders (uniform frames, in order)."""
    datasets = {
        split: VideoTextDataset(raw[split], processor.video_processor, **columns)
        for split in ("validation", "test")
        if split in raw
    }
    collator = VideoTextCollator(processor)
    dataloaders = {
        split: build_dataloader(ds, collator, args.per_device_eval_batch_size, num_workers=args.dataloader_num_workers)
        for split, ds in datasets.items()
    }
    return datasets, dataloaders


def use_feature_cache(args, model) -> bool:
    """Whether training reads cached frozen frame features: every trainable module sits after the frozen backbone
    and the training frames are the uniform ones the cache holds."""
    return (
        args.feature_cache == "auto"
        and model.uses_frozen_frame_features
        and args.frame_sampling == "uniform"
        and not args.streaming
    )


def build_train_dataloader(args, accelerator, model, processor, raw, stream, columns: dict):
    """`(train dataset, train DataLoader)`: a streamed split, the cached frozen frame features of the train split
    (`use_feature_cache`), or the train split's videos."""
    collator = VideoTextCollator(processor)
    if args.streaming:
        return build_streaming_dataloader(
            stream,
            processor.video_processor,
            collator,
            args.per_device_train_batch_size,
            accelerator.num_processes,
            accelerator.process_index,
            seed=args.seed,
            buffer_size=args.shuffle_buffer_size,
            num_workers=args.dataloader_num_workers,
            device=accelerator.device,
            sampling=args.frame_sampling,
            **columns,
        )
    dataset = VideoTextDataset(
        raw["train"], processor.video_processor, training=True, sampling=args.frame_sampling, seed=args.seed, **columns
    )
    if use_feature_cache(args, model):
        cache = FrameFeatureCache.build(
            model.to(accelerator.device),
            dataset,
            args.per_device_eval_batch_size,
            args.dataloader_num_workers,
            args.feature_cache_dir,
            accelerator.device,
            disable_progress=not accelerator.is_local_main_process,
        )
        check_bad_videos_in_cache(cache, args.max_bad_video_fraction, len(dataset))
        dataset, collator = CachedFeatureDataset(dataset, cache), CachedFeatureCollator(processor)
    dataloader = build_dataloader(
        dataset,
        collator,
        args.per_device_train_batch_size,
        shuffle=True,
        drop_last=True,
        seed=args.seed,
        num_workers=args.dataloader_num_workers,
    )
    if len(dataloader) < accelerator.num_processes:
        raise ValueError(
            f"The train split ({len(dataset)} videos) holds fewer than one batch of "
            f"{args.per_device_train_batch_size} per process: lower --per_device_train_batch_size"
        )
    return dataset, dataloader


# ----------------------------------------------------------------------------------------------------------------
# Stage 1 of the recipe, optimizer and schedule
# ----------------------------------------------------------------------------------------------------------------


def run_head_stage(args, recipe, model, processor, train_dataset, validation, accelerator) -> tuple[list, dict, dict]:
    """Stage 1 of the recipe (`training.recipe.train_head_stage`) when it applies: new STOP models whose temporal
    head reads frozen features, retrieval, map-style data, not on resume. Returns its metrics.jsonl records, its
    summary (with the temporal gate it set for stage 2) and the frozen-feature caches it built (by split);
    nothing when it does not run."""
    if (
        args.resume_from_checkpoint
        or args.task == "classification"
        or args.streaming
        or not training_recipe.wants_head_stage(model)
        or training_recipe.head_stage_steps(args, recipe, len(train_dataset)) <= 0
    ):
        if args.head_stage_from:
            accelerator.print(f"--head_stage_from {args.head_stage_from} ignored: this run has no stage 1")
        return [], {}, {}
    records, caches = [], {}
    if args.head_stage_from:  # a previous run's stage 1, e.g. to compare stage 2 of two models from the same start
        source = training_recipe.load_head_stage(model, args.head_stage_from)
        accelerator.print(f"stage 1: loaded from {source}")
        summary = {"head_stage_from": source}
    else:
        summary = training_recipe.train_head_stage(
            model,
            processor,
            train_dataset,
            validation,
            args,
            recipe,
            load_metric("video_text_retrieval"),
            accelerator.device,
            log=accelerator.print,
            write_record=records.append,
            cache_dir=args.feature_cache_dir,
            num_workers=args.dataloader_num_workers,
            disable_progress=not accelerator.is_local_main_process,
            check_cache=functools.partial(
                check_bad_videos_in_cache, max_fraction=args.max_bad_video_fraction, num_videos=len(train_dataset)
            ),
            caches=caches,
        )
        if accelerator.is_main_process:
            path = training_recipe.head_stage_file(args.output_dir)
            path.parent.mkdir(parents=True, exist_ok=True)
            training_recipe.save_head_stage(model, path)
    first_batch = training_recipe.first_batch(
        train_dataset, VideoTextCollator(processor), args.per_device_eval_batch_size, accelerator.device
    )
    summary["temporal_gate"] = training_recipe.init_temporal_gate(model, first_batch, args.temporal_gate_ratio)
    accelerator.print(f"temporal gate set to {summary['temporal_gate']:.4g}")
    return records, summary, caches


def set_stage2_head_input(args, model, accelerator) -> dict:
    """`--stage2_head_input`: what a STOP model's temporal head reads from stage 2 on (also on resume, so that a
    resumed run computes what the interrupted one did). Returns the summary entry, empty when it does not apply."""
    if not training_recipe.wants_head_stage(model) or args.task == "classification":
        return {}
    if args.stage2_head_input != model.config.temporal_head_input:
        model.config.temporal_head_input = args.stage2_head_input
        accelerator.print(f"stage 2: the temporal head reads the {args.stage2_head_input} frame features")
    return {"stage2_head_input": model.config.temporal_head_input}


def hard_negative_train_dataloader(args, recipe, accelerator, model, train_dataset, train_dataloader, caches: dict):
    """The training loader with `--hard_negative_batches`: batches of nearest-neighbour pairs in the frozen
    mean-pooled frame features (from the cached features of the train split, stage 1's cache, or one built here);
    `train_dataloader` unchanged without the flag, on a stream and for classification."""
    if not args.hard_negative_batches or args.streaming or args.task == "classification":
        return train_dataloader
    cache = train_dataset.cache if isinstance(train_dataset, CachedFeatureDataset) else caches.get("train")
    return training_recipe.hard_negative_dataloader(
        model,
        train_dataset,
        train_dataloader.collate_fn,
        args,
        recipe,
        accelerator.device,
        cache,
        disable_progress=not accelerator.is_local_main_process,
    )


def build_optimizer_and_scheduler(args, recipe, model, train_dataloader, num_processes: int, head_trained: bool):
    """The recipe's parameter groups and optimizer (a head trained in stage 1 at the recipe's rate for it), and the
    learning-rate schedule over `--max_train_steps` (derived from `--num_train_epochs` when not given)."""
    groups = training_recipe.parameter_groups(
        model,
        args.learning_rate,
        args.weight_decay,
        training_recipe.head_lr_multiplier(args, recipe, head_trained),
        args.prompter_lr_multiplier,
    )
    optimizer = training_recipe.build_optimizer(groups, args)
    if args.max_train_steps is None:  # (--streaming requires it: a stream has no length)
        num_update_steps_per_epoch = math.ceil(len(train_dataloader) / num_processes / args.gradient_accumulation_steps)
        args.max_train_steps = args.num_train_epochs * num_update_steps_per_epoch
    num_warmup_steps = training_recipe.warmup_steps(args, args.max_train_steps)
    lr_scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=num_warmup_steps * num_processes,
        num_training_steps=args.max_train_steps * num_processes,
    )
    return optimizer, lr_scheduler


# ----------------------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------------------


def gather_with_grad(tensor: torch.Tensor, num_processes: int) -> torch.Tensor:
    """All processes' rows (in rank order), differentiable. Batches may differ in size (skipped samples)."""
    if num_processes == 1:
        return tensor
    import torch.distributed as dist
    import torch.distributed.nn.functional as dist_nn

    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(num_processes)]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    padded = F.pad(tensor, (0, 0, 0, max(sizes) - tensor.shape[0]))
    # Backward sums the gradient of every process's (identical) loss: with DDP's average, the global-batch gradient.
    gathered = dist_nn.all_gather(padded)
    return torch.cat([part[:n] for part, n in zip(gathered, sizes)])


def retrieval_loss(outputs, logit_scale: torch.Tensor, num_processes: int, video_embeds=None) -> torch.Tensor:
    """Symmetric InfoNCE over the global batch of (caption, video) pairs (`video_embeds`: instead of the outputs')."""
    text = gather_with_grad(outputs.text_embeds.float(), num_processes)
    video = outputs.video_embeds if video_embeds is None else video_embeds
    video = gather_with_grad(video.float(), num_processes)
    return clip_loss(logit_scale.exp() * text @ video.t())


def training_loss(
    model, batch: dict, class_inputs: dict | None, logit_scale, num_processes: int, prompt_feature_weight: float = 0.0
) -> torch.Tensor:
    """Retrieval: `retrieval_loss` over the batch's captions, plus `prompt_feature_weight` times the same loss on
    STOP's own video feature (`prompt_video_embeds`, models with a temporal head). Classification (`class_inputs`:
    the tokenised class texts): cross-entropy of the videos over the classes."""
    video = {
        "pixel_values": batch.get("pixel_values"),
        "frame_features": batch.get("frame_features"),
        "video_mask": batch["video_mask"],
    }
    if class_inputs is not None:
        outputs = model(**class_inputs, **video)
        return F.cross_entropy(outputs.logits_per_video.float(), batch["labels"])
    outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **video)
    loss = retrieval_loss(outputs, logit_scale, num_processes)
    if prompt_feature_weight and outputs.prompt_video_embeds is not None:
        own = retrieval_loss(outputs, logit_scale, num_processes, video_embeds=outputs.prompt_video_embeds)
        loss = loss + prompt_feature_weight * own
    return loss


# ----------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Evaluator:
    """The metrics of a validation or test split (`training.evaluation`), plus `failed_videos`: the names of the
    videos that failed to decode. Classification when `label_names` is set (texts through `label_template`)."""

    model: STOPModel
    processor: STOPProcessor
    datasets: dict
    dataloaders: dict
    accelerator: Accelerator
    label_names: list[str] | None = None
    label_template: str | None = None

    def __call__(self, split: str) -> dict:
        dataset, dataloader = self.datasets[split], self.dataloaders[split]
        videos = embed_video_dataset(self.model, dataloader, self.accelerator)
        if self.label_names is not None:
            results = evaluate_classification(
                self.model,
                self.processor,
                dataset,
                dataloader,
                self.label_names,
                [self.label_template],
                self.accelerator,
                videos=videos,
            )
        else:
            results = evaluate_retrieval(
                self.model, self.processor, dataset, dataloader, self.accelerator, videos=videos
            )
        results["failed_videos"] = videos[2]
        return results


@dataclass
class TrainingRun:
    """What the loop and the evaluations of a run share, once `accelerator.prepare` has run."""

    args: argparse.Namespace
    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    train_dataloader: object
    train_dataset: object
    evaluate: Evaluator
    metrics_log: MetricsLog
    checkpoints_dir: Path

    @property
    def selection_metric(self) -> str:
        return SELECTION_METRIC[self.args.task]


def validate(run: TrainingRun, state: TrainState, epoch: int, epoch_zero_competes: bool = False):
    """Validation metrics of `epoch` (0 = before training), logged; the best model so far is kept in
    `checkpoints/best` and recorded in `state`. Epoch 0 competes only when stage 1 of the recipe trained the model
    before it (`epoch_zero_competes`)."""
    if "validation" not in run.evaluate.datasets:
        return
    accelerator, metric = run.accelerator, run.selection_metric
    results = run.evaluate("validation")
    record = {"split": "validation", "epoch": epoch, "step": state.completed_steps, **results, "time": state.seconds()}
    run.metrics_log.write(record)
    numeric = report_eval_failures(accelerator.print, "validation", results)
    if run.args.with_tracking:
        accelerator.log({f"val_{k}": v for k, v in numeric.items()}, step=state.completed_steps)
    accelerator.print(f"epoch {epoch} validation: " + format_results(results))
    score = training_recipe.validation_score(results, metric)
    if (epoch > 0 or epoch_zero_competes) and (state.best_metric is None or score > state.best_metric):
        state.best_metric, state.best_epoch, state.best_value = score, epoch, results[metric]
        if accelerator.is_main_process:
            save_model(run.evaluate.model, run.evaluate.processor, run.checkpoints_dir / "best")
        accelerator.wait_for_everyone()


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------


def start_run(run: TrainingRun, head_stage_records: list[dict]) -> TrainState:
    """The state to train from: a checkpoint's (`--resume_from_checkpoint`, its metrics.jsonl cut back to it), or
    a fresh one (nothing of an earlier run in this folder counts)."""
    args, accelerator = run.args, run.accelerator
    run_args = run_shaping_args(args, accelerator.num_processes)
    if args.resume_from_checkpoint:
        state = load_checkpoint(
            accelerator, args.resume_from_checkpoint, run.checkpoints_dir, run_args, args.allow_changed_args
        )
        run.metrics_log.truncate(state.completed_steps, state.epoch)
        return state
    run.metrics_log.truncate(-1, -1)
    for record in head_stage_records:
        run.metrics_log.write(record)
    if accelerator.is_main_process and (run.checkpoints_dir / "best").exists():
        shutil.rmtree(run.checkpoints_dir / "best")
    accelerator.wait_for_everyone()
    return TrainState(run_args=run_args)


def log_run_header(run: TrainingRun):
    args, accelerator = run.args, run.accelerator
    total_batch_size = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    trainable = sum(p.numel() for p in run.evaluate.model.parameters() if p.requires_grad)
    logger.info("***** Running training *****")
    logger.info(f"  Num examples = {'streamed' if args.streaming else len(run.train_dataset)}")
    logger.info(f"  Num Epochs = {args.num_train_epochs}")
    logger.info(f"  Instantaneous batch size per device = {args.per_device_train_batch_size}")
    logger.info(f"  Total train batch size (w. parallel, distributed & accumulation) = {total_batch_size}")
    logger.info(f"  Gradient Accumulation steps = {args.gradient_accumulation_steps}")
    logger.info(f"  Total optimization steps = {args.max_train_steps}")
    logger.info(f"  Trainable parameters = {trainable}")


def count_batch(accelerator, batch: dict, bad_videos: BadVideoGuard) -> list[int]:
    """Adds the batch's decoded and failed videos (over all processes) to `bad_videos`; returns every process's
    number of decoded videos."""
    counts = [len(batch["indices"]), len(batch["failed"])]
    if accelerator.num_processes > 1:
        counts = accelerator.gather(torch.tensor(counts, device=accelerator.device)).tolist()
    bad_videos.update(sum(counts), sum(counts[1::2]))
    return counts[0::2]


def log_train_step(run: TrainingRun, state: TrainState, epoch: int, step_losses: list[float], progress_bar):
    """Progress bar, and every `--logging_steps` a train record. A step in which no video decoded has no loss: it
    is not logged (never as NaN)."""
    args = run.args
    step_loss = float(np.mean(step_losses)) if step_losses else None
    progress_bar.set_postfix(loss="n/a" if step_loss is None else f"{step_loss:.4f}", epoch=epoch)
    logging_step = state.completed_steps % args.logging_steps == 0 or state.completed_steps == args.max_train_steps
    if step_loss is None or not logging_step:
        return
    lr = run.lr_scheduler.get_last_lr()[0]
    record = {"split": "train", "epoch": epoch + 1, "step": state.completed_steps, "loss": step_loss, "lr": lr}
    run.metrics_log.write({**record, "time": state.seconds()})
    if args.with_tracking:
        run.accelerator.log({"train_loss": step_loss, "lr": lr}, step=state.completed_steps)


def train_epoch(run: TrainingRun, state: TrainState, epoch: int, class_inputs, bad_videos: BadVideoGuard, progress_bar):
    """One pass over the train loader (from `state`'s data position when resuming into this epoch), stopping at
    `--max_train_steps`; step checkpoints every `--checkpointing_steps`."""
    args, accelerator, model = run.args, run.accelerator, run.model
    logit_scale = run.evaluate.model.clip.logit_scale
    model.train()
    # The prepared loader re-seeds the sampler with its own epoch counter on every pass (and a skipping loader
    # inherits it): set it, not only our sampler, or a resumed run would replay epoch 0's order.
    run.train_dataloader.set_epoch(epoch)
    run.train_dataset.set_epoch(epoch)
    skip = state.batches_in_epoch if epoch == state.epoch else 0
    dataloader = resumed_batches(accelerator, run.train_dataloader, skip)
    skipped = state.skipped.setdefault(str(epoch), [])
    bad_videos.start_epoch(len(skipped), skip * args.per_device_train_batch_size * accelerator.num_processes)
    losses, step_start = [], 0
    for batch_index, batch in enumerate(dataloader, start=skip):
        if state.completed_steps >= args.max_train_steps:
            break
        skipped += batch["failed"]
        sizes = count_batch(accelerator, batch, bad_videos)
        if bad_videos.exceeded():
            bad_videos.abort(all_failures(accelerator, skipped), epoch)
        with accelerator.accumulate(model):
            # All processes skip together when one has nothing to train on (every sample failed to decode).
            if min(sizes) > 0:
                loss = training_loss(
                    model,
                    batch,
                    class_inputs,
                    logit_scale,
                    accelerator.num_processes,
                    args.prompt_feature_loss_weight,
                )
                accelerator.backward(loss)
                losses.append(accelerator.reduce(loss.detach().float(), reduction="mean").item())
                abort_on_non_finite_loss(accelerator, losses[-1], run.train_dataset, batch, state.completed_steps)
            if accelerator.sync_gradients and args.max_grad_norm > 0:
                accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], args.max_grad_norm)
            run.optimizer.step()
            run.lr_scheduler.step()
            run.optimizer.zero_grad()
        if not accelerator.sync_gradients:
            continue
        state.completed_steps += 1
        progress_bar.update(1)
        log_train_step(run, state, epoch, losses[step_start:], progress_bar)
        step_start = len(losses)
        if (
            args.checkpointing_steps not in (None, "epoch")
            and state.completed_steps % int(args.checkpointing_steps) == 0
        ):
            save_checkpoint(
                accelerator,
                run.checkpoints_dir,
                f"step_{state.completed_steps}",
                state.at(epoch, batch_index + 1),
                args.checkpoints_total_limit,
            )


def report_skipped_videos(run: TrainingRun, state: TrainState, epoch: int, bad_videos: BadVideoGuard):
    """The epoch's undecodable training videos of every process: named once, in the state and metrics.jsonl; the
    run stops when they are too many."""
    accelerator = run.accelerator
    failures = all_failures(accelerator, state.skipped[str(epoch)])
    state.skipped[str(epoch)] = failures
    if bad_videos.exceeded(end_of_epoch=True):
        bad_videos.abort(failures, epoch)
    if failures:
        accelerator.print(
            f"epoch {epoch + 1}: skipped {len(failures)} videos that failed to decode:\n  " + "\n  ".join(failures)
        )
        record = {"split": "skipped", "epoch": epoch + 1, "step": state.completed_steps, "num_skipped": len(failures)}
        run.metrics_log.write({**record, "skipped": failures})


# ----------------------------------------------------------------------------------------------------------------
# Final model, test, outputs
# ----------------------------------------------------------------------------------------------------------------


def load_best_model(model: STOPModel, checkpoints_dir: Path):
    """The model selected on validation (`checkpoints/best`), when validation ran."""
    best_dir = checkpoints_dir / "best"
    if best_dir.exists():
        model.load_state_dict(STOPModel.from_pretrained(best_dir).state_dict())


def run_summary(run: TrainingRun, state: TrainState, training_path: str, head_stage_summary: dict) -> dict:
    """What `all_results.json` says of the training (the test metrics are added to it)."""
    return {
        "best_epoch": state.best_epoch,
        f"best_val_{run.selection_metric}": state.best_metric if state.best_value is None else state.best_value,
        "best_val_selection_score": state.best_metric,
        "train_steps": state.completed_steps,
        "train_runtime": state.seconds(),
        "num_skipped_train_videos": sum(len(v) for v in state.skipped.values()),
        "training_path": training_path,
        **head_stage_summary,
    }


def evaluate_test(run: TrainingRun, state: TrainState) -> dict | None:
    """Test metrics of the final model, logged and printed (None without a test split)."""
    if "test" not in run.evaluate.datasets:
        return None
    results = run.evaluate("test")
    numeric = report_eval_failures(run.accelerator.print, "test", results)
    record = {"split": "test", "epoch": state.epoch, "step": state.completed_steps, **results, "time": state.seconds()}
    run.metrics_log.write(record)
    run.accelerator.print("test: " + format_results(results))
    if run.args.with_tracking:
        run.accelerator.log({f"test_{k}": v for k, v in numeric.items()}, step=state.completed_steps)
    return results


def save_outputs(run: TrainingRun, processor, results: dict, test_results: dict | None):
    """At the root of `--output_dir` (main process): the model and processor, `all_results.json`, the model card
    and `training_curves.png`."""
    args, model = run.args, run.evaluate.model
    output_dir = Path(args.output_dir)
    save_model(model, processor, output_dir / ".final")
    for item in (output_dir / ".final").iterdir():
        os.replace(item, output_dir / item.name)
    (output_dir / ".final").rmdir()
    (output_dir / "all_results.json").write_text(json.dumps(results, indent=2))
    hyperparameters = {k: getattr(args, k) for k in CARD_HYPERPARAMETERS}
    hyperparameters["num_processes"] = run.accelerator.num_processes
    write_model_card(
        output_dir,
        args.hub_model_id or output_dir.resolve().name,
        args.model_name_or_path,
        args.dataset_name,
        args.task,
        test_results,
        model.config,
        hyperparameters,
        model_path=args.hub_model_id or str(args.output_dir),
    )
    plot_training_curves(run.metrics_log.records(), output_dir / "training_curves.png", run.selection_metric)


def push_to_hub(args):
    from huggingface_hub import create_repo, upload_folder

    output_dir = Path(args.output_dir)
    repo_id = create_repo(args.hub_model_id or output_dir.resolve().name, exist_ok=True, token=args.hub_token).repo_id
    upload_folder(
        repo_id=repo_id,
        folder_path=output_dir,
        commit_message="End of training",
        ignore_patterns=["checkpoints/*", ".*"],
        token=args.hub_token,
    )


def build_accelerator(args) -> Accelerator:
    tracking = {"log_with": args.report_to, "project_dir": str(args.output_dir)} if args.with_tracking else {}
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        # Some prompt weights get no gradient by design (the official region scorer behind a hard top-k).
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        **tracking,
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    logger.info(accelerator.state, main_process_only=False)
    if accelerator.is_local_main_process:
        transformers.utils.logging.set_verbosity_warning()
    else:
        transformers.utils.logging.set_verbosity_error()
    return accelerator


def main(argv=None):
    args = parse_args(argv)
    accelerator = build_accelerator(args)
    set_seed(args.seed)
    checkpoints_dir = Path(args.output_dir) / "checkpoints"
    if accelerator.is_main_process:
        checkpoints_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()

    # Data
    is_classification = args.task == "classification"
    with accelerator.main_process_first():
        train_stream, raw = load_splits(args, is_classification)
    labels = class_names(raw, args.label_column) if is_classification else None
    columns = dataset_columns(args, labels)

    # Model, and the data that depends on it (frame count, processor, frozen-feature cache)
    model, processor = load_model_and_processor(args)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    recipe = training_recipe.resolve_args(args, model.config.variant)
    eval_datasets, eval_dataloaders = build_eval_dataloaders(args, raw, processor, columns)
    train_dataset, train_dataloader = build_train_dataloader(
        args, accelerator, model, processor, raw, train_stream, columns
    )
    training_path = (
        "cached frozen frame features" if use_feature_cache(args, model) else "end to end through the frozen backbone"
    )
    logger.info(f"  Training path = {training_path}")

    # Stage 1 of the recipe, then the optimizer and schedule of stage 2
    head_stage_records, head_stage_summary, head_stage_caches = run_head_stage(
        args, recipe, model, processor, train_dataset, eval_datasets.get("validation"), accelerator
    )
    head_input_summary = set_stage2_head_input(args, model, accelerator)
    train_dataloader = hard_negative_train_dataloader(
        args, recipe, accelerator, model, train_dataset, train_dataloader, head_stage_caches
    )
    optimizer, lr_scheduler = build_optimizer_and_scheduler(
        args, recipe, model, train_dataloader, accelerator.num_processes, head_trained=bool(head_stage_summary)
    )
    model, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, lr_scheduler
    )
    eval_dataloaders = {split: accelerator.prepare(dl) for split, dl in eval_dataloaders.items()}
    # As in the examples: the epochs are recomputed on the sharded loader. Streamed: up to --num_train_epochs passes
    # over the stream, ending at --max_train_steps.
    if not args.streaming:
        args.num_train_epochs = math.ceil(
            args.max_train_steps / math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
        )
    unwrapped = accelerator.unwrap_model(model)
    if args.with_tracking:
        accelerator.init_trackers(
            "stop", {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in vars(args).items()}
        )
    evaluator = Evaluator(
        unwrapped, processor, eval_datasets, eval_dataloaders, accelerator, labels, args.label_template
    )
    metrics_log = MetricsLog(Path(args.output_dir) / "metrics.jsonl", accelerator.is_main_process)
    run = TrainingRun(
        args=args,
        accelerator=accelerator,
        model=model,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        train_dataloader=train_dataloader,
        train_dataset=train_dataset,
        evaluate=evaluator,
        metrics_log=metrics_log,
        checkpoints_dir=checkpoints_dir,
    )

    # Resume, and the untrained model (zero-shot; after stage 1 when it ran) as the baseline to beat
    state = start_run(run, head_stage_records)
    log_run_header(run)
    progress_bar = tqdm(range(args.max_train_steps), disable=not accelerator.is_local_main_process)
    progress_bar.update(state.completed_steps)
    state.start_clock()
    if state.is_fresh:
        validate(run, state, 0, epoch_zero_competes=bool(head_stage_summary))

    # Training loop: an epoch, its skipped videos, validation, the epoch checkpoint
    class_inputs = (
        processor(text=label_texts(labels, args.label_template), padding="max_length").to(accelerator.device)
        if is_classification
        else None
    )
    bad_videos = BadVideoGuard(args.max_bad_video_fraction, None if args.streaming else len(train_dataset))
    for epoch in range(state.epoch, args.num_train_epochs):
        train_epoch(run, state, epoch, class_inputs, bad_videos, progress_bar)
        report_skipped_videos(run, state, epoch, bad_videos)
        validate(run, state, epoch + 1)
        state.epoch, state.batches_in_epoch = epoch + 1, 0
        if args.checkpointing_steps == "epoch":
            save_checkpoint(
                accelerator, checkpoints_dir, f"epoch_{epoch + 1}", state.at(epoch + 1, 0), args.checkpoints_total_limit
            )
        if state.completed_steps >= args.max_train_steps:
            break

    # Final model (selected on validation), test, outputs
    progress_bar.close()
    accelerator.wait_for_everyone()
    load_best_model(unwrapped, checkpoints_dir)
    results = run_summary(run, state, training_path, {**head_stage_summary, **head_input_summary})
    test_results = evaluate_test(run, state)
    if test_results is not None:
        results.update({f"test_{k}": v for k, v in test_results.items()})
    if args.with_tracking:
        accelerator.end_training()
    if accelerator.is_main_process:
        save_outputs(run, processor, results, test_results)
        if args.push_to_hub:
            push_to_hub(args)
    accelerator.wait_for_everyone()
    return results


if __name__ == "__main__":
    try:
        main()
    except TrainingAborted as error:
        sys.exit(f"Training stopped: {error}")

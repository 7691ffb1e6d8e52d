"""What `training/train.py` is run with, and what it loads first: its flags (`parse_args`), the STOP model and
processor they describe (`load_model_and_processor`, a STOP checkpoint as it is or a new model over a CLIP
checkpoint with the variant's recipe defaults) and the dataset splits (`load_splits`). Other scripts that train
like `train.py` (e.g. `benchmarks/head_alone.py`) take the same flags from here; nothing imports the training
script itself.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from accelerate.logging import get_logger
from transformers import PretrainedConfig

from modeling_stop import STOPConfig, STOPModel
from modeling_stop.processing_stop import STOPProcessor
from training.data import load_video_text_dataset
from training.defaults import DEFAULT_CLIP
from training.guards import check_safetensors_files
from training.recipe import recipe_for
from training.streaming import load_streaming_dataset

logger = get_logger(__name__)

# Flags that shape a new model (a STOP checkpoint keeps its own config).
NEW_MODEL_FLAGS = ("variant", "prompt_generator", "num_frames", "max_words", "frame_weight_norm", "mask_layout")


def parse_args(argv=None, description: str | None = None):
    """The flags of `training/train.py` (`description`: its help text)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Data
    parser.add_argument(
        "--dataset_name", required=True, help="a Hub dataset id, or a local videofolder / CSV / JSON folder"
    )
    parser.add_argument("--dataset_config_name", default=None)
    parser.add_argument("--video_column", default="video")
    parser.add_argument("--caption_column", default="caption", help="a string or a list of strings per video")
    parser.add_argument("--label_column", default="label", help="ClassLabel or string labels (classification)")
    parser.add_argument("--max_train_samples", type=int, default=None, help="truncate the train split (debugging)")
    parser.add_argument("--max_eval_samples", type=int, default=None, help="truncate validation and test")
    parser.add_argument(
        "--frame_sampling",
        choices=["uniform", "random"],
        default="uniform",
        help="training frames: segment centres, or a random frame per segment (evaluation: uniform)",
    )
    parser.add_argument(
        "--preprocessing_num_workers",
        type=int,
        default=None,
        help="processes resolving the video paths of CSV / JSON datasets",
    )
    parser.add_argument("--dataloader_num_workers", type=int, default=0, help="DataLoader processes decoding videos")
    parser.add_argument(
        "--feature_cache",
        choices=["auto", "off"],
        default="auto",
        help="auto: when every trainable module sits after the frozen backbone (frozen CLIP + temporal "
        "head) and frames are sampled uniformly, compute the frozen frame features once and train "
        "on them (same loss, many times faster)",
    )
    parser.add_argument("--feature_cache_dir", default=None, help="also keep the frame-feature cache on disk here")
    parser.add_argument(
        "--max_bad_video_fraction",
        type=float,
        default=0.5,
        help="stop (non-zero exit, files named) when more than this share of an epoch's training videos fail to decode",
    )
    parser.add_argument(
        "--streaming",
        action="store_true",
        help="stream the train split (Hub dataset, or local WebDataset .tar shards); needs --max_train_steps",
    )
    parser.add_argument(
        "--shuffle_buffer_size",
        type=int,
        default=1000,
        help="--streaming: rows of the (deterministic, per-epoch seeded) shuffle buffer; 0: stream order",
    )
    # Task
    parser.add_argument("--task", choices=["retrieval", "classification"], default="retrieval")
    parser.add_argument("--label_template", default="a video of {label}", help="class name -> text (classification)")
    # Model
    parser.add_argument(
        "--model_name_or_path",
        default=str(DEFAULT_CLIP),
        help="a STOP checkpoint, or a CLIP checkpoint to start a new STOP model from "
        "(default: the embedded synthetic backbone)",
    )
    parser.add_argument(
        "--variant",
        choices=["official", "paper"],
        default=None,
        help="new models: STOP variant (default paper: fast on CPU)",
    )
    parser.add_argument("--prompt_generator", choices=["transformer", "linear"], default=None)
    parser.add_argument("--num_frames", type=int, default=None, help="new models: frames per video (default 8)")
    parser.add_argument("--max_words", type=int, default=None, help="new models: tokens per caption (default 32)")
    parser.add_argument("--frame_weight_norm", choices=["batch", "video"], default=None)
    parser.add_argument("--mask_layout", choices=["official", "patch"], default=None)
    parser.add_argument(
        "--stop_config_overrides",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="any STOPConfig field of a new model, e.g. prompter_dropout=0.0 temporal_head=seqTransf",
    )
    # Optimisation
    parser.add_argument("--per_device_train_batch_size", type=int, default=16)
    parser.add_argument("--per_device_eval_batch_size", type=int, default=32)
    parser.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    parser.add_argument(
        "--learning_rate",
        type=float,
        default=None,
        help="the prompts' learning rate (default: the variant's recipe, training/recipe.py)",
    )
    parser.add_argument("--head_lr_multiplier", type=float, default=None, help="temporal head lr / --learning_rate")
    parser.add_argument(
        "--prompter_lr_multiplier",
        type=float,
        default=None,
        help="spatial and temporal prompters' lr / --learning_rate",
    )
    parser.add_argument("--weight_decay", type=float, default=None, help="default: the recipe's (0.2, the authors')")
    parser.add_argument("--adam_beta1", type=float, default=None, help="default: the recipe's (0.9)")
    parser.add_argument("--adam_beta2", type=float, default=None, help="default: the recipe's (0.98, the authors')")
    parser.add_argument("--adam_epsilon", type=float, default=None, help="default: the recipe's (1e-6, the authors')")
    parser.add_argument("--max_grad_norm", type=float, default=1.0, help="0 disables clipping")
    parser.add_argument(
        "--num_train_epochs", type=int, default=None, help="default: the recipe's (paper 3, official 2)"
    )
    parser.add_argument("--max_train_steps", type=int, default=None, help="overrides --num_train_epochs")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument(
        "--lr_scheduler_type",
        default="cosine",
        choices=["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"],
    )
    parser.add_argument("--gradient_checkpointing", action="store_true", help="recompute vision blocks in backward")
    parser.add_argument("--num_warmup_steps", type=int, default=None, help="default: --warmup_ratio of the steps")
    parser.add_argument("--warmup_ratio", type=float, default=None, help="default: the recipe's (0.1)")
    # Stage 1 of the recipe: the temporal head (and the text side) on cached frozen frame features
    parser.add_argument(
        "--head_stage_steps",
        type=int,
        default=None,
        help="steps of stage 1 for new STOP models with a temporal head on frozen features (default: "
        "the recipe's, scaled to the train split; 0 skips stage 1)",
    )
    parser.add_argument(
        "--head_stage_from",
        default=None,
        help="skip stage 1 and load its parameters (temporal head, prompt generator, text adapters) from a "
        "previous run: its --output_dir, or the checkpoints/head_stage.safetensors that stage 1 saved there",
    )
    parser.add_argument("--head_stage_learning_rate", type=float, default=None)
    parser.add_argument("--head_stage_batch_size", type=int, default=None)
    parser.add_argument(
        "--head_stage_views",
        type=int,
        default=None,
        help="frame samplings cached per training video in stage 1: the uniform frames plus N-1 draws of one random "
        "frame per segment, one view drawn per video and step (default: the recipe's)",
    )
    parser.add_argument(
        "--head_stage_text",
        type=lambda v: v.lower() in ("true", "1"),
        default=None,
        metavar="{true,false}",
        help="also train the prompt generator and text adapters in stage 1",
    )
    parser.add_argument(
        "--hard_negative_batches",
        type=lambda v: v.lower() in ("true", "1"),
        default=None,
        metavar="{true,false}",
        help="batches of nearest-neighbour pairs in frozen mean-pooled frame features, in both stages of the "
        "recipe (default: the recipe's, true)",
    )
    parser.add_argument(
        "--prompt_feature_loss_weight",
        type=float,
        default=None,
        help="stage 2: add this weight times the InfoNCE of STOP's own video feature (the prompted backbone "
        "alone, without the temporal head) to the loss (default: the recipe's)",
    )
    parser.add_argument(
        "--temporal_gate_ratio",
        type=float,
        default=None,
        help="stage 2 starts with ||gate * head|| = ratio * ||STOP's own video feature||",
    )
    parser.add_argument(
        "--stage2_head_input",
        choices=["frozen", "prompted"],
        default=None,
        help="what the stage-1 head reads in stage 2: the frozen CLIP's frame features (the recipe's default) or "
        "the prompted frame features, so that the head's input passes through STOP's prompts",
    )
    parser.add_argument(
        "--mixed_precision",
        choices=["no", "fp16", "bf16"],
        default=None,
        help="default: what `accelerate launch` / `accelerate config` set",
    )
    parser.add_argument("--seed", type=int, default=42)
    # Output, checkpoints, logging
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--checkpointing_steps", default=None, help="N (every N optimizer steps) or 'epoch'")
    parser.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder, or 'latest'")
    parser.add_argument(
        "--checkpoints_total_limit",
        type=int,
        default=2,
        help="keep only the newest N step/epoch checkpoints (0: keep all)",
    )
    parser.add_argument(
        "--allow_changed_args",
        action="store_true",
        help="resume even when run-shaping arguments differ from the checkpoint's (with a warning; "
        "the data position is converted by samples seen)",
    )
    parser.add_argument("--logging_steps", type=int, default=10, help="write the train loss every N steps")
    parser.add_argument("--with_tracking", action="store_true", help="also log through Accelerate's trackers")
    parser.add_argument("--report_to", default="tensorboard", help="tensorboard, wandb, ... or all")
    parser.add_argument("--push_to_hub", action="store_true")
    parser.add_argument("--hub_model_id", default=None)
    parser.add_argument("--hub_token", default=None)
    args = parser.parse_args(argv)

    if args.checkpointing_steps not in (None, "epoch") and not args.checkpointing_steps.isdigit():
        parser.error(f"--checkpointing_steps must be a number of steps or 'epoch', got {args.checkpointing_steps!r}")
    if args.streaming and args.max_train_steps is None:
        parser.error("--streaming needs --max_train_steps (a stream has no known length to derive it from)")
    if not 0 <= args.max_bad_video_fraction <= 1:
        parser.error(f"--max_bad_video_fraction must be in [0, 1], got {args.max_bad_video_fraction}")
    for item in args.stop_config_overrides:
        if "=" not in item:
            parser.error(f"--stop_config_overrides takes KEY=VALUE items, got {item!r}")
    return args


# ----------------------------------------------------------------------------------------------------------------
# Model and processor
# ----------------------------------------------------------------------------------------------------------------


def config_overrides(items: list[str]) -> dict:
    """`--stop_config_overrides KEY=VALUE ...` -> STOPConfig values, typed like the field's default.

    Bool, int, float and string fields go through the config's own `PretrainedConfig.update_from_string`, one item
    at a time (a list value holds commas). That parser types no other field, so list fields (the kernels) take
    comma-separated ints here (`0,2` or `[0,2]`), and fields whose default is None an int, a list of ints, `none`
    or a string."""
    config = STOPConfig()
    defaults = config.to_dict()
    overrides = {}
    for item in items:
        key, value = item.split("=", 1)
        bracketed = value.startswith("[") and value.endswith("]")
        value = value[1:-1] if bracketed else value
        if key not in defaults:
            raise ValueError(f"--stop_config_overrides: {key!r} is not a STOPConfig field")
        if isinstance(defaults[key], (list, tuple)):
            overrides[key] = [int(v) for v in value.split(",")]
        elif defaults[key] is None:
            parts = value.split(",")
            if value.lower() == "none":
                overrides[key] = None
            elif all(p.strip().isdigit() for p in parts):
                overrides[key] = [int(p) for p in parts] if len(parts) > 1 or bracketed else int(value)
            else:
                overrides[key] = value
        else:
            config.update_from_string(item)
            overrides[key] = getattr(config, key)
    return overrides


def stop_options(args) -> dict:
    """STOPConfig keyword arguments of a new model: the variant's recipe (`training.recipe.RECIPES`), the flags,
    then the overrides."""
    options = dict(recipe_for(args.variant).model_options)
    options.update({name: getattr(args, name) for name in NEW_MODEL_FLAGS if getattr(args, name) is not None})
    options.update(config_overrides(args.stop_config_overrides))
    return options


def load_model_and_processor(args):
    """A STOP checkpoint as it is, or a new STOP model over a CLIP checkpoint (frozen) and its processor."""
    if Path(args.model_name_or_path) == DEFAULT_CLIP and not (DEFAULT_CLIP / "config.json").exists():
        raise FileNotFoundError(
            f"The default backbone {DEFAULT_CLIP} is missing: make it with `python training/pretrain_clip.py` or "
            "pass --model_name_or_path (a CLIP or STOP checkpoint: Hub id or folder)"
        )
    if Path(args.model_name_or_path).is_dir():
        check_safetensors_files(Path(args.model_name_or_path))
    config_dict, _ = PretrainedConfig.get_config_dict(args.model_name_or_path)
    if config_dict.get("model_type") == "stop":
        new_options = [n for n in NEW_MODEL_FLAGS if getattr(args, n) is not None] + args.stop_config_overrides
        if new_options:
            logger.warning(f"{args.model_name_or_path} is a STOP checkpoint: ignoring {new_options} (new models only)")
        model = STOPModel.from_pretrained(args.model_name_or_path)
        processor = STOPProcessor.from_pretrained(args.model_name_or_path)
        return model, processor
    model = STOPModel.from_clip(args.model_name_or_path, **stop_options(args))
    processor = STOPProcessor.from_clip(
        args.model_name_or_path, num_frames=model.config.num_frames, max_words=model.config.max_words
    )
    return model, processor


def load_splits(args, is_classification: bool):
    """`(streamed train split or None, DatasetDict)`: the map-style splits (with train unless streaming), validation
    and test truncated to `--max_eval_samples`."""
    columns = {
        "video_column": args.video_column,
        "caption_column": None if is_classification else args.caption_column,
        "label_column": args.label_column if is_classification else None,
    }
    stream = None
    if args.streaming:
        stream, raw = load_streaming_dataset(args.dataset_name, args.dataset_config_name, **columns)
        if args.max_train_samples is not None:
            stream = stream.take(args.max_train_samples)
        if is_classification and not raw:
            raise ValueError(
                "--streaming --task classification reads the class names from the validation / test "
                f"splits, and {args.dataset_name} has neither"
            )
    else:
        raw = load_video_text_dataset(
            args.dataset_name, args.dataset_config_name, num_proc=args.preprocessing_num_workers, **columns
        )
        if "train" not in raw:
            raise ValueError(f"{args.dataset_name} has no train split (splits: {list(raw)})")
        if args.max_train_samples is not None:
            raw["train"] = raw["train"].select(range(min(args.max_train_samples, len(raw["train"]))))
    for split in ("validation", "test"):
        if split in raw and args.max_eval_samples is not None:
            raw[split] = raw[split].select(range(min(args.max_eval_samples, len(raw[split]))))
    return stream, raw

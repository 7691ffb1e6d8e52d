"""The head-alone row of the default recipe's table: a frozen CLIP + CLIP4Clip seqTransf head (no STOP prompts)
trained exactly as stage 1 of `training/recipe.py` (cached frozen frame features, hard-negative batches, best state
on validation), scored on the test split's cached frozen frame features with the retrieval metrics of `train.py`.

    python -m benchmarks.head_alone --dataset_name data/synthetic --seed 0 --head_stage_steps 2000

Takes `training/train.py`'s flags (`training/arguments.py`) (model, dataset, recipe); prints one JSON line: the stage summary and the test
metrics.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from training import recipe as training_recipe
from training.arguments import load_model_and_processor, load_splits, parse_args
from training.data import VideoTextDataset
from training.evaluation import load_metric
from training.feature_cache import FrameFeatureCache

FROZEN_HEAD = [
    "use_dgl_prompts=False",
    "use_spatial_prompt=False",
    "use_temporal_prompt=False",
    "temporal_head=seqTransf",
]


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv + ["--output_dir", "unused", "--stop_config_overrides", *FROZEN_HEAD])
    torch.manual_seed(args.seed)
    _, raw = load_splits(args, False)
    model, processor = load_model_and_processor(args)
    recipe = training_recipe.resolve_args(args, model.config.variant)
    columns = {"video_column": args.video_column, "caption_column": args.caption_column}
    splits = {
        split: VideoTextDataset(
            raw[split],
            processor.video_processor,
            training=split == "train",
            sampling=args.frame_sampling,
            seed=args.seed,
            **columns,
        )
        for split in ("train", "validation", "test")
    }
    metric = load_metric("video_text_retrieval")
    start = time.time()
    summary = training_recipe.train_head_stage(
        model,
        processor,
        splits["train"],
        splits["validation"],
        args,
        recipe,
        metric,
        "cpu",
        cache_dir=args.feature_cache_dir,
        disable_progress=True,
    )
    cache = FrameFeatureCache.build(
        model, splits["test"], args.per_device_eval_batch_size, 0, args.feature_cache_dir, "cpu", True
    )
    results = training_recipe.evaluate_on_cache(model, processor, splits["test"], cache, metric, "cpu")
    report = {
        "summary": summary,
        "test": {k: v for k, v in results.items() if isinstance(v, (int, float))},
        "time": round(time.time() - start, 2),
    }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()

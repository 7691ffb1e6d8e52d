"""Evaluate a STOP model (or the frozen-CLIP baseline) on a video-text or a video-recognition dataset.

    python -m benchmarks.run_eval --model_name_or_path outputs/stop-synthetic --dataset_name data/synthetic \\
        --split test --output_json outputs/eval.json
    python -m benchmarks.run_eval --model_name_or_path checkpoints/clip-synthetic --baseline meanP ...
    python -m benchmarks.run_eval --model_name_or_path outputs/stop-msrvtt --dataset_name data/ucf101 \\
        --split test --task classification            # zero-shot recognition, prompt-ensembled class names
    accelerate launch -m benchmarks.run_eval ...      # several processes/GPUs split the gallery

Runs through `accelerate`: the model on the accelerator's device, `--mixed_precision no|bf16|fp16` autocast,
the gallery sharded across processes and gathered (`training/evaluation.py`). Each tower runs once per item
(batched, frames decoded in DataLoader workers); text-to-video ranks are computed in chunks, so a 10k x 10k
gallery never needs a dense matrix. `--task retrieval` reports T2V / V2T R@1/5/10, MdR, MnR (every caption is a
query), classification top-1/top-5 against the class names (when the split has labels), the reversed-pair
accuracy (when it has `pair_id`) and, labelled separately, the dual-softmax (DSL) post-processed numbers.
`--task classification` reports top-1/top-5 and mean per-class accuracy of zero-shot recognition, each class
embedded through every `--label_template` (normalised, averaged, renormalised, as CLIP's prompt ensembling).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from accelerate import Accelerator

from modeling_stop import STOPModel, STOPProcessor
from training.data import VideoTextCollator, VideoTextDataset, build_dataloader, class_names, load_video_text_dataset
from training.evaluation import (
    VIDEO_CLASS_TEMPLATES,
    embed_video_dataset,
    evaluate_classification,
    evaluate_retrieval,
)

RETRIEVAL_LABEL_TEMPLATE = "a video of {label}"


def load_model(model_name_or_path: str, baseline: str | None, num_frames: int, max_words: int):
    """A trained STOP folder, or a frozen CLIP wrapped as the zero-trainable-parameter baseline."""
    if baseline is None:
        return STOPModel.from_pretrained(model_name_or_path), STOPProcessor.from_pretrained(model_name_or_path)
    model = STOPModel.from_clip(
        model_name_or_path,
        num_frames=num_frames,
        max_words=max_words,
        use_dgl_prompts=False,
        use_spatial_prompt=False,
        use_temporal_prompt=False,
    )
    return model, STOPProcessor.from_clip(model_name_or_path, num_frames=num_frames, max_words=max_words)


def evaluate_model(model, processor, split, args, accelerator: Accelerator | None = None) -> dict:
    """The metrics of one split (`args`: the parsed flags of this script)."""
    accelerator = accelerator or Accelerator(mixed_precision=getattr(args, "mixed_precision", None))
    model = model.to(accelerator.device)
    is_classification = args.task == "classification"
    has_labels = args.label_column in split.column_names
    if is_classification and not has_labels:
        raise ValueError(
            f"--task classification: the split has no {args.label_column!r} column (columns: {split.column_names}); "
            "pass --label_column"
        )
    names = class_names({"split": split}, args.label_column) if has_labels else None
    dataset = VideoTextDataset(
        split,
        processor.video_processor,
        video_column=args.video_column,
        caption_column=None if is_classification else args.caption_column,
        label_column=args.label_column if has_labels else None,
        label_names=names,
    )
    loader = build_dataloader(
        dataset,
        VideoTextCollator(processor),
        batch_size=args.per_device_eval_batch_size,
        num_workers=args.dataloader_num_workers,
    )
    loader = accelerator.prepare(loader)
    templates = args.label_template or (VIDEO_CLASS_TEMPLATES if is_classification else [RETRIEVAL_LABEL_TEMPLATE])
    videos = embed_video_dataset(model, loader, accelerator, progress=True)  # once, for every metric below
    if is_classification:
        return evaluate_classification(model, processor, dataset, loader, names, templates, accelerator, videos=videos)
    results = evaluate_retrieval(
        model, processor, dataset, loader, accelerator, chunk_size=args.chunk_size, progress=True, videos=videos
    )
    if has_labels:
        classification = evaluate_classification(
            model, processor, dataset, loader, names, templates, accelerator, videos=videos
        )
        results.update({f"classification/{k}": v for k, v in classification.items() if k.endswith("accuracy")})
    return results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model_name_or_path", required=True, help="STOP folder / Hub id (or a CLIP one with --baseline)"
    )
    parser.add_argument("--baseline", choices=["meanP"], default=None, help="evaluate the frozen CLIP, mean-pooled")
    parser.add_argument("--dataset_name", required=True, help="a Hub dataset id, or a local videofolder / CSV / JSON")
    parser.add_argument("--dataset_config_name", default=None)
    parser.add_argument("--split", default="test")
    parser.add_argument("--task", choices=["retrieval", "classification"], default="retrieval")
    parser.add_argument("--video_column", default="video")
    parser.add_argument("--caption_column", default="caption", help="a string or a list of strings per video")
    parser.add_argument("--label_column", default="label")
    parser.add_argument(
        "--label_template",
        nargs="+",
        default=None,
        help="class name -> text, '{}' or '{label}' marks the name; several are averaged (prompt ensembling). "
        f"Default: {RETRIEVAL_LABEL_TEMPLATE!r} (retrieval), {len(VIDEO_CLASS_TEMPLATES)} action templates "
        "(classification)",
    )
    parser.add_argument("--num_frames", type=int, default=8, help="baseline only (a STOP folder knows its own)")
    parser.add_argument("--max_words", type=int, default=32, help="baseline only")
    parser.add_argument("--per_device_eval_batch_size", "--batch_size", type=int, default=16, help="videos per batch")
    parser.add_argument("--dataloader_num_workers", type=int, default=0, help="DataLoader processes decoding videos")
    parser.add_argument("--chunk_size", type=int, default=1024, help="texts per similarity chunk")
    parser.add_argument("--max_eval_samples", "--max_samples", type=int, default=None, help="truncate the split")
    parser.add_argument(
        "--mixed_precision",
        choices=["no", "fp16", "bf16"],
        default=None,
        help="default: what `accelerate launch` / `accelerate config` set",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_json", default=None)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    model, processor = load_model(args.model_name_or_path, args.baseline, args.num_frames, args.max_words)
    is_classification = args.task == "classification"
    with accelerator.main_process_first():
        data = load_video_text_dataset(
            args.dataset_name,
            args.dataset_config_name,
            video_column=args.video_column,
            caption_column=None if is_classification else args.caption_column,
            label_column=args.label_column if is_classification else None,
        )
    if args.split not in data:
        raise ValueError(f"{args.dataset_name} has no {args.split!r} split (splits: {list(data)}); pass --split")
    split = data[args.split]
    if args.max_eval_samples:
        split = split.select(range(min(args.max_eval_samples, len(split))))
    results = evaluate_model(model, processor, split, args, accelerator)
    report = {
        "model": args.model_name_or_path,
        "baseline": args.baseline,
        "variant": None if args.baseline else model.config.variant,
        "dataset": args.dataset_name,
        "split": args.split,
        "task": args.task,
        "seed": args.seed,
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "wall_time_s": round(time.perf_counter() - start, 2),
        "metrics": results,
    }
    if accelerator.is_main_process:
        write_report(report, args.output_json)
    return report


def write_report(report: dict, output_json: str | None) -> None:
    """Print a JSON report, and write it to `output_json` when given."""
    print(json.dumps(report, indent=1))
    if output_json:
        Path(output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(output_json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

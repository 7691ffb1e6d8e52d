"""Evaluate a STOP model (or the frozen-CLIP baseline) on a video-text dataset.

    python -m benchmarks.run_eval --model_name_or_path outputs/stop-synthetic --dataset_name data/synthetic \\
        --split test --output_json outputs/eval.json
    python -m benchmarks.run_eval --model_name_or_path checkpoints/clip-synthetic --baseline meanP ...

Each tower runs once per item (batched, frames decoded in DataLoader workers); text-to-video ranks are computed
in chunks (`benchmarks/ranking.py`), so a 10k x 10k gallery never needs a dense float64 matrix. Reported:
T2V / V2T R@1/5/10, MdR, MnR (every caption is a query), classification top-1/top-5 against the class names
through `--label_template` (when the split has labels), the reversed-pair accuracy (when it has `pair_id`), and,
labelled separately, the dual-softmax (DSL) post-processed retrieval numbers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.ranking import rank_of_targets
from modeling_stop import STOPModel, STOPProcessor
from training.data import (
    VideoTextCollator,
    VideoTextDataset,
    build_dataloader,
    class_names,
    load_video_text_dataset,
    split_pair_accuracy,
)
from training.train import embed_texts, embed_videos, load_metric

DSL_MAX_GALLERY = 5000  # the dual softmax needs the dense matrix


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


@torch.no_grad()
def evaluate_model(model, processor, split, args) -> dict:
    model.eval()
    has_labels = args.label_column in split.column_names
    names = class_names({"split": split}, args.label_column) if has_labels else None
    dataset = VideoTextDataset(
        split,
        processor.video_processor,
        video_column=args.video_column,
        caption_column=args.caption_column,
        label_column=args.label_column if has_labels else None,
        label_names=names,
    )
    loader = build_dataloader(
        dataset, VideoTextCollator(processor), batch_size=args.batch_size, num_workers=args.dataloader_num_workers
    )
    indices, video_embeds, failed = embed_videos(model, loader)
    position = {int(index): i for i, index in enumerate(indices)}
    texts, text_to_video = dataset.captions()
    keep = [t for t, v in enumerate(text_to_video) if v in position]
    text_embeds = embed_texts(model, processor, [texts[t] for t in keep])
    targets = [position[text_to_video[t]] for t in keep]

    results = {"num_videos": len(indices), "num_texts": len(keep), "num_failed": len(failed)}
    results.update(rank_of_targets(text_embeds, video_embeds, targets, chunk_size=args.chunk_size))
    if len(indices) <= DSL_MAX_GALLERY:
        sim = (text_embeds @ video_embeds.t()).numpy()
        dsl = load_metric("video_text_retrieval").compute(predictions=sim, references=targets, dsl=True)
        results.update({f"dsl/{k}": v for k, v in dsl.items()})
        results.update(split_pair_accuracy(sim, targets, indices, split))
    if has_labels:
        class_embeds = embed_texts(model, processor, [args.label_template.format(label=n) for n in names])
        labels = dataset.labels()
        scores = (video_embeds @ class_embeds.t()).numpy()
        classification = load_metric("video_classification").compute(
            predictions=scores, references=[labels[i] for i in indices]
        )
        classification.pop("per_class_accuracy", None)
        results.update({f"classification/{k}": v for k, v in classification.items()})
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name_or_path", required=True, help="STOP folder / Hub id (or a CLIP one with --baseline)")
    parser.add_argument("--baseline", choices=["meanP"], default=None, help="evaluate the frozen CLIP, mean-pooled")
    parser.add_argument("--dataset_name", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--video_column", default="video")
    parser.add_argument("--caption_column", default="caption")
    parser.add_argument("--label_column", default="label")
    parser.add_argument("--label_template", default="a video of {label}")
    parser.add_argument("--num_frames", type=int, default=8, help="baseline only (a STOP folder knows its own)")
    parser.add_argument("--max_words", type=int, default=32, help="baseline only")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--dataloader_num_workers", type=int, default=0)
    parser.add_argument("--chunk_size", type=int, default=1024, help="texts per similarity chunk")
    parser.add_argument("--max_samples", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_json", default=None)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    start = time.perf_counter()
    model, processor = load_model(args.model_name_or_path, args.baseline, args.num_frames, args.max_words)
    data = load_video_text_dataset(args.dataset_name, video_column=args.video_column, caption_column=args.caption_column)
    split = data[args.split]
    if args.max_samples:
        split = split.select(range(min(args.max_samples, len(split))))
    results = evaluate_model(model, processor, split, args)
    report = {
        "model": args.model_name_or_path,
        "baseline": args.baseline,
        "variant": None if args.baseline else model.config.variant,
        "dataset": args.dataset_name,
        "split": args.split,
        "seed": args.seed,
        "wall_time_s": round(time.perf_counter() - start, 2),
        "metrics": results,
    }
    print(json.dumps(report, indent=1))
    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()

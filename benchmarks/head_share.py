"""How much of a trained STOP model's retrieval comes from its temporal head and how much from STOP's own feature.

    python -m benchmarks.head_share --model_name_or_path OUT --dataset_name data/synthetic --split validation

A model with a temporal head embeds a video as `own + gate * head` (`own`: the prompted backbone's feature,
`prompt_video_embeds`; `head`: the seqTransf head on the frame features). This script embeds the split once and
scores `own + scale * gate * head` for several scales: 0 is STOP's own feature alone, 1 the model as trained, a large
scale the head alone. Prints one JSON report (T2V / V2T R@1, reversed-pair accuracy, twin cosine per scale, and the
mean norm ratio of the two parts); `--output_json` writes it.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.run_eval import write_report
from modeling_stop import STOPModel, STOPProcessor
from training.data import VideoTextCollator, VideoTextDataset, build_dataloader, load_video_text_dataset
from training.evaluation import evaluate_retrieval

SCALES = [0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 1000.0]
KEYS = ["t2v_R@1", "v2t_R@1", "pair_accuracy", "twin_cosine"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name_or_path", required=True, help="a trained STOP folder with a temporal head")
    parser.add_argument("--dataset_name", required=True)
    parser.add_argument("--split", default="validation")
    parser.add_argument("--video_column", default="video")
    parser.add_argument("--caption_column", default="caption")
    parser.add_argument("--scales", type=float, nargs="+", default=SCALES)
    parser.add_argument("--per_device_eval_batch_size", type=int, default=16)
    parser.add_argument("--output_json", default=None)
    return parser.parse_args(argv)


@torch.no_grad()
def split_features(model, loader) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """Dataset indices, STOP's own (unnormalised) features and the gated head's part, in loader order."""
    indices, own, head = [], [], []
    for batch in loader:
        if len(batch["indices"]) == 0:
            continue
        encoding = model.encode_video(batch["pixel_values"], batch["video_mask"])
        own.append(encoding.prompt_video_features.float())
        head.append(encoding.video_features.float() - own[-1])
        indices.append(batch["indices"])
    return np.asarray(torch.cat(indices).tolist(), dtype=np.int64), torch.cat(own), torch.cat(head)


def main(argv=None) -> dict:
    args = parse_args(argv)
    model = STOPModel.from_pretrained(args.model_name_or_path).eval()
    if model.temporal_head is None or model.prompt_generator is None:
        raise SystemExit(f"{args.model_name_or_path}: not a STOP model with a temporal head (nothing to share)")
    processor = STOPProcessor.from_pretrained(args.model_name_or_path)
    data = load_video_text_dataset(
        args.dataset_name, video_column=args.video_column, caption_column=args.caption_column
    )
    dataset = VideoTextDataset(
        data[args.split], processor.video_processor, video_column=args.video_column, caption_column=args.caption_column
    )
    loader = build_dataloader(dataset, VideoTextCollator(processor), batch_size=args.per_device_eval_batch_size)
    indices, own, head = split_features(model, loader)
    report = {
        "model": args.model_name_or_path,
        "dataset": args.dataset_name,
        "split": args.split,
        "temporal_gate": float(model.temporal_gate.detach()),
        "head_to_own_norm_ratio": float(head.norm(dim=-1).mean() / own.norm(dim=-1).mean()),
        "scales": {},
    }
    for scale in args.scales:
        videos = (indices, F.normalize(own + scale * head, dim=-1), [])
        results = evaluate_retrieval(model, processor, dataset, None, videos=videos)
        report["scales"][str(scale)] = {k: results.get(k) for k in KEYS}
    write_report(report, args.output_json)
    return report


if __name__ == "__main__":
    main()

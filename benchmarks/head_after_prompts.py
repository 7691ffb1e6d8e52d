"""The recipe in the other order: STOP's prompts trained first (a model without a head), a temporal head after.

    python -m benchmarks.head_after_prompts --model_name_or_path OUT --dataset_name data/synthetic \\
        --output_json outputs/head_after_prompts.json [--head_input frozen|prompted] [--text fixed|adapters]

`OUT` is a trained STOP model without a temporal head (e.g. the `stop-paper` row of `benchmarks.run_table`). The
script adds a CLIP4Clip seqTransf head and embeds every video of the train, validation and test splits once
through the trained prompts: STOP's own video feature and the frame features the head reads (`--head_input
frozen`: the frozen CLIP's, as the default recipe; `prompted`: the CLS tokens of the prompted backbone). It then
trains the head and its gate (and, with `--text adapters`, the text adapters, which do not change the video side)
with the recipe's stage-1 loss and hard-negative batches on those cached features, for `--steps` steps; the video
feature is `own + gate * head` (`--form sum`, the gate set at `--gate_ratio` times STOP's own norm) or the head
alone (`--form head`). The state with the best validation `selection_score` is kept and scored on the test split.
Prints one JSON report; `--output_dir` also saves the model.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from transformers import get_scheduler

from benchmarks.head_share import KEYS
from benchmarks.run_eval import write_report
from modeling_stop import STOPConfig, STOPModel, STOPProcessor, clip_loss
from training.data import (
    VideoTextCollator,
    VideoTextDataset,
    build_dataloader,
    load_video_text_dataset,
    neighbour_pair_order,
)
from training.evaluation import evaluate_retrieval
from training.feature_cache import FrameFeatureCache
from training.recipe import _caption_lists, _text_table, _tokenize, cache_neighbours, selection_score


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name_or_path", required=True, help="a trained STOP folder without a temporal head")
    parser.add_argument("--dataset_name", required=True)
    parser.add_argument("--video_column", default="video")
    parser.add_argument("--caption_column", default="caption")
    parser.add_argument("--head_input", choices=["frozen", "prompted"], default="frozen")
    parser.add_argument("--text", choices=["fixed", "adapters"], default="adapters")
    parser.add_argument("--form", choices=["sum", "head"], default="sum")
    parser.add_argument("--gate_ratio", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--eval_every", type=int, default=250)
    parser.add_argument("--per_device_eval_batch_size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_json", default=None)
    parser.add_argument("--output_dir", default=None, help="also save the model with its head here")
    return parser.parse_args(argv)


class SplitFeatures:
    """Dataset indices, STOP's own video features, the head's frame features and masks of one split, and the videos
    that failed to decode (left out, with their captions)."""

    def __init__(self, dataset, indices, own, frames, video_mask, failed):
        self.dataset, self.indices, self.own, self.frames, self.video_mask = dataset, indices, own, frames, video_mask
        self.failed = failed


@torch.no_grad()
def embed_split(model, processor, data, args) -> SplitFeatures:
    dataset = VideoTextDataset(
        data, processor.video_processor, video_column=args.video_column, caption_column=args.caption_column
    )
    loader = build_dataloader(dataset, VideoTextCollator(processor), batch_size=args.per_device_eval_batch_size)
    seen = {}  # the head's input, as `encode_video` computes it (the prompted CLS tokens are not an output)
    hook = model.temporal_head.register_forward_hook(lambda module, inputs, output: seen.update(frames=inputs[0]))
    indices, own, frames, masks, failed = [], [], [], [], []
    try:
        for batch in loader:
            failed += batch["failed"]
            if len(batch["indices"]) == 0:
                continue
            encoding = model.encode_video(batch["pixel_values"], batch["video_mask"])
            own.append(encoding.prompt_video_features.float())
            frames.append(seen["frames"].float())
            masks.append(batch["video_mask"])
            indices += batch["indices"].tolist()
    finally:
        hook.remove()
    if not indices:
        raise ValueError(f"{args.dataset_name}: no video of the split could be decoded ({len(failed)} failed)")
    return SplitFeatures(
        dataset, np.asarray(indices, dtype=np.int64), torch.cat(own), torch.cat(frames), torch.cat(masks), failed
    )


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    start = time.time()
    config = STOPConfig.from_pretrained(args.model_name_or_path)
    if config.temporal_head != "none" or not config.use_dgl_prompts:
        raise SystemExit(
            f"{args.model_name_or_path}: not a STOP model without a temporal head (temporal_head="
            f"{config.temporal_head!r}, use_dgl_prompts={config.use_dgl_prompts}); train one with the stop-paper row"
        )
    if args.output_dir and args.form != "sum":
        raise SystemExit("--output_dir saves the model as it embeds a video (own + gate * head): use --form sum")
    model = STOPModel.from_pretrained(
        args.model_name_or_path, temporal_head="seqTransf", temporal_head_input=args.head_input
    ).eval()
    processor = STOPProcessor.from_pretrained(args.model_name_or_path)
    data = load_video_text_dataset(
        args.dataset_name, video_column=args.video_column, caption_column=args.caption_column
    )
    splits = {name: embed_split(model, processor, data[name], args) for name in ("train", "validation", "test")}
    embed_time = time.time() - start
    train = splits["train"]
    head, gate = model.temporal_head, model.temporal_gate
    with torch.no_grad():
        ratio = train.own.norm(dim=-1).mean() / head(train.frames, train.video_mask).norm(dim=-1).mean()
        gate.fill_(float(args.gate_ratio * ratio))
    params = (
        list(head.parameters()) + [gate] + (list(model.text_adapters.parameters()) if args.text == "adapters" else [])
    )
    trainable = {id(p) for p in params}
    for param in model.parameters():
        param.requires_grad_(id(param) in trainable)
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=args.steps // 10, num_training_steps=args.steps)
    generator = torch.Generator().manual_seed(args.seed)
    logit_scale = model.clip.logit_scale.exp().detach()
    all_captions = _caption_lists(train.dataset)
    captions = [all_captions[i] for i in train.indices]  # by row of the cached features
    text_table = _text_table(model, processor, captions, model.device) if args.text == "fixed" else None
    neighbours = cache_neighbours(FrameFeatureCache(train.frames, train.video_mask, []), 8)

    def video_features(split: SplitFeatures, rows=slice(None)) -> torch.Tensor:
        out = head(split.frames[rows], split.video_mask[rows])
        return F.normalize(out if args.form == "head" else split.own[rows] + gate * out, dim=-1)

    def evaluate(name: str) -> dict:
        split = splits[name]
        model.eval()
        with torch.no_grad():
            results = evaluate_retrieval(
                model, processor, split.dataset, None, videos=(split.indices, video_features(split), [])
            )
        model.train()
        return results

    history, best, best_key, order = [], None, None, []
    model.train()
    for step in range(1, args.steps + 1):
        if len(order) < args.batch_size:
            order = neighbour_pair_order(neighbours, generator)
        rows, order = torch.tensor(order[: args.batch_size]), order[args.batch_size :]
        texts = [captions[r][int(torch.randint(len(captions[r]), (1,), generator=generator))] for r in rows.tolist()]
        video = video_features(train, rows)
        if text_table is None:
            text = F.normalize(model.get_text_features(**_tokenize(processor, texts, model.device)), dim=-1)
        else:
            text = text_table[1][[text_table[0][t] for t in texts]]
        logits = logit_scale * text @ video.t()
        loss = clip_loss(logits)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {step}: non-finite loss {loss.item()} (lower --learning_rate)")
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        if step % args.eval_every == 0 or step == args.steps:
            results = evaluate("validation")
            key = selection_score(results)
            history.append({"step": step, "loss": loss.item(), **{k: results.get(k) for k in KEYS}})
            if best_key is None or key > best_key:
                best_key = key
                best = {n: p.detach().clone() for n, p in model.named_parameters() if id(p) in trainable}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in best:
                param.copy_(best[name])
    test = evaluate("test")
    report = {
        "model": args.model_name_or_path,
        "dataset": args.dataset_name,
        "args": {k: v for k, v in vars(args).items() if k not in ("output_json", "output_dir")},
        "validation": history,
        "test": {k: test.get(k) for k in KEYS},
        "num_failed": {name: len(split.failed) for name, split in splits.items()},
        "temporal_gate": float(gate.detach()),
        "embed_time": round(embed_time, 2),
        "runtime": round(time.time() - start, 2),
    }
    if args.output_dir:
        model.save_pretrained(args.output_dir)
        processor.save_pretrained(args.output_dir)
    write_report(report, args.output_json)
    return report


if __name__ == "__main__":
    main()

"""End-to-end throughput: real video files -> processor (decode, resize, crop, normalise) in DataLoader workers ->
STOP, as `training.gallery` embeds a collection (`--mode embed`) or as `training/train.py` trains (`--mode train`).

The folder's videos (by default the four sample videos of `python -m training.fetch_samples`, 176x144 to 1280x720)
are repeated to `--num_videos` items and read through the same `VideoTextDataset`, `VideoTextCollator` and
`build_dataloader` the package uses, with `--num_workers` decoding processes. Reported:

- videos/s over the timed loop (wall clock from the first `next(loader)` to the last result, worker start-up
  included);
- the main process's wall time split into *DataLoader wait* (blocked in `next(loader)`), *model* (the embedding
  forward, or the training step: forward with the loss, backward, AdamW) and the rest;
- the workers' busy time per video split into *decoding* (`read_video_frames`, which resizes each decoded frame at
  once: "decode + resize") and *preprocessing* (`frames_to_pixel_values`: crop, scale, normalise), and the same
  split measured once per distinct video in the main process with the resize timed apart (`decode_profile`).

The model is STOP at CLIP ViT-B/32 geometry with random weights (`--variant`; timings do not depend on the weights)
or a saved STOP folder (`--model`). In `--mode train` the captions are random token ids of `--max_words` (the text
tower's cost does not depend on the words).

    python -m benchmarks.throughput --output benchmarks/results/throughput_cpu.json
    python -m benchmarks.throughput --mode train --output benchmarks/results/throughput_train_cpu.json
    python -m benchmarks.throughput --tiny --num_videos 8      # seconds: tiny CLIP at 32 px
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.speed import BACKBONE, MODELS, TINY_PROMPTERS, clip_geometry
from modeling_stop import STOPConfig, STOPModel, STOPVideoProcessor
from modeling_stop.video_io import read_video_frames, resize_shortest_edge
from training.data import VideoTextCollator, VideoTextDataset, build_dataloader

DEFAULT_VIDEO_DIR = Path(".cache/sample_videos")
# Defaults chosen on the 2-core machine: two decoding workers keep the DataLoader wait far below the model's time
# at 224 px (a ViT-B/32 STOP forward of 12 frames costs more than decoding them), batches of 4 videos.
DEFAULT_NUM_WORKERS = 2
DEFAULT_BATCH_SIZE = 4
# --variant: how the report names each choice; its STOPConfig options are those of benchmarks.speed.MODELS
# (BACKBONE: the frozen CLIP with mean pooling, no prompt module at all).
VARIANT_NAMES = {
    "paper": "STOP variant=paper",
    "official": "STOP variant=official",
    BACKBONE: "frozen CLIP + mean pooling",
}


class TimedVideoProcessor(STOPVideoProcessor):
    """The video processor, timing its crop/normalise step (everything else of a call is decoding + resizing)."""

    preprocess_seconds = 0.0

    def frames_to_pixel_values(self, frames: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = super().frames_to_pixel_values(frames)
        self.preprocess_seconds += time.perf_counter() - start
        return out


class TimedVideoDataset(VideoTextDataset):
    """`VideoTextDataset` whose items also carry the worker time spent on them: `(decode + resize, preprocess)`."""

    def __getitem__(self, index: int) -> dict:
        before = self.video_processor.preprocess_seconds
        start = time.perf_counter()
        item = super().__getitem__(index)
        total = time.perf_counter() - start
        preprocess = self.video_processor.preprocess_seconds - before
        item["timing"] = (total - preprocess, preprocess)
        return item


class TimedCollator(VideoTextCollator):
    """Collates as the package does, keeps the items' timings, adds random captions in training mode."""

    def __init__(self, processor, captions: torch.Tensor | None = None):
        super().__init__(processor)
        self.captions = captions

    def __call__(self, items: list[dict]) -> dict:
        timings = [item.pop("timing") for item in items]
        batch = super().__call__(items)
        batch["timings"] = timings
        if self.captions is not None and "pixel_values" in batch:
            n = len(batch["pixel_values"])
            batch["input_ids"] = self.captions[:n]
            batch["attention_mask"] = torch.ones_like(batch["input_ids"])
        return batch


def build_model(args) -> STOPModel:
    if args.model:
        return STOPModel.from_pretrained(args.model)
    torch.manual_seed(args.seed)
    config = STOPConfig(
        **clip_geometry(args.tiny),
        num_frames=args.frames,
        max_words=args.max_words,
        **MODELS[args.variant],
        **(TINY_PROMPTERS if args.tiny else {}),
    )
    return STOPModel(config)


def video_files(video_dir: Path, num_videos: int) -> list[str]:
    files = sorted(str(p) for p in video_dir.glob("*.mp4"))
    if not files:
        raise SystemExit(
            f"no .mp4 files in {video_dir}: run `python -m training.fetch_samples --output_dir {video_dir}` "
            "or pass --video_dir"
        )
    return [files[i % len(files)] for i in range(num_videos)]


def decode_profile(files: list[str], processor: STOPVideoProcessor) -> list[dict]:
    """Per distinct video, in this process: decoding alone, resizing alone, crop + normalise alone (seconds)."""
    rows = []
    for path in sorted(set(files)):
        start = time.perf_counter()
        frames, _ = read_video_frames(path, processor.num_frames)
        decode = time.perf_counter() - start
        start = time.perf_counter()
        resized = resize_shortest_edge(frames, processor.size)
        resize = time.perf_counter() - start
        start = time.perf_counter()
        processor.frames_to_pixel_values(resized)
        crop = time.perf_counter() - start
        rows.append(
            dict(
                video=Path(path).name,
                size=f"{frames.shape[2]}x{frames.shape[1]}",
                frames=len(frames),
                decode_s=round(decode, 4),
                resize_s=round(resize, 4),
                crop_normalise_s=round(crop, 4),
            )
        )
    return rows


def run(args) -> dict:
    files = video_files(Path(args.video_dir), args.num_videos)
    processor = TimedVideoProcessor(num_frames=args.frames, size=args.image_size)
    from datasets import Dataset

    split = Dataset.from_dict({"video": files})
    dataset = TimedVideoDataset(
        split,
        processor,
        video_column="video",
        caption_column=None,
        training=args.mode == "train",
        sampling="random" if args.mode == "train" else "uniform",
        seed=args.seed,
    )
    model = build_model(args)
    captions = None
    if args.mode == "train":
        text = model.config.text_config
        gen = torch.Generator().manual_seed(args.seed)
        captions = torch.randint(1, text.vocab_size - 2, (args.batch_size, args.max_words), generator=gen)
        captions[:, 0], captions[:, -1] = text.bos_token_id, text.eos_token_id
    loader = build_dataloader(
        dataset,
        TimedCollator(processor, captions),
        batch_size=args.batch_size,
        shuffle=args.mode == "train",
        drop_last=False,
        seed=args.seed,
        num_workers=args.num_workers,
    )
    if args.mode == "train":
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

        def step(batch):
            optimizer.zero_grad(set_to_none=True)
            out = model(
                input_ids=batch["input_ids"],
                pixel_values=batch["pixel_values"],
                video_mask=batch["video_mask"],
                return_loss=True,
            )
            out.loss.backward()
            optimizer.step()
    else:
        model.eval()

        def step(batch):
            with torch.inference_mode():
                model.get_video_features(batch["pixel_values"], batch["video_mask"])

    waits, steps, worker_decode, worker_pre, failed = [], [], [], [], []
    videos = 0
    iterator = iter(loader)
    started = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            waits.append(time.perf_counter() - t0)  # the end of the loader (workers shutting down)
            break
        waits.append(time.perf_counter() - t0)
        failed += batch["failed"]
        for decode, pre in batch["timings"]:
            worker_decode.append(decode)
            worker_pre.append(pre)
        if "pixel_values" not in batch:
            continue
        t0 = time.perf_counter()
        step(batch)
        steps.append(time.perf_counter() - t0)
        videos += len(batch["pixel_values"])
    wall = time.perf_counter() - started
    wait, model_s = sum(waits), sum(steps)
    result = dict(
        command="python -m benchmarks.throughput " + " ".join(sys.argv[1:] if args.argv is None else args.argv),
        mode=args.mode,
        model=args.model
        or VARIANT_NAMES[args.variant] + (", tiny CLIP" if args.tiny else ", CLIP ViT-B/32 geometry, random weights"),
        settings=dict(
            num_videos=args.num_videos,
            distinct_videos=len(set(files)),
            frames=args.frames,
            image_size=args.image_size,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            torch_threads=torch.get_num_threads(),
            cpu_count=os.cpu_count(),
        ),
        loadavg_start=args.loadavg_start,
        loadavg_end=list(os.getloadavg()),
        videos=videos,
        failed=failed,
        wall_s=round(wall, 4),  # 4 places: a tiny run lasts a fraction of a second
        videos_per_s=round(videos / wall, 3),
        main_process=dict(
            dataloader_wait_s=round(wait, 2),
            dataloader_wait_share=round(wait / wall, 4),
            first_batch_wait_s=round(waits[0], 2),
            model_s=round(model_s, 2),
            model_share=round(model_s / wall, 4),
            other_share=round(max(wall - wait - model_s, 0.0) / wall, 4),
            model_s_per_batch_median=round(statistics.median(steps), 3) if steps else None,
        ),
        workers=dict(
            decode_resize_s_per_video=round(statistics.mean(worker_decode), 4) if worker_decode else None,
            preprocess_s_per_video=round(statistics.mean(worker_pre), 4) if worker_pre else None,
            decode_resize_s_total=round(sum(worker_decode), 2),
            preprocess_s_total=round(sum(worker_pre), 2),
            note="busy time of the decoding workers (run beside the model on the same cores)",
        ),
        shares_of_work=dict(  # where the CPU time of the whole pipeline goes (worker busy time + model time)
            decoding=round(sum(worker_decode) / (sum(worker_decode) + sum(worker_pre) + model_s), 4),
            preprocessing=round(sum(worker_pre) / (sum(worker_decode) + sum(worker_pre) + model_s), 4),
            model=round(model_s / (sum(worker_decode) + sum(worker_pre) + model_s), 4),
        ),
        decode_profile=decode_profile(files, processor) if args.decode_profile else None,
        target=dict(dataloader_wait_share_max=0.2),
    )
    result["target"]["met"] = result["main_process"]["dataloader_wait_share"] < 0.2
    return result


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=("embed", "train"), default="embed")
    parser.add_argument("--video_dir", default=str(DEFAULT_VIDEO_DIR))
    parser.add_argument("--num_videos", type=int, default=32, help="items: the folder's videos repeated")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--num_workers", type=int, default=DEFAULT_NUM_WORKERS, help="DataLoader decoding processes")
    parser.add_argument("--variant", choices=tuple(VARIANT_NAMES), default="paper")
    parser.add_argument("--model", default=None, help="a saved STOP folder instead of the random ViT-B/32 geometry")
    parser.add_argument("--max_words", type=int, default=32)
    parser.add_argument("--tiny", action="store_true", help="tiny CLIP at 32 px (tests)")
    parser.add_argument("--decode_profile", type=int, choices=(0, 1), default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if args.tiny:
        args.image_size = 32
        if args.frames == 12:
            args.frames = 4
    args.argv = argv
    args.loadavg_start = list(os.getloadavg())
    return args


def main(argv=None):
    args = parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=1))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()

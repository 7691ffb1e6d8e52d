"""Index a video collection for text search: embed every video once, save a `datasets.Dataset` with an
`embedding` column, and build a FAISS index over it.

    python -m training.gallery --model_name_or_path checkpoints/stop-synthetic \\
        --dataset_name data/synthetic --split test --output_dir outputs/gallery
    accelerate launch -m training.gallery ...      # several processes/GPUs/nodes: shards are split between them

The work is cut into shards of `--shard_size` videos, each written atomically when done, so an interrupted run
started again continues where it stopped. Videos that fail to decode are skipped and listed in `failed.json`.
Query it with `search_gallery` (or `Dataset.get_nearest_examples`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from datasets import Dataset, load_from_disk
from tqdm.auto import tqdm

from modeling_stop import STOPModel, STOPProcessor

from .data import VideoTextCollator, VideoTextDataset, build_dataloader, load_video_text_dataset

EMBEDDING_COLUMN = "embedding"


def _shard_path(output_dir: Path, shard: int) -> Path:
    return output_dir / "shards" / f"shard_{shard:05d}.npz"


def _write_atomic_npz(path: Path, **arrays):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    os.close(fd)
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


@torch.inference_mode()
def embed_shards(
    model: STOPModel,
    processor: STOPProcessor,
    dataset: VideoTextDataset,
    output_dir: str | Path,
    shard_size: int = 256,
    batch_size: int = 8,
    num_workers: int = 0,
    accelerator: Accelerator | None = None,
) -> list[int]:
    """Embed the videos of `dataset` into `output_dir/shards/*.npz` (indices, normalised embeddings, failures),
    skipping shards already written. Shards are split between the processes of `accelerator`. Returns the shards
    this process wrote."""
    accelerator = accelerator or Accelerator()
    output_dir = Path(output_dir)
    num_shards = math.ceil(len(dataset) / shard_size)
    todo = [s for s in range(num_shards) if not _shard_path(output_dir, s).exists()]
    written = []
    model = model.to(accelerator.device).eval()
    collate = VideoTextCollator(processor)
    with accelerator.split_between_processes(todo) as mine:
        for shard in tqdm(mine, desc="Embedding shards", disable=not accelerator.is_local_main_process):
            indices = list(range(shard * shard_size, min((shard + 1) * shard_size, len(dataset))))
            subset = torch.utils.data.Subset(dataset, indices)
            loader = build_dataloader(subset, collate, batch_size=batch_size, num_workers=num_workers)
            rows, embeds, failed = [], [], []
            for batch in loader:
                failed += batch["failed"]
                if "pixel_values" not in batch:
                    continue
                features = model.get_video_features(
                    batch["pixel_values"].to(accelerator.device), batch["video_mask"].to(accelerator.device)
                )
                embeds.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy())
                rows += batch["indices"].tolist()  # row numbers of the split
            dim = model.config.projection_dim
            _write_atomic_npz(
                _shard_path(output_dir, shard),
                indices=np.asarray(rows, dtype=np.int64),
                embeddings=np.concatenate(embeds) if embeds else np.zeros((0, dim), np.float32),
                failed=np.asarray(failed, dtype=str),
            )
            written.append(shard)
    accelerator.wait_for_everyone()
    return written


def assemble_gallery(split, output_dir: str | Path, num_shards: int, keep_columns: list[str]) -> Dataset:
    """Join the shards into a `Dataset` (the split's `keep_columns` + `embedding`) saved in `output_dir/dataset`."""
    output_dir = Path(output_dir)
    indices, embeds, failed = [], [], []
    for shard in range(num_shards):
        with np.load(_shard_path(output_dir, shard)) as data:
            indices.append(data["indices"])
            embeds.append(data["embeddings"])
            failed += data["failed"].tolist()
    indices = np.concatenate(indices)
    gallery = split.select(indices.tolist()).select_columns(keep_columns)
    gallery = gallery.add_column(EMBEDDING_COLUMN, list(np.concatenate(embeds).astype(np.float32)))
    gallery.save_to_disk(str(output_dir / "dataset"))
    (output_dir / "failed.json").write_text(json.dumps(failed, indent=1))
    return gallery


def add_index(gallery: Dataset, output_dir: str | Path | None = None) -> Dataset:
    """Inner-product FAISS index over the normalised embeddings (= cosine), saved beside the dataset."""
    import faiss

    gallery.add_faiss_index(column=EMBEDDING_COLUMN, metric_type=faiss.METRIC_INNER_PRODUCT)
    if output_dir is not None:
        gallery.save_faiss_index(EMBEDDING_COLUMN, str(Path(output_dir) / "embedding.faiss"))
    return gallery


def load_gallery(output_dir: str | Path) -> Dataset:
    """A saved gallery with its FAISS index attached."""
    gallery = load_from_disk(str(Path(output_dir) / "dataset"))
    gallery.load_faiss_index(EMBEDDING_COLUMN, str(Path(output_dir) / "embedding.faiss"))
    return gallery


@torch.inference_mode()
def search_gallery(gallery: Dataset, model: STOPModel, processor: STOPProcessor, query: str, k: int = 5):
    """`(scores, examples)` of the k videos nearest to a text query (cosine similarity)."""
    inputs = processor(text=[query], return_tensors="pt", padding=True)
    text = torch.nn.functional.normalize(model.get_text_features(inputs["input_ids"].to(model.device)), dim=-1)
    return gallery.get_nearest_examples(EMBEDDING_COLUMN, text[0].float().cpu().numpy(), k=k)


def build_gallery(args) -> Dataset | None:
    accelerator = Accelerator()
    model = STOPModel.from_pretrained(args.model_name_or_path)
    processor = STOPProcessor.from_pretrained(args.model_name_or_path)
    data = load_video_text_dataset(args.dataset_name, video_column=args.video_column, caption_column=None)
    split = data[args.split]
    if args.max_samples:
        split = split.select(range(min(args.max_samples, len(split))))
    dataset = VideoTextDataset(split, processor.video_processor, video_column=args.video_column, caption_column=None)
    embed_shards(model, processor, dataset, args.output_dir, args.shard_size, args.batch_size, args.num_workers, accelerator)
    if not accelerator.is_main_process:
        return None
    keep = [c for c in split.column_names if c != args.video_column] + [args.video_column]
    gallery = assemble_gallery(split, args.output_dir, math.ceil(len(split) / args.shard_size), keep)
    return add_index(gallery, args.output_dir)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name_or_path", required=True, help="a STOP folder or Hub id (model + processor)")
    parser.add_argument("--dataset_name", required=True, help="Hub dataset id or local folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--video_column", default="video")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--shard_size", type=int, default=256, help="videos per resumable shard")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--num_workers", type=int, default=2, help="DataLoader processes decoding videos")
    parser.add_argument("--max_samples", type=int, default=None)
    args = parser.parse_args(argv)
    gallery = build_gallery(args)
    if gallery is not None:
        print(f"indexed {len(gallery)} videos into {args.output_dir}")


if __name__ == "__main__":
    main()

"""Training fast path for models whose trainable modules all sit after the frozen backbone.

When `model.uses_frozen_frame_features` (frozen CLIP + temporal head: CLIP4Clip-seqTransf), every step would
recompute the same frozen per-frame CLIP features. `FrameFeatureCache` computes them once per video and frame
sampling (uniform sampling: the frames are the same every epoch), in memory and optionally on disk keyed by the
model's frozen weights, the split's fingerprint and the sampling, and `CachedFeatureDataset` trains on them: the
same loss as the uncached path, without decoding or running the ViT again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .data import VideoTextCollator, VideoTextDataset, _sample_seed, build_dataloader


def cache_key(model, dataset: VideoTextDataset, view: int = 0) -> str:
    """Fingerprint of (frozen backbone weights, split content, frame sampling, view)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.clip.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes()[:4096])  # a prefix per tensor is enough
    processor = dataset.video_processor
    digest.update(
        json.dumps(
            {
                "fingerprint": dataset.dataset._fingerprint,
                "num_frames": processor.num_frames,
                "size": processor.size,
                "sampling": "uniform" if view == 0 else f"random/{dataset.seed}/{view}",
            },
            sort_keys=True,
            default=str,
        ).encode()
    )
    return digest.hexdigest()[:16]


class FrameFeatureCache:
    """Frozen per-frame features `[N, T, E]` and masks `[N, T]` of every video of a split: uniform sampling (view 0)
    or, for view `v > 0`, one random frame inside each segment drawn per (dataset seed, `v`, video)."""

    def __init__(self, features: torch.Tensor, video_mask: torch.Tensor, failed: list[str]):
        self.features, self.video_mask, self.failed = features, video_mask, failed

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        model,
        dataset: VideoTextDataset,
        batch_size: int = 32,
        num_workers: int = 0,
        cache_dir: str | Path | None = None,
        device=None,
        disable_progress: bool = False,
        view: int = 0,
    ) -> FrameFeatureCache:
        path = Path(cache_dir) / f"frame_features-{cache_key(model, dataset, view)}.pt" if cache_dir else None
        if path is not None and path.exists():
            data = torch.load(path, weights_only=True)
            return cls(data["features"], data["video_mask"], data["failed"])
        eval_view = VideoTextDataset(
            dataset.dataset,
            dataset.video_processor,
            video_column=dataset.video_column,
            caption_column=None,
            label_column=None,
            training=view > 0,
            sampling="random" if view > 0 else "uniform",
            seed=dataset.seed,
        )
        eval_view.set_epoch(view)
        loader = build_dataloader(eval_view, VideoTextCollator(None), batch_size, num_workers=num_workers)
        n, t = len(eval_view), dataset.video_processor.num_frames
        features = mask = None
        failed = []
        model.eval()
        desc = "Caching frozen frame features" + (f" (random frames, view {view})" if view else "")
        for batch in tqdm(loader, desc=desc, disable=disable_progress):
            failed += batch["failed"]
            if len(batch["indices"]) == 0:
                continue
            frames = model.get_frame_features(batch["pixel_values"].to(device or model.device)).float().cpu()
            if features is None:
                features = torch.zeros(n, t, frames.shape[-1])
                mask = torch.zeros(n, t, dtype=torch.long)
            features[batch["indices"]] = frames
            mask[batch["indices"]] = batch["video_mask"]
        cache = cls(features, mask, failed)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save({"features": features, "video_mask": mask, "failed": failed}, tmp)
            tmp.replace(path)
        return cache


class CachedFeatureDataset(torch.utils.data.Dataset):
    """`VideoTextDataset`'s training items with cached `frame_features` in place of decoded pixels: the caption
    drawn per (seed, epoch, index) exactly as the decoding dataset draws it. Videos that failed to decode when the
    cache was built come back as failed items."""

    def __init__(self, dataset: VideoTextDataset, cache: FrameFeatureCache):
        self.dataset, self.cache = dataset, cache
        self.valid = cache.video_mask.sum(-1) > 0

    def set_epoch(self, epoch: int):
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        if not self.valid[index]:
            return {"index": index, "error": f"{self.dataset.video_name(index)}: failed to decode (see cache build)"}
        item = {
            "index": index,
            "frame_features": self.cache.features[index],
            "video_mask": self.cache.video_mask[index],
        }
        ds = self.dataset
        row = ds.dataset[index]
        if ds.caption_column is not None:
            captions = row[ds.caption_column]
            if not isinstance(captions, str):
                generator = torch.Generator().manual_seed(_sample_seed(ds.seed, ds.epoch, index))
                captions = captions[int(torch.randint(len(captions), (1,), generator=generator))]
            item["caption"] = captions
        if ds.label_column is not None:
            item["label"] = ds._label(row[ds.label_column])
        return item


class CachedFeatureCollator(VideoTextCollator):
    """`VideoTextCollator` for cached items: stacks `frame_features` in place of `pixel_values`."""

    def __call__(self, items: list[dict]) -> dict:
        as_pixels = [item if "error" in item else {**item, "pixel_values": item["frame_features"]} for item in items]
        batch = super().__call__(as_pixels)
        if "pixel_values" in batch:
            batch["frame_features"] = batch.pop("pixel_values")
        return batch

"""Training from a streamed dataset (`datasets.IterableDataset`): a Hub dataset, or local WebDataset tar shards.

    accelerate launch training/train.py --streaming --dataset_name shards/ --max_train_steps 1000 ...

`shards/` holds `train/*.tar` (or `train-*.tar`), optionally `validation/*.tar` and `test/*.tar`; each sample of
a shard is a video (`KEY.mp4`, or another video extension) and its fields in `KEY.json` (e.g. `{"caption": ...}`)
or `KEY.txt` (the caption), read through `load_dataset("webdataset", data_files=..., streaming=True)`. Only the
train split streams; validation and test are read as ordinary (map-style) datasets, as evaluation needs every
caption and video of the split.

The order of an epoch is a pure function of (seed, epoch): `IterableDataset.shuffle` shuffles the shards and
then the samples within a buffer of `--shuffle_buffer_size` rows, both from a generator seeded by the seed and
the epoch. `datasets` does not save a shuffle buffer's state, so a resumed run replays the epoch's stream from
its start and drops the rows the checkpoint had already consumed, without decoding them. The stream is read in
the main process only (`StreamSampler`, rows handed to the DataLoader like indices): DataLoader workers decode
(the same `VideoTextDataset.decode` as the map-style path: same frames, same caption draws, same bad-video
items), and the order never depends on the number of workers. Rows are cut into groups of one global batch
(`batch size x processes`); each process takes its slice of each group, and an incomplete last group is dropped
on every process, so all processes run the same number of steps.
"""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate.utils import send_to_device
from datasets import DatasetDict, IterableDataset, Video, load_dataset
from torch.utils.data import DataLoader, Sampler

from .data import (
    CAPTION_FIX,
    SPLIT_ALIASES,
    VideoTextDataset,
    caption_problem,
    load_video_text_dataset,
)

VIDEO_EXTENSIONS = ("mp4", "webm", "mkv", "avi", "mov", "m4v")


def webdataset_shards(root: Path) -> dict[str, list[str]]:
    """`{split: [tar files]}` of a local folder: `SPLIT/*.tar` or `SPLIT-*.tar` (or `SPLIT_*.tar`); loose `*.tar`
    files without a split prefix are train shards."""
    shards = {}
    for canonical, aliases in SPLIT_ALIASES.items():
        for name in aliases:
            files = sorted(root.glob(f"{name}/*.tar")) + sorted(root.glob(f"{name}[-_]*.tar"))
            if files:
                shards[canonical] = [str(f) for f in files]
                break
    if "train" not in shards:
        known = {f for files in shards.values() for f in files}
        loose = [str(f) for f in sorted(root.glob("*.tar")) if str(f) not in known]
        if loose:
            shards["train"] = loose
    return shards


def flatten_row(row: dict, video_column: str) -> dict:
    """A WebDataset sample as a flat row: the fields of its `json` member lifted to columns, a `txt` member as the
    `caption`, and the video member (by extension) as `video_column`."""
    out = {k: v for k, v in row.items() if k not in ("json", "txt")}
    if isinstance(row.get("json"), dict):
        out.update(row["json"])
    if "txt" in row and "caption" not in out:
        out["caption"] = row["txt"]
    if video_column not in out:
        for ext in VIDEO_EXTENSIONS:
            if ext in out:
                out[video_column] = out.pop(ext)
                break
    return out


def _cast_videos(dataset):
    """Every `Video` column undecoded (`{"path", "bytes"}`): decoding happens per sample in `VideoTextDataset`."""
    for name, feature in (dataset.features or {}).items():
        if isinstance(feature, Video):
            dataset = dataset.cast_column(name, Video(decode=False))
    return dataset


def load_streaming_dataset(
    dataset_name: str,
    dataset_config_name: str | None = None,
    video_column: str = "video",
    caption_column: str | None = "caption",
    label_column: str | None = None,
) -> tuple[IterableDataset, DatasetDict]:
    """`(train IterableDataset, map-style DatasetDict of the validation / test splits there are)`.

    A local folder with `.tar` shards is read as WebDataset; another local folder (videofolder, CSV / JSON) or a
    Hub id streams through its own builder."""
    path = Path(dataset_name).expanduser()
    columns = {"video_column": video_column, "caption_column": caption_column, "label_column": label_column}
    shards = webdataset_shards(path) if path.is_dir() else {}
    if shards:
        if "train" not in shards:
            raise ValueError(
                f"--dataset_name {dataset_name}: found WebDataset shards for {sorted(shards)} but none "
                "for train (train/*.tar or train-*.tar)"
            )
        train = load_dataset("webdataset", data_files={"train": shards["train"]}, split="train", streaming=True)
        evals = {}
        for split in ("validation", "test"):
            if split in shards:
                ds = load_dataset("webdataset", data_files={split: shards[split]}, split=split)
                ds = _cast_videos(ds).map(
                    lambda row: flatten_row(row, video_column),
                    remove_columns=[c for c in ("json", "txt") if c in ds.column_names],
                )
                evals[split] = ds
        return _cast_videos(train), DatasetDict(evals)
    if path.exists():
        from .data import _local_builder

        builder, kwargs = _local_builder(path)
        streamed = load_dataset(builder, dataset_config_name, streaming=True, **kwargs)
    else:
        streamed = load_dataset(dataset_name, dataset_config_name, streaming=True)
    train_name = next((n for n in SPLIT_ALIASES["train"] if n in streamed), None)
    if train_name is None:
        raise ValueError(f"{dataset_name} has no train split (splits: {list(streamed)})")
    eval_names = [n for split in ("validation", "test") for n in SPLIT_ALIASES[split] if n in streamed]
    evals = DatasetDict()
    if eval_names:
        full = load_video_text_dataset(
            dataset_name, dataset_config_name, **columns, hub_splits=None if path.exists() else eval_names
        )
        evals = DatasetDict({k: v for k, v in full.items() if k != "train"})
    return _cast_videos(streamed[train_name]), evals


class StreamSampler(Sampler):
    """Yields `(position, row)` pairs of the streamed train split for this process, in a deterministic order.

    Args:
        stream: the train `IterableDataset` (videos undecoded).
        batch_size: rows per process and step.
        num_processes / process_index: the process group; each takes its `batch_size` slice of every group of
            `batch_size * num_processes` consecutive rows.
        seed / buffer_size: of `IterableDataset.shuffle` (shards, then samples within the buffer), re-seeded per
            epoch with `set_epoch`.
        video_column / caption_column: rows are flattened (`flatten_row`) and their captions checked.
    """

    def __init__(
        self,
        stream: IterableDataset,
        batch_size: int,
        num_processes: int = 1,
        process_index: int = 0,
        seed: int = 0,
        buffer_size: int = 1000,
        video_column: str = "video",
        caption_column: str | None = "caption",
    ):
        self.stream, self.batch_size = stream, batch_size
        self.num_processes, self.process_index = num_processes, process_index
        self.seed, self.buffer_size = seed, buffer_size
        self.video_column, self.caption_column = video_column, caption_column
        self.epoch, self.skip_batches = 0, 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def _rows(self):
        stream = (
            self.stream.shuffle(seed=self.seed, buffer_size=self.buffer_size) if self.buffer_size > 0 else self.stream
        )
        stream.set_epoch(self.epoch)
        return stream

    def __iter__(self):
        group_size = self.batch_size * self.num_processes
        first = self.skip_batches * group_size  # rows an interrupted run already trained on: replayed, not decoded
        self.skip_batches = 0
        group = []
        for position, row in enumerate(self._rows()):
            if position < first:
                continue
            group.append((position, row))
            if len(group) == group_size:
                start = self.process_index * self.batch_size
                for position, row in group[start : start + self.batch_size]:
                    yield position, self._checked(flatten_row(row, self.video_column), position)
                group = []

    def _checked(self, row: dict, position: int) -> dict:
        if self.video_column not in row:
            raise ValueError(
                f"Streamed row {position} ({row.get('__url__', '')} {row.get('__key__', '')}) has no "
                f"video column {self.video_column!r}; its columns are {sorted(row)}. Pass --video_column"
            )
        if self.caption_column is not None:
            problem = caption_problem(row.get(self.caption_column))
            if problem is not None:
                raise ValueError(
                    f"Streamed row {position} of the train split ({row.get('__url__', '')} "
                    f"{row.get('__key__', '')}) has {problem} in column {self.caption_column!r}: "
                    f"{CAPTION_FIX}"
                )
        return row


class StreamingVideoTextDataset(VideoTextDataset):
    """`VideoTextDataset` over streamed rows: `dataset[(position, row)]` decodes `row` as sample number `position`
    (the stream position seeds the caption and frame draws, as the row index does for map-style data)."""

    def __len__(self):
        raise TypeError("a streamed dataset has no length")

    def video_name(self, index) -> str:
        return f"<streamed row {index}>"

    def __getitem__(self, item) -> dict:
        position, row = item
        out = self.decode(row, position)
        if "error" not in out:
            return out
        value = row.get(self.video_column)
        name = value.get("path") if isinstance(value, dict) else None
        where = " ".join(str(x) for x in (row.get("__url__"), row.get("__key__")) if x)
        return {
            **out,
            "error": out["error"] if (name and name in out["error"]) or not where else f"{where}: {out['error']}",
        }


class StreamingDataLoader:
    """A DataLoader over a `StreamSampler`, moving batches to `device`; `skip(n)` makes the next pass start after
    the first `n` batches of the epoch (exact resume)."""

    def __init__(
        self,
        dataset: StreamingVideoTextDataset,
        sampler: StreamSampler,
        collate_fn,
        batch_size: int,
        num_workers: int = 0,
        device=None,
        seed: int = 0,
    ):
        self.sampler, self.device = sampler, device
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collate_fn,
            num_workers=num_workers,
            generator=torch.Generator().manual_seed(seed),
        )

    def set_epoch(self, epoch: int):
        self.sampler.set_epoch(epoch)

    def skip(self, num_batches: int) -> StreamingDataLoader:
        self.sampler.skip_batches = num_batches
        return self

    def __iter__(self):
        for batch in self.loader:
            yield send_to_device(batch, self.device) if self.device is not None else batch


def build_streaming_dataloader(
    stream: IterableDataset,
    video_processor,
    collate_fn,
    batch_size: int,
    num_processes: int = 1,
    process_index: int = 0,
    seed: int = 0,
    buffer_size: int = 1000,
    num_workers: int = 0,
    device=None,
    sampling="uniform",
    video_column="video",
    caption_column="caption",
    label_column=None,
    label_names=None,
) -> tuple[StreamingVideoTextDataset, StreamingDataLoader]:
    """The training dataset and loader of a streamed train split (see the module docstring)."""
    dataset = StreamingVideoTextDataset(
        stream,
        video_processor,
        video_column=video_column,
        caption_column=caption_column,
        label_column=label_column,
        label_names=label_names,
        training=True,
        sampling=sampling,
        seed=seed,
    )
    sampler = StreamSampler(
        stream,
        batch_size,
        num_processes,
        process_index,
        seed=seed,
        buffer_size=buffer_size,
        video_column=video_column,
        caption_column=caption_column,
    )
    loader = StreamingDataLoader(
        dataset, sampler, collate_fn, batch_size, num_workers=num_workers, device=device, seed=seed
    )
    return dataset, loader

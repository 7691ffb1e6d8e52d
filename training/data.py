"""Video-text datasets for STOP: loading, per-sample decoding in DataLoader workers, batching.

`load_video_text_dataset` opens a Hub dataset or a local folder (a `videofolder` with `metadata.jsonl`, or CSV /
JSON lines files whose video column holds paths) and checks the columns the task needs. Videos are kept as
paths or bytes (`Video(decode=False)`) and decoded by `VideoTextDataset.__getitem__` with the processor's video
processor (`read_video_frames`: only the frames it needs), so decoding runs in the DataLoader's worker processes
and a file that fails to decode is caught per sample: the item comes back as `{"index", "error"}`,
`VideoTextCollator` moves it to `batch["failed"]`, and training goes on.

Captions may be one string or a list of strings per video. In training each video shows one caption per epoch,
drawn from (seed, epoch, index); evaluation uses every caption as a query (`VideoTextDataset.captions`). Frame
sampling is drawn from the same (seed, epoch, index) stream, so an epoch's batches are a pure function of the
seed and the epoch: a resumed run sees exactly the samples an uninterrupted run would.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from datasets import ClassLabel, DatasetDict, Video, load_dataset
from torch.utils.data import DataLoader, Sampler

from modeling_stop.video_io import VideoDecodeError

# Canonical split names and the names datasets use for them.
SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}
_TABLE_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json"}
_METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")


def _local_builder(path: Path) -> tuple[str, dict]:
    """`(builder name, load_dataset kwargs)` for a local folder or file."""
    if path.is_file():
        if path.suffix not in _TABLE_BUILDERS:
            raise ValueError(f"--dataset_name {path}: expected a folder, a .csv or a .json/.jsonl file")
        return _TABLE_BUILDERS[path.suffix], {"data_files": {"train": str(path)}}
    if any(next(path.glob(pattern + name), None) for name in _METADATA_FILES for pattern in ("", "*/")):
        return "videofolder", {"data_dir": str(path)}
    for suffix, builder in _TABLE_BUILDERS.items():
        files = sorted(path.glob(f"*{suffix}"))
        if files:
            return builder, {"data_files": {f.stem: str(f) for f in files}}
    raise ValueError(
        f"--dataset_name {path}: found no metadata.jsonl (videofolder) and no .csv / .json / .jsonl split files "
        "(train.csv, validation.csv, test.csv) in it"
    )


def _resolve_path(value, base_dir: Path):
    if isinstance(value, str) and value and not os.path.isabs(value):
        return str(base_dir / value)
    return value


def _looks_like_path(name: str) -> bool:
    """Whether `--dataset_name` is meant as a local path rather than a Hub id (`name` or `namespace/name`)."""
    if os.path.isabs(name) or name.startswith((".", "~")) or "\\" in name or name.count("/") > 1:
        return True
    if Path(name).suffix in _TABLE_BUILDERS or Path(name).suffix == ".tar":
        return True
    parent = Path(name).parent
    return parent != Path(".") and parent.is_dir()  # "data/synthtic" where data/ is a local folder


def _missing_local_path_error(name: str) -> FileNotFoundError:
    path = Path(name).expanduser()
    parent = next((p for p in path.parents if p.is_dir()), None)
    hint = ""
    if parent is not None:
        entries = sorted(e.name for e in parent.iterdir() if not e.name.startswith("."))[:20]
        hint = f"; {parent} exists and holds {entries}"
    return FileNotFoundError(
        f"--dataset_name {name}: no such local folder or file{hint}. Check the path (a Hub dataset id has the form "
        "'name' or 'namespace/name')"
    )


def check_jsonl_files(files) -> None:
    """Every non-blank line of each JSON Lines file must be a JSON object: else a `ValueError` naming the file and
    the line number (the `json` builder's own error names neither)."""
    for file in files:
        with open(file, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(
                        f"{file}, line {number}: not valid JSON ({err.msg} at column {err.colno}): "
                        f"{line.strip()[:120]!r}. Fix or remove the line"
                    ) from None
                if not isinstance(value, dict):
                    raise ValueError(  # noqa: TRY004 - bad file content, not a bad argumentf"{file}, line {number}: expected a JSON object (one row), got "
                        f"{type(value).__name__}: {line.strip()[:120]!r}"
                    )


def _jsonl_files(builder: str, kwargs: dict) -> list[Path]:
    if builder == "videofolder":
        root = Path(kwargs["data_dir"])
        return sorted(root.glob("metadata.jsonl")) + sorted(root.glob("*/metadata.jsonl"))
    return [Path(f) for f in kwargs.get("data_files", {}).values() if str(f).endswith(".jsonl")]


def _split_source(dataset_name: str, split: str, builder: str | None, kwargs: dict) -> str:
    """Where the rows of `split` come from, for error messages."""
    if builder == "videofolder":
        root = Path(kwargs["data_dir"])
        files = sorted(root.glob(f"{split}/metadata.*")) or sorted(root.glob("metadata.*"))
        return ", ".join(str(f) for f in files) or str(root)
    if builder is not None:
        return str(kwargs["data_files"].get(split, dataset_name))
    return f"the Hub dataset {dataset_name}"


def _row_video(ds, row: int, video_column: str) -> str:
    value = ds[row][video_column]
    if isinstance(value, dict):
        return value.get("path") or "<bytes>"
    return str(value)


def caption_problem(value) -> str | None:
    """What is wrong with one row's caption value (`None` when it is a non-empty string or a non-empty list of
    non-empty strings)."""
    if isinstance(value, str):
        return "an empty caption" if not value.strip() else None
    if value is None:
        return "a null caption"
    if isinstance(value, (list, tuple)):
        if not value:
            return "an empty caption list"
        bad = next((c for c in value if not isinstance(c, str)), "")
        if bad != "":
            return f"a caption list with a non-string item {bad!r}"
        if any(not c.strip() for c in value):
            return "an empty caption in its list"
        return None
    return f"a caption of type {type(value).__name__} ({value!r})"


CAPTION_FIX = "every video needs a non-empty string or a non-empty list of non-empty strings. Fix or remove the row"


def validate_captions(ds, caption_column: str, video_column: str, split: str, source: str) -> None:
    """Every row needs a non-empty caption string or a non-empty list of non-empty strings: else a `ValueError`
    naming the row, its video, the split and the file it comes from."""
    for row, value in enumerate(ds[caption_column]):
        problem = caption_problem(value)
        if problem is not None:
            raise ValueError(
                f"Row {row} of the {split} split (video {_row_video(ds, row, video_column)}, from {source}) has "
                f"{problem} in column {caption_column!r}: {CAPTION_FIX}"
            )


def load_video_text_dataset(
    dataset_name: str,
    dataset_config_name: str | None = None,
    video_column: str = "video",
    caption_column: str | None = "caption",
    label_column: str | None = None,
    cache_dir: str | None = None,
    num_proc: int | None = None,
    hub_splits: list[str] | None = None,
) -> DatasetDict:
    """
    Load a video-text dataset as a `DatasetDict` with splits named `train` / `validation` / `test` (those present).

    `dataset_name` is a Hub dataset id or a local folder / file (a path-like name that does not exist is a
    `FileNotFoundError`, not a Hub lookup). The video column becomes `Video(decode=False)` (`{"path", "bytes"}`), or
    stays a column of paths (CSV / JSON; relative paths are resolved against the folder of the data files).
    `caption_column` and `label_column` (each `None` when the task does not need it) must exist in every split, else
    a `ValueError` names the column, the split and the columns there are. Captions are validated here (null, empty
    string, empty list: a `ValueError` naming the row and file); JSON Lines files line by line (file and line named).
    `hub_splits`: load only these splits of a Hub dataset (e.g. the evaluation splits beside a streamed train split).
    """
    path = Path(dataset_name).expanduser()
    base_dir, builder, kwargs = None, None, {}
    if path.exists():
        builder, kwargs = _local_builder(path)
        base_dir = (path.parent if path.is_file() else path).resolve()
        check_jsonl_files(_jsonl_files(builder, kwargs))
        try:
            raw = load_dataset(builder, dataset_config_name, cache_dir=cache_dir, **kwargs)
        except Exception as err:
            cause = err.__cause__ or err
            raise ValueError(
                f"--dataset_name {dataset_name}: the datasets {builder!r} loader could not read "
                f"{kwargs}: {type(cause).__name__}: {cause}"
            ) from err
    elif _looks_like_path(dataset_name):
        raise _missing_local_path_error(dataset_name)
    else:
        try:
            if hub_splits is None:
                raw = load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir)
            else:
                raw = DatasetDict(
                    {
                        name: load_dataset(dataset_name, dataset_config_name, split=name, cache_dir=cache_dir)
                        for name in hub_splits
                    }
                )
        except Exception as err:
            err.add_note(
                f"--dataset_name {dataset_name}: no local folder or file has this name either (looked in {Path.cwd()})"
            )
            raise

    splits, found_names = {}, {}
    for canonical, aliases in SPLIT_ALIASES.items():
        found = next((name for name in aliases if name in raw), None)
        if found is not None:
            splits[canonical], found_names[canonical] = raw[found], found
    if "train" not in splits and "test" not in splits and hub_splits is None:
        raise ValueError(f"{dataset_name} has no train or test split (splits: {list(raw)})")

    required = {"--video_column": video_column, "--caption_column": caption_column, "--label_column": label_column}
    for split, ds in splits.items():
        for flag, column in required.items():
            if column is not None and column not in ds.column_names:
                raise ValueError(
                    f"Column {column!r} not found in the {split} split of {dataset_name}; its columns are "
                    f"{ds.column_names}. Pass {flag} with one of them."
                )
        feature = ds.features[video_column]
        if isinstance(feature, Video):
            ds = ds.cast_column(video_column, Video(decode=False))
        elif base_dir is not None and getattr(feature, "dtype", None) in ("string", "large_string"):
            ds = ds.map(
                lambda value: {video_column: _resolve_path(value, base_dir)},
                input_columns=video_column,
                num_proc=num_proc,
                desc=f"Resolving video paths ({split})",
            )
        if caption_column is not None:
            source = _split_source(dataset_name, found_names[split], builder, kwargs)
            validate_captions(ds, caption_column, video_column, split, source)
        splits[split] = ds
    return DatasetDict(splits)


def class_names(dataset: DatasetDict, label_column: str) -> list[str]:
    """Class names: a `ClassLabel`'s names, else the sorted distinct values (as strings) over all splits."""
    split = next(iter(dataset.values()))
    feature = split.features[label_column]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    values = set()
    for ds in dataset.values():
        values.update(str(v) for v in ds.unique(label_column))
    return sorted(values)


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class VideoTextDataset(torch.utils.data.Dataset):
    """
    One item per video of a split of `load_video_text_dataset`: `pixel_values` `[T, 3, S, S]` and `video_mask`
    `[T]` from the `video_processor` (the processor used at inference), plus the caption (training: one drawn
    per epoch; evaluation: none, see `captions`) and the label.

    Args:
        dataset: a `datasets.Dataset` split.
        video_processor: a `STOPVideoProcessor` (decodes only the frames it needs, resizes, normalises).
        video_column / caption_column / label_column: column names (`None`: not used).
        label_names: class names, to map string labels to indices (`ClassLabel` columns are indices already).
        training: draw a random caption (and, with `sampling="random"`, random frames) per (seed, epoch, index).
        sampling: frame sampling of `read_video_frames` (`"uniform"` or `"random"`); evaluation is uniform.
        seed: seed of the per-sample draws.
    """

    def __init__(
        self,
        dataset,
        video_processor,
        video_column: str = "video",
        caption_column: str | None = "caption",
        label_column: str | None = None,
        label_names: list[str] | None = None,
        training: bool = False,
        sampling: str = "uniform",
        seed: int = 0,
    ):
        self.dataset = dataset
        self.video_processor = video_processor
        self.video_column, self.caption_column, self.label_column = video_column, caption_column, label_column
        self.label_to_id = {name: i for i, name in enumerate(label_names)} if label_names is not None else None
        features = getattr(dataset, "features", None) or {}
        self.label_is_index = label_column is not None and isinstance(features.get(label_column), ClassLabel)
        self.training = training
        self.sampling = sampling if training else "uniform"
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def video_name(self, index: int) -> str:
        value = self.dataset[index][self.video_column]
        if isinstance(value, dict):
            return value.get("path") or f"<bytes of row {index}>"
        return str(value)

    def captions(self) -> tuple[list[str], list[int]]:
        """Every caption of the split and the index of its video: `(texts, text_to_video)`."""
        texts, text_to_video = [], []
        for index, value in enumerate(self.dataset[self.caption_column]):
            for caption in [value] if isinstance(value, str) else value:
                texts.append(caption)
                text_to_video.append(index)
        return texts, text_to_video

    def labels(self) -> list[int]:
        return [self._label(value) for value in self.dataset[self.label_column]]

    def _label(self, value) -> int:
        if self.label_is_index:
            return int(value)
        return self.label_to_id[str(value)]

    def _source(self, value):
        if isinstance(value, dict):  # Video(decode=False)
            return value.get("bytes") or value.get("path")
        return value  # a path, or a decoder / array from a custom dataset

    def __getitem__(self, index: int) -> dict:
        return self.decode(self.dataset[index], index)

    def decode(self, row: dict, index: int) -> dict:
        """The item of `row` (sample number `index`: it seeds the caption and frame draws)."""
        generator = torch.Generator().manual_seed(_sample_seed(self.seed, self.epoch, index))
        try:
            source = self._source(row[self.video_column])
            video = self.video_processor(source, sampling=self.sampling, generator=generator)
        except VideoDecodeError as error:
            return {"index": index, "error": str(error)}
        item = {"index": index, "pixel_values": video["pixel_values"][0], "video_mask": video["video_mask"][0]}
        if self.training and self.caption_column is not None:
            captions = row[self.caption_column]
            if not isinstance(captions, str):
                captions = captions[int(torch.randint(len(captions), (1,), generator=generator))]
            item["caption"] = captions
        if self.label_column is not None:
            item["label"] = self._label(row[self.label_column])
        return item


class VideoTextCollator:
    """Stacks decoded items, tokenises their captions and moves failed items to `batch["failed"]` (messages)."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, items: list[dict]) -> dict:
        good = [item for item in items if "error" not in item]
        batch = {
            "indices": torch.tensor([item["index"] for item in good], dtype=torch.long),
            "failed": [item["error"] for item in items if "error" in item],
        }
        if not good:
            return batch
        batch["pixel_values"] = torch.stack([item["pixel_values"] for item in good])
        batch["video_mask"] = torch.stack([item["video_mask"] for item in good])
        if "caption" in good[0]:
            text = self.processor(text=[item["caption"] for item in good], padding="max_length")
            batch["input_ids"], batch["attention_mask"] = text["input_ids"], text["attention_mask"]
        if "label" in good[0]:
            batch["labels"] = torch.tensor([item["label"] for item in good], dtype=torch.long)
        return batch


class EpochSampler(Sampler):
    """Indices `0..n-1`, shuffled by `seed + epoch` when `shuffle` (the same order on every process and resume)."""

    def __init__(self, num_samples: int, shuffle: bool, seed: int = 0):
        self.num_samples, self.shuffle, self.seed = num_samples, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.num_samples))
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())


def nearest_neighbours(
    embeddings: torch.Tensor, k: int = 8, exclude: torch.Tensor | None = None, chunk_size: int = 4096
) -> torch.Tensor:
    """The `k` nearest other rows of every row of `embeddings` [N, E] by cosine: [N, min(k, N - 1)] indices, best
    first (computed in chunks of rows, so a large split never holds an N x N matrix). Rows where `exclude` [N] is
    True come last in every list."""
    x = torch.nn.functional.normalize(embeddings.float(), dim=-1)
    n = len(x)
    k = min(k, n - 1)
    if k <= 0:
        return torch.zeros(n, 0, dtype=torch.long)
    rows = []
    for start in range(0, n, chunk_size):
        sim = x[start : start + chunk_size] @ x.t()
        own = torch.arange(len(sim))
        if exclude is not None:
            sim[:, exclude] = -3.0
        sim[own, start + own] = -float("inf")
        rows.append(sim.topk(k, dim=-1).indices)
    return torch.cat(rows)


def neighbour_pair_order(neighbours: torch.Tensor, generator: torch.Generator, candidates=None) -> list[int]:
    """A sampling order in which consecutive positions (0, 1), (2, 3), ... are mutual hard negatives.

    Greedy over a random order of the rows: each row not yet taken is paired with its nearest neighbour not yet
    taken (`neighbours`: `nearest_neighbours` output). On videos with frame-reversed twins the nearest neighbour in
    mean-pooled frozen features is the twin (the same frames), so the pairs are the twins, found without any twin
    label. The pairs are shuffled; rows left without a free neighbour come last. `candidates`: the rows to order
    (default: all)."""
    n = len(neighbours)
    rows = torch.arange(n) if candidates is None else torch.as_tensor(candidates, dtype=torch.long)
    allowed = np.zeros(n, dtype=bool)
    allowed[rows.numpy()] = True
    taken = ~allowed
    table = neighbours.tolist()
    pairs, singles = [], []
    for i in rows[torch.randperm(len(rows), generator=generator)].tolist():
        if taken[i]:
            continue
        taken[i] = True
        mate = next((j for j in table[i] if not taken[j]), None)
        if mate is None:
            singles.append(i)
        else:
            taken[mate] = True
            pairs.append((i, mate))
    order = [i for p in torch.randperm(len(pairs), generator=generator).tolist() for i in pairs[p]]
    return order + singles


class NeighbourPairSampler(Sampler):
    """`EpochSampler` whose shuffled order puts every video next to its nearest neighbour (`neighbour_pair_order`,
    redrawn from `seed + epoch`): with an even batch size each batch holds pairs of mutual hard negatives."""

    def __init__(self, neighbours: torch.Tensor, seed: int = 0):
        self.neighbours, self.seed = neighbours, seed
        self.epoch = 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.neighbours)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(neighbour_pair_order(self.neighbours, generator))


def build_dataloader(
    dataset: VideoTextDataset,
    collate_fn,
    batch_size: int,
    shuffle: bool = False,
    drop_last: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    sampler: Sampler | None = None,
) -> DataLoader:
    """A DataLoader over `dataset` that decodes in `num_workers` worker processes (`sampler`: an order of its own,
    e.g. `NeighbourPairSampler`, instead of `EpochSampler`).

    It has its own `generator`, so iterating it never draws from the global torch RNG (which dropout uses):
    a run resumed mid-epoch continues the global RNG stream exactly where the checkpoint left it.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler if sampler is not None else EpochSampler(len(dataset), shuffle=shuffle, seed=seed),
        collate_fn=collate_fn,
        drop_last=drop_last,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
    )


def twin_pairs(pair_ids) -> list[tuple[int, int]]:
    """Positions `(a, b)` of the clips that share a pair id with exactly one other clip (a clip and its reversed
    twin), in the order the ids first appear."""
    groups: dict = {}
    for index, pair in enumerate(pair_ids):
        groups.setdefault(pair, []).append(index)
    return [tuple(members) for members in groups.values() if len(members) == 2]


def reversed_pair_accuracy(video_text_sim, pair_ids, motions=None) -> dict[str, float]:
    """
    Share of videos that score their own caption above the caption of their reversed twin.

    Args:
        video_text_sim: `[num_videos, num_videos]` scores, `video_text_sim[i, j]` = video `i` against the
            (first) caption of video `j`.
        pair_ids: one id per video; a clip and its reversed twin share it (ids held by other than exactly two
            videos are ignored).
        motions: optional kind per video (e.g. "slide"); adds `pair_accuracy/<kind>` per kind.

    Returns:
        `{"pair_accuracy": float in [0, 1], "pair_accuracy/<kind>": ...}` (0.5 = blind to order; ties count as
        wrong). Empty when no pair is found.
    """
    sim = np.asarray(video_text_sim, dtype=np.float64)
    correct, kinds = [], []
    for a, b in twin_pairs(pair_ids):
        correct += [sim[a, a] > sim[a, b], sim[b, b] > sim[b, a]]
        kinds += [motions[a], motions[b]] if motions is not None else [None, None]
    if not correct:
        return {}
    correct = np.asarray(correct)
    results = {"pair_accuracy": float(correct.mean())}
    if motions is not None:
        for kind in sorted(set(kinds)):
            results[f"pair_accuracy/{kind}"] = float(correct[[k == kind for k in kinds]].mean())
    return results


def split_pair_accuracy(sim, text_to_video, indices, split) -> dict[str, float]:
    """`reversed_pair_accuracy` of an evaluated split: `sim` [texts, videos] with `text_to_video` (column of each
    text's video in `sim`), `indices` the split rows of those videos; each video is scored against the first
    caption of every video. Empty when the split has no `pair_id` column."""
    if "pair_id" not in split.column_names:
        return {}
    first_caption = {}
    for row, video in enumerate(text_to_video):
        first_caption.setdefault(video, row)
    own = [first_caption[i] for i in range(len(indices))]
    rows = split.select([int(i) for i in indices])
    motions = list(rows["motion"]) if "motion" in split.column_names else None
    return reversed_pair_accuracy(np.asarray(sim)[own].T, list(rows["pair_id"]), motions)

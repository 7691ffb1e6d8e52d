"""Turn the raw downloads of the standard video benchmarks into `videofolder` datasets.

    python -m training.prepare_data msrvtt --video_dir MSRVTT/videos/all --annotations MSRVTT_data.json \\
        --train_csv MSRVTT_train.9k.csv --test_csv MSRVTT_JSFUSION_test.csv --output_dir data/msrvtt
    python -m training.prepare_data NAME --help          # the inputs of NAME

NAME is one of msrvtt, activitynet, didemo, msvd (retrieval: a `caption` column, a string or a list of strings)
or ucf101, hmdb51, kinetics (recognition: a `label` column of readable class names). The output is
`OUT/{train,validation,test}/metadata.jsonl` for the splits the release has (`file_name` = the video's path
relative to `--video_dir`, plus `caption` / `label`) next to links to the videos (`--link symlink`, the default;
where symbolic links fail, hard links, then copies; the summary says which), so `--dataset_name OUT` of
`training/train.py` and `benchmarks/run_eval.py` reads it with the default column names. A video listed by the
annotations but not found under `--video_dir` is left out of its split, counted in the summary and named in
`OUT/missing_videos.txt`; `OUT/prepare_data.json` holds the summary (rows, captions, missing videos per split).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import pickle
import random
import re
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "validation", "test")
# The extensions `datasets`' videofolder picks up; a video with another one is linked under `<name>.mkv`
# (decoders probe the content, not the name).
VIDEOFOLDER_EXTENSIONS = (".mkv", ".mp4", ".avi", ".mpeg", ".mov")
LINK_MODES = ("symlink", "hardlink", "copy")
LINK_WORDS = {"symlink": "symlinked", "hardlink": "hard-linked", "copy": "copied"}


# ----------------------------------------------------------------------------------------------------------------
# Rows, videos, links
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Split:
    """The rows of one output split: `(video id, columns)` before the videos are looked up, plus what was left
    out and why (besides missing videos, which `write_dataset` finds)."""

    rows: list[tuple[str, dict]] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> ids


class VideoIndex:
    """Every file under `video_dir`, found by relative path, file name or stem (case-insensitively as a fallback)."""

    def __init__(self, video_dir: str | os.PathLike):
        self.root = Path(video_dir).resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"--video_dir {video_dir} is not a folder")
        self.by_key: dict[str, Path] = {}
        for directory, _, files in os.walk(self.root, followlinks=True):
            for name in sorted(files):
                path = Path(directory) / name
                relative = path.relative_to(self.root).as_posix()
                for key in (relative, name, path.stem, relative.lower(), name.lower(), path.stem.lower()):
                    self.by_key.setdefault(key, path)

    def find(self, *keys: str) -> Path | None:
        """The first file matching one of `keys` (relative paths, file names or stems), else `None`."""
        for key in keys:
            for variant in (key, key.lower()):
                if variant in self.by_key:
                    return self.by_key[variant]
        return None


def link_video(source: Path, target: Path, mode: str) -> str:
    """Link `target` to `source` by `mode`, falling back symlink -> hardlink -> copy; returns the mode used."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink()
    for candidate in LINK_MODES[LINK_MODES.index(mode) :]:
        try:
            if candidate == "symlink":
                target.symlink_to(source)
            elif candidate == "hardlink":
                os.link(source, target)
            else:
                shutil.copy2(source, target)
            return candidate
        except OSError:
            if candidate == "copy":
                raise
    raise AssertionError("unreachable")


def _output_name(path: Path, root: Path) -> str:
    name = path.relative_to(root).as_posix()
    return name if path.suffix.lower() in VIDEOFOLDER_EXTENSIONS else name + ".mkv"


def _clear_split(directory: Path):
    """Remove an earlier output of this command (its metadata.jsonl marks it); refuse anything else."""
    if not directory.exists():
        return
    if not (directory / "metadata.jsonl").exists() and any(directory.iterdir()):
        raise FileExistsError(
            f"{directory} exists and is not an earlier prepare_data output: choose another --output_dir"
        )
    shutil.rmtree(directory)


def write_dataset(name: str, splits: dict[str, Split], finder, video_index: VideoIndex, output_dir, link: str):
    """Look every row's video up (`finder(index, video_id) -> path or None`), link it into `output_dir/<split>/` and
    write `metadata.jsonl`; print and return the summary. A split that ends empty raises."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = {"dataset": name, "video_dir": str(video_index.root), "link": {}, "splits": {}}
    missing_lines = []
    links = defaultdict(int)
    for split_name in SPLITS:
        if split_name not in splits:
            _clear_split(output_dir / split_name)
            continue
        split = splits[split_name]
        directory = output_dir / split_name
        _clear_split(directory)
        directory.mkdir(parents=True)
        records, missing, linked = [], [], {}
        for video_id, columns in split.rows:
            source = finder(video_index, video_id)
            if source is None:
                missing.append(video_id)
                continue
            file_name = _output_name(source, video_index.root)
            if file_name not in linked:
                linked[file_name] = link_video(source, directory / file_name, link)
                links[linked[file_name]] += 1
            records.append({"file_name": file_name, **columns})
        missing = list(dict.fromkeys(missing))
        missing_lines += [f"{split_name}\t{video_id}" for video_id in missing]
        if not records:
            expected = split.rows[0][0] if split.rows else "?"
            num_videos = len({video_id for video_id, _ in split.rows})
            raise FileNotFoundError(
                f"{name} {split_name}: none of the {num_videos} videos was found under {video_index.root} "
                f"(e.g. {expected!r}); check --video_dir"
            )
        with open(directory / "metadata.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        stats = {"rows": len(records), "videos": len(linked), "missing_videos": len(missing)}
        if "caption" in records[0]:
            stats["captions"] = sum(1 if isinstance(r["caption"], str) else len(r["caption"]) for r in records)
        if "label" in records[0]:
            stats["classes"] = len({r["label"] for r in records})
        stats.update({f"skipped_{reason}": len(ids) for reason, ids in split.skipped.items()})
        summary["splits"][split_name] = {
            **stats,
            "missing": missing,
            **({"skipped": split.skipped} if split.skipped else {}),
        }
    summary["link"] = dict(links)
    (output_dir / "missing_videos.txt").write_text("".join(line + "\n" for line in missing_lines))
    (output_dir / "prepare_data.json").write_text(json.dumps(summary, indent=1))
    print(format_summary(summary, output_dir))
    return summary


def format_summary(summary: dict, output_dir: Path) -> str:
    how = ", ".join(f"{count} {LINK_WORDS[mode]}" for mode, count in summary["link"].items())
    lines = [f"{summary['dataset']} -> {output_dir} (videos: {how or 'none'})"]
    total_missing = 0
    for split_name, stats in summary["splits"].items():
        videos = f" ({stats['videos']} videos)" if stats["videos"] != stats["rows"] else ""
        parts = [f"{stats['rows']} rows{videos}"]
        if "captions" in stats:
            parts.append(f"{stats['captions']} captions")
        if "classes" in stats:
            parts.append(f"{stats['classes']} classes")
        missing = stats["missing"]
        shown = f" ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})" if missing else ""
        parts.append(f"{stats['missing_videos']} missing videos{shown}")
        parts += [
            f"{v} {k.removeprefix('skipped_').replace('_', ' ')}"
            for k, v in stats.items()
            if k.startswith("skipped_") and v
        ]
        total_missing += stats["missing_videos"]
        lines.append(f"  {split_name}: " + ", ".join(parts))
    if total_missing:
        lines.append(f"  {total_missing} missing videos are listed in {output_dir / 'missing_videos.txt'}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Reading annotation files
# ----------------------------------------------------------------------------------------------------------------


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file {path} not found") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None


def _read_csv(path, required: tuple[str, ...]) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        fields = [name.strip() for name in reader.fieldnames or []]
        missing = [name for name in required if name not in fields]
        if missing:
            raise ValueError(f"{path}: header {fields} lacks the column(s) {missing} (expected {list(required)})")
        return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]


def _read_lines(path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _field(item, key, path, where):
    if not isinstance(item, dict) or key not in item:
        raise ValueError(f"{path}: {where} has no {key!r} field ({item!r:.120})")
    return item[key]


def readable_class_name(name: str) -> str:
    """`ApplyEyeMakeup` -> `apply eye makeup`, `brush_hair` -> `brush hair`, `YoYo` -> `yo yo`."""
    name = name.replace("_", " ").replace("-", " ")
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", name)
    return " ".join(name.lower().split())


def _paragraph(sentences) -> str:
    return " ".join(s.strip() for s in sentences if s.strip())


# ----------------------------------------------------------------------------------------------------------------
# Retrieval benchmarks
# ----------------------------------------------------------------------------------------------------------------


def _find_by_id(index: VideoIndex, video_id: str):
    return index.find(video_id, Path(video_id).stem)


def caption_rows(ids, captions: dict[str, list[str]], per_caption: bool = False) -> Split:
    """Rows of the videos `ids` with `caption` = the list of their captions, or (`per_caption`) one row per
    (video, caption) pair, `caption` = `[text]` (a list in every split: `datasets` needs one type per column)."""
    split = Split()
    for video_id in ids:
        if not captions.get(video_id):
            split.skipped.setdefault("without_captions", []).append(video_id)
        elif per_caption:
            split.rows += [(video_id, {"caption": [text]}) for text in captions[video_id]]
        else:
            split.rows.append((video_id, {"caption": list(captions[video_id])}))
    return split


def msrvtt_splits(args, index: VideoIndex) -> dict[str, Split]:
    data = _read_json(args.annotations)
    sentences = _field(data, "sentences", args.annotations, "the annotation JSON")
    captions = defaultdict(list)
    for i, item in enumerate(sentences):
        video_id = _field(item, "video_id", args.annotations, f"sentences[{i}]")
        captions[video_id].append((item.get("sen_id", i), _field(item, "caption", args.annotations, f"sentences[{i}]")))
    captions = {video: [text for _, text in sorted(items)] for video, items in captions.items()}
    official = defaultdict(list)
    for i, item in enumerate(data.get("videos", [])):
        official[_field(item, "split", args.annotations, f"videos[{i}]")].append(
            _field(item, "video_id", args.annotations, f"videos[{i}]")
        )

    if args.train_csv:
        train_ids = [row["video_id"] for row in _read_csv(args.train_csv, ("video_id",))]
    else:
        train_ids = official["train"]
    train_ids = list(dict.fromkeys(train_ids))
    validation_ids = []
    if args.validation_size:
        present = [v for v in train_ids if _find_by_id(index, v) is not None]  # drawn among downloaded videos
        if args.validation_size >= len(present):
            raise ValueError(f"--validation_size {args.validation_size} leaves no training video of {len(present)}")
        chosen = set(random.Random(args.seed).sample(present, args.validation_size))
        validation_ids = [v for v in train_ids if v in chosen]
        train_ids = [v for v in train_ids if v not in chosen]

    splits = {"train": caption_rows(train_ids, captions, per_caption=args.train_rows == "caption")}
    if validation_ids:
        splits["validation"] = caption_rows(validation_ids, captions)
    if args.test_csv:
        test = defaultdict(list)
        for row in _read_csv(args.test_csv, ("video_id", "sentence")):
            test[row["video_id"]].append(row["sentence"])
        splits["test"] = Split(rows=[(video_id, {"caption": texts}) for video_id, texts in test.items()])
    else:
        splits["test"] = caption_rows(official["test"], captions)
    return splits


def _json_splits(args, kind: type, expected: str):
    """`(split name, path, parsed JSON)` for each of `--{train,validation,test}_json` given, checked to be a `kind`."""
    for split_name, path in (
        ("train", args.train_json),
        ("validation", args.validation_json),
        ("test", args.test_json),
    ):
        if not path:
            continue
        data = _read_json(path)
        if not isinstance(data, kind):
            raise ValueError(f"{path}: expected {expected}")
        yield split_name, path, data


def activitynet_splits(args, index: VideoIndex) -> dict[str, Split]:
    splits = {}
    for split_name, path, data in _json_splits(
        args, dict, "an object {'v_ID': {'duration', 'timestamps', 'sentences'}}"
    ):
        split = Split()
        for video_id, item in data.items():
            paragraph = _paragraph(_field(item, "sentences", path, video_id))
            if paragraph:
                split.rows.append((video_id, {"caption": paragraph}))
            else:
                split.skipped.setdefault("without_captions", []).append(video_id)
        splits[split_name] = split
    return splits


def _find_activitynet(index: VideoIndex, video_id: str):
    bare = video_id.removeprefix("v_")
    return index.find(video_id, bare, "v_" + bare)


def didemo_splits(args, index: VideoIndex) -> dict[str, Split]:
    splits = {}
    for split_name, path, data in _json_splits(args, list, "a list of {'video', 'description', 'times', ...} objects"):
        descriptions = defaultdict(list)
        for i, item in enumerate(data):
            _field(item, "times", path, f"item {i}")
            descriptions[_field(item, "video", path, f"item {i}")].append(
                _field(item, "description", path, f"item {i}")
            )
        split = Split()
        for video_id, texts in descriptions.items():
            paragraph = _paragraph(texts)
            if paragraph:
                split.rows.append((video_id, {"caption": paragraph}))
            else:
                split.skipped.setdefault("without_captions", []).append(video_id)
        splits[split_name] = split
    return splits


class _NoClassesUnpickler(pickle.Unpickler):
    """Reads plain containers only (dicts, lists, strings): a caption pickle cannot run code."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a caption file (plain dicts/lists only)")


def read_msvd_captions(path) -> dict[str, list[str]]:
    """`{video id: [captions]}` from `AllVideoDescriptions.txt`-style lines (`<vid> <caption>`, `#` comments) or
    from CLIP4Clip's `raw-captions.pkl` (`{vid: [[token, ...], ...]}`)."""
    path = Path(path)
    captions = defaultdict(list)
    if path.suffix == ".pkl":
        with open(path, "rb") as f:
            data = _NoClassesUnpickler(io.BytesIO(f.read())).load()
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a dict {{video id: [captions]}}, got {type(data).__name__}")
        for video_id, items in data.items():
            captions[video_id] = [" ".join(c) if isinstance(c, (list, tuple)) else str(c) for c in items]
        return dict(captions)
    for number, line in enumerate(_read_lines(path), 1):
        if line.startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise ValueError(f"{path} line {number}: expected '<video id> <caption>', got {line!r}")
        captions[parts[0]].append(parts[1])
    return dict(captions)


def msvd_splits(args, index: VideoIndex) -> dict[str, Split]:
    captions = read_msvd_captions(args.captions)
    splits = {}
    for split_name, path in (
        ("train", args.train_list),
        ("validation", args.validation_list),
        ("test", args.test_list),
    ):
        if not path:
            continue
        per_caption = split_name == "train" and args.train_rows == "caption"
        splits[split_name] = caption_rows(dict.fromkeys(_read_lines(path)), captions, per_caption)
    return splits


# ----------------------------------------------------------------------------------------------------------------
# Recognition benchmarks
# ----------------------------------------------------------------------------------------------------------------


def _ucf_class_names(split_dir: Path) -> dict[str, str]:
    """Folder name (lower-cased) -> readable class name, from classInd.txt (`1 ApplyEyeMakeup`) when present."""
    path = split_dir / "classInd.txt"
    if not path.exists():
        return {}
    names = {}
    for number, line in enumerate(_read_lines(path), 1):
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path} line {number}: expected '<index> <ClassFolder>', got {line!r}")
        names[parts[1].lower()] = readable_class_name(parts[1])
    return names


def ucf101_splits(args, index: VideoIndex) -> dict[str, Split]:
    split_dir = Path(args.split_dir)
    names = _ucf_class_names(split_dir)
    splits = {}
    for split_name, list_name in (("train", f"trainlist0{args.fold}.txt"), ("test", f"testlist0{args.fold}.txt")):
        path = split_dir / list_name
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: --split_dir must hold the official ucfTrainTestlist files")
        split = Split()
        for number, line in enumerate(_read_lines(path), 1):
            relative = line.split()[0]
            if "/" not in relative:
                raise ValueError(f"{path} line {number}: expected 'ClassFolder/v_..._gXX_cXX.avi', got {line!r}")
            folder = relative.split("/")[0]
            if names and folder.lower() not in names:
                raise ValueError(f"{path} line {number}: class {folder!r} is not in {split_dir / 'classInd.txt'}")
            split.rows.append((relative, {"label": names.get(folder.lower(), readable_class_name(folder))}))
        splits[split_name] = split
    return splits


def _find_by_path(index: VideoIndex, relative: str):
    return index.find(relative, Path(relative).name)


def hmdb51_splits(args, index: VideoIndex) -> dict[str, Split]:
    split_dir = Path(args.split_dir)
    files = sorted(split_dir.glob(f"*_test_split{args.fold}.txt"))
    if not files:
        raise FileNotFoundError(
            f"no *_test_split{args.fold}.txt in {split_dir}: --split_dir must hold the official "
            "testTrainMulti_7030_splits files (<class>_test_split<k>.txt)"
        )
    splits = {"train": Split(), "test": Split()}
    unused = []
    for path in files:
        folder = path.name[: -len(f"_test_split{args.fold}.txt")]
        label = readable_class_name(folder)
        for number, line in enumerate(_read_lines(path), 1):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise ValueError(f"{path} line {number}: expected '<video>.avi <0|1|2>', got {line!r}")
            relative = f"{folder}/{parts[0]}"
            if parts[1] == "1":
                splits["train"].rows.append((relative, {"label": label}))
            elif parts[1] == "2":
                splits["test"].rows.append((relative, {"label": label}))
            else:
                unused.append(relative)
    splits["train"].skipped["unused_by_the_fold"] = unused  # marked 0: in neither split of this fold
    return splits


KINETICS_SPLITS = {
    "train": "train",
    "val": "validation",
    "validate": "validation",
    "validation": "validation",
    "test": "test",
}


def kinetics_splits(args, index: VideoIndex) -> dict[str, Split]:
    splits = {}
    for path in args.annotations:
        for number, row in enumerate(_read_csv(path, ("youtube_id", "time_start", "time_end", "split")), 2):
            split_name = KINETICS_SPLITS.get(row["split"].lower())
            if split_name is None:
                raise ValueError(f"{path} line {number}: unknown split {row['split']!r} (train, val/validate, test)")
            try:
                start, end = int(float(row["time_start"])), int(float(row["time_end"]))
            except ValueError:
                raise ValueError(f"{path} line {number}: time_start/time_end must be seconds, got {row}") from None
            video_id = f"{row['youtube_id']}_{start:06d}_{end:06d}"
            split = splits.setdefault(split_name, Split())
            label = row.get("label", "")
            if not label:
                split.skipped.setdefault("without_labels", []).append(video_id)
                continue
            split.rows.append((video_id, {"label": readable_class_name(label.strip('"'))}))
    if not splits:
        raise ValueError(f"{args.annotations}: no rows")
    return splits


def _find_kinetics(index: VideoIndex, video_id: str):
    return index.find(video_id, video_id.rsplit("_", 2)[0])


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------

DATASETS = {
    "msrvtt": (msrvtt_splits, _find_by_id),
    "activitynet": (activitynet_splits, _find_activitynet),
    "didemo": (didemo_splits, _find_by_id),
    "msvd": (msvd_splits, _find_by_id),
    "ucf101": (ucf101_splits, _find_by_path),
    "hmdb51": (hmdb51_splits, _find_by_path),
    "kinetics": (kinetics_splits, _find_kinetics),
}


def _train_rows(parser: argparse.ArgumentParser):
    parser.add_argument(
        "--train_rows",
        choices=["caption", "video"],
        default="caption",
        help="train split: one row per (video, caption) pair, so an epoch sees every pair as the authors' "
        "CLIP4Clip-based code trains (default), or one row per video with the list of its captions "
        "(train.py then draws one caption per video and epoch)",
    )


def _common(parser: argparse.ArgumentParser, video_dir_help: str):
    parser.add_argument("--video_dir", required=True, help=video_dir_help + " (searched recursively)")
    parser.add_argument("--output_dir", required=True, help="the videofolder dataset to write")
    parser.add_argument(
        "--link",
        choices=LINK_MODES,
        default="symlink",
        help="how videos enter the output: symlink (default; falls back to hardlink, then copy)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.prepare_data",
        description=__doc__.split("\n\n")[0],
        epilog="Run `python -m training.prepare_data NAME --help` for the inputs of NAME.",
    )
    sub = parser.add_subparsers(dest="name", required=True, metavar="NAME")
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser(
        "msrvtt",
        formatter_class=fmt,
        help="MSR-VTT text-video retrieval (1k-A test)",
        description="""\
MSR-VTT. Writes train (every caption of every training video: the 9k list gives 180,000 captions, as 180,000
(video, caption) rows, or with --train_rows video as 9,000 rows whose `caption` lists the video's 20 captions)
and test (one row per test video; with the 1k-A CSV one caption each). `caption` is a list of strings in every
split. MSR-VTT has no validation split; --validation_size N carves N training videos (drawn with --seed among
those found) into one, one row per video.
Inputs:
  --annotations  the official annotation JSON (MSRVTT_data.json / train_val_videodatainfo.json):
                 {"videos": [{"video_id": "video0", "split": "train", ...}],
                  "sentences": [{"video_id": "video0", "caption": "...", "sen_id": 0}, ...]}
  --train_csv    the training list, a CSV with a `video_id` column (MSRVTT_train.9k.csv, MSRVTT_train.7k.csv);
                 default: the videos of the JSON whose split is "train"
  --test_csv     the 1k-A test CSV, header `key,vid_key,video_id,sentence` (CLIP4Clip's MSRVTT_JSFUSION_test.csv),
                 one caption per test video; default: the JSON's "test" videos with all their captions
  --video_dir    the folder of videoN.mp4 files (any extension is found by the stem)""",
    )
    _common(p, "folder of videoN.mp4")
    p.add_argument("--annotations", required=True, help="MSRVTT_data.json")
    p.add_argument("--train_csv", default=None, help="MSRVTT_train.9k.csv (header video_id)")
    p.add_argument("--test_csv", default=None, help="MSRVTT_JSFUSION_test.csv (header key,vid_key,video_id,sentence)")
    p.add_argument("--validation_size", type=int, default=0, help="training videos moved to a validation split")
    _train_rows(p)
    p.add_argument("--seed", type=int, default=0, help="draw of --validation_size")

    p = sub.add_parser(
        "activitynet",
        formatter_class=fmt,
        help="ActivityNet Captions paragraph retrieval",
        description="""\
ActivityNet Captions, paragraph-to-video retrieval (as CLIP4Clip): one row per video whose `caption` is its
sentences joined with spaces, in annotation order. The standard test split is val_1.json.
Inputs:
  --train_json / --test_json / --validation_json   caption files of the release (train.json, val_1.json,
                 val_2.json): {"v_ID": {"duration": 82.7, "timestamps": [[0, 5.2], ...], "sentences": [...]}}
  --video_dir    the videos, named v_ID.<ext> or ID.<ext>""",
    )
    _common(p, "folder of v_ID.mp4")
    p.add_argument("--train_json", default=None, help="train.json")
    p.add_argument("--validation_json", default=None, help="e.g. val_2.json (no standard validation split)")
    p.add_argument("--test_json", default=None, help="val_1.json (the standard test split)")

    p = sub.add_parser(
        "didemo",
        formatter_class=fmt,
        help="DiDeMo paragraph retrieval",
        description="""\
DiDeMo, paragraph-to-video retrieval (as CLIP4Clip): one row per video whose `caption` is the descriptions of
all its moments joined with spaces, in annotation order (`times` is read but not used: the whole video is kept).
Inputs:
  --train_json / --validation_json / --test_json   train_data.json, val_data.json, test_data.json of the release:
                 [{"video": "<file name>", "description": "...", "times": [[0, 0], ...], ...}, ...]
  --video_dir    the videos, found by the "video" file name or by its stem (re-encoded .mp4 copies)""",
    )
    _common(p, "folder of the DiDeMo videos")
    p.add_argument("--train_json", default=None, help="train_data.json")
    p.add_argument("--validation_json", default=None, help="val_data.json")
    p.add_argument("--test_json", default=None, help="test_data.json")

    p = sub.add_parser(
        "msvd",
        formatter_class=fmt,
        help="MSVD retrieval (several captions per test video)",
        description="""\
MSVD (YouTube2Text). Validation and test: one row per video with `caption` = the list of all its captions, so
every caption is a query and V2T ranks over multiple captions; train: one row per (video, caption) pair (or, with
--train_rows video, one row per video with its list).
Inputs:
  --captions     AllVideoDescriptions.txt (lines `<video id> <caption>`, lines starting with # skipped) or
                 CLIP4Clip's raw-captions.pkl ({video id: [[token, ...], ...]}; read without running code)
  --train_list / --validation_list / --test_list   train_list.txt, val_list.txt, test_list.txt: one video id a line
                 (the standard 1,200 / 100 / 670 split)
  --video_dir    the videos, <video id>.avi (any extension is found by the stem)""",
    )
    _common(p, "folder of <video id>.avi")
    p.add_argument("--captions", required=True, help="AllVideoDescriptions.txt or raw-captions.pkl")
    p.add_argument("--train_list", default=None, help="train_list.txt")
    p.add_argument("--validation_list", default=None, help="val_list.txt")
    p.add_argument("--test_list", default=None, help="test_list.txt")
    _train_rows(p)

    p = sub.add_parser(
        "ucf101",
        formatter_class=fmt,
        help="UCF101 recognition",
        description="""\
UCF101 action recognition. `label` = the class folder made readable (ApplyEyeMakeup -> apply eye makeup);
splits train and test of the chosen official fold.
Inputs:
  --video_dir    the UCF-101 folder: <ClassFolder>/v_<Class>_gXX_cXX.avi
  --split_dir    ucfTrainTestlist: classInd.txt (`1 ApplyEyeMakeup`), trainlist0K.txt
                 (`ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1`), testlist0K.txt (`ApplyEyeMakeup/...avi`)
  --fold         K, 1-3 (default 1)""",
    )
    _common(p, "the UCF-101 folder of class folders")
    p.add_argument("--split_dir", required=True, help="ucfTrainTestlist")
    p.add_argument("--fold", type=int, choices=[1, 2, 3], default=1)

    p = sub.add_parser(
        "hmdb51",
        formatter_class=fmt,
        help="HMDB51 recognition",
        description="""\
HMDB51 action recognition. `label` = the class folder made readable (brush_hair -> brush hair); splits train
(marked 1) and test (marked 2) of the chosen official fold; videos marked 0 are in neither and counted.
Inputs:
  --video_dir    the hmdb51 folder: <class>/<video>.avi
  --split_dir    testTrainMulti_7030_splits: <class>_test_split<K>.txt with lines `<video>.avi <0|1|2>`
  --fold         K, 1-3 (default 1)""",
    )
    _common(p, "the HMDB51 folder of class folders")
    p.add_argument("--split_dir", required=True, help="testTrainMulti_7030_splits")
    p.add_argument("--fold", type=int, choices=[1, 2, 3], default=1)

    p = sub.add_parser(
        "kinetics",
        formatter_class=fmt,
        help="Kinetics-400/600/700 recognition",
        description="""\
Kinetics recognition. `label` = the CSV's label (underscores made spaces); the split column decides the split
(train; val or validate -> validation; test). Rows without a label are counted and left out.
Inputs:
  --annotations  one or more CSVs with header `label,youtube_id,time_start,time_end,split` (train.csv,
                 validate.csv, test.csv of the release; extra columns are ignored)
  --video_dir    the videos, named <youtube_id>_<time_start:06d>_<time_end:06d>.<ext> (the usual download
                 naming) or <youtube_id>.<ext>, in any sub-folders""",
    )
    _common(p, "folder of the Kinetics clips")
    p.add_argument("--annotations", nargs="+", required=True, help="train.csv validate.csv test.csv")
    return parser


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    read_splits, finder = DATASETS[args.name]
    index = VideoIndex(args.video_dir)
    splits = read_splits(args, index)
    if not splits:
        raise SystemExit(f"{args.name}: no split given (see python -m training.prepare_data {args.name} --help)")
    return write_dataset(args.name, splits, finder, index, args.output_dir, args.link)


if __name__ == "__main__":
    main()

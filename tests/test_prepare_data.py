"""`python -m training.prepare_data`: miniature copies of each benchmark's raw release -> videofolder datasets."""

import csv
import json
import os
import pickle
from pathlib import Path

import pytest

from training import prepare_data
from training.data import load_video_text_dataset
from training.prepare_data import readable_class_name

from .video_factory import moving_frames, write_video


def _write_videos(folder: Path, names) -> Path:
    for i, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video(path, moving_frames(4, 32, 32, seed=i))
    return folder


def _write_csv(path: Path, header, rows) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _metadata(out: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (out / split / "metadata.jsonl").read_text().splitlines()]


def _splits(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if (p / "metadata.jsonl").exists())


# ----------------------------------------------------------------------------------------------------------- msrvtt


def mini_msrvtt(root: Path) -> dict:
    """video0-4 on disk; the annotations also list video5 (not downloaded). 9k-style train list: video0, 1, 2, 5;
    1k-A-style test CSV: video3, video4 with one sentence each."""
    videos = _write_videos(root / "videos", [f"video{i}.mp4" for i in range(5)])
    annotations = {
        "info": {"year": 2016},
        "videos": [{"video_id": f"video{i}", "split": "train" if i < 3 else "test", "id": i} for i in range(6)],
        "sentences": [
            {"video_id": f"video{i}", "caption": f"clip {i} caption {k}", "sen_id": 10 * i + k}
            for i in range(6)
            for k in (2, 0, 1)  # written out of order: sen_id orders them
        ],
    }
    (root / "MSRVTT_data.json").write_text(json.dumps(annotations))
    _write_csv(root / "MSRVTT_train.9k.csv", ["video_id"], [["video0"], ["video1"], ["video2"], ["video5"]])
    _write_csv(
        root / "MSRVTT_JSFUSION_test.csv",
        ["key", "vid_key", "video_id", "sentence"],
        [["ret0", "msr3", "video3", "a person cooks in a kitchen"], ["ret1", "msr4", "video4", "a dog runs on grass"]],
    )
    return {
        "--video_dir": str(videos),
        "--annotations": str(root / "MSRVTT_data.json"),
        "--train_csv": str(root / "MSRVTT_train.9k.csv"),
        "--test_csv": str(root / "MSRVTT_JSFUSION_test.csv"),
    }


def _argv(name, inputs: dict, out: Path, *extra):
    argv = [name]
    for flag, value in inputs.items():
        argv += [flag, *value] if isinstance(value, list) else [flag, value]
    return [*argv, "--output_dir", str(out), *extra]


def test_msrvtt_writes_train_and_1k_test_with_every_caption_and_lists_missing_videos(tmp_path, capsys):
    inputs = mini_msrvtt(tmp_path / "raw")
    out = tmp_path / "msrvtt"
    summary = prepare_data.main(_argv("msrvtt", inputs, out, "--train_rows", "video"))
    printed = capsys.readouterr().out

    assert _splits(out) == ["test", "train"]  # no validation split unless asked for
    train, test = _metadata(out, "train"), _metadata(out, "test")
    assert [r["file_name"] for r in train] == ["video0.mp4", "video1.mp4", "video2.mp4"]
    assert train[1]["caption"] == ["clip 1 caption 0", "clip 1 caption 1", "clip 1 caption 2"]
    assert test == [
        {"file_name": "video3.mp4", "caption": ["a person cooks in a kitchen"]},
        {"file_name": "video4.mp4", "caption": ["a dog runs on grass"]},
    ]
    assert summary["splits"]["train"] == {
        "rows": 3,
        "videos": 3,
        "missing_videos": 1,
        "captions": 9,
        "missing": ["video5"],
    }
    assert summary["splits"]["test"]["rows"] == 2 and summary["splits"]["test"]["captions"] == 2
    assert summary["link"] == {"symlink": 5}
    assert "train: 3 rows, 9 captions, 1 missing videos (video5)" in printed
    assert "test: 2 rows, 2 captions, 0 missing videos" in printed
    assert (out / "missing_videos.txt").read_text() == "train\tvideo5\n"
    # Linked, not copied.
    link = out / "train" / "video0.mp4"
    assert link.is_symlink() and link.resolve() == (Path(inputs["--video_dir"]) / "video0.mp4").resolve()

    # What --dataset_name OUT reads, with the default column names.
    data = load_video_text_dataset(str(out))
    assert sorted(data) == ["test", "train"]
    assert data["train"].num_rows == 3 and data["test"].num_rows == 2
    assert data["train"][0]["caption"] == ["clip 0 caption 0", "clip 0 caption 1", "clip 0 caption 2"]
    assert Path(data["test"][1]["video"]["path"]).name == "video4.mp4"


def test_msrvtt_validation_carved_from_train_and_one_row_per_caption_by_default(tmp_path, capsys):
    inputs = mini_msrvtt(tmp_path / "raw")
    first = prepare_data.main(_argv("msrvtt", inputs, tmp_path / "a", "--validation_size", "1"))
    again = prepare_data.main(_argv("msrvtt", inputs, tmp_path / "a", "--validation_size", "1"))  # rerun: same
    assert first["splits"] == again["splits"]
    train, validation = _metadata(tmp_path / "a", "train"), _metadata(tmp_path / "a", "validation")
    assert len(train) == 6 and len(validation) == 1 and len(validation[0]["caption"]) == 3  # pairs / one row
    assert {r["file_name"] for r in train} | {validation[0]["file_name"]} == {"video0.mp4", "video1.mp4", "video2.mp4"}

    pairs = prepare_data.main(_argv("msrvtt", inputs, tmp_path / "b"))
    assert "train: 9 rows (3 videos), 9 captions, 1 missing videos (video5)" in capsys.readouterr().out
    rows = _metadata(tmp_path / "b", "train")
    assert pairs["splits"]["train"]["rows"] == 9 and pairs["splits"]["train"]["videos"] == 3
    assert [r["caption"] for r in rows[:3]] == [["clip 0 caption 0"], ["clip 0 caption 1"], ["clip 0 caption 2"]]
    assert load_video_text_dataset(str(tmp_path / "b"))["train"].num_rows == 9


def test_msrvtt_bad_annotations_name_the_file_and_field(tmp_path):
    inputs = mini_msrvtt(tmp_path / "raw")
    (tmp_path / "bad.json").write_text(json.dumps({"videos": [], "sentences": [{"video_id": "video0"}]}))
    with pytest.raises(ValueError, match=r"bad.json: sentences\[0\] has no 'caption'"):
        prepare_data.main(_argv("msrvtt", {**inputs, "--annotations": str(tmp_path / "bad.json")}, tmp_path / "o"))
    _write_csv(tmp_path / "train.csv", ["vid"], [["video0"]])
    with pytest.raises(ValueError, match=r"train.csv: header \['vid'\] lacks the column\(s\) \['video_id'\]"):
        prepare_data.main(_argv("msrvtt", {**inputs, "--train_csv": str(tmp_path / "train.csv")}, tmp_path / "o"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="msrvtt train: none of the 4 videos was found"):
        prepare_data.main(_argv("msrvtt", {**inputs, "--video_dir": str(tmp_path / "empty")}, tmp_path / "o"))


def test_links_fall_back_to_hard_links_and_say_so(tmp_path, monkeypatch, capsys):
    inputs = mini_msrvtt(tmp_path / "raw")

    def no_symlinks(self, target):
        raise OSError("symbolic links not supported here")

    monkeypatch.setattr(Path, "symlink_to", no_symlinks)
    summary = prepare_data.main(_argv("msrvtt", inputs, tmp_path / "out"))
    assert summary["link"] == {"hardlink": 5}
    assert "5 hard-linked" in capsys.readouterr().out
    link = tmp_path / "out" / "test" / "video3.mp4"
    assert not link.is_symlink() and os.stat(link).st_nlink == 2


# ------------------------------------------------------------------------------------------------ paragraph datasets


def test_activitynet_joins_the_sentences_of_a_video_into_one_paragraph(tmp_path, capsys):
    videos = _write_videos(tmp_path / "videos", ["v_aaa.mp4", "v_bbb.mkv", "ccc.mp4"])  # ccc stored without v_
    train = {
        "v_aaa": {"duration": 10.0, "timestamps": [[0, 4], [4, 10]], "sentences": ["A man runs.", " He jumps. "]},
        "v_bbb": {"duration": 8.0, "timestamps": [[0, 8]], "sentences": ["A cat sleeps."]},
    }
    val_1 = {
        "v_ccc": {"duration": 5.0, "timestamps": [[0, 2], [2, 5]], "sentences": ["Someone cooks.", "They eat."]},
        "v_ddd": {"duration": 5.0, "timestamps": [[0, 5]], "sentences": ["Not downloaded."]},
    }
    (tmp_path / "train.json").write_text(json.dumps(train))
    (tmp_path / "val_1.json").write_text(json.dumps(val_1))
    out = tmp_path / "anet"
    summary = prepare_data.main(
        _argv(
            "activitynet",
            {
                "--video_dir": str(videos),
                "--train_json": str(tmp_path / "train.json"),
                "--test_json": str(tmp_path / "val_1.json"),
            },
            out,
        )
    )
    assert _splits(out) == ["test", "train"]
    assert _metadata(out, "train") == [
        {"file_name": "v_aaa.mp4", "caption": "A man runs. He jumps."},
        {"file_name": "v_bbb.mkv", "caption": "A cat sleeps."},
    ]
    assert _metadata(out, "test") == [{"file_name": "ccc.mp4", "caption": "Someone cooks. They eat."}]
    assert summary["splits"]["test"]["missing"] == ["v_ddd"]
    assert summary["splits"]["train"]["captions"] == 2  # one paragraph per video
    data = load_video_text_dataset(str(out))
    assert data["test"][0]["caption"] == "Someone cooks. They eat."


def test_didemo_joins_moment_descriptions_and_finds_reencoded_copies(tmp_path):
    videos = _write_videos(tmp_path / "videos", ["111@N00_a.mp4", "222@N00_b.mp4", "333@N00_c.mp4"])

    def moments(video, *descriptions):
        return [
            {
                "video": video,
                "description": d,
                "times": [[k, k], [k, k + 1]],
                "annotation_id": k,
                "dl_link": "http://example.invalid",
            }
            for k, d in enumerate(descriptions)
        ]

    (tmp_path / "train_data.json").write_text(
        json.dumps(moments("111@N00_a.mov", "the dog barks", "the dog sits") + moments("222@N00_b.mp4", "a car turns"))
    )
    (tmp_path / "val_data.json").write_text(json.dumps(moments("444@N00_d.avi", "never downloaded")))
    (tmp_path / "test_data.json").write_text(json.dumps(moments("333@N00_c.m4v", "first", "second", "third")))
    out = tmp_path / "didemo"
    summary = prepare_data.main(
        _argv(
            "didemo",
            {
                "--video_dir": str(videos),
                "--train_json": str(tmp_path / "train_data.json"),
                "--test_json": str(tmp_path / "test_data.json"),
            },
            out,
        )
    )
    assert _metadata(out, "train") == [
        {"file_name": "111@N00_a.mp4", "caption": "the dog barks the dog sits"},
        {"file_name": "222@N00_b.mp4", "caption": "a car turns"},
    ]
    assert _metadata(out, "test") == [{"file_name": "333@N00_c.mp4", "caption": "first second third"}]
    assert summary["splits"]["train"]["rows"] == 2 and summary["splits"]["test"]["captions"] == 1

    with pytest.raises(FileNotFoundError, match="didemo validation: none of the 1 videos"):
        prepare_data.main(
            _argv(
                "didemo",
                {"--video_dir": str(videos), "--validation_json": str(tmp_path / "val_data.json")},
                tmp_path / "x",
            )
        )


# ------------------------------------------------------------------------------------------------------------- msvd


def mini_msvd(root: Path) -> dict:
    videos = _write_videos(root / "YouTubeClips", ["-4wsuPCjDBc_5_15.avi", "abc_1_9.avi", "xyz_0_4.avi"])
    lines = [
        "# MSVD descriptions",
        "# VideoID Description",
        "-4wsuPCjDBc_5_15 a squirrel is eating a peanut",
        "-4wsuPCjDBc_5_15 a chipmunk eats",
        "abc_1_9 a man plays guitar",
        "xyz_0_4 a woman slices a tomato",
        "xyz_0_4 someone cuts a tomato",
        "xyz_0_4 a tomato is being sliced",
        "gone_1_2 a lost video",
    ]
    (root / "AllVideoDescriptions.txt").write_text("\n".join(lines) + "\n")
    (root / "train_list.txt").write_text("-4wsuPCjDBc_5_15\nabc_1_9\n")
    (root / "test_list.txt").write_text("xyz_0_4\ngone_1_2\n")
    return {
        "--video_dir": str(videos),
        "--captions": str(root / "AllVideoDescriptions.txt"),
        "--train_list": str(root / "train_list.txt"),
        "--test_list": str(root / "test_list.txt"),
    }


def test_msvd_keeps_every_caption_of_test_videos(tmp_path):
    inputs = mini_msvd(tmp_path / "raw")
    out = tmp_path / "msvd"
    summary = prepare_data.main(_argv("msvd", inputs, out))
    assert _metadata(out, "test") == [
        {
            "file_name": "xyz_0_4.avi",
            "caption": ["a woman slices a tomato", "someone cuts a tomato", "a tomato is being sliced"],
        }
    ]
    assert summary["splits"]["test"] == {
        "rows": 1,
        "videos": 1,
        "missing_videos": 1,
        "captions": 3,
        "missing": ["gone_1_2"],
    }
    train = summary["splits"]["train"]
    assert (train["rows"], train["videos"], train["captions"]) == (3, 2, 3)  # one row per training pair
    assert [r["caption"] for r in _metadata(out, "train")] == [
        ["a squirrel is eating a peanut"],
        ["a chipmunk eats"],
        ["a man plays guitar"],
    ]

    # CLIP4Clip's raw-captions.pkl gives the same dataset.
    captions = prepare_data.read_msvd_captions(inputs["--captions"])
    with open(tmp_path / "raw-captions.pkl", "wb") as f:
        pickle.dump({vid: [c.split() for c in texts] for vid, texts in captions.items()}, f)
    prepare_data.main(_argv("msvd", {**inputs, "--captions": str(tmp_path / "raw-captions.pkl")}, tmp_path / "pkl"))
    assert _metadata(tmp_path / "pkl", "test") == _metadata(out, "test")
    assert _metadata(tmp_path / "pkl", "train") == _metadata(out, "train")

    # A pickle that would construct an object is refused, not run.
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"x": [Path("a")]}, f)
    with pytest.raises(pickle.UnpicklingError, match="not allowed in a caption file"):
        prepare_data.read_msvd_captions(tmp_path / "evil.pkl")


# ------------------------------------------------------------------------------------------------------ recognition


def test_class_names_are_made_readable():
    assert readable_class_name("ApplyEyeMakeup") == "apply eye makeup"
    assert readable_class_name("YoYo") == "yo yo"
    assert readable_class_name("HandstandPushups") == "handstand pushups"
    assert readable_class_name("brush_hair") == "brush hair"
    assert readable_class_name("air drumming") == "air drumming"
    assert readable_class_name("playing_cello") == "playing cello"


def mini_ucf101(root: Path) -> dict:
    names = [
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi",
        "YoYo/v_YoYo_g01_c01.avi",
        "YoYo/v_YoYo_g08_c01.avi",
    ]
    videos = _write_videos(root / "UCF-101", names)
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 YoYo\n")
    (lists / "trainlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\nYoYo/v_YoYo_g08_c01.avi 2\nYoYo/v_YoYo_g09_c01.avi 2\n"
    )
    (lists / "testlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\nYoYo/v_YoYo_g01_c01.avi\n")
    return {"--video_dir": str(videos), "--split_dir": str(lists)}


def test_ucf101_class_folders_and_official_lists(tmp_path):
    out = tmp_path / "ucf"
    summary = prepare_data.main(_argv("ucf101", mini_ucf101(tmp_path / "raw"), out, "--fold", "1"))
    assert _splits(out) == ["test", "train"]
    assert _metadata(out, "train") == [
        {"file_name": "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "label": "apply eye makeup"},
        {"file_name": "YoYo/v_YoYo_g08_c01.avi", "label": "yo yo"},
    ]
    assert [r["label"] for r in _metadata(out, "test")] == ["apply eye makeup", "yo yo"]
    assert summary["splits"]["train"]["missing"] == ["YoYo/v_YoYo_g09_c01.avi"]
    assert summary["splits"]["test"]["classes"] == 2
    data = load_video_text_dataset(str(out), caption_column=None, label_column="label")
    assert sorted(set(data["test"]["label"])) == ["apply eye makeup", "yo yo"]


def test_hmdb51_split_marks_decide_train_test_and_unused(tmp_path, capsys):
    videos = _write_videos(
        tmp_path / "hmdb51",
        [
            "brush_hair/a_brush_hair_0.avi",
            "brush_hair/b_brush_hair_1.avi",
            "brush_hair/c_brush_hair_2.avi",
            "ride_bike/a_ride_bike_0.avi",
            "ride_bike/b_ride_bike_1.avi",
        ],
    )
    splits = tmp_path / "testTrainMulti_7030_splits"
    splits.mkdir()
    (splits / "brush_hair_test_split1.txt").write_text(
        "a_brush_hair_0.avi 1 \nb_brush_hair_1.avi 2 \nc_brush_hair_2.avi 0 \n"
    )
    (splits / "ride_bike_test_split1.txt").write_text("a_ride_bike_0.avi 1\nb_ride_bike_1.avi 2\n")
    (splits / "ride_bike_test_split2.txt").write_text("a_ride_bike_0.avi 2\nb_ride_bike_1.avi 1\n")
    out = tmp_path / "hmdb"
    summary = prepare_data.main(_argv("hmdb51", {"--video_dir": str(videos), "--split_dir": str(splits)}, out))
    assert _metadata(out, "train") == [
        {"file_name": "brush_hair/a_brush_hair_0.avi", "label": "brush hair"},
        {"file_name": "ride_bike/a_ride_bike_0.avi", "label": "ride bike"},
    ]
    assert [r["file_name"] for r in _metadata(out, "test")] == [
        "brush_hair/b_brush_hair_1.avi",
        "ride_bike/b_ride_bike_1.avi",
    ]
    assert summary["splits"]["train"]["skipped_unused_by_the_fold"] == 1
    assert "1 unused by the fold" in capsys.readouterr().out


def test_kinetics_csv_splits_labels_and_clip_names(tmp_path):
    videos = _write_videos(
        tmp_path / "kinetics",
        [
            "train/abseiling/aaa_000010_000020.mp4",
            "train/air drumming/b_b_000000_000010.mp4",
            "val/abseiling/ccc_000005_000015.mp4",
            "val/ddd.mp4",
        ],
    )
    rows = [
        ["abseiling", "aaa", "10", "20", "train"],
        ["air drumming", "b_b", "0", "10", "train"],
        ["air drumming", "zzz", "1", "11", "train"],
        ["abseiling", "ccc", "5", "15", "val"],
        ["air_drumming", "ddd", "3", "13", "val"],
    ]
    _write_csv(tmp_path / "train.csv", ["label", "youtube_id", "time_start", "time_end", "split"], rows[:3])
    _write_csv(tmp_path / "validate.csv", ["label", "youtube_id", "time_start", "time_end", "split"], rows[3:])
    out = tmp_path / "k400"
    summary = prepare_data.main(
        _argv(
            "kinetics",
            {
                "--video_dir": str(videos),
                "--annotations": [str(tmp_path / "train.csv"), str(tmp_path / "validate.csv")],
            },
            out,
        )
    )
    assert _splits(out) == ["train", "validation"]
    assert _metadata(out, "train") == [
        {"file_name": "train/abseiling/aaa_000010_000020.mp4", "label": "abseiling"},
        {"file_name": "train/air drumming/b_b_000000_000010.mp4", "label": "air drumming"},
    ]
    assert _metadata(out, "validation") == [
        {"file_name": "val/abseiling/ccc_000005_000015.mp4", "label": "abseiling"},
        {"file_name": "val/ddd.mp4", "label": "air drumming"},
    ]
    assert summary["splits"]["train"]["missing"] == ["zzz_000001_000011"]
    assert summary["splits"]["validation"]["classes"] == 2


@pytest.mark.parametrize("name", sorted(prepare_data.DATASETS))
def test_every_dataset_documents_its_inputs_in_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        prepare_data.build_parser().parse_args([name, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "Inputs:" in text and "--video_dir" in text and "--output_dir" in text

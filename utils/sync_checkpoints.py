"""Refresh the code copies inside committed model folders from the package (`make sync-checkpoints`).

A folder under `checkpoints/` that holds package modules (what `save_pretrained` copied for `trust_remote_code`)
gets each of them replaced by the package's file, plus every package module they import relatively that the folder
lacks. `--check` only lists what is out of date and exits 1 if anything is.
"""

import argparse
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "modeling_stop"
RELATIVE_IMPORT = re.compile(r"^\s*from \.(\w+) import", re.M)


def stale_copies(folder: Path) -> list[str]:
    """Package module names the folder needs (present there, or imported relatively) that differ or are missing."""
    todo = [f.name for f in folder.glob("*.py") if (PACKAGE / f.name).is_file()]
    seen, stale = set(), []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        source, copy = PACKAGE / name, folder / name
        if not copy.is_file() or copy.read_bytes() != source.read_bytes():
            stale.append(name)
        todo += [f"{m}.py" for m in RELATIVE_IMPORT.findall(source.read_text()) if (PACKAGE / f"{m}.py").is_file()]
    return sorted(stale)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="list out-of-date copies, change nothing")
    args = parser.parse_args(argv)
    out_of_date = []
    for folder in sorted(p for p in (ROOT / "checkpoints").iterdir() if p.is_dir()):
        for name in stale_copies(folder):
            out_of_date.append(folder / name)
            if not args.check:
                shutil.copyfile(PACKAGE / name, folder / name)
            print(("out of date: " if args.check else "updated ") + str((folder / name).relative_to(ROOT)))
    return 1 if args.check and out_of_date else 0


if __name__ == "__main__":
    sys.exit(main())

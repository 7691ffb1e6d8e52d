"""Store a finished training run as an embedded model folder: `python utils/publish_checkpoint.py RUN DEST`.

RUN is a `training/train.py --output_dir` (the selected model). DEST receives every file of RUN except its
resumable state (`checkpoints/`), with the weights converted to float16 on disk; `config.json` keeps `dtype`
float32, so `from_pretrained` computes in float32 (outputs move by about 1e-3). What DEST holds beside the model
and RUN lacks (e.g. `gallery/`) is kept; the code copies are the package's (`utils/sync_checkpoints.py` rule).
"""

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file
from sync_checkpoints import PACKAGE, stale_copies
from sync_checkpoints import ROOT as REPO

SKIP = {"checkpoints"}  # the run's resumable state: optimizer, RNG, stage-1 head


def _retarget_card(text: str, run: Path, dest: Path) -> str:
    """The run's model card, naming and loading DEST (as given, relative to the repository when inside it)."""
    dest_path = _shown(dest)
    text = re.sub(rf"^- name: {re.escape(run.name)}$", f"- name: {dest.name}", text, flags=re.M)
    text = re.sub(rf"^# {re.escape(run.name)}$", f"# {dest.name}", text, flags=re.M)
    text = re.sub(r'from_pretrained\("[^"]+"', f'from_pretrained("{dest_path}"', text)
    text = text.replace(f"`{REPO}/", "`")  # a backbone given as an absolute path inside the repository
    note = "Weights are stored in float16 and load in float32 (`config.json` `dtype`)."
    if note not in text:
        text = re.sub(r"(Only the prompt\s+modules are trained \([^)]*\)\.)", rf"\1 {note}", text, count=1)
    return text


def _shown(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def publish(run: Path, dest: Path) -> list[str]:
    run, dest = Path(run), Path(dest)
    if not (run / "model.safetensors").is_file() or not (run / "config.json").is_file():
        raise SystemExit(f"{run}: no model.safetensors/config.json (pass a finished training/train.py --output_dir)")
    if json.loads((run / "config.json").read_text()).get("dtype", "float32") != "float32":
        raise SystemExit(f"{run}/config.json: dtype is not float32; this stores float32 runs only")
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for item in sorted(run.iterdir()):
        if item.name in SKIP or (item.suffix == ".py" and (PACKAGE / item.name).is_file()):
            continue  # resume state; code copies come from the package below, never from the run
        target = dest / item.name
        if item.is_dir():
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(item, target)
        elif item.name == "model.safetensors":
            tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_file(item).items()}
            save_file(tensors, target, metadata={"format": "pt"})
        else:
            shutil.copy2(item, target)
        written.append(item.name)
    card = dest / "README.md"
    if card.is_file():
        card.write_text(_retarget_card(card.read_text(), run, dest))
    code = [f.name for f in run.glob("*.py") if (PACKAGE / f.name).is_file()]
    for name in code:  # make the run's code copies exist in DEST, then refresh them (and what they import)
        (dest / name).touch()
    for name in stale_copies(dest):
        shutil.copyfile(PACKAGE / name, dest / name)
    return written + code


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a finished training/train.py --output_dir")
    parser.add_argument("dest", help="the model folder to write, e.g. checkpoints/stop-synthetic")
    args = parser.parse_args(argv)
    written = publish(Path(args.run), Path(args.dest))
    print(f"{args.dest}: {', '.join(written)} (weights in float16)", file=sys.stderr)


if __name__ == "__main__":
    main()

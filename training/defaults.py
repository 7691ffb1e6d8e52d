"""Names and paths that training, benchmarks and tests share: this checkout's embedded default world.

Nothing here imports torch, transformers or the data generator, so any script can read it for free.

- `DEFAULT_CLIP`: the small CLIP pretrained on synthetic stills (`training/pretrain_clip.py`), the default backbone.
- `DEFAULT_STOP`: the trained default STOP model; `DEFAULT_GALLERY` its committed gallery clips.
- `CLASS_NAMES`: the order-dependent classes of the synthetic benchmark (`training.synthetic` writes them).
- `LABEL_TEMPLATE`: class name -> text, in the convention of the model's pipelines and `STOPForVideoClassification`
  (`"{}"`); `label_texts` also accepts the `"{label}"` spelling of the `--label_template` flags.
"""

from collections.abc import Iterable
from pathlib import Path

# Resolved from this file, not the working directory, so the defaults hold wherever a script is started.
CHECKOUT = Path(__file__).resolve().parents[1]
DEFAULT_CLIP = CHECKOUT / "checkpoints" / "clip-synthetic"
DEFAULT_STOP = CHECKOUT / "checkpoints" / "stop-synthetic"
DEFAULT_GALLERY = DEFAULT_STOP / "gallery"

# The same string as `modeling_stop`'s DEFAULT_LABEL_TEMPLATE / DEFAULT_HYPOTHESIS_TEMPLATE (a test checks it);
# not imported from there because that import costs torch and transformers.
LABEL_TEMPLATE = "a video of {}"

CLASS_NAMES = (
    "moving left",
    "moving right",
    "moving up",
    "moving down",
    "growing",
    "shrinking",
    "fading in",
    "fading out",
    "turning red",
    "turning yellow",
    "turning green",
    "turning blue",
    "left then right",
    "right then left",
)


def label_texts(names: Iterable[str], template: str = LABEL_TEMPLATE) -> list[str]:
    """Class names -> the texts that stand for them. `template` holds `{}` or `{label}` where the name goes."""
    if "{}" not in template and "{label}" not in template:
        raise ValueError(f"label template {template!r} has no place for the class name: write `{{}}` or `{{label}}`")
    return [template.format(name, label=name) for name in names]

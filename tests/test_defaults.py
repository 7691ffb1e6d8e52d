"""The shared constants: one light module, agreeing with the model's own label template and the data generator."""

import subprocess
import sys

import pytest

from training import defaults


def test_the_defaults_module_imports_neither_torch_nor_the_generator():
    script = "import sys, training.defaults; print(sorted({'torch', 'transformers', 'training.synthetic'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.strip() == "[]"


def test_the_label_template_is_the_models_own():
    from modeling_stop.modeling_stop_classification import DEFAULT_LABEL_TEMPLATE
    from modeling_stop.pipelines import DEFAULT_HYPOTHESIS_TEMPLATE

    assert defaults.LABEL_TEMPLATE == DEFAULT_LABEL_TEMPLATE == DEFAULT_HYPOTHESIS_TEMPLATE


def test_label_texts_accept_both_placeholder_spellings_and_refuse_none():
    assert defaults.label_texts(["growing", "fading in"]) == ["a video of growing", "a video of fading in"]
    assert defaults.label_texts(["growing"], "a shape {label}") == ["a shape growing"]
    with pytest.raises(ValueError, match="no place for the class name"):
        defaults.label_texts(["growing"], "a video")


def test_the_generator_uses_the_shared_class_names_and_backbone():
    from training import synthetic

    assert tuple(synthetic.CLASS_NAMES) == defaults.CLASS_NAMES and len(set(defaults.CLASS_NAMES)) == 14
    assert synthetic.DEFAULT_CLIP == defaults.DEFAULT_CLIP


def test_the_default_paths_hold_the_committed_models():
    assert (defaults.DEFAULT_CLIP / "config.json").is_file() and (defaults.DEFAULT_STOP / "config.json").is_file()
    assert len(list(defaults.DEFAULT_GALLERY.rglob("*.mp4"))) == 12

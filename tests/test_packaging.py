"""`pip install .` ships the model package alone and it works outside the checkout: a wheel built from the sources
holds `modeling_stop` and none of the checkout's scripts (`training`, `benchmarks`, `demo`, `tests`), and the
installed package imports, builds a model and saves a loadable folder with its own code from an empty directory."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from tests.tiny import tiny_clip_config

REPO = Path(__file__).resolve().parents[1]
CHECKOUT_PACKAGES = {"training", "benchmarks", "demo", "tests"}
# What the build reads, plus the checkout's other top-level packages, which must stay out of the wheel.
SOURCES = ("pyproject.toml", "README.md", "modeling_stop", *sorted(CHECKOUT_PACKAGES))


# The wheel tests are slow: a wheel build and a fresh interpreter that imports torch, ~30-60 s here.
@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of a copy of the sources (building in place would leave build/ and *.egg-info in the checkout)."""
    source, dist = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("dist")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".cache"))
        else:
            shutil.copy(REPO / name, source / name)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    subprocess.run([*command, "--wheel-dir", str(dist), str(source)], check=True, timeout=300)
    (built,) = dist.glob("stop_video-*.whl")
    return built


@pytest.mark.slow
def test_the_wheel_holds_the_model_package_and_no_checkout_scripts(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"modeling_stop", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    assert not top_level & CHECKOUT_PACKAGES
    package_files = {f"modeling_stop/{path.name}" for path in (REPO / "modeling_stop").glob("*.py")}
    assert package_files and package_files <= set(names)


@pytest.mark.slow
def test_the_installed_package_works_from_an_empty_directory(wheel, tmp_path):
    target, empty, folder = tmp_path / "site", tmp_path / "empty", tmp_path / "saved"
    empty.mkdir()
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target), str(wheel)],
        check=True,
        timeout=300,
    )
    assert {path.name for path in target.iterdir()} & CHECKOUT_PACKAGES == set()
    clip = tiny_clip_config()
    script = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        import modeling_stop
        from modeling_stop import STOPConfig, STOPModel, STOPProcessor
        config = STOPConfig(text_config={clip.text_config.to_dict()!r}, vision_config={clip.vision_config.to_dict()!r},
                            num_frames=4, max_words=8)
        model = STOPModel(config)
        model.save_pretrained({str(folder)!r})
        reloaded = STOPModel.from_pretrained({str(folder)!r})
        print(json.dumps({{
            "package": modeling_stop.__file__,
            "processor": STOPProcessor.__module__,
            "checkout_modules": sorted({{name.split(".")[0] for name in sys.modules}} & set({sorted(CHECKOUT_PACKAGES)!r})),
            "same_weights": all(a.equal(b) for a, b in zip(model.state_dict().values(),
                                                           reloaded.state_dict().values())),
        }}))
    """)
    # The target comes first on sys.path; the checkout (an editable install, the checkout .pth) may still be
    # further down, so the report says where each module came from.
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=empty, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(report["package"]).is_relative_to(target), report
    assert report["processor"] == "modeling_stop.processing_stop" and report["checkout_modules"] == []
    assert report["same_weights"]
    # The saved folder carries the installed package's code for trust_remote_code, byte for byte.
    for name in ("configuration_stop.py", "modeling_stop.py"):
        assert (folder / name).read_bytes() == (target / "modeling_stop" / name).read_bytes(), name


def test_make_checkout_path_puts_the_checkout_on_a_venvs_sys_path(tmp_path):
    """What `make setup` adds after the editable install: the scripts' packages import from any directory."""
    venv, empty = tmp_path / "venv", tmp_path / "empty"
    empty.mkdir()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "checkout-path", f"PY={python}"], check=True)
    script = (
        "import benchmarks.compare, training.defaults; print(training.defaults.__file__, benchmarks.compare.__file__)"
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([str(python), "-c", script], cwd=empty, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    paths = [Path(path) for path in result.stdout.split()]
    assert paths == [REPO / "training" / "defaults.py", REPO / "benchmarks" / "compare.py"]

"""Fixtures for every test folder (tests/<package>/ mirrors src/napari_dfa/<package>/): the isolated
cache, one torch thread, the demo model, the tests' tiny model and a small slide. The widget tests'
own fixtures are in tests/widgets/conftest.py. GUI tests use napari's own `make_napari_viewer`
fixture (Xvfb + Mesa)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Deterministic, and no thread oversubscription on the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")

# Property tests draw the same examples on every run, so that CI passes or fails the same way twice
# (a new random draw found an edge case mid-CI once; it is an explicit @example now). Fresh random
# draws: `HYPOTHESIS_PROFILE=explore pytest tests/reliability/`.
try:
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("ci", derandomize=True)
    _hypothesis_settings.register_profile("explore", derandomize=False)
    _hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # the test extras bring it; without them those two files cannot run anyway
    pass


def pytest_collection_modifyitems(config, items):
    """Under `make mutate`, a mutant's tests run fastest first, so that `-x` stops at the first cheap
    test that kills it. mutmut records each test's duration (mutants/mutmut-stats.json) and its fork
    runner sorts by it, but the fork server we use (torch is not fork-safe) hands the tests over in
    set order: a checkpoint mutant ran ~30 s of model loads and fuzzing before its 0.01 s killer."""
    if not os.environ.get("MUTANT_UNDER_TEST"):
        return
    stats = Path(str(config.rootpath)) / "mutmut-stats.json"
    if not stats.is_file():
        return
    import json

    durations = json.loads(stats.read_text(encoding="utf-8")).get("duration_by_test", {})
    items.sort(key=lambda item: durations.get(item.nodeid, float("inf")))  # stable: ties keep their order


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Sample data and caches go to a per-session temp folder, never to the user's home."""
    cache = tmp_path_factory.getbasetemp() / "napari-dfa-cache"
    monkeypatch.setenv("NAPARI_DFA_CACHE", str(cache))
    yield


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test, restored after: on the 2 shared CI cores a second thread
    only spins against the other process (and keeps small CPU tests deterministic in speed)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def demo():
    """The bundled demo model, loaded once per test module: modules that change it (precision,
    memory format, classes) do not hand their changes to the next one."""
    from napari_dfa.model import load_model

    return load_model("demo")


@pytest.fixture(scope="session")
def tiny_segmenter():
    """Builds the tests' untrained ``tiny`` DFA model: BCSS's five class names (tests/bcss_classes.py),
    0.5 µm/px, torch seeded with 0 just before (so every build has the same weights). Keywords go to
    ``Segmenter.from_config`` (``class_colors``, ``frequencies``, ...); the caller saves it where
    its test wants the file."""

    def build(**kwargs):
        import torch

        from bcss_classes import NAMES
        from napari_dfa.model import ModelConfig, Segmenter

        torch.manual_seed(0)
        return Segmenter.from_config(ModelConfig.from_preset("tiny", num_classes=5),
                                     **{"class_names": NAMES, "mpp": 0.5, **kwargs})

    return build


# The model and slide below are made once per test module (as when each module imported them): the
# cached whole-slide labels are keyed by the slide's path, so two modules never share them.
@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory, tiny_segmenter) -> Path:
    """An untrained ``tiny`` Segmenter with the synthetic classes, trained at 0.5 µm/px."""
    from napari_dfa.classes import SYNTHETIC

    seg = tiny_segmenter(class_names=SYNTHETIC.names, class_colors=SYNTHETIC.colors,
                         frequencies=[0.4, 0.3, 0.15, 0.1, 0.05])
    path = tmp_path_factory.mktemp("models") / "tiny.safetensors"
    seg.save(path, provenance={"data": "untrained test model"})
    return path


@pytest.fixture(scope="module")
def small_slide(tmp_path_factory) -> Path:
    """A 2048² three-level synthetic OME-TIFF (0.5 µm/px) with its truth."""
    from napari_dfa import synth

    folder = tmp_path_factory.mktemp("slides")
    slide, _truth = synth.write_slide(folder / "small.ome.tif", size=(2048, 2048), seed=3, mpp=0.5)
    return Path(slide)

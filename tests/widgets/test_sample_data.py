"""Sample data: a synthetic slide and its truth, generated once into the cache, shown in napari."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_dfa import _sample_data
from napari_dfa._sample_data import sample_slide, sample_slide_path, sample_truth_path
from napari_dfa.classes import SYNTHETIC


def test_sample_is_generated_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_DFA_CACHE", str(tmp_path / "cache"))
    path = sample_slide_path(size=640, seed=2)
    assert path.parent == tmp_path / "cache" and path.is_file()
    truth = sample_truth_path(size=640, seed=2)
    assert tifffile.imread(path).shape == (640, 640, 3)
    assert tifffile.imread(truth).shape == (640, 640)
    stamp = path.stat().st_mtime_ns
    assert sample_slide_path(size=640, seed=2) == path
    assert path.stat().st_mtime_ns == stamp  # reused, not regenerated
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")] == []


def test_interrupted_generation_is_not_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_DFA_CACHE", str(tmp_path))
    import napari_dfa.synth as synth

    real = synth.write_slide

    def dies_after_writing(path, *args, **kwargs):
        real(path, *args, **kwargs)
        raise KeyboardInterrupt  # the user pressed Ctrl+C just after the files were written

    monkeypatch.setattr(synth, "write_slide", dies_after_writing)
    with pytest.raises(KeyboardInterrupt):
        sample_slide_path(size=320, seed=1)
    assert list(tmp_path.iterdir()) == []  # nothing half-made left behind, nothing to reuse
    monkeypatch.setattr(synth, "write_slide", real)
    path = sample_slide_path(size=320, seed=1)
    assert tifffile.imread(path).shape == (320, 320, 3)


def test_sample_layers_are_aligned_and_described():
    layers = sample_slide()
    assert [kind for _, _, kind in layers] == ["image", "labels"]
    (image, image_kw, _), (labels, labels_kw, _) = layers
    assert image_kw["rgb"] is True and image_kw["scale"] == (0.5, 0.5) and labels_kw["scale"] == (0.5, 0.5)
    assert image[0].shape == (_sample_data.SAMPLE_SIZE, _sample_data.SAMPLE_SIZE, 3)
    assert [lv.shape[:2] for lv in image] == [lv.shape for lv in labels]
    assert labels[0].dtype == np.uint8
    assert image_kw["metadata"]["class_names"] == ["inflammatory", "tumour", "stroma", "other", "necrosis"]
    assert labels_kw["colormap"][2][:3] == pytest.approx((230 / 255, 40 / 255, 40 / 255))
    # The truth shows glass (0) and every class on a low level without reading level 0.
    assert set(np.unique(np.asarray(labels[-1]))) == {0, 1, 2, 3, 4, 5}


@pytest.mark.gui
def test_open_sample_in_napari(make_napari_viewer, qtbot):
    from napari.layers import Image, Labels

    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-dfa", "synthetic_slide")
    # (generated in the background when not cached yet: wait for it)
    qtbot.waitUntil(lambda: [type(layer) for layer in viewer.layers] == [Image, Labels], timeout=600_000)
    image, truth = viewer.layers
    assert image.rgb and image.multiscale and truth.multiscale
    assert tuple(truth.scale) == pytest.approx((0.5, 0.5))
    assert truth.get_color(3)[:3] == pytest.approx(np.array(SYNTHETIC.colors[2]) / 255, abs=1e-3)  # stroma
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    # Tissue on glass: pink-purple H&E pixels (red above green) and bright glass, not a blank canvas.
    pink = (shot[..., 0] - shot[..., 1] > 40) & (shot.sum(-1) < 640)
    glass = shot.min(-1) > 225
    assert pink.mean() > 0.2, pink.mean()
    assert glass.mean() > 0.02
    # Ticking the truth on overlays the class colours.
    truth.visible = True
    truth.opacity = 1.0
    shot2 = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    assert np.abs(shot2 - shot).mean() > 10


@pytest.mark.gui
def test_first_generation_runs_in_a_worker_with_progress(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """Not in the cache yet: the menu returns at once with a placeholder over the slide's extent,
    a progress bar advances while a worker writes the slide, then the slide and its truth replace
    the placeholder."""
    from napari.layers import Image, Labels

    monkeypatch.setenv("NAPARI_DFA_CACHE", str(tmp_path))
    monkeypatch.setattr(_sample_data, "SAMPLE_SIZE", 1024)
    seen = []
    real = _sample_data.sample_slide_path

    def recording(**kwargs):
        report = kwargs.pop("progress")
        return real(progress=lambda done, total: (seen.append((done, total)), report(done, total)), **kwargs)

    monkeypatch.setattr(_sample_data, "sample_slide_path", recording)
    viewer = make_napari_viewer(show=True)
    assert not _sample_data.sample_ready()
    viewer.open_sample("napari-dfa", "synthetic_slide")
    (holder,) = viewer.layers  # at once: the window is not blocked while the slide is written
    assert holder.name == _sample_data.PLACEHOLDER
    np.testing.assert_allclose(np.asarray(holder.extent.world)[1] - np.asarray(holder.extent.world)[0],
                               [512.0, 512.0], rtol=0.1)
    qtbot.waitUntil(lambda: [type(layer) for layer in viewer.layers] == [Image, Labels], timeout=600_000)
    assert [layer.name for layer in viewer.layers] == ["synthetic H&E", "synthetic H&E truth"]
    assert seen and seen[0][1] > 1  # the bar advanced row by row of tiles
    assert viewer.layers[0].data[0].shape[:2] == (1024, 1024) and _sample_data.sample_ready()

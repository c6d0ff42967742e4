"""An RGB image that another reader opened as three grey channel layers (napari-ome-zarr opens a
(c, y, x) OME-Zarr so) is segmented as the three together; one channel alone is refused, never
segmented as if it were colour."""

from __future__ import annotations

import numpy as np
import pytest
from widget_helpers import set_canvas, view_region, wait_worker

from napari_dfa import synth
from napari_dfa.errors import DataError

RGB_OMERO = {"channels": [{"label": "R", "color": "FF0000", "window": {"start": 0, "end": 255}},
                          {"label": "G", "color": "00FF00", "window": {"start": 0, "end": 255}},
                          {"label": "B", "color": "0000FF", "window": {"start": 0, "end": 255}}],
             "rdefs": {"model": "color"}}


def _tissue(size=512) -> np.ndarray:
    rgb, _ = synth.generate_tile(seed=11, size=size)
    return rgb


def _write_rgb_ome_zarr(path, rgb, *, omero: bool):
    """An RGB image as an OME-Zarr with axes (c, y, x), two levels, written with ome-zarr."""
    import zarr
    from ome_zarr.writer import write_image

    group = zarr.open_group(str(path), mode="w")
    extra = {"metadata": {"omero": RGB_OMERO}} if omero else {}
    write_image(np.moveaxis(rgb, -1, 0), group, axes="cyx", scale_factors=(2,), name="tissue", **extra)
    return path


def _open_like_napari_ome_zarr(viewer, path):
    """The layers napari-ome-zarr makes of an image node: the reader's data (c, y, x) per level, added
    with channel_axis = 0 and the node's name, visibility, contrast limits and OMERO colormaps."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from vispy.color import Colormap

    node = next(iter(Reader(parse_url(str(path)))()))
    md = node.metadata
    kwargs = {"channel_axis": 0, "name": md.get("name")}
    for key in ("visible", "contrast_limits"):
        if md.get(key) is not None:
            kwargs[key] = md[key]
    if md.get("colormap"):
        kwargs["colormap"] = [Colormap(cm) for cm in md["colormap"]]
    scale = md["coordinateTransformations"][0][0]["scale"]
    kwargs["scale"] = tuple(scale[1:])
    layers = viewer.add_image(node.data, **kwargs)
    assert len(layers) == 3 and not any(layer.rgb for layer in layers)
    return layers


@pytest.fixture
def spy_segment(monkeypatch):
    """Records the channel means of every region the widget hands to inference.segment (which
    still runs: the spy only looks at its input)."""
    import napari_dfa.inference as inference

    real, seen = inference.segment, []

    def spy(data, segmenter, **kwargs):
        y0, x0, h, w = kwargs["region"]
        pixels = np.asarray(data[y0:y0 + h, x0:x0 + w])
        seen.append((tuple(kwargs["region"]), pixels.reshape(-1, pixels.shape[-1]).mean(axis=0)))
        return real(data, segmenter, **kwargs)

    monkeypatch.setattr(inference, "segment", spy)
    return seen


@pytest.fixture
def docked(make_napari_viewer, qtbot, tiny_model_path):
    from napari_dfa._widgets.segment import SegmentWidget

    viewer = make_napari_viewer(show=True)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    set_canvas(viewer, qtbot)
    widget.set_model_source(str(tiny_model_path))
    return viewer, widget


@pytest.mark.gui
@pytest.mark.parametrize("omero", [True, False], ids=["omero-colours", "no-omero"])
def test_split_rgb_channels_are_segmented_together(docked, qtbot, tmp_path, spy_segment, omero):
    viewer, widget = docked
    rgb = _tissue()
    layers = _open_like_napari_ome_zarr(viewer, _write_rgb_ome_zarr(tmp_path / "rgb.zarr", rgb, omero=omero))
    red, green, _blue = layers
    view_region(viewer, red, 0, 0, *rgb.shape[:2])
    widget.image_combo.setCurrentText(green.name)  # any of the three stands for the image
    widget.segment()
    wait_worker(qtbot, widget)
    assert widget.status.text().startswith("Done"), widget.status.text()

    (region, means), = spy_segment
    y0, x0, h, w = region
    truth = rgb[y0:y0 + h, x0:x0 + w].reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(means, truth, atol=1e-6)  # R, G, B: not one channel three times
    assert np.ptp(truth) > 10 and np.ptp(means) > 10
    labels = viewer.layers[widget.session.result.labels_layer]
    assert labels.metadata["napari_dfa"]["image_layer"] == red.name  # placed on the image's red channel
    assert labels.data.shape == (h, w)
    np.testing.assert_allclose(labels.scale, red.scale)


@pytest.mark.gui
@pytest.mark.parametrize("omero", [True, False], ids=["omero-colours", "no-omero"])
def test_one_channel_alone_is_refused_with_a_clear_message(docked, qtbot, tmp_path, spy_segment, omero):
    viewer, widget = docked
    rgb = _tissue(256)
    red, green, blue = _open_like_napari_ome_zarr(viewer, _write_rgb_ome_zarr(tmp_path / "rgb.zarr", rgb,
                                                                              omero=omero))
    viewer.layers.remove(green)
    viewer.layers.remove(blue)
    viewer.layers.selection.active = red
    view_region(viewer, red, 0, 0, 256, 256)
    assert widget.segment() is None
    text = widget.status.text()
    assert "one channel of a colour image" in text and red.name in text and "RGB layer" in text
    assert spy_segment == [] and len(viewer.layers) == 1  # nothing segmented, no labels layer


def test_channel_layers_are_found_and_ordered_without_a_viewer():
    """The detection is plain napari layers, no Qt: names, napari's " [n]", colormaps."""
    from napari.layers import Image

    from napari_dfa._widgets._layers import (
        LayerPyramid,
        SplitChannelPyramid,
        channel_evidence,
        channel_siblings,
        rgb_order,
    )

    rgb = _tissue(64)
    by_name = [Image(rgb[..., c], name=f"scan {n}") for c, n in ((2, "B"), (0, "R"), (1, "G"))]
    group = channel_siblings(by_name, by_name[0])
    assert len(group) == 3
    ordered = rgb_order(group)
    assert [layer.name for layer in ordered] == ["scan R", "scan G", "scan B"]
    stacked = SplitChannelPyramid(ordered)
    np.testing.assert_array_equal(np.asarray(stacked.level(0)), rgb)

    numbered = [Image(rgb[..., c], name=f"scan_c{c}") for c in (1, 0, 2)]
    assert [layer.name for layer in rgb_order(channel_siblings(numbered, numbered[0]))] == \
        ["scan_c0", "scan_c1", "scan_c2"]

    # An ordinary grey image is still read as grey; an unrelated layer of another size is no sibling.
    grey = Image(rgb[..., 0], name="scan")
    assert channel_evidence(grey) is None
    np.testing.assert_array_equal(np.asarray(LayerPyramid(grey).level(0))[..., 1], rgb[..., 0])
    assert channel_siblings([grey, Image(rgb[:32, :32, 1], name="scan [1]", colormap="green")], grey) == [grey]
    # A channel on its own: refused by name or by colormap.
    for lone in (Image(rgb[..., 1], name="scan_green"), Image(rgb[..., 2], name="scan", colormap="blue")):
        assert channel_evidence(lone)
        with pytest.raises(DataError, match="one channel of a colour image"):
            LayerPyramid(lone)

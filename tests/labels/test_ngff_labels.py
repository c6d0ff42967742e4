"""OME-Zarr labels that other tools accept: the ``ome-zarr-models`` validator (a pydantic model of
the NGFF spec), the NGFF strict schemas' extra requirements, the ome_zarr reader; label levels that
match the slide's; and ``predict --into-image``, which puts the labels inside an OME-Zarr slide's
own ``labels/`` group where OME-Zarr viewers look for them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from napari_dfa import synth
from napari_dfa.cli import main
from napari_dfa.slide import open_slide
from bcss_classes import COLORS, NAMES

PREDICT = ["--tile", "256", "--overlap", "32", "--device", "cpu"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_segmenter):
    """A tiny saved model, a synthetic SVS (0.5 µm/px, 2 levels) and the same pixels as OME-Zarr
    images: NGFF 0.5 (zarr v3, c/y/x, 3 levels) and NGFF 0.4 (zarr v2, bioformats2raw layout)."""
    root = tmp_path_factory.mktemp("ngff")
    model = tiny_segmenter(class_colors=COLORS).save(root / "tiny.safetensors")
    svs, _ = synth.write_slide(root / "case.svs", size=(512, 768), seed=3)
    with open_slide(svs) as slide:
        rgb = slide.levels[0].compute()
    levels = [rgb, rgb[::2, ::2], rgb[::4, ::4]]

    v05 = zarr.open_group(root / "case05.ome.zarr", mode="w", zarr_format=3)
    for i, lv in enumerate(levels):
        v05.create_array(str(i), data=np.ascontiguousarray(lv.transpose(2, 0, 1)), chunks=(3, 256, 256),
                         dimension_names=("c", "y", "x"))
    v05.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "name": "case05", "axes": [{"name": "c", "type": "channel"},
                                   {"name": "y", "type": "space", "unit": "micrometer"},
                                   {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": str(i), "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 0.5 * 2**i, 0.5 * 2**i]}]} for i in range(3)]}]}

    v04 = zarr.open_group(root / "case04.ome.zarr", mode="w", zarr_format=2)
    v04.attrs["bioformats2raw.layout"] = 3
    image = v04.create_group("0")
    for i, lv in enumerate(levels[:2]):
        image.create_array(str(i), data=np.ascontiguousarray(lv.transpose(2, 0, 1)), chunks=(3, 256, 256))
    image.attrs["multiscales"] = [{
        "version": "0.4", "name": "case04",
        "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": "micrometer"},
                 {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": str(i), "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 0.5 * 2**i, 0.5 * 2**i]}]} for i in range(2)]}]
    return {"root": root, "model": str(model), "svs": svs, "v05": root / "case05.ome.zarr",
            "v04": root / "case04.ome.zarr"}


def _attrs(path) -> dict:
    return zarr.open_group(str(path), mode="r").attrs.asdict()


def _assert_strict(ome: dict, levels: int) -> None:
    """What the NGFF 0.5 strict_image and strict_label schemas add to the plain ones."""
    ms = ome["multiscales"][0]
    assert {"name", "type", "metadata"} <= set(ms) and isinstance(ms["metadata"], dict)
    assert len(ms["datasets"]) == levels
    label = ome["image-label"]
    assert label["colors"], "strict_label requires colors"
    # ome-zarr-models: colors and properties must name the same label values
    assert [c["label-value"] for c in label["colors"]] == [p["label-value"] for p in label["properties"]]


def test_standalone_store_is_valid_and_has_the_slides_levels(files, tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v05.image_label import ImageLabel

    out = tmp_path / "out"
    assert main(["predict", str(files["svs"]), "--model", files["model"], "--out", str(out), *PREDICT]) == 0
    store = out / "case.labels.zarr"
    group = zarr.open_group(str(store), mode="r")
    model = ImageLabel.from_zarr(group)  # raises a ValidationError naming the problem if invalid
    assert [p.label_value for p in model.attributes.ome.image_label.properties] == [1, 2, 3, 4, 5]
    with open_slide(files["svs"]) as slide:
        n = slide.level_count
        shapes = [tuple(lv.shape[:2]) for lv in slide.levels]
    _assert_strict(group.attrs.asdict()["ome"], n)

    node = next(iter(Reader(parse_url(str(store)))()))
    assert [d.shape for d in node.data] == shapes  # one label level per slide level, same shapes
    assert {v: p["class"] for v, p in node.metadata["properties"].items()} == dict(enumerate(NAMES, start=1))
    assert node.metadata["coordinateTransformations"][1][0]["scale"] == [1.0, 1.0]  # µm, as the slide

    # ... and the copy `napari-dfa export --to x.zarr` writes is valid NGFF labels too (issue 25)
    copy = tmp_path / "copy.zarr"
    assert main(["export", str(store), "--to", str(copy)]) == 0
    exported = zarr.open_group(str(copy), mode="r")
    ImageLabel.from_zarr(exported)
    _assert_strict(exported.attrs.asdict()["ome"], len(exported.attrs.asdict()["ome"]["multiscales"][0]["datasets"]))


def test_predict_into_ngff05_image(files, tmp_path):
    """The labels land in the slide's labels/ group: ome_zarr finds them from the image, the image
    with its labels validates, and label level k sits on image level k."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader
    from ome_zarr_models.v05.image import Image

    image = files["v05"]
    out = tmp_path / "side"
    rc = main(["predict", str(image), "--model", files["model"], "--out", str(out), "--into-image",
               "--geojson", *PREDICT])
    assert rc == 0
    store = image / "labels" / "napari-dfa"
    assert _attrs(image / "labels")["ome"] == {"version": "0.5", "labels": ["napari-dfa"]}
    assert (out / "case05.geojson").is_file() and not list(out.glob("*.labels.zarr"))

    validated = Image.from_zarr(zarr.open_group(str(image), mode="r"))  # the image and its labels
    assert validated.labels is not None and validated.labels.attributes.ome.labels == ["napari-dfa"]
    ome = _attrs(store)["ome"]
    _assert_strict(ome, 3)
    assert ome["image-label"]["source"] == {"image": "../../"}

    nodes = list(Reader(parse_url(str(image)))())
    labels = [n for n in nodes if n.load(Label)]
    assert len(labels) == 1
    node = labels[0]
    assert [d.shape for d in node.data] == [(512, 768), (256, 384), (128, 192)]
    scales = [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]
    assert scales == [[0.5, 0.5], [1.0, 1.0], [2.0, 2.0]]  # the image's own y/x scales
    np.testing.assert_array_equal(np.asarray(node.data[2]), np.asarray(node.data[0])[::4, ::4])
    level0 = np.asarray(node.data[0])
    assert (level0 > 0).mean() > 0.5 and set(np.unique(level0)) <= set(range(6))

    # Our napari reader opens the store inside the image as labels too; a second run with another
    # name is listed beside the first.
    from napari_dfa._reader import labels_layer_data

    data, kwargs, kind = labels_layer_data(store)
    assert kind == "labels" and kwargs["scale"] == (0.5, 0.5)
    assert main(["predict", str(image), "--model", files["model"], "--out", str(out), "--into-image",
                 "--label-name", "v2", *PREDICT]) == 0
    assert _attrs(image / "labels")["ome"]["labels"] == ["napari-dfa", "v2"]


def test_predict_into_ngff04_bioformats2raw_image(files, tmp_path):
    """An NGFF 0.4 image on zarr v2 (image in group 0/) gets 0.4 labels on zarr v2 beside it."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader
    from ome_zarr_models.v04.image import Image

    image = files["v04"] / "0"
    assert main(["predict", str(files["v04"]), "--model", files["model"], "--out", str(tmp_path),
                 "--into-image", *PREDICT]) == 0
    store = image / "labels" / "napari-dfa"
    assert (store / ".zattrs").is_file() and not (store / "zarr.json").exists()
    assert _attrs(image / "labels") == {"labels": ["napari-dfa"]}
    attrs = _attrs(store)
    assert attrs["multiscales"][0]["version"] == "0.4" and attrs["image-label"]["version"] == "0.4"
    Image.from_zarr(zarr.open_group(str(image), mode="r"))
    node = next(n for n in Reader(parse_url(str(image)))() if n.load(Label))
    assert [d.shape for d in node.data] == [(512, 768), (256, 384)]


def test_into_image_refuses_a_slide_that_is_not_ome_zarr(files, tmp_path, capsys):
    rc = main(["predict", str(files["svs"]), "--model", files["model"], "--out", str(tmp_path), "--into-image",
               *PREDICT])
    assert rc == 1
    err = capsys.readouterr().err
    assert "case.svs" in err and "--into-image needs an OME-Zarr image" in err


def test_strict_schema_json(files, tmp_path):
    """Every key the NGFF 0.5 JSON schemas type is of the right JSON type (no numpy scalars)."""
    from napari_dfa.labels import write_ome_zarr_labels

    labels = np.zeros((300, 400), np.uint8)
    labels[50:200, 100:300] = 2
    path = write_ome_zarr_labels(tmp_path / "l.zarr", labels, NAMES, COLORS, downsample=2.0, mpp=0.25)
    doc = json.loads((path / "zarr.json").read_text())
    ome = doc["attributes"]["ome"]
    _assert_strict(ome, 2)
    for c in ome["image-label"]["colors"]:
        assert isinstance(c["label-value"], int) and len(c["rgba"]) == 4
        assert all(isinstance(v, int) and 0 <= v <= 255 for v in c["rgba"])

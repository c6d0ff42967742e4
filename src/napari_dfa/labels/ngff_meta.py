"""The NGFF metadata of our label images (no Qt): the OME block a labels store carries, reading a
label image's levels back, and the frame of an OME-Zarr image that labels are stored inside.

:class:`napari_dfa.labels.store.LabelsStore` writes through these (see its module for the layout);
:mod:`napari_dfa.labels.io` and the napari reader read levels back with :func:`multiscale_levels`.
The generic ``multiscales`` parsing shared with slides is :mod:`napari_dfa.ngff`.
"""

from __future__ import annotations

from pathlib import Path

import zarr

from .. import ngff
from ..errors import ConfigError, DataError
from ..ngff import ome_block

NGFF_VERSION = "0.5"


def ngff_attrs(*, level_shapes: list[tuple[int, int]], downsample: float, translate: tuple[float, float],
               class_names: list[str], class_colors: list[tuple[int, int, int]], name: str,
               mpp: float | None = None, factors: list[int] | None = None, frame: dict | None = None,
               version: str = NGFF_VERSION, source: str | None = None) -> dict:
    """The OME metadata block: multiscales over the stored levels and the image-label part.

    ``factors``: level-0 label pixels per pixel of each level (default 1, 2, 4, ...). ``frame``: the
    coordinate system to write in, ``{"scale": (sy, sx), "translation": (ty, tx), "unit": str|None}``
    per level-0 *slide* pixel (default: ``mpp`` µm, or pixels when ``mpp`` is unknown); inside an
    image it is the image's own, so its readers overlay both without knowing our units.
    ``version`` "0.4" puts the version inside ``multiscales[0]`` and ``image-label`` (zarr v2)."""
    if frame is None:
        unit = float(mpp) if mpp else 1.0
        frame = {"scale": (unit, unit), "translation": (0.0, 0.0), "unit": "micrometer" if mpp else None}
    (sy, sx), (ty, tx) = frame["scale"], frame["translation"]
    factors = factors or [2**k for k in range(len(level_shapes))]
    datasets = []
    for k in range(len(level_shapes)):
        f = float(downsample) * float(factors[k])
        datasets.append({
            "path": str(k),
            "coordinateTransformations": [
                {"type": "scale", "scale": [f * sy, f * sx]},
                {"type": "translation", "translation": [ty + float(translate[0]) * sy, tx + float(translate[1]) * sx]},
            ],
        })
    axes = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    if frame.get("unit"):
        for axis in axes:
            axis["unit"] = frame["unit"]

    # Label 0 (glass, not segmented) is in neither list: readers draw values without a colour
    # transparent, and validators (ome-zarr-models) want both lists to name the same values.
    colors = [{"label-value": i + 1, "rgba": [int(c) for c in rgb] + [255]} for i, rgb in enumerate(class_colors)]
    properties = [{"label-value": i + 1, "class": str(n)} for i, n in enumerate(class_names)]
    from .. import __version__

    multiscale = {
        "name": name,
        "axes": axes,
        "datasets": datasets,
        "type": "nearest",
        # required by the NGFF strict schema: how the levels were made
        "metadata": {"description": "labels subsampled by nearest neighbour (every n-th pixel), never averaged",
                     "method": "napari_dfa.labels.store.LabelsStore.finish", "version": __version__},
    }
    image_label = {"colors": colors, "properties": properties}
    if source:
        image_label["source"] = {"image": source}
    if version == "0.4":
        return {"multiscales": [{"version": "0.4", **multiscale}], "image-label": {"version": "0.4", **image_label}}
    return {"version": version, "multiscales": [multiscale], "image-label": {"version": version, **image_label}}


def multiscale_datasets(group: zarr.Group) -> list[dict]:
    """The ``datasets`` of the group's first NGFF ``multiscales`` entry (see :mod:`napari_dfa.ngff`)."""
    return ngff.multiscale_datasets(group.attrs.asdict())


def multiscale_levels(group: zarr.Group) -> list[zarr.Array]:
    """The arrays the group's NGFF ``multiscales`` lists, finest first ([] without multiscales).

    The one reader of a label image's levels: the labels store, reading labels back, the napari
    reader and the widgets use it. A listed array missing from the store raises
    :class:`DataError` naming the store."""
    levels = []
    for d in multiscale_datasets(group):
        key = d.get("path")
        if key is None or key not in group:
            where = getattr(group.store, "root", group.store)  # the folder, for a local store
            raise DataError(f"{where}: the multiscales dataset {key!r} is listed but missing from the "
                            "store; write the labels again")
        levels.append(group[key])
    return levels


def write_ome(group, block: dict, zarr_format: int) -> None:
    group.attrs.update({"ome": block} if zarr_format == 3 else block)


def image_frame(image_group) -> dict:
    """The coordinate system of an NGFF image group's level 0, for labels stored inside it.

    Returns ``{"scale": (sy, sx), "translation": (ty, tx), "unit", "downsamples", "zarr_format",
    "version"}``: y/x scale and translation of dataset 0 (with any multiscale-wide transform), the
    unit of the x axis, the image's level-0 pixels per pixel of each level."""
    attrs = image_group.attrs.asdict()
    ome = ome_block(attrs)
    ms = ome["multiscales"][0]
    axes = [a if isinstance(a, dict) else {"name": a} for a in ms.get("axes", [])]
    names = [a.get("name") for a in axes] or ["y", "x"]
    iy, ix = names.index("y"), names.index("x")

    def yx(transforms, kind, default):
        for t in transforms or []:
            if t.get("type") == kind and kind in t:
                v = t[kind]
                return float(v[iy]), float(v[ix])
        return default

    ds0 = ms["datasets"][0].get("coordinateTransformations")
    sy, sx = yx(ds0, "scale", (1.0, 1.0))
    ty, tx = yx(ds0, "translation", (0.0, 0.0))
    gy, gx = yx(ms.get("coordinateTransformations"), "scale", (1.0, 1.0))
    oy, ox = yx(ms.get("coordinateTransformations"), "translation", (0.0, 0.0))
    shapes = [image_group[d["path"]].shape for d in ms["datasets"]]
    downsamples = [shapes[0][ix] / s[ix] for s in shapes]
    fmt = image_group.metadata.zarr_format
    return {"scale": (sy * gy, sx * gx), "translation": (ty * gy + oy, tx * gx + ox),
            "unit": axes[ix].get("unit") if axes else None, "downsamples": downsamples,
            "zarr_format": fmt, "version": "0.5" if fmt == 3 else "0.4"}


def image_labels_path(image_path, name: str) -> Path:
    """``<image>/labels/<name>``: where labels of an OME-Zarr image go (the image group holding the
    multiscales: the root, or ``0/`` in the bioformats2raw layout). ConfigError if not an image."""
    root = Path(image_path)
    try:
        node = zarr.open_group(str(root), mode="r")
        attrs = node.attrs.asdict()
        if "multiscales" not in ome_block(attrs) and "0" in node and isinstance(node["0"], zarr.Group):
            root, node = root / "0", node["0"]
            attrs = node.attrs.asdict()
    except Exception as exc:  # noqa: BLE001 - not a zarr group at all
        raise ConfigError(f"{image_path}: --into-image needs an OME-Zarr image ({exc})") from exc
    if "multiscales" not in ome_block(attrs):
        raise ConfigError(f"{image_path}: --into-image needs an OME-Zarr image (no multiscales metadata); "
                          "leave the option out to write a standalone labels store")
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"--into-image {name!r}: give a plain name for the labels (no '/')")
    return root / "labels" / name


def parent_image(path: Path):
    """The NGFF image group that ``path`` (``.../labels/<name>``) belongs to, or None."""
    if path.parent.name != "labels":
        return None
    try:
        image = zarr.open_group(str(path.parent.parent), mode="r")
    except Exception:  # noqa: BLE001 - no zarr group above: a standalone store
        return None
    return image if "multiscales" in ome_block(image.attrs.asdict()) else None


def register_label(labels_dir: Path, name: str, zarr_format: int, version: str) -> None:
    """List ``name`` in the image's ``labels`` group (created if missing), keeping other labels."""
    try:
        group = zarr.open_group(str(labels_dir), mode="r")
        listed = list(ome_block(group.attrs.asdict()).get("labels", []))
    except Exception:  # noqa: BLE001 - no labels group yet
        listed = []
    group = zarr.open_group(str(labels_dir), mode="a", zarr_format=zarr_format)
    if name not in listed:
        listed.append(name)
    block = {"version": version, "labels": listed} if zarr_format == 3 else {"labels": listed}
    write_ome(group, block, zarr_format)


def ome_for(meta: dict, shapes, factors, name: str) -> dict:
    """The OME block of a store from its ``napari_dfa`` attributes."""
    frame = meta.get("frame")
    return ngff_attrs(level_shapes=shapes, downsample=meta["downsample"], translate=meta["translate"],
                      class_names=meta["class_names"], class_colors=meta["class_colors"], name=name,
                      mpp=meta.get("mpp"), factors=factors, frame=frame,
                      version=meta.get("ngff_version", NGFF_VERSION), source="../../" if frame else None)

"""napari reader (npe2): whole-slide images as multiscale RGB image layers in microns.

``napari_get_reader(path)`` answers None for paths it does not handle so other readers can try,
otherwise a function returning ``[(data, kwargs, "image")]``:

- ``data``: the slide's levels (a list of dask arrays, level 0 first; one array for a single small
  level) — napari reads only the tiles on screen at the level that fits the zoom, never all of
  level 0;
- ``kwargs``: ``rgb=True``, ``contrast_limits=(0, 255)`` (napari would otherwise scan level 0 to
  guess them), ``scale=(mpp, mpp)`` and ``units`` in µm when the slide knows its pixel size, so the
  scale bar reads microns, ``name`` = the file stem, ``metadata`` with the :class:`Slide`, the path
  and the mpp (the Segment widget finds the slide there).

A file that cannot be read does not crash napari: the reason (a :class:`SlideError` naming the
file) is shown as an error notification and no layer is added.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .errors import SlideError

logger = logging.getLogger(__name__)

# Kept in sync with napari_dfa.slide.SUFFIXES (not imported here: napari asks every reader about
# every path, and this module must stay cheap to import).
_SUFFIXES = {".svs", ".tif", ".tiff", ".btf", ".tf8", ".tf2", ".ndpi", ".png", ".jpg", ".jpeg", ".zarr",
             ".mrxs", ".vms", ".vmu", ".scn", ".bif", ".svslide"}
_ZARR_MARKERS = ("zarr.json", ".zattrs", ".zgroup", ".zarray")


def napari_get_reader(path):
    """npe2 ``get_reader``: a reader function for one slide path, or None if this is not one."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None  # a stack of files is not one slide
        path = path[0]
    if not isinstance(path, (str, Path)):
        return None
    p = Path(path)
    if p.is_dir():
        is_zarr = p.suffix.lower() == ".zarr" or any((p / m).exists() for m in _ZARR_MARKERS)
        return read_slide if is_zarr else None
    if p.suffix.lower() not in _SUFFIXES:
        return None
    return read_slide


def read_slide(path, **_ignored):
    """Open ``path`` lazily and describe it as one napari image layer.

    Returns ``[(data, kwargs, "image")]``, or napari's "no layer" value ``[(None,)]`` after
    notifying the user when the file cannot be read.
    """
    if isinstance(path, (list, tuple)):
        path = path[0]
    from .slide import open_slide

    try:
        slide = open_slide(path)
    except SlideError as exc:
        _notify_error(str(exc))
        return [(None,)]
    return [layer_data(slide)]


def layer_data(slide) -> tuple:
    """``(data, kwargs, "image")`` for a :class:`~napari_dfa.slide.Slide`."""
    data = slide.levels if len(slide.levels) > 1 else slide.levels[0]
    name = slide.path.name
    for suffix in (".ome.zarr", ".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    else:
        name = slide.path.stem
    kwargs = {
        "rgb": True,
        "multiscale": len(slide.levels) > 1,
        "contrast_limits": (0, 255),
        "name": name,
        "metadata": {"slide": slide, "path": str(slide.path), "mpp": slide.mpp},
    }
    if slide.mpp is not None:
        # napari infers the scale of the other levels from their shapes
        kwargs["scale"] = (slide.mpp, slide.mpp)
        kwargs["units"] = ("um", "um")
    return (data, kwargs, "image")


def _notify_error(message: str) -> None:
    logger.error(message)
    try:
        from napari.utils.notifications import show_error
    except ImportError:  # used outside napari: the log line is all we can do
        return
    show_error(message)

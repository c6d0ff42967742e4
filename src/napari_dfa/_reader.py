"""napari reader (npe2): whole-slide images as multiscale RGB image layers in microns.

``napari_get_reader(path)`` answers None for paths it does not handle so other readers can try
(other suffixes, folders that are not zarr, readable images that are no 2-D slide such as a z-stack),
otherwise a function returning ``[(data, kwargs, "image")]`` (slides: files, OME-Zarr folders,
DICOM WSI as a ``.dcm`` file or the folder of its series):

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
import os
import threading
from pathlib import Path

import numpy as np

from .errors import SlideError
from .files.paths import slide_stem

logger = logging.getLogger(__name__)

# Kept in sync with napari_dfa.slide.SUFFIXES (not imported here: napari asks every reader about
# every path, and this module must stay cheap to import).
_SUFFIXES = {".svs", ".tif", ".tiff", ".btf", ".tf8", ".tf2", ".ndpi", ".png", ".jpg", ".jpeg", ".zarr",
             ".mrxs", ".vms", ".vmu", ".scn", ".bif", ".svslide", ".dcm"}
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
        if not (p.suffix.lower() == ".zarr" or any((p / m).exists() for m in _ZARR_MARKERS)
                or _is_dicom_folder(p)):
            return None

        labels = labels_layer_data(p)  # an NGFF label image (`napari-dfa predict` output): labels
        if labels is not None:
            return lambda _path, **_ignored: [labels]
    elif p.suffix.lower() not in _SUFFIXES:
        return None
    from .slide import SlideLayoutError, open_slide

    # Opening reads metadata only (milliseconds), and tells a slide from a readable file that is
    # no slide (a z-stack TIFF, a 7-channel OME-Zarr): those are left to other readers. A broken
    # file is ours to report: its reader function shows the reason.
    try:
        slide = open_slide(p)
    except SlideLayoutError as exc:
        logger.info("not a slide, left to other readers: %s", exc)
        return None
    except SlideError:
        return read_slide

    def read_opened(_path, **_ignored):
        return [layer_data(slide)]

    return read_opened


def _is_dicom_folder(path: Path) -> bool:
    """A DICOM WSI folder (``.dcm`` files of one series): by name only, cheap for napari's probe."""
    try:
        return any(c.suffix.lower() == ".dcm" for c in path.iterdir())
    except OSError:
        return False


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
    guard = _DamageGuard(slide.path)
    stored = int(slide.metadata.get("stored_levels", len(slide.levels)))
    levels = [guard.wrap(level, stored=i < stored) for i, level in enumerate(slide.levels)]
    data = levels if len(levels) > 1 else levels[0]
    name = slide_stem(slide.path)
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


class _DamageGuard:
    """Shows a damaged chunk as a grey checkerboard, and says so once, instead of failing a redraw.

    napari draws from the dask arrays on every pan and zoom; a SlideError there (a corrupt tile of
    a 100 GB slide) would surface as a traceback on each redraw and leave that view blank. The rest
    of the slide stays viewable; the Slide in the layer's metadata still raises, so analysis never
    runs on the placeholder.
    """

    def __init__(self, path):
        self.path = path
        self._told = False
        self._lock = threading.Lock()

    def wrap(self, level, *, stored: bool):
        import dask.array as da

        # A stored level maps one read to one chunk: compute in this thread. A level built by
        # coarsening needs many level-0 chunks per chunk: decode them on a small nested pool.
        options = {"scheduler": "sync"} if stored else {
            "scheduler": "threads", "num_workers": min(4, os.cpu_count() or 1)}

        starts = [np.cumsum((0,) + c) for c in level.chunks]

        def fetch(block_id=None):
            loc = [(int(s[i]), int(s[i + 1])) for s, i in zip(starts, block_id)]
            try:
                return level[tuple(slice(a, b) for a, b in loc)].compute(**options)
            except SlideError as exc:
                self._tell(str(exc))
                return _placeholder(tuple(b - a for a, b in loc))

        # block_id (not block_info): dask then builds no per-chunk dicts for a 100k-chunk level
        return da.map_blocks(fetch, chunks=level.chunks, dtype=level.dtype,
                             meta=np.empty((0, 0, 0), dtype=level.dtype))

    def _tell(self, message: str) -> None:
        with self._lock:
            first, self._told = not self._told, True
        if first:
            _notify_error(message + " Damaged regions are drawn as a grey checkerboard.")
        else:
            logger.error(message)


def _placeholder(shape) -> np.ndarray:
    yy, xx = np.indices(shape[:2])
    board = np.where(((yy // 16) + (xx // 16)) % 2, 96, 160).astype(np.uint8)
    return np.repeat(board[:, :, None], shape[2], axis=2)


def _notify_error(message: str) -> None:
    logger.error(message)
    try:
        from napari.utils.notifications import show_error
    except ImportError:  # used outside napari: the log line is all we can do
        return
    show_error(message)


def labels_layer_data(path):
    """``(levels, kwargs, "labels")`` for napari when ``path`` is an NGFF label image (e.g. a
    ``napari-dfa predict`` store), else None. Placed like our slide reader places the image
    (micrometres when the slide's mpp is known), with the class colours and names."""
    path = Path(path)
    if not path.is_dir() or not ((path / "zarr.json").exists() or (path / ".zattrs").exists()):
        return None
    import zarr

    from .errors import DataError
    from .labels.ngff_meta import multiscale_levels
    from .ngff import ome_block

    try:
        group = zarr.open_group(str(path), mode="r")
        attrs = group.attrs.asdict()
    except Exception:  # noqa: BLE001 - not ours to judge: the slide reader reports it
        return None
    ome = ome_block(attrs)
    if "image-label" not in ome or "multiscales" not in ome:
        return None
    try:
        arrays = multiscale_levels(group)
    except DataError:  # a damaged store: the slide reader reports it
        return None
    if not arrays:
        return None
    import dask.array as da

    levels = [da.from_zarr(a) for a in arrays]
    from .labels import read_labels

    _, info = read_labels(path, level=0)
    mpp = info["mpp"] or 1.0
    unit = {"units": ("um", "um")} if info["mpp"] else {}
    colors = {0: [0.0, 0.0, 0.0, 0.0], None: [0.0, 0.0, 0.0, 0.0]}
    colors.update({i: [c / 255 for c in rgb] + [1.0] for i, rgb in enumerate(info["class_colors"], start=1)})
    kwargs = {
        "name": path.name[: -len(".zarr")] if path.name.endswith(".zarr") else path.name,
        "multiscale": len(levels) > 1,
        "scale": (info["downsample"] * mpp,) * 2,
        "translate": tuple(float(t) * mpp for t in info["offset"]),
        "colormap": colors,
        "features": {"index": list(range(len(info["class_names"]) + 1)),
                     "class": ["unlabelled", *info["class_names"]]},
        "opacity": 0.5,
        "metadata": {"napari_dfa": {"store": str(path), "class_names": info["class_names"],
                                    "class_colors": [list(c) for c in info["class_colors"]]}},
        **unit,
    }
    return (levels if len(levels) > 1 else levels[0], kwargs, "labels")

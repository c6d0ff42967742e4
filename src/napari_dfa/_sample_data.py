"""npe2 sample data: a synthetic H&E slide with its truth labels, generated once into a cache.

``sample_slide()`` is the manifest's ``napari-dfa.sample_slide`` command (File ▸ Open Sample ▸
napari-dfa ▸ Synthetic H&E slide). ``sample_slide_path()`` gives the slide file to headless callers
(the demo command, widgets, tests) and generates it on first use.

The cache folder is ``$NAPARI_DFA_CACHE`` or ``~/.cache/napari-dfa``. Generation writes into a
temporary folder there and moves the truth, then the slide into place, so an interrupted run is
never mistaken for a finished one (the slide file exists only once both are complete).

In napari the first generation (tens of seconds) runs in a thread worker with a progress bar: the
menu returns at once with a placeholder layer over the slide's extent, which the slide and its
truth replace when they are ready, so the window never freezes.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

SAMPLE_SIZE = 4096  # level-0 side: big enough for a real pyramid, generated in seconds
SAMPLE_SEED = 0
# Bump when the generator's output changes, so that caches made by older versions are not reused.
SAMPLE_VERSION = 1


PLACEHOLDER = "synthetic H&E (generating…)"


def _cached_path(size: int, seed: int) -> Path:
    from .files.paths import cache_dir

    return cache_dir() / f"synthetic_slide_v{SAMPLE_VERSION}_{size}_s{seed}.tif"


def sample_ready(*, size: int | None = None, seed: int = SAMPLE_SEED) -> bool:
    """Whether the sample slide and its truth are in the cache already."""
    from .synth.writers import truth_path_for

    path = _cached_path(SAMPLE_SIZE if size is None else size, seed)
    return path.is_file() and truth_path_for(path).is_file()


def sample_slide_path(*, size: int | None = None, seed: int = SAMPLE_SEED, progress=None) -> Path:
    """Path of the cached synthetic sample slide (Aperio-style TIFF, 0.5 µm/px), made on first use
    (``progress(done, total)`` while it is written).

    Its truth labels are :func:`sample_truth_path` (``<stem>_truth.tif`` beside it).
    """
    from .synth.writers import truth_path_for
    from .errors import DataError
    from .synth import SynthConfig, write_slide

    size = SAMPLE_SIZE if size is None else int(size)
    path = _cached_path(size, seed)
    folder = path.parent
    truth = truth_path_for(path)
    if path.is_file() and truth.is_file():
        return path
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".sample-", dir=folder))
    except OSError as exc:
        raise DataError(f"{folder}: cannot write the sample slide cache ({exc}); set NAPARI_DFA_CACHE "
                        "to a writable folder") from None
    try:
        logger.info("generating the synthetic sample slide (%dx%d) into %s; once only", size, size, folder)
        tmp_slide, tmp_truth = write_slide(tmp / path.name, SynthConfig(), size=(size, size), seed=seed,
                                           progress=progress)
        os.replace(tmp_truth, truth)
        os.replace(tmp_slide, path)  # last: the slide's presence means both files are complete
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def sample_truth_path(*, size: int | None = None, seed: int = SAMPLE_SEED) -> Path:
    """Path of the truth labels of the sample slide (generated with it on first use)."""
    from .synth.writers import truth_path_for

    return truth_path_for(sample_slide_path(size=size, seed=seed))


def open_truth(path) -> list:
    """Levels of a truth-label TIFF as lazy dask arrays (uint8, level 0 first)."""
    import dask.array as da
    import tifffile
    import zarr

    from .errors import DataError

    try:
        store = tifffile.imread(path, aszarr=True)
        root = zarr.open(store, mode="r")
    except Exception as exc:  # tifffile/zarr raise many types for a damaged file
        raise DataError(f"{path}: cannot read the truth labels ({exc})") from None
    if isinstance(root, zarr.Array):
        return [da.from_zarr(root)]
    return [da.from_zarr(root[key]) for key in sorted(root.array_keys(), key=int)]


def sample_slide() -> list:
    """npe2 sample data: ``[(slide levels, kwargs, "image"), (truth levels, kwargs, "labels")]``.

    In a viewer, a sample that is not in the cache yet is generated in a thread worker with a
    progress bar; this returns a placeholder layer at once and the slide replaces it when ready."""
    if not sample_ready():
        viewer = _current_viewer()
        if viewer is not None:
            return _generate_in_background(viewer)
    return sample_layers(sample_slide_path())


def sample_layers(path) -> list:
    """The layer data of the sample slide at ``path`` and its truth."""
    from ._reader import layer_data
    from .classes import SYNTHETIC
    from .slide import open_slide
    from .synth.writers import truth_path_for

    truth = truth_path_for(Path(path))
    slide = open_slide(path)
    data, image_kwargs, _ = layer_data(slide)
    mpp = slide.mpp or 0.5
    classes = {
        "class_names": list(SYNTHETIC.names),
        "class_colors": [list(c) for c in SYNTHETIC.colors],
        "truth_path": str(truth),
    }
    image_kwargs["name"] = "synthetic H&E"
    image_kwargs["metadata"] = {**image_kwargs.get("metadata", {}), **classes}

    colors = {0: (0.0, 0.0, 0.0, 0.0), None: (0.0, 0.0, 0.0, 0.0)}
    for label, rgb in enumerate(SYNTHETIC.colors, start=1):
        colors[label] = tuple(v / 255 for v in rgb) + (1.0,)
    levels = open_truth(truth)
    labels_kwargs = {
        "name": "synthetic H&E truth",
        "scale": (mpp, mpp),
        "units": ("um", "um"),
        "multiscale": len(levels) > 1,
        "opacity": 0.4,
        # Hidden at first: a Segment result goes on top, and a visible truth under it would make
        # the prediction hard to read; tick the eye to compare.
        "visible": False,
        "colormap": colors,
        "features": {"index": list(range(len(SYNTHETIC.names) + 1)), "class": ["glass", *SYNTHETIC.names]},
        "metadata": {**classes, "path": str(truth), "mpp": mpp},
    }
    return [(data, image_kwargs, "image"), (levels if len(levels) > 1 else levels[0], labels_kwargs, "labels")]


# --- generating in the background (napari only) -------------------------------------------------
_job = None  # the running generation: (worker, progress bar), one per process


def _current_viewer():
    try:
        import napari

        return napari.current_viewer()
    except Exception:  # noqa: BLE001 - no napari, no Qt application: generate headless
        return None


def _generate_in_background(viewer) -> list:
    """Start generating the sample in a thread worker (once), with a progress bar; return a
    placeholder layer covering the slide's extent."""
    global _job
    import numpy as np
    from napari.qt.threading import create_worker
    from napari.utils import progress as progress_bar
    from qtpy.QtCore import QObject, Signal

    if _job is None:
        class Bridge(QObject):  # progress from the worker thread to the UI thread
            advanced = Signal(int, int)

        bar = progress_bar(total=0, desc="Generating the synthetic sample slide (once)")
        bridge = Bridge()

        def advance(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        bridge.advanced.connect(advance)

        def work():
            return sample_slide_path(progress=lambda done, total: bridge.advanced.emit(int(done), int(total)))

        def finish(path=None, error=None) -> None:
            global _job
            bar.close()
            _job = None
            _replace_placeholders(path, error)

        worker = create_worker(work, _connect={"returned": lambda path: finish(path=path),
                                               "errored": lambda exc: finish(error=exc)})
        _job = (worker, bar, bridge)
        logger.info("generating the synthetic sample slide in the background")
    side = 64
    extent = SAMPLE_SIZE * 0.5 / side  # µm per placeholder pixel: the slide's 0.5 µm/px extent
    return [(np.full((side, side, 3), 236, np.uint8),
             {"name": PLACEHOLDER, "rgb": True, "scale": (extent, extent), "units": ("um", "um"),
              "metadata": {"napari_dfa_placeholder": True}}, "image")]


def _replace_placeholders(path, error) -> None:
    """Swap every viewer's placeholder for the sample layers (or say why not)."""
    from napari.layers import Layer
    from napari.utils import notifications

    try:
        from napari._qt.qt_main_window import _QtMainWindow

        viewers = [w._qt_viewer.viewer for w in _QtMainWindow._instances]
    except Exception:  # noqa: BLE001 - napari internals moved: the current viewer at least
        viewers = [v for v in [_current_viewer()] if v is not None]
    layers = sample_layers(path) if path is not None else []
    for viewer in viewers:
        holders = [lay for lay in viewer.layers if (lay.metadata or {}).get("napari_dfa_placeholder")]
        if not holders:
            continue
        for lay in holders:
            viewer.layers.remove(lay)
        for data, kwargs, kind in layers:
            viewer.add_layer(Layer.create(data, dict(kwargs), kind))
        if layers:
            viewer.reset_view()
    if error is not None:
        notifications.show_error(f"The synthetic sample slide could not be made: {type(error).__name__}: {error}")

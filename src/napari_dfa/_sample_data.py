"""npe2 sample data: a synthetic H&E slide with its truth labels, generated once into a cache.

``sample_slide()`` is the manifest's ``napari-dfa.sample_slide`` command (File ▸ Open Sample ▸
napari-dfa ▸ Synthetic H&E slide). ``sample_slide_path()`` gives the slide file to headless callers
(the demo command, widgets, tests) and generates it on first use.

The cache folder is ``$NAPARI_DFA_CACHE`` or ``~/.cache/napari-dfa``. Generation writes into a
temporary folder there and moves the truth, then the slide into place, so an interrupted run is
never mistaken for a finished one (the slide file exists only once both are complete).
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


def sample_slide_path(*, size: int = SAMPLE_SIZE, seed: int = SAMPLE_SEED) -> Path:
    """Path of the cached synthetic sample slide (Aperio-style TIFF, 0.5 µm/px), made on first use.

    Its truth labels are :func:`sample_truth_path` (``<stem>_truth.tif`` beside it).
    """
    from .synth.writers import truth_path_for
    from .errors import DataError
    from .synth import SynthConfig, write_slide

    from .paths import cache_dir

    folder = cache_dir()
    path = folder / f"synthetic_slide_v{SAMPLE_VERSION}_{size}_s{seed}.tif"
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
        tmp_slide, tmp_truth = write_slide(tmp / path.name, SynthConfig(), size=(size, size), seed=seed)
        os.replace(tmp_truth, truth)
        os.replace(tmp_slide, path)  # last: the slide's presence means both files are complete
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def sample_truth_path(*, size: int = SAMPLE_SIZE, seed: int = SAMPLE_SEED) -> Path:
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
    """npe2 sample data: ``[(slide levels, kwargs, "image"), (truth levels, kwargs, "labels")]``."""
    from ._reader import layer_data
    from .classes import SYNTHETIC
    from .slide import open_slide

    path = sample_slide_path()
    truth = sample_truth_path()
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

"""What the three widgets of one viewer share: the model in use, its earlier versions, the last
segmented region; and the model files opened recently.

No Qt here (psygnal signals): the widgets listen to the session, and it knows none of them.
"""

from __future__ import annotations

import json
import logging
import weakref
from dataclasses import dataclass
from pathlib import Path

from psygnal import Signal

from ..files.paths import cache_dir

logger = logging.getLogger(__name__)

DEMO = "demo"
RECENT = 8  # model files remembered


@dataclass
class RegionResult:
    """The last segmented region: enough to re-segment it, align layers on it and train on it."""

    image_layer: str
    level: int
    region: tuple[int, int, int, int]  # in `level` pixels
    downsample: float  # image-layer level-0 pixels per `level` pixel
    scale: tuple[float, float]  # world units per `level` pixel
    translate: tuple[float, float]  # world position of the region's top-left
    labels_layer: str
    whole_slide: bool = False
    store_path: str | None = None  # zarr labels store of a whole-slide result
    stain: object = None  # the StainMatch its pixels were recoloured with (None: as stored)


class Session:
    """State shared by the Segment, Attention-bias and Fine-tune widgets of one viewer."""

    model_changed = Signal()
    result_changed = Signal()
    bias_changed = Signal()

    def __init__(self):
        self.segmenter = None
        self.model_source: str | None = None
        self.result: RegionResult | None = None
        # every model this session used, oldest first: {"label", "source", "segmenter"}
        self.versions: list[dict] = []

    def set_model(self, segmenter, source: str, *, label: str | None = None) -> None:
        """Use ``segmenter`` from now on. ``source`` names it: a file or ``demo`` for a loaded model,
        ``"<parent> + fine-tune n"`` for one that only lives in memory; every version is kept, so the
        Segment widget and roll back find a version by its source without loading a file."""
        self.segmenter = segmenter
        self.model_source = str(source)
        if not any(v["segmenter"] is segmenter for v in self.versions):
            self.versions.append({"label": label or Path(str(source)).name, "source": str(source),
                                  "segmenter": segmenter})
        self.model_changed.emit()

    def segmenter_for(self, source: str | None):
        """The model this session already holds under ``source`` (the newest such version), or None:
        a fine-tuned version has no file, and one loaded from a file need not be loaded again."""
        if source is None:
            return None
        if self.segmenter is not None and self.model_source == str(source):
            return self.segmenter
        for v in reversed(self.versions):
            if v["source"] == str(source):
                return v["segmenter"]
        return None

    def model_label(self, source: str | None) -> str:
        """A short name for a model: "demo", a file's name without ".safetensors", or a version's
        label ("fine-tune 1", "classes 2")."""
        if source is None or source == DEMO:
            return "demo"
        label = next((v["label"] for v in reversed(self.versions) if v["source"] == str(source)),
                     Path(str(source)).name)
        return label[: -len(".safetensors")] if label.endswith(".safetensors") else label

    def set_result(self, result: RegionResult) -> None:
        self.result = result
        self.result_changed.emit()


_sessions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def session_for(viewer) -> Session:
    """The one :class:`Session` of this viewer (created on first use)."""
    try:
        return _sessions[viewer]
    except KeyError:
        s = _sessions[viewer] = Session()
        return s


def load_into_session(viewer, source: str):
    """Load a model by name or path (may raise CheckpointError) and make it the session's model."""
    from ..model import load_model  # torch: imported when a model is first needed

    segmenter = load_model(source)
    session_for(viewer).set_model(segmenter, source)
    if source != DEMO:
        add_recent_model(source)
    return segmenter


# --- recent model files ----------------------------------------------------------------------
def _recent_file() -> Path:
    return cache_dir() / "recent_models.json"


def recent_models() -> list[str]:
    """Model files opened before (newest first) that still exist."""
    try:
        items = json.loads(_recent_file().read_text())
    except (OSError, ValueError):
        return []
    return [p for p in items if isinstance(p, str) and Path(p).exists()][:RECENT]


def forget_recent_model(path: str) -> None:
    """Drop ``path`` from the recent model files (it failed to load)."""
    items = [p for p in recent_models() if p != str(path)]
    try:
        _recent_file().write_text(json.dumps(items))
    except OSError as exc:
        logger.warning("cannot update recent models in %s: %s", _recent_file(), exc)


def add_recent_model(path: str) -> None:
    items = [str(path)] + [p for p in recent_models() if p != str(path)]
    try:
        _recent_file().parent.mkdir(parents=True, exist_ok=True)
        _recent_file().write_text(json.dumps(items[:RECENT]))
    except OSError as exc:  # a read-only home must not break segmentation
        logger.warning("cannot remember recent models in %s: %s", _recent_file(), exc)

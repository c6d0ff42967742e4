"""Where the Fine-tune widget's corrections go (napari layers, no Qt controls; call on the UI
thread): the class list being edited, the correction store of the slide in view (keyed by its
content; its labels follow the class list by name), the region under review, the Labels layers
over it whose strokes :class:`~._recorder.CorrectionRecorder` saves as they are painted, and what
a fine-tuning reads from the layers.

Each step raises :class:`~napari_dfa.errors.DataError` with the reason in plain words; the widget
says it, and says what was done.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..corrections import CorrectionStore, geojson_classes, matched_names, missing_classes, slide_content_key
from ..corrections.classdraft import ClassDraft
from ..corrections.workflow import Resegment
from ..errors import DataError
from ..inference.background import gui_tile_workers
from ._finetune_saved import patch_layers
from ._labels_layer import class_colormap, class_features
from ._layers import (
    image_layers,
    labels_shown,
    layer_pyramid,
    pick_image_layer,
    replay_spec,
    review_target,
    visible_region,
)
from ._recorder import CorrectionRecorder

logger = logging.getLogger(__name__)

LAYER = "DFA corrections"


@dataclass
class Imported:
    """What :meth:`Corrections.import_geojson` did: the layer showing the new patch, QuPath's names
    read as the list's (``matched``), the classes the list lacked (``missing``: ``added`` or
    skipped), and the store's report (patches ``replaced``, features ``skipped``)."""

    layer: object
    matched: dict
    missing: list
    added: bool
    report: object


class Corrections:
    """The corrections of the slide in view and the layers that paint them.

    Arguments:
      viewer / session: the widget's viewer and session.
      store_root: folder of the correction stores (None: the napari-dfa cache folder).
      on_write: called after a stroke was saved; on_error: with the text of a stroke not saved.
      on_adopted: called with the classes that saved corrections added to the class list.

    Attributes:
      draft: the :class:`~napari_dfa.corrections.classdraft.ClassDraft` being edited (the model's
        classes whenever another model is used).
      recorder: the :class:`~._recorder.CorrectionRecorder` of the last correction layer shown.
      paint_label: the label a correction layer paints (the class picked).
    """

    def __init__(self, viewer, session, *, store_root=None, on_write, on_error, on_adopted):
        self.viewer, self.session, self.store_root = viewer, session, store_root
        self.on_write, self.on_error, self.on_adopted = on_write, on_error, on_adopted
        self.draft = ClassDraft()
        self.recorder: CorrectionRecorder | None = None
        self.paint_label = 1
        self._model = None  # the model the class list was taken from
        self._keys: dict[tuple, str] = {}  # content keys of image layers

    # --- the model, the slide, its store --------------------------------------------------------
    def need_model(self):
        if self.session.segmenter is None:
            raise DataError("No model yet: segment with a model in the Segment widget first")
        return self.session.segmenter

    def follow_model(self) -> None:
        """A new model in use: its classes are the list now (a pending edit goes with the old one),
        and the slide's store follows it by name (keeping classes only the store has)."""
        seg = self.session.segmenter
        if seg is not None and seg is not self._model:
            self._model = seg
            self.draft = ClassDraft.of(seg)
            self.current_store()

    def pyramid(self):
        """The image layer segmented last (else the one picked), as a pyramid."""
        res = self.session.result
        name = res.image_layer if res is not None and res.image_layer in self.viewer.layers else None
        return layer_pyramid(self.viewer, pick_image_layer(self.viewer, name))

    def _content_key(self, pyramid) -> str:
        """The slide's content key (two decoded level-0 tiles, shape, mpp), once per layer."""
        cache_key = (pyramid.path, pyramid.shapes[0], id(pyramid.raw[0]), pyramid.mpp)
        if cache_key not in self._keys:
            self._keys[cache_key] = slide_content_key(pyramid.level(0), pyramid.mpp)
        return self._keys[cache_key]

    def store(self, pyramid=None, *, create: bool = True, reconcile: bool = True) -> CorrectionStore:
        """The correction store of the slide's content (created on first use). ``reconcile``: its
        labels follow the class list by name; saved corrections of a class the list lacks add that
        class (``on_adopted``) rather than being reinterpreted."""
        pyramid = pyramid or self.pyramid()
        store = CorrectionStore.for_slide(pyramid.path, root=self.store_root, create=create,
                                          content=self._content_key(pyramid))
        extra = self.draft.bind(store) if reconcile else []
        if extra:
            self.on_adopted(extra)
        return store

    def current_store(self, *, create: bool = False, reconcile: bool = True) -> CorrectionStore | None:
        try:
            return self.store(create=create, reconcile=reconcile)
        except DataError:
            return None

    def review_region(self, pyramid) -> tuple[int, tuple[int, int, int, int]]:
        """(level, region) the correction layer covers: the last segmented region, or for a
        whole-slide result the part of it in view (a whole level is too big to paint in memory)."""
        res = self.session.result
        if res is None:
            raise DataError("Nothing segmented yet: segment a region first, then correct it")
        if not res.whole_slide:
            return res.level, res.region
        return res.level, pyramid.to_level(res.level, visible_region(self.viewer, pyramid))

    def ready_to_correct(self) -> None:
        self.need_model()
        self.review_region(self.pyramid())

    def ready_to_finetune(self) -> None:
        """Raises DataError while fine-tuning cannot start (no model, slide or corrections)."""
        self.need_model()
        if not self.store(create=False, reconcile=False).corrected_pixels():
            raise DataError("no corrections")

    # --- the correction layers ------------------------------------------------------------------
    def start(self):
        """Add (or reopen) the correction layer over the region under review; returns it."""
        self.need_model()
        pyramid = self.pyramid()
        level, region = self.review_region(pyramid)
        store = self.store(pyramid)
        patch = store.create_patch(level=level, region=region, downsample=pyramid.downsamples[level])
        store.set_hidden(patch.key, False)
        return self.show(store, patch, pyramid)

    def confirm(self):
        """Keep the labels shown over the region under review as verified (a ``confirmed`` patch);
        returns the patch and its labels (the class list's)."""
        self.need_model()
        pyramid = self.pyramid()
        level, region = self.review_region(pyramid)
        res = self.session.result
        if res.labels_layer not in self.viewer.layers:
            raise DataError("The segmented labels layer was closed: segment again, then confirm")
        shown = labels_shown(self.viewer.layers[res.labels_layer], res, region)
        store = self.store(pyramid)
        labels = self.draft.label_map()[shown]
        patch = store.confirm_region(level=level, region=region, labels=labels, downsample=pyramid.downsamples[level])
        return patch, labels

    def load(self) -> list:
        """A layer for every correction patch in use for the slide; returns them."""
        self.need_model()
        pyramid = self.pyramid()
        store = self.store(pyramid)
        shown = [p for p in store.patches() if not store.hidden(p.key)]
        return [self.show(store, p, pyramid, name=f"{LAYER} {p.key}" if i else LAYER) for i, p in enumerate(shown)]

    def show(self, store, patch, pyramid, name: str = LAYER):
        """The Labels layer ``name`` over ``patch``, in the class list's colours, recorded into the
        store as it is painted."""
        scale, translate = pyramid.placement(patch.level, patch.region)
        data = store.read(patch.key)
        if self.recorder is not None and self.recorder.layer.name == name:
            self.recorder.disconnect()
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        layer = self.viewer.add_labels(data, name=name, scale=scale, translate=translate, opacity=0.8,
                                       units=pyramid.units,
                                       colormap=class_colormap(self.draft.colors()),
                                       features=class_features(self.draft.names()),
                                       metadata={"napari_dfa": {"store": str(store.path), "patch": patch.key}})
        self.recorder = CorrectionRecorder(layer, store, patch, on_write=self.on_write, on_error=self.on_error)
        layer.brush_size = max(10, min(data.shape) // 20)
        layer.mode = "paint"
        layer.selected_label = self.paint_label
        self.viewer.layers.selection.active = layer
        return layer

    def paint_with(self, label: int) -> None:
        """Paint ``label`` from now on (in the correction layer too)."""
        self.paint_label = label
        if self.recorder is not None and label > 0 and self.recorder.layer.name in self.viewer.layers:
            self.recorder.layer.selected_label = label
            self.recorder.layer.mode = "paint"

    def follow_classes(self, renames: dict[str, str]) -> None:
        """After a class edit: the store's labels follow the list by name (after ``renames``), the
        correction layer its colours, names and relabelled data."""
        store = self.current_store(create=False, reconcile=False)
        if store is not None:
            store.remap_classes(self.draft.names(), renames=renames)
        if self.recorder is not None and self.recorder.layer.name in self.viewer.layers:
            layer = self.recorder.layer
            layer.colormap = class_colormap(self.draft.colors())
            layer.features = class_features(self.draft.names())
            if store is not None:
                layer.events.data.disconnect(self.recorder._on_data)
                layer.data = store.read(self.recorder.patch.key)
                layer.events.data.connect(self.recorder._on_data)

    def delete(self, store, keys) -> None:
        """Delete saved patches ``keys`` from the store and their layers from the viewer."""
        for key in keys:
            for layer in patch_layers(self.viewer, key):
                if self.recorder is not None and self.recorder.layer is layer:
                    self.recorder.disconnect()
                    self.recorder = None
                self.viewer.layers.remove(layer)
            store.delete(key)

    def import_geojson(self, path, *, add_missing: bool, add_class) -> Imported:
        """Rasterise a QuPath GeoJSON file into a new patch and show it; the classes the list
        lacks are added with ``add_class(name, colour)`` when ``add_missing``, else skipped."""
        self.need_model()
        pyramid = self.pyramid()
        res = self.session.result
        level = res.level if res is not None else pyramid.level_for(self.session.segmenter.mpp)
        found = geojson_classes(path)
        matched = matched_names(found, self.draft.names())
        missing = missing_classes(found, self.draft.names())
        if missing and add_missing:
            for name in missing:
                add_class(name, found[name]["color"])
        store = self.store(pyramid)
        patch, report = store.import_geojson(path, level=level, downsample=pyramid.downsamples[level],
                                             level_shape=pyramid.shapes[level], class_names=self.draft.names(),
                                             report=True)
        for key in report.replaced:  # layers of the patches it replaced show what is gone
            for layer in patch_layers(self.viewer, key):
                if layer.name != LAYER:
                    self.viewer.layers.remove(layer)
        return Imported(self.show(store, patch, pyramid), matched, missing, bool(missing and add_missing), report)

    # --- what a fine-tuning reads from the layers -----------------------------------------------
    def training_inputs(self, store, pyramid) -> dict:
        """Everything :func:`~napari_dfa.corrections.workflow.finetune_on_corrections` needs from
        napari layers, read now (layers are not thread-safe): ``read_rgb`` (the slide's pixels, as
        the labels were segmented from them), ``replay``, ``resegment``, ``more`` (other slides), and
        ``target`` (level, region) under review."""
        res = self.session.result
        target = review_target(self.viewer, res, self.recorder)
        # Labels segmented from recoloured pixels (Segment's Stain box) are corrected, trained on
        # and segmented again on the same recoloured pixels.
        stain = getattr(res, "stain", None)
        read = pyramid.read if stain is None else (lambda level, box: stain(pyramid.read(level, box)))
        resegment = None
        if target is not None:
            data, lv = pyramid.source(target[0])
            resegment = Resegment(source=data, level=lv, region=target[1], tile_workers=gui_tile_workers(),
                                  stain=stain)
        # The reviewed region: replayed in training (when ticked), and where the guard compares.
        return dict(read_rgb=read, replay=replay_spec(self.viewer, res, target, self.recorder), resegment=resegment,
                    more=self._other_slides(store), target=target)

    def _other_slides(self, store) -> list:
        """``[(store, read)]`` of the other slides open in this viewer (not ``store``'s) that have
        corrections in use: one model learns from every slide of the session."""
        out, seen = [], {str(store.path)}
        for layer in image_layers(self.viewer):
            try:
                other = layer_pyramid(self.viewer, layer)
                theirs = self.store(other, create=False)
            except DataError:
                continue
            if str(theirs.path) in seen or not theirs.corrected_pixels():
                continue
            seen.add(str(theirs.path))
            out.append((theirs, other.read))
        if out:
            logger.info("fine-tuning on the corrections of %d more slide(s)", len(out))
        return out


"""Class labels as napari Labels layers: label k + 1 in the colour of class k, 0 transparent, the
class named in the status bar on hover, and short layer names that say model and scope."""

from __future__ import annotations

import logging

import numpy as np

# napari turns layer features into a pandas DataFrame; importing pandas (~0.3 s) when the widgets
# are docked keeps that out of the moment the first result is shown.
import pandas as pd

logger = logging.getLogger(__name__)

IGNORE_NAME = "unlabelled"


def class_colormap(colors):
    """DirectLabelColormap: 0 transparent, label k + 1 the colour of class k."""
    from napari.utils.colormaps import DirectLabelColormap

    color_dict = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
    for k, c in enumerate(colors):
        color_dict[k + 1] = tuple(float(v) / 255 for v in c[:3]) + (1.0,)
    return DirectLabelColormap(color_dict=color_dict)


def class_features(names):
    """Per-label features with a ``class`` column, so the status bar names the class on hover."""
    return pd.DataFrame({"index": np.arange(len(names) + 1), "class": [IGNORE_NAME, *names]})


def class_status(layer) -> None:
    """Make ``layer``'s status-bar text on hover "tumour (label 2)": napari shows a multiscale
    layer's value as "(pyramid level), (label)", which read "3, 2; class: tumour"."""
    from napari.layers import Layer

    def get_status(position=None, *, view_direction=None, dims_displayed=None, world=False, value=None):
        # The base class gives the coordinates; the label under the cursor is read once more here,
        # as napari's Labels.get_status does for its features.
        status = Layer.get_status(layer, position, view_direction=view_direction,
                                  dims_displayed=dims_displayed, world=world)
        if position is None:
            return status
        found = layer.get_value(position, view_direction=view_direction, dims_displayed=dims_displayed,
                                world=world)
        label = found[1] if layer.multiscale and isinstance(found, tuple) else found
        if label is None:
            return status
        features = layer.features  # read now: a class edit or an accepted model replaces them
        names = dict(zip(features["index"], features["class"])) if "class" in features else {}
        words = f"{names.get(int(label), 'no class')} (label {int(label)})"
        status["value"] = words
        status["coordinates"] = f"{status['coords']}: {words}"
        return status

    layer.get_status = get_status  # this layer only: napari's Labels class stays as it is


def result_layer_name(viewer, *, image_layer: str, model: str, model_label: str, scope: str) -> str:
    """The labels layer name for a result: "model · scope" ("demo · view", "demo · slide").

    napari's layer list elides the middle of a long name, so "<slide> DFA labels" and "<slide> DFA
    labels (whole slide)" looked the same there. The layer an earlier result of the same image,
    model and scope went to keeps its name (the new result replaces it); when that short name is
    another image's, this image's name goes in front, so no result replaces another slide's."""
    from napari.layers import Labels

    for layer in viewer.layers:
        md = (layer.metadata or {}).get("napari_dfa") or {}
        if isinstance(layer, Labels) and (md.get("image_layer"), md.get("model"), md.get("scope")) == (
                image_layer, model, scope):
            return layer.name
    name = f"{model_label} · {SCOPE_WORDS.get(scope, scope)}"
    if name in viewer.layers:
        name = f"{image_layer} · {name}"
    base, n = name, 1
    while name in viewer.layers:
        name, n = f"{base} [{n}]", n + 1
    return name


SCOPE_WORDS = {"visible": "view", "whole": "slide", "roi": "ROI"}


def put_labels_layer(viewer, name: str, data, *, scale, translate, segmenter, multiscale=False,
                     metadata=None, units=None):
    """Add the labels layer ``name`` or replace its data and placement in place."""
    kwargs = dict(scale=scale, translate=translate)
    if units is not None:
        kwargs["units"] = units  # same units as the image, or napari ignores them all
    if name in viewer.layers:
        layer = viewer.layers[name]
        if bool(layer.multiscale) == bool(multiscale):
            layer.data = data
            layer.scale, layer.translate = scale, translate
            layer.colormap = class_colormap(segmenter.class_colors)
            layer.features = class_features(segmenter.class_names)
            class_status(layer)
            if metadata:
                layer.metadata.update(metadata)
            return layer
        viewer.layers.remove(layer)
    layer = viewer.add_labels(data, name=name, multiscale=multiscale, opacity=0.5,
                              colormap=class_colormap(segmenter.class_colors),
                              features=class_features(segmenter.class_names),
                              metadata=dict(metadata or {}), **kwargs)
    class_status(layer)
    return layer

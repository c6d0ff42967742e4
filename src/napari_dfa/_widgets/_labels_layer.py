"""Class labels as napari Labels layers: label k + 1 in the colour of class k, 0 transparent, and
the class named in the status bar on hover."""

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
            if metadata:
                layer.metadata.update(metadata)
            return layer
        viewer.layers.remove(layer)
    return viewer.add_labels(data, name=name, multiscale=multiscale, opacity=0.5,
                             colormap=class_colormap(segmenter.class_colors),
                             features=class_features(segmenter.class_names),
                             metadata=dict(metadata or {}), **kwargs)

"""Attention-bias widget: what the model learned about each class, and where it looks.

Top plot: per class, the extra attention the model gives it when it decides what a pixel is (the
bias b_c the decoder adds to each class's pixel → class attention logit; bars in the class
colours), against where training started it, from how rare the class is (the centred prior
γ·log(1 − f_c), diamonds): a class whose bar sits above its diamond was found harder than its
rarity alone says. Bottom plot: the same numbers over the snapshots stored in the checkpoint's
``bias_history`` (training epochs, then fine-tuning runs; see
:meth:`napari_dfa.model.Segmenter.bias_history`), with a legend of the classes.
Both are drawn for a dock of napari's default width (~234 px): class names read horizontally,
legends sit under the plots, and nothing is smaller than 7 pt.

Buttons add the per-class focus maps (the last decoder layer's pixel → class attention: at each
pixel, the share of its attention that goes to each class, on the model's 16-pixel grid) and the
uncertainty map of the last segmented region as image layers aligned with its labels.
"""

from __future__ import annotations

import logging

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton

from ..errors import DataError
from ._base import DFAWidget, body_layout
from ._layers import layer_pyramid

logger = logging.getLogger(__name__)

BIAS_TIP = ("Extra attention per class: how much more (above 0) or less (below 0) attention the model "
            "learned to give each class when it decides what a pixel is. Training starts it from how rare "
            "the class is (◆: rarer classes start higher); a bar above its ◆ means the model found that "
            "class harder than its rarity alone says. The lower plot shows how it changed over training "
            "and fine-tuning.")
FONT = 7.5  # pt: the smallest text of the plots, readable in a ~234 px wide dock
# What the extra attention is in each bias mode of a checkpoint (model/bias.py), in words.
MODE_WORDS = {"none": "none (this model has no class bias)", "cffa": "fixed, from how rare each class is",
              "difficulty": "fixed, from an earlier run's scores", "dfa": "learnt",
              "dfa-anchored": "learnt, on top of rarity", "dfa-out": "learnt, also added to the final scores"}
FOCUS_WORDS = ("Focus maps: at each pixel, the share of its attention that the model's last decoder layer gives "
               "to each class (on the model's 16-pixel grid; the shares add up to 1). Bright = that class is "
               "what the model relates this tissue to inside; it is not the final label, nor where to correct.")
UNCERTAINTY_WORDS = "Uncertainty: bright where the two likeliest classes are close, a place to check and correct."


class AttentionWidget(DFAWidget):
    """Dock widget: each class's extra attention vs. where it started, its history, focus and
    uncertainty layers.

    Arguments:
      napari_viewer: the viewer (napari passes it when the widget is docked).
      parent: optional Qt parent.
    """

    hint = "Segment a region, then add its focus or uncertainty maps here."

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)

        # Constrained layout keeps labels and legends inside the canvas at any dock width.
        self.figure = Figure(figsize=(2.6, 4.8), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(260)
        self.canvas.setToolTip(BIAS_TIP)
        self.values = QLabel()
        self.values.setWordWrap(True)
        self.values.setToolTip(BIAS_TIP)
        self.focus_button = QPushButton("Focus maps")
        self.focus_button.setToolTip("Per class, the share of each pixel's attention that the model's last decoder "
                                     "layer gives to that class: one image layer per class over the segmented region")
        self.uncertainty_button = QPushButton("Uncertainty map")
        self.uncertainty_button.setToolTip("1 − (margin between the two most likely classes): bright where the model "
                                           "hesitates, a good place to check and correct")

        buttons = QHBoxLayout()
        buttons.addWidget(self.focus_button)
        buttons.addWidget(self.uncertainty_button)
        # The buttons in view under the status line, the text above the plot (a short dock
        # scrolls what is below, never these).
        self.pinned.addLayout(buttons)
        layout = body_layout(self.body)
        layout.addWidget(self.values)
        layout.addWidget(self.canvas, 1)

        self.focus_button.clicked.connect(lambda: self.add_maps(("focus",)))
        self.uncertainty_button.clicked.connect(lambda: self.add_maps(("uncertainty",)))
        self.session.model_changed.connect(self.redraw)
        self.session.bias_changed.connect(self.redraw)
        self.redraw()

    # --- plot ------------------------------------------------------------------------------
    def current_bias(self) -> np.ndarray | None:
        seg = self.session.segmenter
        return None if seg is None else np.asarray(seg.class_bias(), dtype=float)

    def redraw(self) -> None:
        """Plot the current model's extra attention per class, where it started, and its history."""
        seg = self.session.segmenter
        self.figure.clear()
        if seg is None:
            ax = self.figure.add_subplot(111)
            ax.text(0.5, 0.5, "No model loaded yet:\nsegment with a model first", ha="center",
                    va="center", transform=ax.transAxes, fontsize=FONT + 1)
            ax.set_axis_off()
            self.values.setText("")
            self.canvas.draw_idle()
            return
        names = list(seg.class_names)
        colors = [tuple(v / 255 for v in col[:3]) for col in seg.class_colors]  # as in the labels layer
        bias, start = self.current_bias(), np.asarray(seg.prior_bias(), dtype=float)
        mode = MODE_WORDS.get(getattr(seg.config, "bias_mode", ""), "")
        y = np.arange(len(names))

        # Horizontal bars: class names read across a narrow dock, never rotated or cut.
        ax = self.figure.add_subplot(211)
        ax.barh(y, bias, color=colors, edgecolor="black", linewidth=0.5)
        ax.scatter(start, y, marker="D", s=18, color="black", zorder=3)
        ax.axvline(0, color="grey", linewidth=0.5)
        ax.set_yticks(y, names, fontsize=FONT)
        ax.invert_yaxis()  # class 1 on top, as in the Segment widget's list
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
        ax.tick_params(axis="x", labelsize=FONT)
        ax.set_title("Extra attention per class", fontsize=FONT + 1)
        ax.set_xlabel("bar: now   ◆: start, from rarity", fontsize=FONT)

        snaps = seg.bias_history()
        ax2 = self.figure.add_subplot(212)
        if snaps:
            traj = np.stack([v for _, v in snaps])
            steps = np.arange(len(snaps))
            for k in range(len(names)):
                ax2.plot(steps, traj[:, k], marker=".", color=colors[k], label=names[k])
            tuned = [i for i, (tag, _) in enumerate(snaps) if tag.startswith("finetune")]
            if tuned and tuned[0] > 0:
                ax2.axvline(tuned[0] - 0.5, color="grey", linestyle=":", linewidth=1)
                ax2.text(tuned[0] - 0.4, ax2.get_ylim()[1], "fine-tuning", fontsize=FONT, va="top")
            # Snapshots are counted: whole-number ticks only (no 2.5 or 7.5).
            ax2.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
            ax2.set_xlabel("snapshot (epochs, then fine-tunes)", fontsize=FONT)
            ax2.legend(fontsize=FONT, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.32), frameon=False,
                       handlelength=1.2, columnspacing=0.8, borderaxespad=0)
        else:
            ax2.text(0.5, 0.5, "no history in this\nmodel file yet", ha="center", va="center",
                     transform=ax2.transAxes, fontsize=FONT)
        ax2.set_title("Extra attention over training", fontsize=FONT + 1)
        ax2.tick_params(labelsize=FONT)
        self.values.setText(f"Extra attention per class ({mode}): "
                            + ", ".join(f"{n} {b:+.3f}" for n, b in zip(names, bias))
                            + ". Above 0: the model looks harder for the class. Hover for more.")
        self.canvas.draw_idle()

    # --- focus / uncertainty layers ----------------------------------------------------------
    def add_maps(self, kinds=("focus",)):
        """Compute and add focus maps and/or the uncertainty map of the last segmented region."""
        res, seg = self.session.result, self.session.segmenter
        try:
            if res is None or seg is None:
                raise DataError("Nothing segmented yet: click Segment in the Segment widget first")
            if res.image_layer not in self.viewer.layers:
                raise DataError(f"the image layer {res.image_layer!r} was closed; open it and segment again")
            if res.whole_slide:
                raise DataError("Focus maps are made for a region: segment the visible region first")
            pyramid = layer_pyramid(self.viewer, self.viewer.layers[res.image_layer])
        except DataError as exc:
            self._say(str(exc), error=True, until=self._ready)
            return None
        if self.worker is not None:
            return self.worker
        self._say("Computing " + " and ".join(kinds) + " maps…")

        def work():
            from ..inference import Runtime, segment
            from ..inference.background import gui_tile_workers

            data, lv = pyramid.source(res.level)
            return segment(data, seg, level=lv, region=res.region, outputs=("labels", *kinds),
                           runtime=Runtime(tile_workers=gui_tile_workers()))

        return self.run_job(work, lambda out: self._on_maps(out, res, seg, kinds, pyramid.units))

    def _on_maps(self, out, res, seg, kinds, units=None) -> None:
        from napari.utils.colormaps import Colormap

        added = []
        if "focus" in kinds:
            focus = getattr(out, "focus", None)
            if focus is None:
                self._say("This model/inference gave no focus maps.", error=True)
                return
            for k, (name, col) in enumerate(zip(seg.class_names, seg.class_colors)):
                cmap = Colormap([[0, 0, 0, 0], [v / 255 for v in col[:3]] + [1]], name=f"dfa-{name}")
                lname = f"focus: {name}"
                data = np.asarray(focus[k], dtype=np.float32)
                if lname in self.viewer.layers:
                    self.viewer.layers.remove(lname)
                # Attention spread over K classes rarely nears 1: scale each map to its own top.
                top = max(float(np.percentile(data, 99.5)), 1e-3)
                self.viewer.add_image(data, name=lname, colormap=cmap, blending="translucent", opacity=0.85,
                                      contrast_limits=(0.0, top), scale=res.scale, translate=res.translate,
                                      units=units, visible=k == 0)
                added.append(lname)
        if "uncertainty" in kinds:
            unc = getattr(out, "uncertainty", None)
            if unc is None:
                self._say("This model/inference gave no uncertainty map.", error=True)
                return
            if "uncertainty" in self.viewer.layers:
                self.viewer.layers.remove("uncertainty")
            self.viewer.add_image(np.asarray(unc, dtype=np.float32), name="uncertainty", colormap="magma",
                                  contrast_limits=(0.0, 1.0), opacity=0.6, scale=res.scale,
                                  translate=res.translate, units=units)
            added.append("uncertainty")
        words = [FOCUS_WORDS] * ("focus" in kinds) + [UNCERTAINTY_WORDS] * ("uncertainty" in kinds)
        self._say(f"Added {len(added)} layer(s): {', '.join(added)}. " + " ".join(words))

    def _ready(self) -> None:
        """Raises DataError while there is no region result to add maps for."""
        res = self.session.result
        if res is None or self.session.segmenter is None or res.image_layer not in self.viewer.layers:
            raise DataError("nothing segmented")

    def _set_busy(self, busy: bool) -> None:
        self.focus_button.setEnabled(not busy)
        self.uncertainty_button.setEnabled(not busy)

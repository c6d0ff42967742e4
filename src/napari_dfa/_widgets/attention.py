"""Attention-bias widget: what the model learned about class difficulty, and where it looks.

Top plot: the effective bias b_c the decoder adds to each class's pixel → class attention logit
(bars, class colours) against the centred frequency prior γ·log(1 − f_c) (diamonds): a class whose
bar sits above its prior was found harder than its rarity alone says. Bottom plot: b_c over the
snapshots stored in the checkpoint's ``bias_history`` (training epochs, then fine-tuning runs; see
:meth:`napari_dfa.model.Segmenter.bias_history`).
Buttons add the per-class focus maps (last decoder layer's pixel → class attention) and the
uncertainty map of the last segmented region as image layers aligned with its labels.
"""

from __future__ import annotations

import logging

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout

from ..errors import DataError
from ._base import DFAWidget
from ._layers import layer_pyramid

logger = logging.getLogger(__name__)

BIAS_TIP = ("Class bias (b_c): a number per class that the model adds when it decides which class a pixel "
            "belongs to. Above zero: the model looks harder for that class; below: less. It is learnt in "
            "training; the diamonds show what the class's rarity alone would give (the frequency prior).")


class AttentionWidget(DFAWidget):
    """Dock widget: b_c vs. the frequency prior, its trajectory, focus and uncertainty layers.

    Arguments:
      napari_viewer: the viewer (napari passes it when the widget is docked).
      parent: optional Qt parent.
    """

    hint = "Segment a region to see where each class token looks."

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)

        self.figure = Figure(figsize=(4, 4.8), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(260)
        self.canvas.setToolTip(BIAS_TIP)
        self.values = QLabel()
        self.values.setWordWrap(True)
        self.values.setToolTip(BIAS_TIP)
        self.focus_button = QPushButton("Add focus maps")
        self.focus_button.setToolTip("Per class, where its class token looks (the last decoder layer's attention): "
                                     "one image layer per class over the segmented region")
        self.uncertainty_button = QPushButton("Add uncertainty map")
        self.uncertainty_button.setToolTip("1 − (margin between the two most likely classes): bright where the model "
                                           "hesitates, a good place to check and correct")

        buttons = QHBoxLayout()
        buttons.addWidget(self.focus_button)
        buttons.addWidget(self.uncertainty_button)
        # Text and buttons above the plot, never below it: a short dock hides what is below.
        layout = QVBoxLayout(self.body)  # the status line is the base class's, above
        layout.addWidget(self.values)
        layout.addLayout(buttons)
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
        """Plot the current model's b_c, its prior and its trajectory."""
        seg = self.session.segmenter
        self.figure.clear()
        if seg is None:
            ax = self.figure.add_subplot(111)
            ax.text(0.5, 0.5, "No model loaded yet:\nsegment with a model first", ha="center",
                    va="center", transform=ax.transAxes)
            ax.set_axis_off()
            self.values.setText("")
            self.canvas.draw_idle()
            return
        names = list(seg.class_names)
        colors = [tuple(v / 255 for v in col[:3]) for col in seg.class_colors]
        bias, prior = self.current_bias(), np.asarray(seg.prior_bias(), dtype=float)
        mode = getattr(seg.config, "bias_mode", "?")
        x = np.arange(len(names))

        ax = self.figure.add_subplot(211)
        ax.bar(x, bias, color=colors, edgecolor="black", linewidth=0.5, label="class bias b_c (learnt)")
        ax.scatter(x, prior, marker="D", color="black", zorder=3, label="frequency prior")
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("bias")
        ax.set_title(f"class bias per class ({mode})", fontsize=9)
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.42), ncol=2, frameon=False)

        snaps = seg.bias_history()
        ax2 = self.figure.add_subplot(212)
        if snaps:
            traj = np.stack([v for _, v in snaps])
            for k in range(len(names)):
                ax2.plot(np.arange(len(snaps)), traj[:, k], marker=".", color=colors[k], label=names[k])
            tuned = [i for i, (tag, _) in enumerate(snaps) if tag.startswith("finetune")]
            if tuned and tuned[0] > 0:
                ax2.axvline(tuned[0] - 0.5, color="grey", linestyle=":", linewidth=1)
                ax2.text(tuned[0] - 0.4, ax2.get_ylim()[1], "fine-tuning", fontsize=7, va="top")
            ax2.set_xlabel("snapshot (epochs, then fine-tuning)", fontsize=8)
        else:
            ax2.text(0.5, 0.5, "no bias history in this checkpoint yet", ha="center", va="center",
                     transform=ax2.transAxes, fontsize=8)
        ax2.set_ylabel("class bias b_c")
        ax2.tick_params(labelsize=7)
        self.values.setText("Class bias b_c: " + ", ".join(f"{n} {b:+.3f}" for n, b in zip(names, bias))
                            + " (hover for what it means)")
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
            from ..inference import segment
            from ..inference.background import gui_tile_workers

            data, lv = pyramid.source(res.level)
            return segment(data, seg, level=lv, region=res.region, outputs=("labels", *kinds),
                           tile_workers=gui_tile_workers())

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
        self._say(f"Added {len(added)} layer(s): {', '.join(added)}. Bright = where to look/correct.")

    def _ready(self) -> None:
        """Raises DataError while there is no region result to add maps for."""
        res = self.session.result
        if res is None or self.session.segmenter is None or res.image_layer not in self.viewer.layers:
            raise DataError("nothing segmented")

    def _set_busy(self, busy: bool) -> None:
        self.focus_button.setEnabled(not busy)
        self.uncertainty_button.setEnabled(not busy)

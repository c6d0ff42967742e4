"""The Fine-tune widget's training section (Qt): the guard box, the live loss curve, and the folded
options (how the model learns: the deep fine-tune and its steps, the encoder, replay)."""

from __future__ import annotations

from qtpy.QtWidgets import QCheckBox, QFormLayout, QSpinBox

from ..corrections.workflow import default_steps
from ._fold import Fold
from ._lossplot import LossPlot

REPLAY_TIP = ("Deep fine-tune only. Replay: also train on a thin sample of the current labels around your "
              "corrections, so the model keeps what it got right where you corrected nothing (it forgets otherwise).")
GUARD_TIP = ("Guard: offer the new model only if it is better on your strokes and confirmed regions held back to "
             "test it, and no verified class got worse; when too little is verified to tell, it says what would "
             "settle it. Untick to judge for yourself: Accept then shows what the change does and asks once.")
DEEP_TIP = ("Off (default): the way to learn is chosen for you. For a class the model never had, or tissue unlike "
            "its training data, the pixel head is fitted on your strokes and confirmed regions, the rest of the "
            "model fixed (seconds; it learns tissue and classes the model never saw); on tissue like the model's "
            "own, in its own classes, the layers after the encoder are fine-tuned. On: always the latter, with "
            "the steps above.")
STEPS_TIP = ("Deep fine-tune: optimizer steps, 4 crops a step (256², or 512² when the encoder trains too); 200 with "
             "a GPU, 40 on a CPU. The pixel head fits in its own 150 steps.")
ENCODER_TIP = ("Slower. Deep fine-tune only (ticking it ticks that). Off: only the layers after the encoder train, "
               "on its cached features. On: the encoder trains too, on 512-px crops, about 4x the time.")


class TrainingPanel:
    """``guard``, ``loss_plot`` and ``options_fold`` (``deep``, ``train_encoder``, ``replay``,
    ``steps``), in that order (:meth:`add_to`); ``losses``: ``[(step, loss, held-out loss or
    None)]`` of the run shown."""

    def __init__(self):
        self.steps = QSpinBox()
        self.steps.setRange(1, 5000)
        self.steps.setValue(default_steps())
        self.steps.setEnabled(False)
        self.steps.setToolTip(STEPS_TIP)
        self.deep = QCheckBox("Deep fine-tune instead")
        self.deep.setToolTip(DEEP_TIP)
        self.deep.toggled.connect(self._on_deep)
        self.replay = QCheckBox("Replay current labels")
        self.replay.setChecked(True)
        self.replay.setToolTip(REPLAY_TIP)
        self.guard = QCheckBox("Guard: test it first")
        self.guard.setChecked(True)
        self.guard.setToolTip(GUARD_TIP)
        self.train_encoder = QCheckBox("Train the encoder too")
        self.train_encoder.setToolTip(ENCODER_TIP)
        self.train_encoder.toggled.connect(lambda on: on and self.deep.setChecked(True))
        self.loss_plot = LossPlot()
        self.loss_plot.setToolTip("Loss per step: train (line) and on the held-back corrections (dots)")
        self.options_fold = Fold("More options", tip="How the model learns: method, steps, replay")
        for w in (self.deep, self.train_encoder, self.replay):
            self.options_fold.addWidget(w)
        steps = QFormLayout()
        steps.addRow("Steps", self.steps)
        self.options_fold.addLayout(steps)
        self.losses: list[tuple[int, float, float | None]] = []
        self.total_steps = 1

    def add_to(self, layout) -> None:
        for w in (self.guard, self.loss_plot, self.options_fold):
            layout.addWidget(w)

    def settings(self) -> dict:
        """How to fine-tune, as :func:`~napari_dfa.corrections.workflow.finetune_on_corrections`
        takes it; the head fits in its own steps, the Steps box is the deep fine-tune's."""
        method = "deep" if self.deep.isChecked() or self.train_encoder.isChecked() else "auto"
        return dict(steps=self.steps.value() if method == "deep" else None, guard=self.guard.isChecked(),
                    method=method, replay_training=self.replay.isChecked(),
                    frozen_encoder=not self.train_encoder.isChecked())

    def start(self) -> None:
        """An empty curve for a new run."""
        self.losses = []
        self.total_steps = self.steps.value()
        self.draw()

    def record(self, step: int, total: int, loss, val) -> None:
        if loss is not None:
            # val_loss is repeated between evaluations: keep a point only when it was re-measured
            prev = next((v for _, _, v in reversed(self.losses) if v is not None), None)
            val = None if val is None or (prev is not None and float(val) == prev) else float(val)
            self.losses.append((step, float(loss), val))
        self.total_steps = total

    def draw(self) -> None:
        self.loss_plot.set_data([(s, v) for s, v, _ in self.losses],
                                [(s, v) for s, _, v in self.losses if v is not None], self.total_steps)

    def _on_deep(self, on: bool) -> None:
        """Steps are the deep fine-tune's alone; the encoder trains only in it."""
        self.steps.setEnabled(on)
        if not on and self.train_encoder.isChecked():
            self.train_encoder.setChecked(False)

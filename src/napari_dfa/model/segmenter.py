"""Segmenter: the user-facing facade over a DFA model (predictor style), and ``load_model``.

Callers hand it RGB ``uint8`` arrays and get labels or logits back; they never normalise, pad or
move tensors themselves. It also carries what a checkpoint knows besides weights: class names and
colours, f_c, the microns per pixel the model was trained at and provenance.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..classes import ClassSet, default_colors
from ..errors import CheckpointError, ConfigError, DataError
from .card import build_card
from .checkpoint import load_state_checked, read_checkpoint, write_checkpoint
from .config import ModelConfig
from .dfa_model import DFASegModel, build_model
from .device import resolve_device

logger = logging.getLogger(__name__)

DEMO_MODEL = Path(__file__).resolve().parent.parent / "weights" / "demo.safetensors"
_RESERVED = ("provenance", "bias_history", "source", "model_card")
PRECISIONS = ("auto", "fp32", "bf16")


def _cpu_has_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class Segmenter:
    """A DFA model ready to segment RGB tiles.

    Arguments:
      model (DFASegModel): the network (its ``config`` is the Segmenter's config).
      class_names (sequence of K str | None): names of labels 1..K; None: ``class 1`` ...
      class_colors (sequence of K RGB triples | None): display colours; None: evenly spaced hues.
      frequencies (sequence of K floats | None): f_c; None: what the model's bias holds.
      mpp (float | None): microns per pixel the model was trained at.
      metadata (dict | None): ``provenance``, ``bias_history``, ``source``, ``model_card`` (see
        :mod:`napari_dfa.model.card`; set its ``license``, ``intended_use``, ``authors`` before
        saving) and any other JSON.
      device (str | torch.device | None): where the model runs ("auto" picks CUDA, MPS, CPU);
        None: where the model's weights already are.
    """

    def __init__(self, model: DFASegModel, *, class_names: Sequence[str] | None = None,
                 class_colors: Sequence[tuple[int, int, int]] | None = None,
                 frequencies: Sequence[float] | None = None, mpp: float | None = None,
                 metadata: dict | None = None, device: str | torch.device | None = None):
        k = model.config.num_classes
        self.model = model
        self.class_names = list(class_names) if class_names is not None else [f"class {i + 1}" for i in range(k)]
        self.class_colors = ([tuple(int(v) for v in c) for c in class_colors] if class_colors is not None
                             else default_colors(k))
        if len(self.class_names) != k or len(self.class_colors) != k:
            raise DataError(f"a {k}-class model needs {k} class names and colours, got "
                            f"{len(self.class_names)} and {len(self.class_colors)}")
        if frequencies is not None:
            # Only stores f_c; a trained δ is never overwritten by a warm start here.
            model.bias.set_frequencies(frequencies, warm_start=False)
        self.mpp = None if mpp is None else float(mpp)
        self.precision = "auto"
        self.metadata = dict(metadata or {})
        self.metadata.setdefault("provenance", {})
        self.metadata.setdefault("bias_history", [])
        if device is None:
            device = next(model.parameters()).device
        self.device = torch.device("cpu")
        self.to(device)
        self.model.eval()

    @classmethod
    def from_config(cls, config: ModelConfig, *, class_names=None, class_colors=None, frequencies=None,
                    mpp=None, metadata=None, device="cpu") -> Segmenter:
        """A fresh (untrained) model; δ is warm-started from ``frequencies``."""
        model = build_model(config, frequencies=frequencies)
        return cls(model, class_names=class_names, class_colors=class_colors, mpp=mpp,
                   metadata=metadata, device=device)

    # -- properties -------------------------------------------------------------------------
    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def frequencies(self) -> np.ndarray:
        return self.model.bias.frequencies.detach().cpu().numpy().astype(np.float64)

    @property
    def input_multiple(self) -> int:
        return self.config.input_multiple

    @property
    def context(self) -> int:
        return self.config.context

    @property
    def classes(self) -> ClassSet:
        """The model's classes (names and colours of labels 1..K) as one value that travels."""
        return ClassSet.of(self.class_names, self.class_colors, name="model")

    def __repr__(self) -> str:
        return (f"Segmenter(preset={self.config.preset!r}, classes={self.class_names}, "
                f"bias_mode={self.config.bias_mode!r}, mpp={self.mpp}, device={self.device})")

    # -- device -------------------------------------------------------------------------------
    def to(self, device: str | torch.device) -> Segmenter:
        """Move the model to ``device`` ("auto", "cuda", "mps", "cpu"); returns self."""
        self.device = resolve_device(device)
        self.model.to(self.device)
        if self.device.type == "cuda":
            # Convolutions run faster on channels-last tensors with cuDNN.
            self.model.to(memory_format=torch.channels_last)
        return self

    # -- bias -----------------------------------------------------------------------------------
    def class_bias(self) -> np.ndarray:
        """The effective b_c (K floats) the decoder adds to the pixel → class logits."""
        with torch.no_grad():
            return self.model.bias().detach().cpu().numpy().astype(np.float64)

    def prior_bias(self) -> np.ndarray:
        """γ·log(1 − f_c) − mean over classes: the frequency prior δ is warm-started from."""
        with torch.no_grad():
            return self.model.bias.centred_prior().detach().cpu().numpy().astype(np.float64)

    def record_bias(self, **info: Any) -> dict:
        """Append the current b_c (by class name) to ``metadata["bias_history"]`` with ``info``
        (e.g. ``epoch=3, phase="finetune"``); trainers call it once per epoch. Returns the entry."""
        entry = {**info, "bias": [float(b) for b in self.class_bias()]}
        self.metadata["bias_history"].append(entry)
        return entry

    def bias_history(self) -> list[tuple[str, np.ndarray]]:
        """The b_c snapshots recorded in this model's metadata, oldest first, as (label, K floats).

        Training records the bias every epoch; fine-tuning runs append theirs. Reads
        ``bias_history`` (or ``delta_history``), also under ``provenance`` or as a JSON string:
        a list of dicts (``{"epoch": e, "bias": [...]}`` or ``{"step": s, "delta": [...]}``) or
        of lists. Snapshots with another number of classes are left out.
        """
        md = self.metadata
        k = self.num_classes
        prov = md.get("provenance") if isinstance(md.get("provenance"), dict) else {}
        for key in ("bias_history", "delta_history"):
            hist = md.get(key, prov.get(key))
            if isinstance(hist, str):  # older checkpoints kept it as JSON text
                try:
                    hist = json.loads(hist)
                except ValueError:
                    hist = None
            if not isinstance(hist, list):
                continue
            out = []
            for i, item in enumerate(hist):
                if isinstance(item, dict):
                    vec = next((item[n] for n in ("bias", "b", "delta") if n in item), None)
                    tag = " ".join(str(item[n]) for n in ("phase", "epoch", "step", "run") if n in item) or f"#{i}"
                else:
                    vec, tag = item, f"#{i}"
                vec = np.asarray(vec, dtype=float).ravel() if vec is not None else None
                if vec is not None and vec.size == k:
                    out.append((tag, vec))
            if out:
                return out
        return []

    # -- identity -------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """A cheap identity of the weights and classes (16 hex digits): a whole-slide labels store
        is named by it, and resuming one refuses another model.

        The bytes of every tensor (in the standard contiguous layout, so a channels-last copy of the
        same weights keeps its fingerprint) go through BLAKE2b: ~2 ms for the demo model's 2 MB,
        where summing each tensor in float64 took ~0.1 s. The result is kept and reused while no
        tensor was replaced or changed in place (torch's per-tensor version counter moves on every
        in-place write, e.g. an optimiser step)."""
        state = self.model.state_dict()
        ident = (list(self.class_names), repr(self.config),
                 tuple((name, p.data_ptr(), p._version, tuple(p.shape), p.dtype) for name, p in state.items()))
        cached = getattr(self, "_fingerprint", None)
        if cached is not None and cached[0] == ident:
            return cached[1]
        h = hashlib.blake2b(json.dumps([list(self.class_names), repr(self.config)]).encode(), digest_size=8)
        with torch.no_grad():
            for name, p in state.items():
                t = p.detach().to("cpu").contiguous().reshape(-1)
                h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
                h.update(t.view(torch.uint8).numpy())  # raw bytes (bfloat16 too: numpy has no such dtype)
        digest = h.hexdigest()
        self._fingerprint = (ident, digest)
        return digest

    # -- inference ------------------------------------------------------------------------------
    @property
    def precision(self) -> str:
        """Arithmetic of the forward pass: ``"auto"`` (bfloat16, or float16 where the GPU lacks it,
        autocast on CUDA; float32 elsewhere), ``"fp32"`` (float32 everywhere) or ``"bf16"``
        (bfloat16 autocast on CUDA and on CPUs too: ~1.4x faster where the CPU has native
        bfloat16, AVX512-BF16 or AMX; labels agree with float32 on ~99.8 % of pixels)."""
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:
        if value not in PRECISIONS:
            raise ConfigError(f"precision={value!r}: choose one of {', '.join(PRECISIONS)}")
        if value == "bf16" and self.device.type == "cpu" and not _cpu_has_bf16():
            logger.warning("precision bf16: this CPU has no native bfloat16 (AVX512-BF16/AMX); it will be "
                           "emulated and slower than fp32")
        self._precision = value

    def autocast_dtype(self) -> torch.dtype | None:
        """The dtype the forward pass autocasts to on the model's device, None for float32."""
        if self._precision == "fp32" or self.device.type not in ("cuda", "cpu"):
            return None
        if self.device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if self._precision == "bf16" else None

    def _autocast(self):
        dtype = self.autocast_dtype()
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def predict_logits(self, batch, *, attention: bool = False) -> dict:
        """Arguments: batch, uint8 B×H×W×3 (numpy or torch; H×W×3 is taken as a batch of one).

        Returns: dict with ``logits`` (float32 B×K×H×W torch tensor on ``device``; channel k =
        label k + 1) and ``attention`` (per-class focus maps B×K×H×W summing to 1 over classes,
        or None). H and W need not be multiples of ``input_multiple``: the batch is reflect-padded
        and the outputs cropped back.
        """
        x = torch.as_tensor(batch) if not isinstance(batch, torch.Tensor) else batch
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3:
            raise DataError(f"expected RGB uint8 images of shape B×H×W×3, got shape {tuple(x.shape)}")
        if x.dtype != torch.uint8:
            raise DataError(f"expected uint8 RGB images, got dtype {x.dtype}; convert with skimage/numpy first")
        h, w = x.shape[1:3]
        x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        m = self.input_multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            # Reflect keeps tissue texture at the border; it needs the pad smaller than the image.
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        if self.device.type == "cuda" or _channels_last(self.model):
            # Input in the weights' layout: else every convolution converts it first.
            x = x.contiguous(memory_format=torch.channels_last)
        self.model.eval()
        with torch.inference_mode(), self._autocast():
            out = self.model(x, return_attention=attention)
        logits = out["logits"][:, :, :h, :w].float()
        focus = None
        if attention:
            focus = F.interpolate(out["attention"].float(), size=x.shape[-2:], mode="bilinear",
                                  align_corners=False)[:, :, :h, :w]
        return {"logits": logits, "attention": focus}

    def predict(self, rgb) -> np.ndarray:
        """Arguments: rgb, an H×W×3 uint8 image (numpy or torch).

        Returns: H×W uint8 labels 1..K (argmax over classes). Whole-slide images go through
        ``napari_dfa.inference.segment``, which tiles; this runs the image in one pass.
        """
        arr = np.asarray(rgb)
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise DataError(f"predict expects an H×W×3 RGB image, got shape {arr.shape}")
        logits = self.predict_logits(arr[None])["logits"]
        return (logits.argmax(dim=1)[0] + 1).to(torch.uint8).cpu().numpy()

    # -- saving -----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, *, provenance: dict | None = None,
             dtype: torch.dtype | None = None, model_card: dict | None = None) -> Path:
        """Write the model as one ``.safetensors`` checkpoint (atomic: temp file + rename).

        Arguments:
          path: destination ``.safetensors`` file.
          provenance (dict | None): e.g. ``{"data": ..., "corrections": ...}``; merged over
            ``{"parent": <file this model was loaded from>}``; ``created`` and ``napari_dfa_version``
            are always set. None keeps the provenance the model was loaded with.
          dtype: e.g. ``torch.float16`` to halve the file (default: exact float32).
          model_card (dict | None): card fields to set (``license``, ``intended_use``, ``metrics``,
            ...; see :mod:`napari_dfa.model.card`); they win over the card the model had and over
            what the provenance says.
        """
        from .. import __version__

        if provenance is None:
            prov = dict(self.metadata.get("provenance") or {})
        else:
            prov = {"parent": self.metadata.get("source"), **provenance}
        fresh = provenance is not None or "created" not in prov
        if fresh:
            # New provenance: stamp it. Re-saving a loaded model unchanged keeps its stamp.
            prov.setdefault("parent", self.metadata.get("source"))
            prov["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            prov["napari_dfa_version"] = __version__
        extra = {k: v for k, v in self.metadata.items() if k not in _RESERVED}
        # The author's card fields stay; training data and metrics follow the new provenance.
        card = build_card(class_names=self.class_names, mpp=self.mpp, provenance=prov, extra=extra,
                          previous=self.metadata.get("model_card"), fresh=fresh)
        card.update(model_card or {})
        out = write_checkpoint(path, self.model.state_dict(), config=self.config, class_names=self.class_names,
                               class_colors=self.class_colors, frequencies=self.frequencies, mpp=self.mpp,
                               provenance=prov, bias_history=self.metadata.get("bias_history"), extra=extra,
                               dtype=dtype, model_card=card)
        self.metadata["provenance"] = prov
        self.metadata["model_card"] = card
        return out


def _channels_last(model: torch.nn.Module) -> bool:
    """Whether the model's convolution weights are channels-last (e.g. after ``segment``)."""
    for p in model.parameters():
        if p.ndim == 4 and p.shape[-1] * p.shape[-2] > 1:
            return p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    return False


def load_model(path_or_name: str | os.PathLike, *, device: str | torch.device = "cpu") -> Segmenter:
    """Load a checkpoint (``.safetensors`` path) or a bundled model by name (``"demo"``).

    Never unpickles; a foreign, malformed or mismatching file raises CheckpointError naming it.
    """
    if str(path_or_name) == "demo":
        path = DEMO_MODEL
        if not path.is_file():
            raise CheckpointError(
                f"{path}: the bundled demo model is missing from this installation; reinstall napari-dfa "
                "or train one with `napari-dfa train --config training/synthetic.toml`"
            )
    else:
        path = Path(path_or_name).expanduser()
    from .shapes import expected_tensors

    contents = read_checkpoint(path, tensor_spec=expected_tensors)  # tensors checked before any is read
    model = build_model(contents.config, load_encoder_weights=False)
    load_state_checked(model, contents.state_dict, path)
    card = contents.model_card or build_card(class_names=contents.class_names, mpp=contents.mpp,
                                             provenance=contents.provenance, extra=contents.extra)
    metadata = {**contents.extra, "provenance": contents.provenance, "bias_history": contents.bias_history,
                "source": str(path), "model_card": card}
    seg = Segmenter(model, class_names=contents.class_names, class_colors=contents.class_colors,
                    mpp=contents.mpp, metadata=metadata, device=device)
    logger.info("loaded %s from %s", seg, path)
    return seg

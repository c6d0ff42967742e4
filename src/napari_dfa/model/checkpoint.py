"""Checkpoint files: one ``.safetensors`` file, tensors = state dict, metadata = JSON strings.

Loading never unpickles. Before safetensors parses anything, the file is sniffed: a PyTorch pickle
(zip archive or legacy pickle stream), a truncated file or a foreign safetensors file (no napari-dfa
marker) is refused with a :class:`CheckpointError` that names the file and says what to do. Writes
are atomic: a temp file in the same folder, then ``os.replace``, so a crash never leaves half a model.

Metadata keys (all str → str): ``format`` (= ``napari-dfa``), ``format_version``, ``config`` (ModelConfig
JSON), ``class_names``, ``class_colors``, ``frequencies`` (f_c), ``bias_mode``, ``mpp``, ``provenance``
(parent model, data, corrections, created time, napari-dfa version), ``bias_history`` (b_c over
training, optional), ``model_card`` (licence, intended use, training data, metrics: see
:mod:`napari_dfa.model.card`; always written, built from the provenance when the caller gives none)
and ``extra`` (any other JSON the caller keeps).
"""

from __future__ import annotations

import json
import logging
import os
import pickletools
import struct
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError, ConfigError
from .config import ModelConfig

logger = logging.getLogger(__name__)

FORMAT = "napari-dfa"
# 2: the mask features include the decoder-updated memory (decoder.memory_upsampler.*); a version-1
# file has the old wiring and no such tensors, so it is refused with a message that says so.
FORMAT_VERSION = 2
MIN_FORMAT_VERSION = 2
PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin"}
MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


@dataclass
class CheckpointContents:
    """Everything a checkpoint holds, validated."""

    path: Path
    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    class_names: list[str]
    class_colors: list[tuple[int, int, int]]
    frequencies: np.ndarray
    mpp: float | None
    provenance: dict = field(default_factory=dict)
    bias_history: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    model_card: dict | None = None  # None: a file written before model cards


def _json_default(obj: Any):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return obj.tolist()
    if isinstance(obj, (Path, os.PathLike)):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _dumps(value: Any, what: str) -> str:
    try:
        return json.dumps(value, default=_json_default, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"checkpoint metadata {what!r} cannot be stored as JSON ({exc})") from None


def write_checkpoint(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], *, config: ModelConfig,
                     class_names: list[str], class_colors: list[tuple[int, int, int]],
                     frequencies, mpp: float | None, provenance: dict | None = None,
                     bias_history: list | None = None, extra: dict | None = None,
                     dtype: torch.dtype | None = None, model_card: dict | None = None) -> Path:
    """Write a checkpoint atomically. ``dtype`` (e.g. ``torch.float16``) casts floating tensors to
    shrink the file; the default keeps them bit-exact. Returns the path written."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: napari-dfa checkpoints are .safetensors files; use that suffix")
    if dtype not in (None, torch.float32, torch.float16):
        # The reader accepts float32 and float16 weights only (see napari_dfa.model.validate).
        raise CheckpointError(f"{path}: weights are saved as float32 or float16, not {dtype}")
    tensors = {}
    for key, t in state_dict.items():
        t = t.detach().to("cpu")
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        tensors[key] = t.contiguous().clone()  # clone: safetensors refuses shared storage
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": config.to_json(),
        "class_names": _dumps(list(class_names), "class_names"),
        "class_colors": _dumps([list(map(int, c)) for c in class_colors], "class_colors"),
        "frequencies": _dumps([float(f) for f in np.asarray(frequencies, dtype=np.float64)], "frequencies"),
        "bias_mode": config.bias_mode,
        "mpp": _dumps(None if mpp is None else float(mpp), "mpp"),
        "provenance": _dumps(provenance or {}, "provenance"),
    }
    if bias_history:
        metadata["bias_history"] = _dumps(bias_history, "bias_history")
    if extra:
        metadata["extra"] = _dumps(extra, "extra")
    if model_card is None:
        from .card import build_card

        model_card = build_card(class_names=class_names, mpp=mpp, provenance=provenance, extra=extra)
    metadata["model_card"] = _dumps(model_card, "model_card")
    # What is written must read back: the same checks as read_checkpoint, before any byte is written.
    from .validate import check_config_bounds, check_metadata

    check_config_bounds(config, source=str(path))
    check_metadata(path, metadata, num_classes=config.num_classes)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        # mkstemp creates 0600; a model file is meant to be shared: 0644 less the umask.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o644 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    logger.info("saved checkpoint %s (%d tensors)", path, len(tensors))
    return path


def _pickle_mentions_sam(path: Path) -> bool:
    """Whether a torch.save zip archive's pickle names SAM image-encoder keys. Reads the opcodes
    with pickletools (a disassembler: nothing is executed or imported)."""
    try:
        with zipfile.ZipFile(path) as zf:
            name = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
            if name is None:
                return False
            data = zf.read(name)
        for opcode, arg, _ in pickletools.genops(data):
            if isinstance(arg, str) and arg.startswith("image_encoder."):
                return True
    except Exception:  # a damaged archive: the generic pickle message is enough
        return False
    return False


def _refuse_pickle(path: Path, kind: str) -> CheckpointError:
    msg = (f"{path}: this is a PyTorch pickle ({kind}), not a napari-dfa checkpoint; napari-dfa never "
           "unpickles model files because a pickle can run arbitrary code.")
    if kind.startswith("torch.save") and _pickle_mentions_sam(path):
        msg += (" It holds SAM weights: convert it once with "
                f"`python -m napari_dfa.model.import_sam {path} {path.with_suffix('.safetensors')}` "
                "(or import_sam_weights()) and set encoder_weights to the .safetensors file.")
    else:
        msg += (" napari-dfa models are .safetensors files: save one with 'Save model…' in the Fine-tune "
                "widget or train one with `napari-dfa train`.")
    return CheckpointError(msg)


def _sniff(path: Path) -> None:
    """Refuse pickles and obviously broken files before any parser touches them."""
    from .validate import check_model_path

    check_model_path(path)  # a missing file, a symlink loop, a folder (which file in it?)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(9)
    if head[:4] == b"PK\x03\x04":
        raise _refuse_pickle(path, "torch.save zip archive")
    # A safetensors header length whose low byte is 0x80 also starts with 0x80: "{" at byte 8 tells.
    looks_safetensors = len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < size
    # Judged by content, not name: a safetensors file renamed .pt is read (and said so), a pickle
    # named .safetensors is refused; the suffix decides only for what is neither.
    if not looks_safetensors and (head[:1] == b"\x80" or path.suffix.lower() in PICKLE_SUFFIXES):
        raise _refuse_pickle(path, "pickle stream" if head[:1] == b"\x80" else f"{path.suffix} file")
    if looks_safetensors and path.suffix.lower() in PICKLE_SUFFIXES:
        logger.warning("%s: a .safetensors file under a %s name; read as safetensors (nothing is unpickled)",
                       path, path.suffix)
    if size < 10:
        raise CheckpointError(f"{path}: file is {size} bytes, too short to be a .safetensors checkpoint (truncated?)")
    (header_len,) = struct.unpack("<Q", head[:8])
    if header_len > MAX_HEADER or head[8:9] != b"{":
        raise CheckpointError(f"{path}: not a .safetensors file (no safetensors header); napari-dfa models "
                              "are written by 'Save model…' in the Fine-tune widget or by `napari-dfa train`")
    if 8 + header_len > size:
        raise CheckpointError(f"{path}: file is truncated (header says {header_len} bytes, file has {size}); "
                              "copy it again or re-export the model")


def read_checkpoint(path: str | os.PathLike, *, tensor_spec=None) -> CheckpointContents:
    """Read and validate a napari-dfa checkpoint without unpickling anything.

    ``tensor_spec(config) -> {name: (shape, dtype)}`` (:func:`napari_dfa.model.shapes.expected_tensors`,
    what :func:`~napari_dfa.model.load_model` passes) checks the file's tensors against its config
    before they are read; without it they are checked when loaded into a model."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    _sniff(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            # Names, shapes and dtypes from the header: checked before any tensor is read.
            header = {k: (tuple(fh.get_slice(k).get_shape()), fh.get_slice(k).get_dtype()) for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own exception types
        raise CheckpointError(f"{path}: malformed or truncated .safetensors file ({exc})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: a .safetensors file but not a napari-dfa checkpoint (no format marker); "
            "encoder weights (e.g. converted SAM weights) go into a model config's encoder_weights instead"
        )
    try:
        version = int(meta.get("format_version", "0"))
    except ValueError:
        version = -1
    if 1 <= version < MIN_FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} was written by an older napari-dfa whose mask "
            f"head did not use the decoder-updated features; this napari-dfa reads format "
            f"{MIN_FORMAT_VERSION}..{FORMAT_VERSION}. Retrain the model (napari-dfa train) with this version")
    if not MIN_FORMAT_VERSION <= version <= FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {meta.get('format_version')!r} is not supported "
                              f"by this napari-dfa (reads {MIN_FORMAT_VERSION}..{FORMAT_VERSION}); upgrade napari-dfa")
    # Everything is validated before anything is allocated (see napari_dfa.model.validate).
    from .validate import check_config_bounds, check_metadata, check_tensors, parse_json

    raw_config = parse_json(path, "config", meta.get("config", ""))
    if not isinstance(raw_config, dict):
        raise CheckpointError(f"{path}: invalid model config in checkpoint (not a JSON object)")
    try:
        config = ModelConfig.from_dict(raw_config, source=str(path))
    except (ConfigError, TypeError, ValueError) as exc:  # TypeError: e.g. a list where a name belongs
        raise CheckpointError(f"{path}: invalid model config in checkpoint ({exc})") from None
    check_config_bounds(config, source=str(path))
    parsed = check_metadata(path, meta, num_classes=config.num_classes)
    if tensor_spec is not None:
        check_tensors(path, header, config, tensor_spec)
    try:
        state = load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read the tensors ({exc}); the file is truncated or damaged") from None
    card = parse_json(path, "model_card", meta["model_card"]) if "model_card" in meta else None
    if card is not None and not isinstance(card, dict):
        raise CheckpointError(f"{path}: checkpoint metadata 'model_card' must be a JSON object")
    return CheckpointContents(path=path, config=config, state_dict=state, model_card=card, **parsed)


def load_state_checked(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load ``state`` into ``model``, refusing missing, unexpected or wrongly shaped tensors."""
    from .validate import check_tensor_shapes

    check_tensor_shapes(path, {k: tuple(v.shape) for k, v in model.state_dict().items()},
                        {k: tuple(v.shape) for k, v in state.items()})
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        # A diverged training run saves NaN weights; such a model would paint noise on every slide.
        raise CheckpointError(f"{path}: {len(bad)} tensors hold NaN or infinite values (e.g. {bad[:3]}); "
                              "the run that wrote it diverged; use an earlier checkpoint")
    model.load_state_dict(state, strict=True)


def load_safetensors_into(module: "torch.nn.Module", path: str | Path, *, prefix: str = "") -> None:
    """Load a safetensors state dict (keys optionally under ``prefix``) strictly into ``module``."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: encoder weights file not found")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for malformed files
        raise CheckpointError(f"{path}: not a readable .safetensors weights file ({exc})") from None
    if prefix:
        tensors = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    try:
        result = module.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:  # shape mismatch
        raise CheckpointError(
            f"{path}: encoder weights do not fit the configured encoder ({str(exc).splitlines()[-1].strip()})"
        ) from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: encoder weights do not match the configured encoder "
            f"(missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}); "
            "check the vit_* / encoder_* sizes in the model config"
        )
    logger.info("loaded encoder weights from %s (%d tensors)", path, len(tensors))

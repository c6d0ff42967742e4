"""Checkpoint validation before anything is allocated (no Qt).

A checkpoint is data from anywhere: a crafted or damaged file must give one clear
:class:`CheckpointError` naming the file, never a hang, a traceback or a model that quietly paints
one class. So, in this order and before any tensor is read or any module is built:

1. the path: a symlink loop, a dangling link or a folder (which file in it?) is named as such;
2. every metadata value: size, JSON nesting depth (checked on the text, so ``json`` never recurses
   deeply), type and range: class names/colours/frequencies per class, ``mpp`` a positive finite
   number, ``provenance`` and ``extra`` objects, ``bias_history`` a list;
3. the model config: every field against :data:`BOUNDS` (a size of 100 000 decoder layers or a
   million channels is refused before a single layer exists); fields this table does not know
   (added later) pass when their type is sane;
4. the tensors in the file header against a shape-only (``meta`` device) model of that config
   (:mod:`napari_dfa.model.shapes`, handed in by the loader):
   names, shapes and dtypes. Floating weights must be float32 or float16 (what napari-dfa writes),
   all of one dtype; bf16 or integer bytes where floats belong would load as garbage.

Only then does :func:`napari_dfa.model.checkpoint.read_checkpoint` read the tensors.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError

# --- limits -----------------------------------------------------------------------------------
MAX_META_CHARS = 16 * 1024 * 1024  # one metadata value (bias_history of a long run is ~100 kB)
MAX_JSON_DEPTH = 64  # our deepest (extra.train.recipe.data.synth...) is < 10
MAX_NAME_CHARS = 256
MAX_CLASSES = 255  # labels are uint8 and 0 is "no class"
MAX_PARAMETERS = 2_000_000_000  # SAM ViT-H is 0.6 G; anything above is not a model of ours
MPP_RANGE = (1e-4, 1e4)  # µm per pixel: from electron microscopy to a phone photo of a slide

# Bounds of every ModelConfig field this version knows: (low, high) for numbers, for tuples the
# bounds of each item plus ("len", lo, hi). Strings: maximum length. A field missing here passes
# when it has a sane type (see _sane), so a newer field never makes old code refuse a model.
BOUNDS: dict[str, Any] = {
    "num_classes": (1, MAX_CLASSES),
    "encoder_widths": ((1, 4096), ("len", 1, 8)),
    "encoder_depths": ((0, 64), ("len", 1, 8)),
    "vit_dim": (1, 4096),
    "vit_depth": (1, 64),
    "vit_heads": (1, 64),
    "vit_window": (0, 1024),
    "vit_global_blocks": ((0, 63), ("len", 0, 64)),
    "vit_patch": (1, 256),
    "vit_img_size": (16, 8192),
    "vit_neck_dim": (1, 4096),
    "vit_mlp_ratio": (0.125, 16.0),
    "pixel_dim": (1, 4096),
    "decoder_dim": (4, 4096),
    "decoder_depth": (1, 64),
    "decoder_heads": (1, 64),
    "decoder_mlp_dim": (1, 16384),
    "gamma": (0.0, 100.0),
    "delta_init_scale": (-100.0, 100.0),
    "delta_lr_multiplier": (0.0, 1e6),
    "bias_l2_lambda": (0.0, 1e6),
    "difficulty_dice": ((0.0, 1.0), ("len", 0, MAX_CLASSES)),
    "input_multiple": (32, 1024),
    "context": (0, 4096),
    "preset": 64,
    "encoder": 256,
    "encoder_weights": 4096,
    "bias_mode": 64,
}

FLOAT_DTYPES = ("F32", "F16")  # what write_checkpoint writes (float32 or its dtype=float16 copy)


def _short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


# --- 1. the path ------------------------------------------------------------------------------
def check_model_path(path: Path) -> None:
    """Refuse what is not a readable file, saying exactly what it is instead."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CheckpointError(f"{path}: a symbolic link loop (the link points back to itself); "
                                  "fix the link or give the checkpoint file itself") from None
        if os.path.islink(path):
            raise CheckpointError(f"{path}: a broken symbolic link (to {os.readlink(path)!r}); "
                                  "the model file it pointed to is gone") from None
        if exc.errno == errno.ENOENT:
            raise CheckpointError(f"{path}: model file not found") from None
        raise CheckpointError(f"{path}: cannot read the model file ({exc.strerror})") from None
    if path.is_dir():
        raise CheckpointError(f"{path}: a folder, not a checkpoint file; {folder_hint(path)}")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file")


def folder_hint(folder: Path) -> str:
    """Which file in a folder is meant: a run's best checkpoint, or the .safetensors found there."""
    found = sorted(p.name for p in folder.glob("*.safetensors") if not p.name.endswith("_state.safetensors"))
    if "best.safetensors" in found:
        return f"a training run: give {folder / 'best.safetensors'} (its best epoch)"
    if found:
        return "give one of the checkpoints in it: " + ", ".join(str(folder / n) for n in found[:5])
    return "it holds no .safetensors checkpoint"


# --- 2. metadata ------------------------------------------------------------------------------
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)


def json_depth(text: str) -> int:
    """Deepest bracket nesting of a JSON text, without parsing it (strings are skipped)."""
    stripped = _STRING.sub('""', text).encode("utf-8", "replace")
    b = np.frombuffer(stripped, dtype=np.uint8)
    if b.size == 0:
        return 0
    step = ((b == ord("[")) | (b == ord("{"))).astype(np.int64) - ((b == ord("]")) | (b == ord("}")))
    return int(np.cumsum(step).max(initial=0))


def parse_json(path: Path, key: str, text: Any) -> Any:
    """One metadata value as JSON, bounded in size and depth; a CheckpointError names the key."""
    if not isinstance(text, str):
        raise CheckpointError(f"{path}: checkpoint metadata {key!r} is not text; the file is damaged or foreign")
    if len(text) > MAX_META_CHARS:
        raise CheckpointError(f"{path}: checkpoint metadata {key!r} is {len(text)} characters long "
                              f"(at most {MAX_META_CHARS}); the file is damaged or crafted")
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise CheckpointError(f"{path}: checkpoint metadata {key!r} is nested {depth} levels deep "
                              f"(at most {MAX_JSON_DEPTH}); the file is damaged or crafted")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, a 5000-digit number, ...
        raise CheckpointError(f"{path}: checkpoint metadata {key!r} is not valid JSON ({exc})") from None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_metadata(path: Path, meta: dict, *, num_classes: int) -> dict:
    """Parse and check the per-class lists, ``mpp`` and the free-form parts of a checkpoint.

    Returns ``class_names``, ``class_colors``, ``frequencies``, ``mpp``, ``provenance``,
    ``bias_history`` and ``extra``, ready to use."""
    k = num_classes

    def bad(key: str, want: str, found: Any):
        raise CheckpointError(f"{path}: checkpoint metadata {key!r} must be {want}, found {_short(found)}")

    def required(key: str):
        if key not in meta:
            raise CheckpointError(f"{path}: checkpoint metadata lacks {key!r}; the file is damaged or foreign")
        return parse_json(path, key, meta[key])

    out: dict[str, Any] = {}
    names = required("class_names")
    if not isinstance(names, list) or len(names) != k:
        raise CheckpointError(f"{path}: class_names must list {k} entries (one per class), found {_short(names)}")
    if not all(isinstance(n, str) and 0 < len(n) <= MAX_NAME_CHARS for n in names):
        bad("class_names", f"{k} non-empty strings of at most {MAX_NAME_CHARS} characters", names)
    out["class_names"] = list(names)

    colors = required("class_colors")
    if not isinstance(colors, list) or len(colors) != k:
        raise CheckpointError(f"{path}: class_colors must list {k} entries (one per class), found {_short(colors)}")
    for c in colors:
        if not (isinstance(c, list) and len(c) in (3, 4)
                and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in c)):
            bad("class_colors", f"{k} RGB triples of integers 0..255", colors)
    out["class_colors"] = [tuple(c[:3]) for c in colors]

    freqs = required("frequencies")
    if not isinstance(freqs, list) or len(freqs) != k:
        raise CheckpointError(f"{path}: frequencies must list {k} entries (one per class), found {_short(freqs)}")
    if not all(_number(f) and math.isfinite(f) and 0.0 <= f <= 1.0 + 1e-6 for f in freqs) or sum(freqs) <= 0:
        bad("frequencies", f"{k} finite class frequencies in [0, 1], not all 0", freqs)
    out["frequencies"] = np.asarray(freqs, dtype=np.float64)

    mpp = parse_json(path, "mpp", meta["mpp"]) if "mpp" in meta else None
    if mpp is not None:
        lo, hi = MPP_RANGE
        if not (_number(mpp) and math.isfinite(mpp) and lo <= mpp <= hi):
            bad("mpp", f"null or the microns per pixel the model was trained at ({lo:g}..{hi:g})", mpp)
        mpp = float(mpp)
    out["mpp"] = mpp

    for key, kind, default in (("provenance", dict, {}), ("bias_history", list, []), ("extra", dict, {})):
        value = parse_json(path, key, meta[key]) if key in meta else default
        if value is None:
            value = default
        if not isinstance(value, kind):
            bad(key, "a JSON object" if kind is dict else "a JSON list", value)
        out[key] = value
    if "bias_mode" in meta and not isinstance(meta["bias_mode"], str):
        bad("bias_mode", "a string", meta["bias_mode"])
    return out


# --- 3. the model config ----------------------------------------------------------------------
def _sane(value: Any, depth: int = 0) -> bool:
    """A value a config field of any future version could plausibly hold."""
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return abs(value) <= 10**9
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return len(value) <= 4096
    if isinstance(value, (list, tuple)) and depth < 2:
        return len(value) <= 1024 and all(_sane(v, depth + 1) for v in value)
    return False


def check_config_bounds(config, *, source: str) -> None:
    """Every field of a ModelConfig within :data:`BOUNDS` (unknown fields: a sane type)."""
    import dataclasses

    def bad(name: str, want: str, value: Any):
        raise CheckpointError(f"{source}: model config {name} = {_short(value)} is out of range ({want}); "
                              "the file is damaged or was not written by napari-dfa")

    for f in dataclasses.fields(config):
        name, value = f.name, getattr(config, f.name)
        rule = BOUNDS.get(name)
        if rule is None:
            if not _sane(value):
                bad(name, "a number, a string or a short list", value)
            continue
        if value is None:
            continue
        if isinstance(rule, int) and not isinstance(rule, bool):  # a string field: its maximum length
            if not isinstance(value, str) or len(value) > rule:
                bad(name, f"a string of at most {rule} characters", value)
            continue
        if isinstance(rule[0], tuple):  # a tuple field: per item, and its length
            (lo, hi), (_, nlo, nhi) = rule
            if not isinstance(value, (list, tuple)) or not nlo <= len(value) <= nhi:
                bad(name, f"{nlo}..{nhi} values", value)
            if not all(_number(v) and math.isfinite(v) and lo <= v <= hi for v in value):
                bad(name, f"each value in {lo}..{hi}", value)
            continue
        lo, hi = rule
        if not (_number(value) and math.isfinite(value) and lo <= value <= hi):
            bad(name, f"{lo}..{hi}", value)


# --- 4. tensors against a shape-only model ----------------------------------------------------
# The shapes come from napari_dfa.model.shapes.expected_tensors (a meta-device model), passed in
# by the loader: this module imports no network code, so checkpoint -> validate stays acyclic.


def check_tensors(path: Path, header: dict[str, tuple[tuple[int, ...], str]], config, tensor_spec) -> None:
    """The file's tensors (``{name: (shape, dtype)}`` from its header) against ``config``, whose
    tensors ``tensor_spec(config)`` lists the same way (see napari_dfa.model.shapes).

    Raises CheckpointError for missing, unexpected or wrongly shaped tensors, and for dtypes that
    are not what napari-dfa writes."""
    try:
        expected = tensor_spec(config)
    except Exception as exc:  # noqa: BLE001 - sizes within bounds that still do not fit together
        raise CheckpointError(f"{path}: the model config cannot be built ({type(exc).__name__}: {exc}); "
                              "the file is damaged or was not written by napari-dfa") from None
    n_params = sum(int(np.prod(s, dtype=np.float64)) for s, _ in expected.values())
    if n_params > MAX_PARAMETERS:
        raise CheckpointError(f"{path}: the model config describes {n_params:.3g} parameters "
                              f"(at most {MAX_PARAMETERS:.3g}); the file is damaged or crafted")
    check_tensor_shapes(path, {k: v[0] for k, v in expected.items()},
                        {k: tuple(header[k][0]) for k in header})
    float_dtypes = set()
    for k, (shape, want) in expected.items():
        got = header[k][1]
        if want in ("F32", "F16", "BF16", "F64"):
            if got not in FLOAT_DTYPES:
                raise CheckpointError(
                    f"{path}: tensor {k} is stored as {got}; napari-dfa weights are float32 or float16 "
                    f"({', '.join(FLOAT_DTYPES)}). The file is damaged or was converted by another tool; "
                    "use the file napari-dfa wrote ('Save model…' in the Fine-tune widget, or `napari-dfa train`)")
            float_dtypes.add(got)
        elif got != want:
            raise CheckpointError(f"{path}: tensor {k} is stored as {got}, expected {want}; the file is damaged")
    if len(float_dtypes) > 1:
        raise CheckpointError(f"{path}: the weights mix {' and '.join(sorted(float_dtypes))}; napari-dfa writes "
                              "one dtype for all of them, so the file was altered")


def check_tensor_shapes(path, expected: dict[str, tuple], got: dict[str, tuple]) -> None:
    """Refuse tensors missing, unexpected or of the wrong shape against what the config builds."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = [f"{k} {tuple(got[k])} != {tuple(v)}" for k, v in expected.items()
             if k in got and tuple(got[k]) != tuple(v)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if wrong:
            parts.append(f"{len(wrong)} with the wrong shape (e.g. {wrong[:3]})")
        raise CheckpointError(f"{path}: the tensors do not match the model config stored in the file: "
                              + "; ".join(parts))

"""Where napari-dfa keeps things, and how a slide is named on disk (no Qt).

One home for the rules that used to disagree: the cache folder, a slide's stem (``case.ome.tif`` →
``case``, ``case.v2.svs`` → ``case.v2``), the key that identifies a slide, and the names of the
stores derived from it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# Suffixes that belong together: "case.ome.tif" is the slide "case", not "case.ome".
_DOUBLE_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr", ".labels.zarr")


def cache_dir() -> Path:
    """napari-dfa's cache folder: ``$NAPARI_DFA_CACHE`` or ``~/.cache/napari-dfa``."""
    env = os.environ.get("NAPARI_DFA_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "napari-dfa"


def slide_stem(path: str | os.PathLike) -> str:
    """The slide's name without its format suffix(es); a ``layer:NAME`` key gives NAME."""
    text = str(path)
    if text.startswith("layer:"):
        text = text.split(":", 1)[1]
    name = Path(text.rstrip("/")).name
    for suffix in _DOUBLE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or "slide"
    return Path(name).stem or "slide"


def slide_key(path: str | os.PathLike) -> str:
    """A stable key for a slide: its resolved absolute path (``layer:…`` keys are kept as given)."""
    text = str(path)
    if text.startswith("layer:"):
        return text
    return str(Path(text).expanduser().resolve())


def digest(*parts) -> str:
    """12 hex digits identifying ``parts`` (joined with ``|``)."""
    return hashlib.sha1("|".join(str(p) for p in parts).encode("utf-8")).hexdigest()[:12]


def labels_store_name(slide_path: str | os.PathLike) -> str:
    """``<stem>.labels.zarr``: what ``napari-dfa predict`` writes for a slide."""
    return slide_stem(slide_path) + ".labels.zarr"


def content_key(tiles: bytes | list[bytes], shape, mpp: float | None) -> str:
    """16 hex digits naming a slide by what it holds, not where it lies: a hash of decoded level-0
    pixel bytes (``tiles``), the level-0 shape and the µm per pixel. A copied, moved or renamed
    slide keeps its key, and the same pixels through another reader get the same key; another
    slide at the same path does not."""
    h = hashlib.sha1()
    for tile in [tiles] if isinstance(tiles, (bytes, bytearray, memoryview)) else tiles:
        h.update(bytes(tile))
    mpp_text = "none" if not mpp else f"{float(mpp):.6g}"
    h.update(f"|{tuple(int(v) for v in shape)}|{mpp_text}".encode())
    return h.hexdigest()[:16]


def corrections_store_path(slide_path: str | os.PathLike, *, root: str | os.PathLike | None = None,
                           content: str | None = None) -> Path:
    """Where the corrections of one slide live: named by its :func:`content_key` when given, else
    by its path key. The slide's stem only makes the folder readable: a store of the same content
    made under another name is found by its key and reused."""
    key = slide_key(slide_path)
    base = Path(root) if root is not None else cache_dir() / "corrections"
    if content:
        existing = sorted(base.glob(f"*-{content}.zarr")) if base.is_dir() else []
        if existing:
            return existing[0]
    return base / f"{slide_stem(key)}-{content or digest(key)}.zarr"


def slide_labels_store_path(slide_path: str | os.PathLike, level: int, fingerprint: str) -> Path:
    """The cached whole-slide labels of one (slide, level, model weights): never shared between models."""
    folder = cache_dir() / "labels"
    return folder / f"{slide_stem(slide_path)}-L{level}-{digest(slide_path, level, fingerprint)}.zarr"


def accepted_labels_store_path(slide_path: str | os.PathLike, level: int, fingerprint: str, over: str) -> Path:
    """Where an accepted fine-tune's labels go: the whole-slide labels of the model ``over`` with a
    region segmented again by the model ``fingerprint``. Named by both, so it is neither model's
    own cache (segmenting the whole slide with either model never finds it)."""
    return slide_labels_store_path(slide_path, level, f"{fingerprint}-accepted-over-{over}")

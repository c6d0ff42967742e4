"""OME-NGFF metadata (no Qt): the one reader of ``multiscales`` for slides and label images alike."""

from __future__ import annotations


def ome_block(attrs: dict) -> dict:
    """The OME metadata of a group's attributes: ``attrs["ome"]`` (NGFF 0.5) or the attributes (0.4)."""
    ome = attrs.get("ome")
    return ome if isinstance(ome, dict) else attrs


def multiscales(attrs: dict) -> list[dict]:
    """The ``multiscales`` entries of a group's attributes, NGFF 0.4 or 0.5 ([] when there are none)."""
    for block in (ome_block(attrs), attrs):  # 0.5 keeps it under "ome"; 0.4 at the top
        found = block.get("multiscales")
        if isinstance(found, list) and found:
            return list(found)
    return []


def multiscale_datasets(attrs: dict) -> list[dict]:
    """The ``datasets`` of the first ``multiscales`` entry (finest first, each with its ``path`` and
    ``coordinateTransformations``); [] when there is none."""
    try:
        return list(multiscales(attrs)[0]["datasets"])
    except (KeyError, IndexError, TypeError):
        return []

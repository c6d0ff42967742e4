"""Model cards: what a model is for, what it learnt from, how well it did, under which licence.

Every checkpoint carries one as the ``model_card`` metadata entry (JSON), written by
:meth:`napari_dfa.model.Segmenter.save`; ``napari-dfa export-model --bioimageio`` turns it into the
package's README and fields. A card is a flat JSON object:

- ``name``, ``description``;
- ``license``: an SPDX identifier (``BSD-3-Clause``, ``CC-BY-4.0``, ...) or ``unspecified``;
- ``intended_use`` and ``out_of_scope``: plain sentences; every napari-dfa model is a research
  tool: "not for diagnosis" unless its author says more;
- ``training_data``: what the model was trained (or fine-tuned) on;
- ``metrics``: ``{name: number}`` measured on held-out data (empty when none was recorded);
- ``classes``, ``mpp``: label 1..K names and the microns per pixel it expects;
- ``authors``: a list of names; ``created``, ``napari_dfa_version``, ``card_version``.

Fields an author sets (licence, intended use, authors, description, ...) are kept when the model is
saved again; ``training_data`` and ``metrics`` are filled in again from the provenance whenever a
run gives the model new weights (training, fine-tuning), so a card never reports its parent's
scores.
"""

from __future__ import annotations

import math
from typing import Any

CARD_KEY = "model_card"
CARD_VERSION = 1
UNSPECIFIED = "unspecified"
DEFAULT_INTENDED_USE = ("research: tissue segmentation of H&E whole-slide images at the microns per pixel "
                        "the model was trained at; not for diagnosis")
DEFAULT_OUT_OF_SCOPE = ("diagnosis or any clinical decision; stains, magnifications, scanners or tissue "
                        "types unlike the training data")
# What a run recomputes from the provenance; everything else is the author's and is kept.
DERIVED = ("training_data", "metrics", "classes", "mpp", "created", "napari_dfa_version", "card_version")
REQUIRED = ("name", "license", "intended_use", "training_data", "metrics")

# The bundled demo model's own fields (examples/train_demo_model.py writes them; metrics are added).
DEMO_CARD = {
    "name": "napari-dfa demo",
    "description": "small DFA model trained on synthetic H&E tiles (napari_dfa.synth) for demos, tutorials "
                   "and tests",
    "license": "BSD-3-Clause",
    "authors": ["napari-dfa contributors"],
    "intended_use": "demo, synthetic tissue, not for diagnosis: trying napari-dfa on the bundled synthetic "
                    "H&E sample slide (0.5 µm/px), in tutorials and tests",
    "out_of_scope": "real tissue of any patient, and any diagnostic or clinical use: it has never seen a "
                    "real slide",
    "training_data": "synthetic H&E tiles from napari_dfa.synth with its default classes and settings "
                     "(training/synthetic.toml: 96 training, 24 validation and 24 test tiles of 160 px, "
                     "seed 0) at 0.5 µm/px; no patient data",
}


def build_card(*, class_names, mpp: float | None, provenance: dict | None = None, extra: dict | None = None,
               previous: dict | None = None, fresh: bool = True) -> dict:
    """The card to store with a model.

    Arguments:
      class_names, mpp: the model's classes and pixel size.
      provenance, extra: the checkpoint's ``provenance`` and ``extra`` metadata (training data,
        scores, recipe).
      previous: the card the model had (loaded with it, or set by its author); its own fields win.
      fresh: the weights are new (a training or fine-tuning run): ``training_data`` and ``metrics``
        come from the provenance; False keeps those of ``previous`` when it has them.
    """
    from .. import __version__

    prov = dict(provenance or {})
    previous = dict(previous or {})
    recipe = _recipe_name(prov)
    card: dict[str, Any] = {
        "name": recipe or "napari-dfa model",
        "description": "a DFA tissue segmentation model (napari-dfa)",
        "license": UNSPECIFIED,
        "authors": [],
        "intended_use": DEFAULT_INTENDED_USE,
        "out_of_scope": DEFAULT_OUT_OF_SCOPE,
    }
    card.update({k: v for k, v in previous.items() if k not in DERIVED and v not in (None, "", [])})
    if fresh or not previous.get("training_data"):
        card["training_data"] = _training_data(prov)
    else:
        card["training_data"] = previous["training_data"]
    if fresh or not isinstance(previous.get("metrics"), dict):
        card["metrics"] = _metrics(prov, extra or {})
    else:
        card["metrics"] = previous["metrics"]
    card.update(classes=[str(n) for n in class_names], mpp=None if mpp is None else float(mpp),
                created=prov.get("created") or previous.get("created"),
                napari_dfa_version=prov.get("napari_dfa_version") or __version__, card_version=CARD_VERSION)
    return card


def missing_fields(card: dict | None) -> list[str]:
    """Required fields that are absent or empty (``metrics`` may be an empty object)."""
    card = card or {}
    return [k for k in REQUIRED if k not in card or (k != "metrics" and card[k] in (None, "", []))]


def card_markdown(card: dict) -> str:
    """The card as a Markdown document (a bioimage.io package's documentation)."""
    lines = [f"# {card.get('name', 'napari-dfa model')}", "", str(card.get("description", "")), ""]
    for title, key in (("Intended use", "intended_use"), ("Out of scope", "out_of_scope"),
                       ("Training data", "training_data"), ("License", "license")):
        if card.get(key):
            lines += [f"## {title}", "", str(card[key]), ""]
    lines += ["## Classes", ""]
    lines += [f"{i}. {name}" for i, name in enumerate(card.get("classes", []), start=1)]
    lines += ["", f"Label 0 is background (not segmented). Pixel size: {card.get('mpp') or 'unknown'} µm/px.", ""]
    lines += ["## Validation", "", "Metrics measured on held-out data:", ""]
    metrics = card.get("metrics") or {}
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in metrics.items()]
    else:
        lines += ["No held-out metrics were recorded for this model."]
    if card.get("authors"):
        lines += ["", "## Authors", "", ", ".join(str(a) for a in card["authors"])]
    lines += ["", f"Created {card.get('created') or 'unknown'} with napari-dfa {card.get('napari_dfa_version')}.", ""]
    return "\n".join(lines)


def _training_data(prov: dict) -> str:
    data = prov.get("data")
    if data == "corrections":
        parent = prov.get("parent") or "its parent model"
        corr = prov.get("corrections") or {}
        px = corr.get("corrected_pixels")
        return (f"fine-tuned from {parent} on user corrections"
                + (f" ({px} corrected pixels)" if px is not None else ""))
    if data:
        recipe = _recipe_name(prov)
        return f"{data}" + (f" (recipe {recipe})" if recipe else "")
    return UNSPECIFIED


def _metrics(prov: dict, extra: dict) -> dict:
    """Held-out scores the provenance or the training history recorded, as ``{name: float}``."""
    out: dict[str, float] = {}

    def put(name, value):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)

    history = extra.get("history")
    best = extra.get("best_epoch")
    if isinstance(history, list) and history:
        rows = [r for r in history if isinstance(r, dict)]
        row = next((r for r in rows if r.get("epoch") == best), rows[-1] if rows else {})
        for key, value in row.items():
            if key.startswith("val_") and key != "val_loss":
                put(f"validation_{key[4:]}", value)
    if "validation_mdice" not in out:
        put("validation_mdice", prov.get("val_mdice"))
    finetune = prov.get("finetune") or {}
    if isinstance(finetune, dict):
        put("held_out_score_before_finetune", finetune.get("old_score"))
        put("held_out_score_after_finetune", finetune.get("new_score"))
    if isinstance(prov.get("metrics"), dict):  # scores a script recorded (e.g. test Dice)
        for key, value in prov["metrics"].items():
            put(str(key), value)
    return out


def _recipe_name(prov: dict) -> str | None:
    recipe = prov.get("recipe")
    if isinstance(recipe, dict):
        recipe = recipe.get("name")
    return recipe if isinstance(recipe, str) and recipe else None


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)

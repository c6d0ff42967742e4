"""``napari-dfa export-model``: a checkpoint as a bioimage.io model package (a ``.zip``).

The package (model description format 0.5) holds:

- ``weights.pt``: TorchScript of the network with its input scaling and a softmax, so any
  bioimage.io consumer (bioimageio.core, deepImageJ, ...) runs it without napari-dfa: input
  ``rgb`` float32 B×3×Y×X in 0..255 (Y, X multiples of 32, at the model's µm/px), output
  ``probabilities`` float32 B×K×Y×X (channel k = class k + 1; argmax + 1 gives napari-dfa's labels);
- ``test_input.npy`` / ``test_output.npy``: a synthetic H&E tile and what the TorchScript gives
  for it (consumers check the weights with them); ``sample_input.png`` / ``sample_output.tif``:
  the same as images;
- ``cover.png``: the test tile beside its labels in the class colours;
- ``README.md``: the model card (:mod:`napari_dfa.model.card`: licence, intended use, training
  data, metrics), whose fields also fill the description's ``license``, ``authors``, ``config``;
- ``rdf.yaml``: the description, with sha256 checksums of every file.

The licence must be an SPDX identifier: the card's, or ``--license``. Writing needs no
bioimage.io library; the tests validate packages with ``bioimageio.spec``.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
import zipfile
from pathlib import Path

HELP = "export a model as a bioimage.io model package (.zip) with its model card"

logger = logging.getLogger(__name__)

FORMAT_VERSION = "0.5.4"
_SPDX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+-]*$")  # the shape of an SPDX id; not the list itself
DFA_CITATION = {"text": "Kumari & Cheung, Dynamic Focal Attention for tissue segmentation, arXiv 2604.13479",
                "url": "https://arxiv.org/abs/2604.13479"}


def add_arguments(parser) -> None:
    parser.add_argument("--model", "-m", required=True, help='checkpoint (.safetensors) or "demo"')
    parser.add_argument("--bioimageio", required=True, metavar="OUT.zip", help="the package to write")
    parser.add_argument("--license", default=None, metavar="SPDX",
                        help="SPDX licence id of the weights (default: the model card's)")
    parser.add_argument("--tile", type=int, default=256,
                        help="edge of the test tile in pixels, a multiple of 32 (default 256)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT.zip if it exists")


def run(args) -> int:
    from ..model import load_model
    from ..files.outputs import claim
    from ._args import resolve_model

    # Where it goes is checked before the model is loaded and traced (seconds to minutes).
    out = check_package_path(args.bioimageio, overwrite=args.overwrite, model=resolve_model(args.model))
    with claim(out):
        out = export_bioimageio(load_model(resolve_model(args.model)), out, license=args.license, tile=args.tile,
                                overwrite=args.overwrite, claimed=True)
    print(f"wrote {out}")
    return 0


def check_package_path(out, *, overwrite: bool, model=None) -> Path:
    """The package path by the shared output policy (:func:`napari_dfa.files.outputs.check_output`): a
    .zip, its folder existing, not the model itself, an existing one only with --overwrite."""
    from ..errors import ConfigError
    from ..files.outputs import check_output

    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise ConfigError(f"--bioimageio {out}: give a .zip file name (a bioimage.io package is a zip)")
    return check_output(out, inputs=[("--model", model)], overwrite=overwrite, what="--bioimageio")


def export_bioimageio(seg, out, *, license: str | None = None, tile: int = 256, overwrite: bool = False,
                      seed: int = 0, claimed: bool = False) -> Path:
    """Write ``seg`` (a :class:`~napari_dfa.model.Segmenter`) as a bioimage.io package ``out``
    (``claimed``: the caller holds ``out``'s lock, :func:`napari_dfa.files.outputs.claim`)."""
    from ..errors import ConfigError
    from ..model.card import build_card, card_markdown
    from ..files.outputs import atomic_output

    out = check_package_path(out, overwrite=overwrite, model=seg.metadata.get("source"))
    if tile < 64 or tile % seg.input_multiple:
        raise ConfigError(f"--tile {tile}: give a multiple of {seg.input_multiple} of at least 64")
    card = dict(seg.metadata.get("model_card") or build_card(
        class_names=seg.class_names, mpp=seg.mpp, provenance=seg.metadata.get("provenance")))
    if license:
        card["license"] = license
    if not _SPDX.match(str(card.get("license", ""))) or card["license"] == "unspecified":
        raise ConfigError(f"{seg.metadata.get('source', 'the model')}: the model card has no SPDX licence "
                          f"({card.get('license')!r}); pass --license, e.g. --license CC-BY-4.0")
    with tempfile.TemporaryDirectory(prefix="napari-dfa-bioimageio-") as tmp:
        root = Path(tmp)
        rgb = _test_tile(tile, seed)
        probs = _write_weights(seg, rgb, root)
        _write_cover(seg, rgb, probs, root / "cover.png")
        (root / "README.md").write_text(card_markdown(card), encoding="utf-8")
        rdf = _description(seg, card, root, tile)
        import yaml

        (root / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False, allow_unicode=True), encoding="utf-8")
        # never half a package under the final name
        with atomic_output(out, overwrite=overwrite, claimed=claimed) as partial:
            with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                for name in ("rdf.yaml", "README.md", "cover.png", "weights.pt", "test_input.npy",
                             "test_output.npy", "sample_input.png", "sample_output.tif"):
                    zf.write(root / name, arcname=name)
    logger.info("bioimage.io package %s written (%s, licence %s)", out, card.get("name"), card["license"])
    return out


def _test_tile(tile: int, seed: int):
    from ..synth import generate_tile

    rgb, _ = generate_tile(seed=seed, size=tile)
    return rgb


def _write_weights(seg, rgb, root: Path):
    """TorchScript of input scaling + network + softmax; the test tensors from that very module."""
    import numpy as np
    import torch

    class Exported(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):  # B×3×Y×X float32 0..255 -> B×K×Y×X class probabilities
            return torch.softmax(self.model(x / 255.0)["logits"], dim=1)

    model = seg.model.to("cpu").eval()
    x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)[None].astype(np.float32)))
    with torch.no_grad():
        # Traced, not scripted: the trace keeps Y and X free (checked by the tests on other sizes).
        traced = torch.jit.trace(Exported(model), x, check_trace=False)
        probs = traced(x).numpy().astype(np.float32)
    torch.jit.save(traced, str(root / "weights.pt"))
    seg.to(seg.device)  # back where it was
    np.save(root / "test_input.npy", x.numpy())
    np.save(root / "test_output.npy", probs)
    # the same tensors as images, for people (bioimage.io "sample tensors")
    from PIL import Image
    import tifffile

    Image.fromarray(rgb).save(root / "sample_input.png")
    tifffile.imwrite(root / "sample_output.tif", probs[0], compression="zlib")
    return probs


def _write_cover(seg, rgb, probs, path: Path) -> None:
    """2:1 cover: the tile, and its labels in the class colours over it."""
    import numpy as np
    from PIL import Image

    labels = probs[0].argmax(axis=0)
    colors = np.asarray(seg.class_colors, dtype=np.float32)
    painted = (0.35 * rgb.astype(np.float32) + 0.65 * colors[labels]).astype(np.uint8)
    Image.fromarray(np.concatenate([rgb, painted], axis=1)).save(path)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _identifier(name: str, used: set) -> str:
    ident = re.sub(r"\W+", "_", str(name)).strip("_").lower() or "class"
    if ident[0].isdigit():
        ident = f"c{ident}"
    while ident in used:
        ident += "_"
    used.add(ident)
    return ident


def _description(seg, card: dict, root: Path, tile: int) -> dict:
    import torch

    from .. import __version__

    used: set = set()
    channels = [_identifier(n, used) for n in seg.class_names]
    mpp = seg.mpp

    def space(axis: str, size) -> dict:
        d = {"type": "space", "id": axis, "size": size}
        if mpp:
            d.update(unit="micrometer", scale=float(mpp))
        return d

    step = int(seg.input_multiple)
    name = re.sub(r"[^\w .()-]", " ", str(card.get("name") or "napari-dfa model"))[:120].strip()
    authors = [{"name": str(a)} for a in card.get("authors") or []] or [{"name": "napari-dfa user"}]
    metrics = card.get("metrics") or {}
    return {
        "format_version": FORMAT_VERSION,
        "type": "model",
        "name": name,
        "description": (f"{str(card.get('description', '')).rstrip('.')}. "
                        f"Intended use: {card.get('intended_use', '')}.")[:1024],
        "authors": authors,
        "cite": [DFA_CITATION],
        "license": card["license"],
        "documentation": "README.md",
        "covers": ["cover.png"],
        "tags": ["segmentation", "semantic-segmentation", "histopathology", "whole-slide-imaging", "H&E",
                 "2d", "pytorch", "napari-dfa"],
        "inputs": [{
            "id": "rgb",
            "description": ("RGB H&E image, values 0..255" + (f", {mpp:g} µm/px" if mpp else "")
                            + f", height and width multiples of {step}"),
            "axes": [{"type": "batch"}, {"type": "channel", "channel_names": ["r", "g", "b"]},
                     space("y", {"min": max(64, step), "step": step}),
                     space("x", {"min": max(64, step), "step": step})],
            "test_tensor": {"source": "test_input.npy", "sha256": _sha256(root / "test_input.npy")},
            "sample_tensor": {"source": "sample_input.png", "sha256": _sha256(root / "sample_input.png")},
            "data": {"type": "float32", "range": [0.0, 255.0]},
        }],
        "outputs": [{
            "id": "probabilities",
            "description": "class probabilities; channel k is class k + 1 (labels = argmax + 1)",
            "axes": [{"type": "batch"}, {"type": "channel", "channel_names": channels},
                     space("y", {"tensor_id": "rgb", "axis_id": "y"}),
                     space("x", {"tensor_id": "rgb", "axis_id": "x"})],
            "test_tensor": {"source": "test_output.npy", "sha256": _sha256(root / "test_output.npy")},
            "sample_tensor": {"source": "sample_output.tif", "sha256": _sha256(root / "sample_output.tif")},
            "data": {"type": "float32", "range": [0.0, 1.0]},
        }],
        "weights": {"torchscript": {"source": "weights.pt", "sha256": _sha256(root / "weights.pt"),
                                    "pytorch_version": torch.__version__.split("+")[0]}},
        "config": {"napari_dfa": {
            "version": __version__, "class_names": list(seg.class_names),
            "class_colors": [list(c) for c in seg.class_colors], "mpp": mpp,
            "input_multiple": step, "context": int(seg.context), "test_tile": tile,
            "model_card": card, "metrics": metrics,
        }},
    }

"""``python -m napari_dfa.model.import_sam SAM.pth OUT.safetensors``: convert SAM's weights once.

A separate module (not imported by the package) so that ``python -m`` runs it cleanly.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import DFAError
from .sam_vit import import_sam_weights


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m napari_dfa.model.import_sam",
                                 description="Convert SAM's image-encoder weights (.pth pickle) to .safetensors.")
    ap.add_argument("pth", help="SAM checkpoint, e.g. sam_vit_b_01ec64.pth")
    ap.add_argument("out", help="output .safetensors file (set it as encoder_weights in the [model] table)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = import_sam_weights(args.pth, args.out)
    except DFAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``napari-dfa export``: convert a labels store (or labels TIFF) to GeoJSON, TIFF, OME-Zarr or CSV."""

from __future__ import annotations

HELP = "convert labels (OME-Zarr store or TIFF) to QuPath GeoJSON, pyramidal TIFF, OME-Zarr or an area CSV"


def add_arguments(parser) -> None:
    parser.add_argument("labels", metavar="LABELS", help="labels store (.labels.zarr from predict) or labels TIFF")
    parser.add_argument("--to", action="append", required=True, metavar="OUT",
                        help="output by suffix: .geojson (QuPath), .tif (pyramidal), .zarr (OME-Zarr), "
                             ".csv (per-class area); repeat for several")
    parser.add_argument("--level", type=int, default=0,
                        help="pyramid level of the labels to export (coarser = smaller GeoJSON; default 0)")
    parser.add_argument("--split", action="store_true", help="GeoJSON: one feature per connected region")


def run(args) -> int:
    from ..labels import export_labels

    for dst in args.to:
        path = export_labels(args.labels, dst, level=args.level, split=args.split)
        print(f"{args.labels} -> {path}")
    return 0

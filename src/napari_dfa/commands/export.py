"""``napari-dfa export``: convert a labels store (or labels TIFF) to GeoJSON, TIFF, OME-Zarr or CSV.

Every ``--to`` is checked before anything is written (known suffix, existing folder, an existing
file only with ``--overwrite``, never a folder that is not a labels store); an incomplete store (a
predict run that did not finish) is refused unless ``--partial``, which marks every output partial.
"""

from __future__ import annotations

HELP = "convert labels (OME-Zarr store or TIFF) to QuPath GeoJSON, pyramidal TIFF, OME-Zarr or an area CSV"


def add_arguments(parser) -> None:
    from ._args import non_negative_int

    parser.add_argument("labels", metavar="LABELS", help="labels store (.labels.zarr from predict) or labels TIFF")
    parser.add_argument("--to", action="append", required=True, metavar="OUT",
                        help="output by suffix: .geojson (QuPath), .tif (pyramidal), .zarr (OME-Zarr), "
                             ".csv (per-class area); repeat for several")
    parser.add_argument("--level", type=non_negative_int, default=0,
                        help="pyramid level of the labels to export (coarser = smaller GeoJSON; default 0)")
    parser.add_argument("--split", action="store_true", help="GeoJSON: one feature per connected region")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs that exist")
    parser.add_argument("--partial", action="store_true",
                        help="export an incomplete store (a predict run that did not finish); every output "
                             "is marked partial (GeoJSON names, TIFF/Zarr metadata, a CSV column)")


def run(args) -> int:
    from pathlib import Path

    from ..errors import DataError
    from ..labels import export_labels
    from ..labels.io import EXPORT_SUFFIXES
    from ..labels.outputs import check_destination

    if not Path(args.labels).exists():
        raise DataError(f"{args.labels}: no such labels store or file")
    seen = set()
    for dst in args.to:  # all of them, before the first is written
        if Path(dst).suffix.lower() not in EXPORT_SUFFIXES:
            raise DataError(f"--to {dst}: unknown export format {Path(dst).suffix!r}; use .geojson, .tif, .zarr or .csv")
        if str(Path(dst).resolve()) in seen:
            raise DataError(f"--to {dst}: given twice")
        seen.add(str(Path(dst).resolve()))
        check_destination(dst, overwrite=args.overwrite, source=args.labels)
    for dst in args.to:
        path = export_labels(args.labels, dst, level=args.level, split=args.split, partial=args.partial,
                             overwrite=args.overwrite)
        print(f"{args.labels} -> {path}")
    return 0

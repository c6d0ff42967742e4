"""Segment a whole slide headless and export what a pathologist needs.

    python examples/segment_slide.py                       # a synthetic slide and the demo model
    python examples/segment_slide.py my.svs --model my.safetensors --out results/

Writes ``<out>/<stem>.labels.zarr`` (OME-Zarr labels with a display pyramid: open it in napari
or with ome-zarr), ``<stem>.geojson`` (File ▸ Import objects in QuPath), ``<stem>.areas.csv``
(per-class area and share) and prints the table. The same as
``napari-dfa predict SLIDE --model M --out DIR --geojson --areas``, written out step by step.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tqdm import tqdm

from napari_dfa import Tiling, labels as export, load_model, open_slide, segment, synth
from napari_dfa.files.paths import labels_store_name


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("slide", nargs="?", help="slide file (default: write a 2048² synthetic slide)")
    p.add_argument("--model", default="demo", help='checkpoint or "demo"')
    p.add_argument("--out", default="out/segment_slide", help="output folder")
    p.add_argument("--level", default="auto", help='level number or "auto" (closest to the model µm/px)')
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--overlap", type=int, default=64)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slide_path = args.slide
    if slide_path is None:
        slide_path, _truth = synth.write_slide(out / "synthetic.svs", size=(2048, 2048), seed=0)
    model = load_model(args.model)
    level = args.level if args.level == "auto" else int(args.level)
    store = out / labels_store_name(slide_path)

    with open_slide(slide_path) as slide, tqdm(unit="tile", desc=Path(slide_path).name) as bar:
        def progress(done, total, **info):
            bar.total, bar.n = total, done
            bar.set_postfix(eta=f"{info.get('eta') or 0:.0f}s")

        # resume=True: rerunning after Ctrl-C continues from the rows already written.
        res = segment(slide, model, level=level, tiling=Tiling(tile=args.tile, overlap=args.overlap), out=store,
                      progress=progress, resume=store.exists())
        stem = store.name[: -len(".labels.zarr")]
        export.write_geojson(out / f"{stem}.geojson", res.labels, res.classes,
                             downsample=res.downsample, offset=res.translate)
        rows = export.class_areas(res.labels, res.classes, downsample=res.downsample, mpp=slide.mpp)
        export.write_area_csv(out / f"{stem}.areas.csv", res.labels, res.classes,
                              downsample=res.downsample, mpp=slide.mpp)

    print(f"\nlevel {res.level} (downsample {res.downsample:g}), {res.tiles_total} tiles "
          f"({res.tiles_skipped} glass), {res.seconds:.1f} s -> {store}")
    for r in rows:
        mm2 = "" if r["area_mm2"] is None else f"{r['area_mm2']:.3f} mm²"
        print(f"  {r['class']:<14} {r['percent']:6.2f} %  {mm2}")


if __name__ == "__main__":
    main()

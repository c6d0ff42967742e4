"""``napari-dfa predict``: segment whole slides into OME-Zarr labels stores, locally or on dask.

One store per slide: ``OUT/<slide stem>.labels.zarr`` (``.ome.tif``/``.ome.zarr`` lose both
suffixes), an NGFF label image with the class names and colours (see napari_dfa.labels.store);
with ``--into-image`` an OME-Zarr slide gets it as its own ``labels/<name>`` instead.
``--geojson`` and ``--areas`` add ``<stem>.geojson`` (QuPath) and ``<stem>.areas.csv`` beside it.

With ``--workers N`` (a dask LocalCluster of N processes) or ``--scheduler ADDRESS`` (a running
dask.distributed scheduler) every slide is one task; each task loads the model from its path
itself, so only file names travel. A slide that fails is reported and the others go on; the exit
status is 1 when any failed.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

HELP = "segment slides into OME-Zarr labels (one store per slide; locally or on a dask cluster)"

logger = logging.getLogger(__name__)


def add_arguments(parser) -> None:
    parser.add_argument("slides", nargs="+", metavar="SLIDE", help="slide files (SVS, OME-TIFF, TIFF, OME-Zarr, ...)")
    parser.add_argument("--model", "-m", required=True, help='checkpoint (.safetensors) or "demo"')
    parser.add_argument("--out", "-o", required=True, help="output folder (OUT/<stem>.labels.zarr per slide)")
    parser.add_argument("--level", default="auto",
                        help='pyramid level, or "auto" (default): the level closest to the µm/px the model was '
                             "trained at (level 0 when the slide or the model does not say)")
    parser.add_argument("--region", default=None, metavar="Y0,X0,H,W",
                        help="only this box: level-0 pixels with --level auto, else pixels of --level")
    parser.add_argument("--tile", type=int, default=512, help="tile edge in pixels (default 512)")
    parser.add_argument("--overlap", type=int, default=64, help="overlap of neighbouring tiles (default 64)")
    parser.add_argument("--device", default="auto", help="auto | cuda | mps | cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="tiles per forward pass (default: 2 CPU, 8 GPU)")
    parser.add_argument("--chunk", type=int, default=512,
                        help="chunk edge of the stores; resume granularity (default 512)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads per slide (default: all cores locally, cores / workers on dask)")
    parser.add_argument("--outputs", default="labels",
                        help="comma list of labels,probabilities,uncertainty,focus (stored beside the labels)")
    parser.add_argument("--no-tissue-mask", action="store_true", help="also segment tiles that look like glass")
    parser.add_argument("--resume", action="store_true", help="continue unfinished stores from the rows written")
    parser.add_argument("--overwrite", action="store_true", help="replace existing stores")
    parser.add_argument("--geojson", action="store_true", help="also write OUT/<stem>.geojson (QuPath)")
    parser.add_argument("--areas", action="store_true", help="also write OUT/<stem>.areas.csv (per-class area)")
    parser.add_argument("--into-image", action="store_true",
                        help="OME-Zarr slides: write the labels into the slide's own labels/ group, where "
                             "OME-Zarr viewers look, instead of OUT (which keeps the GeoJSON/areas files)")
    parser.add_argument("--label-name", default="napari-dfa", metavar="NAME",
                        help="with --into-image: the labels' name, <slide>/labels/NAME (default napari-dfa)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--workers", type=int, default=None, help="run slides on a local dask cluster of N processes")
    group.add_argument("--scheduler", default=None, metavar="ADDRESS", help="run slides on this dask scheduler")


def parse_region(text: str | None):
    from ..errors import ConfigError

    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise ConfigError(f"--region {text!r}: give four integers y0,x0,height,width")
    return values


def parse_level(text):
    from ..errors import ConfigError

    if str(text) == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"--level {text!r}: give a level number or 'auto'") from None


def options_from_args(args) -> dict:
    return dict(level=parse_level(args.level), region=parse_region(args.region), tile=args.tile,
                overlap=args.overlap, device=args.device, batch_size=args.batch_size, chunk=args.chunk,
                outputs=tuple(o.strip() for o in args.outputs.split(",") if o.strip()),
                tissue_mask=not args.no_tissue_mask, resume=args.resume, overwrite=args.overwrite,
                geojson=args.geojson, areas=args.areas, into_image=args.label_name if args.into_image else None)


def predict_one(slide_path, model, out_dir, options: dict, progress=None, threads: int | None = None) -> dict:
    """Segment one slide into ``out_dir``; never raises for a bad slide (dask tasks report back).

    ``model`` is a Segmenter or a checkpoint path/"demo" (loaded here: what a dask task gets).
    Returns ``{"slide", "ok", "path", "error", "seconds", "completed", "tiles"}``."""
    from .. import labels as label_files
    from ..paths import labels_store_name, slide_stem
    from ..errors import ConfigError, DFAError
    from ..inference import segment

    t0 = time.perf_counter()
    report = {"slide": str(slide_path), "ok": False, "path": None, "error": None, "seconds": 0.0,
              "completed": False, "tiles": 0}
    previous_threads = None
    try:
        if threads:
            import torch

            previous_threads = torch.get_num_threads()
            torch.set_num_threads(threads)
        if isinstance(model, (str, os.PathLike)):
            from ..model import load_model

            model = load_model(model)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        store = out_dir / labels_store_name(slide_path)
        if options.get("into_image"):  # <slide>/labels/<name>, an NGFF label of the slide itself
            from ..labels.store import image_labels_path

            store = image_labels_path(slide_path, options["into_image"])
        if store.exists() and not (options.get("resume") or options.get("overwrite")):
            raise ConfigError(f"{store} exists; pass --resume to continue it or --overwrite to start over")
        from ..slide import open_slide

        with open_slide(slide_path) as slide:
            level, region = options.get("level", 0), options.get("region")
            if level == "auto":
                level = slide.best_level_for_mpp(model.mpp) if model.mpp else 0
                if region is not None:  # given in level-0 pixels: convert to the chosen level
                    ds = slide.downsamples[level]
                    y0, x0 = int(region[0] // ds), int(region[1] // ds)
                    region = (y0, x0, max(1, round((region[0] + region[2]) / ds) - y0),
                              max(1, round((region[1] + region[3]) / ds) - x0))
            res = segment(slide, model, level=level, region=region,
                          tile=options.get("tile", 512), overlap=options.get("overlap", 64),
                          device=options.get("device", "auto"), out=store, progress=progress,
                          resume=bool(options.get("resume")), tissue_mask=options.get("tissue_mask", True),
                          outputs=options.get("outputs", ("labels",)), batch_size=options.get("batch_size"),
                          chunk=options.get("chunk", 512))
            report.update(path=str(store), completed=res.completed, tiles=res.tiles_total)
            if res.completed and (options.get("geojson") or options.get("areas")):
                stem = slide_stem(slide_path)
                if options.get("geojson"):
                    label_files.write_geojson(out_dir / f"{stem}.geojson", res.labels, res.class_names,
                                         res.class_colors, downsample=res.downsample, offset=res.translate)
                if options.get("areas"):
                    label_files.write_area_csv(out_dir / f"{stem}.areas.csv", res.labels, res.class_names,
                                          downsample=res.downsample, mpp=slide.mpp)
        report["ok"] = res.completed
    except DFAError as exc:
        report["error"] = str(exc)
    except Exception as exc:  # noqa: BLE001 - one bad slide must not stop a cohort
        logger.exception("predict failed on %s", slide_path)
        report["error"] = f"{slide_path}: unexpected {type(exc).__name__}: {exc}"
    finally:
        if previous_threads:
            import torch

            torch.set_num_threads(previous_threads)
    report["seconds"] = time.perf_counter() - t0
    return report


def _run_local(args, options) -> list[dict]:
    from tqdm import tqdm

    from ..model import load_model

    model = load_model(args.model)
    reports = []
    for path in args.slides:
        bar = tqdm(total=0, desc=Path(path).name, unit="tile", leave=True)

        def progress(done, total, **info):
            bar.total = total
            bar.n = done
            bar.refresh()

        reports.append(predict_one(path, model, args.out, options, progress=progress, threads=args.threads))
        bar.close()
    return reports


def _run_distributed(args, options) -> list[dict]:
    from dask.distributed import Client, LocalCluster, as_completed
    from tqdm import tqdm

    model = args.model if args.model == "demo" else str(Path(args.model).resolve())
    slides = [str(Path(s).resolve()) for s in args.slides]
    out = str(Path(args.out).resolve())
    cluster = None
    if args.scheduler:
        client = Client(args.scheduler)
        threads = args.threads
    else:
        n = max(1, args.workers)
        # One single-threaded task per process; torch gets the cores shared out between them.
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0")
        client = Client(cluster)
        threads = args.threads or max(1, (os.cpu_count() or 1) // n)
    reports = []
    try:
        futures = [client.submit(predict_one, s, model, out, options, None, threads, pure=False) for s in slides]
        for fut in tqdm(as_completed(futures), total=len(futures), desc="slides", unit="slide"):
            reports.append(fut.result())
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    order = {s: i for i, s in enumerate(slides)}
    return sorted(reports, key=lambda r: order.get(r["slide"], 0))


def run(args) -> int:
    options = options_from_args(args)
    distributed = args.workers is not None or args.scheduler is not None
    reports = _run_distributed(args, options) if distributed else _run_local(args, options)
    failed = [r for r in reports if not r["ok"]]
    for r in reports:
        if r["ok"]:
            print(f"{r['slide']} -> {r['path']} ({r['tiles']} tiles, {r['seconds']:.1f} s)")
        else:
            print(f"napari-dfa predict: error: {r['error'] or r['slide'] + ': not completed'}", file=sys.stderr)
    if failed:
        print(f"napari-dfa predict: {len(failed)} of {len(reports)} slides failed", file=sys.stderr)
        return 1
    return 0

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
    from ._args import choices_list, level, positive_int, non_negative_int, region

    parser.add_argument("slides", nargs="+", metavar="SLIDE", help="slide files (SVS, OME-TIFF, TIFF, OME-Zarr, ...)")
    parser.add_argument("--model", "-m", required=True,
                        help='checkpoint (.safetensors), a training run folder (its best.safetensors) or "demo"')
    parser.add_argument("--out", "-o", required=True, help="output folder (OUT/<stem>.labels.zarr per slide)")
    parser.add_argument("--level", type=level, default="auto",
                        help='pyramid level, or "auto" (default): the level closest to the µm/px the model was '
                             "trained at (level 0 when the slide or the model does not say)")
    parser.add_argument("--region", type=region, default=None, metavar="Y0,X0,H,W",
                        help="only this box: level-0 pixels with --level auto, else pixels of --level")
    parser.add_argument("--tile", type=positive_int, default=None,
                        help="tile edge in pixels (default: ~1024, fitted to the level)")
    parser.add_argument("--overlap", type=non_negative_int, default=None,
                        help="overlap of neighbouring tiles (default: at least 32, fitted with the tile)")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "mps", "cpu"))
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="forward-pass arithmetic: auto (bfloat16 on GPUs, float32 on CPUs), fp32, or bf16 "
                             "(also on CPUs with AVX512-BF16/AMX: ~1.4x faster, ~99.8%% of pixels as in fp32)")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="tiles per forward pass (default: ~2 Mpx of tiles on CPU, ~8 Mpx on GPU)")
    parser.add_argument("--chunk", type=positive_int, default=512,
                        help="chunk edge of the stores; resume granularity (default 512)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch CPU threads per slide (default: all cores locally, cores / workers on dask)")
    parser.add_argument("--outputs", type=choices_list(OUTPUTS), default=("labels",),
                        help="comma list of labels,probabilities,uncertainty,focus (stored beside the labels)")
    parser.add_argument("--no-tissue-mask", action="store_true", help="also segment tiles that look like glass")
    parser.add_argument("--match-stain", action="store_true",
                        help="recolour each slide to the model's training stain before segmenting it (Macenko, "
                             "fitted on the slide's tissue): for slides from another lab or scanner")
    parser.add_argument("--resume", action="store_true", help="continue unfinished stores from the rows written")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing stores and files (never a folder that is not a labels store)")
    parser.add_argument("--geojson", action="store_true", help="also write OUT/<stem>.geojson (QuPath)")
    parser.add_argument("--areas", action="store_true", help="also write OUT/<stem>.areas.csv (per-class area)")
    parser.add_argument("--into-image", action="store_true",
                        help="OME-Zarr slides: write the labels into the slide's own labels/ group, where "
                             "OME-Zarr viewers look, instead of OUT (which keeps the GeoJSON/areas files)")
    parser.add_argument("--label-name", default="napari-dfa", metavar="NAME",
                        help="with --into-image: the labels' name, <slide>/labels/NAME (default napari-dfa)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--workers", type=positive_int, default=None,
                       help="run slides on a local dask cluster of N processes")
    group.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="run slides on this dask scheduler, e.g. tcp://host:8786")


# What segment() can store beside the labels (napari_dfa.inference.segment.OUTPUTS; listed here
# so that --help does not import torch).
OUTPUTS = ("labels", "probabilities", "uncertainty", "focus")


def options_from_args(args) -> dict:
    return dict(level=args.level, region=args.region, tile=args.tile,
                overlap=args.overlap, device=args.device, precision=args.precision, batch_size=args.batch_size,
                chunk=args.chunk,
                outputs=tuple(args.outputs), tissue_mask=not args.no_tissue_mask, resume=args.resume,
                match_stain=bool(args.match_stain),
                overwrite=args.overwrite, geojson=args.geojson, areas=args.areas,
                into_image=args.label_name if args.into_image else None)


def output_paths(slide_path, out_dir, options: dict) -> dict:
    """``{"store", "geojson", "areas"}`` one slide writes (the last two None when not asked)."""
    from ..paths import labels_store_name, slide_stem

    out_dir = Path(out_dir)
    store = out_dir / labels_store_name(slide_path)
    if options.get("into_image"):  # <slide>/labels/<name>, an NGFF label of the slide itself
        from ..labels.store import image_labels_path

        store = image_labels_path(slide_path, options["into_image"])
    stem = slide_stem(slide_path)
    return {"store": store,
            "geojson": out_dir / f"{stem}.geojson" if options.get("geojson") else None,
            "areas": out_dir / f"{stem}.areas.csv" if options.get("areas") else None}


def check_outputs(slide_path, out_dir, options: dict) -> dict:
    """Refuse, before any work, outputs that would destroy something: an existing store without
    --resume/--overwrite, a folder in its place that is not a labels store (never replaced), an
    existing GeoJSON/CSV without --overwrite (--resume rewrites them from the store it finishes)."""
    from ..errors import ConfigError
    from ..labels.outputs import check_destination
    from ..labels.store import refuse_foreign

    paths = output_paths(slide_path, out_dir, options)
    store = paths["store"]
    if store.exists() or store.is_symlink():
        refuse_foreign(store)
        if not (options.get("resume") or options.get("overwrite")):
            raise ConfigError(f"{store} exists; pass --resume to continue it or --overwrite to start over")
    for key in ("geojson", "areas"):
        if paths[key] is not None and paths[key].parent.is_dir():
            check_destination(paths[key], overwrite=bool(options.get("overwrite") or options.get("resume")))
    return paths


def predict_one(slide_path, model, out_dir, options: dict, progress=None, threads: int | None = None) -> dict:
    """Segment one slide into ``out_dir``; never raises for a bad slide (dask tasks report back).

    ``model`` is a Segmenter or a checkpoint path/"demo" (loaded here: what a dask task gets).
    Returns ``{"slide", "ok", "path", "error", "seconds", "completed", "tiles"}``."""
    from .. import labels as label_files
    from ..errors import DFAError
    from ..inference import segment
    from ..labels.outputs import atomic_output

    t0 = time.perf_counter()
    report = {"slide": str(slide_path), "ok": False, "path": None, "error": None, "seconds": 0.0,
              "completed": False, "tiles": 0}
    try:
        from ..model.device import torch_threads

        with torch_threads(threads):
            if isinstance(model, (str, os.PathLike)):
                from ..model import load_model

                model = load_model(model)
            out_dir = Path(out_dir)
            paths = check_outputs(slide_path, out_dir, options)  # again: a dask task runs elsewhere
            store = paths["store"]
            out_dir.mkdir(parents=True, exist_ok=True)
            from ..labels.store import store_lock
            from ..slide import open_slide

            # One writer per store: a second predict on the same --out stops here with a message.
            with store_lock(store), open_slide(slide_path) as slide:
                level, region = options.get("level", 0), options.get("region")
                if level == "auto":
                    level = slide.best_level_for_mpp(model.mpp) if model.mpp else 0
                    if region is not None:  # given in level-0 pixels: convert to the chosen level
                        ds = slide.downsamples[level]
                        y0, x0 = int(region[0] // ds), int(region[1] // ds)
                        region = (y0, x0, max(1, round((region[0] + region[2]) / ds) - y0),
                                  max(1, round((region[1] + region[3]) / ds) - x0))
                from ..inference.domain import check_slide

                beyond = check_slide(slide, model, level=level, region=region)  # trained on nothing like it?
                if beyond.far:
                    logger.warning("%s: %s%s", slide_path, beyond.message,
                                   "" if options.get("match_stain") or not beyond.stain_far
                                   else " (--match-stain recolours it to the model's training stain)")
                res = segment(slide, model, level=level, region=region,
                              tile=options.get("tile"), overlap=options.get("overlap"),
                              device=options.get("device", "auto"), precision=options.get("precision"),
                              out=store, progress=progress,
                              resume=bool(options.get("resume")), tissue_mask=options.get("tissue_mask", True),
                              outputs=options.get("outputs", ("labels",)), batch_size=options.get("batch_size"),
                              chunk=options.get("chunk", 512), stain=bool(options.get("match_stain")))
                report.update(path=str(store), completed=res.completed, tiles=res.tiles_total)
                res.caveat = beyond.caveat  # a slide beyond the model: every file of it says so
                if beyond.caveat and res.completed:
                    label_files.add_caveat(res.path, beyond.caveat)
                if res.completed and paths["geojson"] is not None:  # written whole, then renamed into place
                    with atomic_output(paths["geojson"]) as tmp:
                        label_files.write_geojson(tmp, res.labels, res.classes,
                                                  downsample=res.downsample, offset=res.translate, caveat=res.caveat)
                if res.completed and paths["areas"] is not None:
                    with atomic_output(paths["areas"]) as tmp:
                        label_files.write_area_csv(tmp, res.labels, res.classes, downsample=res.downsample,
                                                   mpp=slide.mpp, caveat=res.caveat)
        report["ok"] = res.completed
    except DFAError as exc:
        report["error"] = str(exc)
    except Exception as exc:  # noqa: BLE001 - one bad slide must not stop a cohort
        logger.exception("predict failed on %s", slide_path)
        report["error"] = f"{slide_path}: unexpected {type(exc).__name__}: {exc}"
    report["seconds"] = time.perf_counter() - t0
    return report


def _run_local(args, options) -> list[dict]:
    from tqdm import tqdm

    from ..model import load_model

    model = load_model(args.model, device=args.device)
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
    from ._args import quiet_dask

    quiet_dask(getattr(args, "verbose", 0))
    from dask.distributed import Client, LocalCluster, as_completed
    from tqdm import tqdm

    from ..errors import ConfigError

    model = args.model if args.model == "demo" else str(Path(args.model).resolve())
    slides = [str(Path(s).resolve()) for s in args.slides]
    out = str(Path(args.out).resolve())
    cluster = None
    # dask's own logs (worker start/stop, CommClosedError while the cluster shuts down) only with -v.
    quiet = logging.WARNING if getattr(args, "verbose", 0) else logging.CRITICAL
    if args.scheduler:
        _check_reachable(args.scheduler)
        try:
            client = Client(args.scheduler, timeout="30s")
        except Exception as exc:  # noqa: BLE001 - OSError, TimeoutError, ValueError for a bad address
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"--scheduler {args.scheduler}: cannot reach the dask scheduler ({reason}); "
                              "is it running, and is the address tcp://HOST:PORT?") from None
        threads = args.threads
    else:
        n = max(1, args.workers)
        # One single-threaded task per process; torch gets the cores shared out between them.
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                               silence_logs=quiet)
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


def _check_reachable(address: str) -> None:
    """A refused or unroutable scheduler address is one line at once, not dask's retries and a
    60-line traceback after its timeout."""
    import socket
    from urllib.parse import urlsplit

    from ..errors import ConfigError

    text = address if "://" in address else f"tcp://{address}"
    parts = urlsplit(text)
    if parts.scheme not in ("tcp", "tls"):
        return  # inproc://, ucx://...: dask's own connect says what is wrong
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or not port:
        raise ConfigError(f"--scheduler {address}: give the scheduler's address as tcp://HOST:PORT (e.g. tcp://host:8786)")
    try:
        socket.create_connection((host, port), timeout=10).close()
    except OSError as exc:
        raise ConfigError(f"--scheduler {address}: cannot reach the dask scheduler ({exc.strerror or exc}); "
                          "is it running, and is the address right?") from None


def run(args) -> int:
    from ..errors import ConfigError, DFAError
    from ._args import resolve_model

    options = options_from_args(args)
    # Everything that can be checked is checked before a model, a progress bar or a folder exists.
    args.model = resolve_model(args.model)
    missing = [s for s in args.slides if not Path(s).exists()]
    if missing:
        raise ConfigError(f"no such slide: {', '.join(missing)}" + (" (nothing was run)" if len(args.slides) > 1 else ""))
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out}: a file, not a folder")
    if args.scheduler is not None and not args.scheduler.strip():
        raise ConfigError("--scheduler: give the scheduler's address, e.g. tcp://host:8786")
    problems = []
    for slide in args.slides:
        try:
            check_outputs(slide, args.out, options)
        except DFAError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError("; ".join(problems))
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

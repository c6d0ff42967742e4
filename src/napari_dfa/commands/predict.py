"""``napari-dfa predict``: segment whole slides into OME-Zarr labels stores, locally or on dask.

One store per slide: ``OUT/<slide stem>.labels.zarr`` (``.ome.tif``/``.ome.zarr`` lose both
suffixes), an NGFF label image with the class names and colours (see napari_dfa.labels.store);
with ``--into-image`` an OME-Zarr slide gets it as its own ``labels/<name>`` instead.
``--geojson`` and ``--areas`` add ``<stem>.geojson`` (QuPath) and ``<stem>.areas.csv`` beside it.

With ``--workers N`` (a dask LocalCluster of N processes) or ``--scheduler ADDRESS`` (a running
dask.distributed scheduler) every slide is one task; each task loads the model from its path
itself, so only file names travel. A slide that fails is reported and the others go on; the exit
status is 1 when any failed.

(Over 450 lines: one command — its arguments, the output and resume checks every task repeats, the
per-slide task and the two ways to run the tasks, which share the options dict and the report of
each slide; the dask runner with its worker watch, ~150 lines, is the seam to cut next.)
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
    parser.add_argument("--worker-timeout", type=positive_int, default=120, metavar="SECONDS",
                        help="with --workers/--scheduler: give up when no dask worker has been connected for "
                             "this long (default 120); the slides not done are named, --resume continues them")


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
    from ..files.paths import labels_store_name, slide_stem

    out_dir = Path(out_dir)
    store = out_dir / labels_store_name(slide_path)
    if options.get("into_image"):  # <slide>/labels/<name>, an NGFF label of the slide itself
        from ..labels.ngff_meta import image_labels_path

        store = image_labels_path(slide_path, options["into_image"])
    stem = slide_stem(slide_path)
    return {"store": store,
            "geojson": out_dir / f"{stem}.geojson" if options.get("geojson") else None,
            "areas": out_dir / f"{stem}.areas.csv" if options.get("areas") else None}


def check_outputs(slide_path, out_dir, options: dict, *, model=None, slides=()) -> dict:
    """Refuse, before any work, outputs that would destroy something (the shared policy,
    :mod:`napari_dfa.files.outputs`): an existing store without --resume/--overwrite, a folder in its
    place that is not a labels store (never replaced), an existing GeoJSON/CSV without --overwrite
    (--resume rewrites them from the store it finishes), any output that is an input (a slide,
    the model), a name too long for its hidden temporary twin; with --resume, a store made from
    another slide (its content key)."""
    from ..errors import ConfigError
    from ..labels.outputs import check_destination
    from ..labels.store import refuse_foreign
    from ..files.outputs import check_name_length, check_not_input, recover

    paths = output_paths(slide_path, out_dir, options)
    store = paths["store"]
    recover(store)  # a store an interrupted --overwrite moved aside is back before it is judged
    inputs = [("the model", model), *[("a slide", s) for s in (slides or [slide_path])]]
    if not options.get("into_image"):  # --into-image writes inside the slide on purpose
        check_not_input(store, inputs)
    check_name_length(store)
    own = own_store(store, options)  # a retried dask task finds the store its first try began
    if store.exists() or store.is_symlink():
        refuse_foreign(store)
        if not (options.get("resume") or options.get("overwrite") or own):
            raise ConfigError(f"{store} exists ({describe_store(store)}); pass --resume to continue it (the same "
                              "slide only) or --overwrite to replace it")
        if options.get("resume"):
            check_resume_source(store, slide_path)
    for key in ("geojson", "areas"):
        if paths[key] is not None and paths[key].parent.is_dir():
            check_destination(paths[key], overwrite=bool(options.get("overwrite") or options.get("resume") or own),
                              inputs=inputs)
    return paths


def own_store(store, options: dict) -> bool:
    """Whether ``store`` was made by this very run (its ``run_id``): on a cluster a task whose
    worker died is run again elsewhere, and continues that store instead of refusing it."""
    from ..labels.store import LabelsStore

    run_id = options.get("run_id")
    if not run_id or not Path(store).is_dir():
        return False
    try:
        return LabelsStore.open(store, mode="r").info.get("run_id") == run_id
    except Exception:  # noqa: BLE001 - not a store of ours: judged by the other checks
        return False


def describe_store(store) -> str:
    """What an existing store holds, for the message that asks what to do with it."""
    from ..labels.store import LabelsStore

    try:
        info = LabelsStore.open(store, mode="r").info
    except Exception:  # noqa: BLE001 - described as unreadable; the caller refuses it anyway
        return "unreadable"
    done = "complete" if info.get("completed") else f"incomplete, {info.get('rows_done', 0)} rows"
    return f"labels of {Path(str(info.get('source', '?'))).name}, {done}"


def check_resume_source(store, slide_path) -> None:
    """--resume of a store made from another slide is refused before any work (content keys)."""
    from ..inference.segment import check_same_source
    from ..labels.store import LabelsStore
    from ..slide import open_slide
    from ..slide.content import key_of_slide

    info = LabelsStore.open(store, mode="r").info
    if not info.get("content_key"):
        return
    with open_slide(slide_path) as slide:
        check_same_source(store, info, key_of_slide(slide), str(slide_path))


def check_unique_outputs(slides, out_dir, options: dict) -> None:
    """Two slides never write one store: the same file given twice, or two files of one name in
    different folders (``a/s.tif b/s.tif``: both would be OUT/s.labels.zarr), are refused before
    anything runs."""
    import os

    from ..errors import ConfigError

    seen: dict[str, str] = {}
    clashes = []
    for slide in slides:
        store = output_paths(slide, out_dir, options)["store"]
        key = os.path.realpath(store)
        if key in seen:
            same = os.path.realpath(seen[key]) == os.path.realpath(slide)
            clashes.append(f"{slide} is given twice" if same else
                           f"{seen[key]} and {slide} would both write {store}")
        else:
            seen[key] = slide
    if clashes:
        raise ConfigError("; ".join(clashes) + " (nothing was run); predict slides of the same name into separate "
                                               "--out folders, or give each its own name")


def predict_one(slide_path, model, out_dir, options: dict, progress=None, threads: int | None = None) -> dict:
    """Segment one slide into ``out_dir``; never raises for a bad slide (dask tasks report back).

    ``model`` is a Segmenter or a checkpoint path/"demo" (loaded here: what a dask task gets).
    With ``overwrite``, an existing store is replaced only when the new one is complete: the new
    store is written beside it (a hidden twin) and swapped in at the end, its GeoJSON/areas with
    it, so an interrupted run leaves the old results whole and nothing stale beside them.
    Returns ``{"slide", "ok", "path", "error", "seconds", "completed", "tiles"}``."""
    from ..errors import DFAError

    t0 = time.perf_counter()
    report = {"slide": str(slide_path), "ok": False, "path": None, "error": None, "seconds": 0.0,
              "completed": False, "tiles": 0}
    try:
        _predict_one(slide_path, model, out_dir, options, progress, threads, report)
    except DFAError as exc:
        report["error"] = str(exc)
    except OSError as exc:  # disk full, read-only, a name the file system refuses: one line, no traceback
        where = exc.filename or out_dir
        logger.info("predict failed on %s", slide_path, exc_info=True)
        report["error"] = f"{slide_path}: cannot write {where}: {exc.strerror or exc}"
    except Exception as exc:  # noqa: BLE001 - one bad slide must not stop a cohort
        logger.info("predict failed on %s", slide_path, exc_info=True)  # the traceback with -v
        report["error"] = (f"{slide_path}: unexpected {type(exc).__name__}: {exc} (run with -v for the traceback, "
                           "and please report it)")
    report["seconds"] = time.perf_counter() - t0
    return report


def level_and_region(slide, model_mpp, level, region):
    """The level predict works at and ``--region`` in its pixels. With ``--level auto``: the level
    nearest the model's µm/px, and the region, given in level-0 pixels, as the pixels of that level
    that cover it (:func:`napari_dfa.slide.region_to_level`, as the widgets crop a drawn ROI)."""
    from ..errors import ConfigError
    from ..inference.reader import LevelReader
    from ..slide import auto_level, region_to_level

    if level != "auto":
        return level, region
    level = auto_level(slide, model_mpp)
    if region is None:
        return level, None
    # Refused when it reaches beyond level 0, not clipped: the box asked for is the box segmented.
    region = LevelReader(data=slide, level=0).check_region(region)
    box = region_to_level(region, slide.downsamples[level], slide.levels[level].shape)
    if box is None:
        raise ConfigError(f"{slide.path}: region {region} lies outside level {level}")
    return level, box


def _predict_one(slide_path, model, out_dir, options, progress, threads, report) -> None:
    import shutil

    from .. import labels as label_files
    from ..inference import Runtime, Tiling, segment
    from ..inference.options import pick
    from ..labels.outputs import atomic_output
    from ..model.device import torch_threads
    from ..files.outputs import temp_twin

    with torch_threads(threads):
        if isinstance(model, (str, os.PathLike)):
            from ..model import load_model

            model = load_model(model)
        out_dir = Path(out_dir)
        paths = check_outputs(slide_path, out_dir, options)  # again: a dask task runs elsewhere
        store = paths["store"]
        out_dir.mkdir(parents=True, exist_ok=True)
        from ..labels.lock import store_lock
        from ..slide import open_slide

        # Replacing: the new store is built beside the old one and swapped in when complete.
        own = own_store(store, options)  # a retry of this run's task: continue what its first try wrote
        swap = bool(options.get("overwrite") and not options.get("resume") and not options.get("into_image")
                    and store.exists() and not own)
        target = temp_twin(store) if swap else store
        # One writer per store (a second predict on the same --out stops here with a message); the
        # lock also clears what an interrupted run left (a half store's twin, a moved-aside old one).
        with store_lock(store), open_slide(slide_path) as slide:
            level, region = level_and_region(slide, model.mpp, options.get("level", 0), options.get("region"))
            from ..inference.domain import check_slide

            beyond = check_slide(slide, model, level=level, region=region)  # trained on nothing like it?
            if beyond.far:
                logger.warning("%s: %s%s", slide_path, beyond.message,
                               "" if options.get("match_stain") or not beyond.stain_far
                               else " (--match-stain recolours it to the model's training stain)")
            extras: dict = {}  # with swap: the new GeoJSON/areas, held back until the store is in place
            try:
                res = segment(slide, model, level=level, region=region,
                              tiling=pick(Tiling, options), runtime=pick(Runtime, options),  # tile, device, …
                              out=target, progress=progress, resume=bool(options.get("resume") or own),
                              outputs=options.get("outputs", ("labels",)), stain=bool(options.get("match_stain")),
                              store_info={"run_id": options["run_id"]} if options.get("run_id") else None)
                report.update(path=str(store), completed=res.completed, tiles=res.tiles_total)
                res.caveat = beyond.caveat  # a slide beyond the model: every file of it says so
                if beyond.caveat and res.completed:
                    label_files.add_caveat(res.path, beyond.caveat)
                if res.completed:  # the GeoJSON/areas written whole, then renamed into place
                    for key, write in (("geojson", _write_geojson), ("areas", _write_areas)):
                        if paths[key] is None:
                            continue
                        if swap:
                            extras[key] = temp_twin(paths[key])
                            write(extras[key], res, slide, label_files)
                        else:
                            with atomic_output(paths[key]) as tmp:
                                write(tmp, res, slide, label_files)
                if swap and res.completed:
                    _swap_in(target, store, extras, paths)
            finally:
                if swap:
                    shutil.rmtree(target, ignore_errors=True)
                    for tmp in extras.values():
                        tmp.unlink(missing_ok=True)
    report["ok"] = res.completed


def _write_geojson(tmp, res, slide, label_files) -> None:
    label_files.write_geojson(tmp, res.labels, res.classes, downsample=res.downsample, offset=res.translate,
                              caveat=res.caveat)


def _write_areas(tmp, res, slide, label_files) -> None:
    label_files.write_area_csv(tmp, res.labels, res.classes, downsample=res.downsample, mpp=slide.mpp,
                               caveat=res.caveat)


def _swap_in(new_store, store, extras: dict, paths: dict) -> None:
    """The complete new store in place of the old one, then its GeoJSON/areas. The old GeoJSON and
    areas go first: a kill in between leaves files missing (``--resume`` writes them from the
    complete store), never the old model's beside the new labels."""
    from ..labels.io import rename_multiscale
    from ..labels.store import LabelsStore
    from ..files.outputs import publish

    rename_multiscale(LabelsStore.open(new_store).group, store.name)  # it was written under the twin's name
    for key in extras:
        paths[key].unlink(missing_ok=True)
    publish(new_store, store)
    for key, tmp in extras.items():
        os.replace(tmp, paths[key])


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
    from dask.distributed import Client, LocalCluster
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
    import uuid

    # The run's id goes into every store it makes: a task retried after its worker died continues
    # its own store (see own_store) instead of stopping at "exists; pass --resume".
    options = dict(options, run_id=uuid.uuid4().hex)
    where = f"--scheduler {args.scheduler}" if args.scheduler else f"the local dask cluster (--workers {args.workers})"
    try:
        futures = {client.submit(predict_one, s, model, out, options, None, threads, pure=False): s for s in slides}
        with tqdm(total=len(futures), desc="slides", unit="slide") as bar:
            reports = watch(client, futures, where=where, timeout=args.worker_timeout, on_done=lambda: bar.update())
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    order = {s: i for i, s in enumerate(slides)}
    return sorted(reports, key=lambda r: order.get(r["slide"], 0))


POLL_SECONDS = 2.0  # how often a distributed run looks at its workers


def watch(client, futures: dict, *, where: str, timeout: float, on_done=None) -> list[dict]:
    """The reports of ``futures`` ({future: slide}) as they finish, with an eye on the workers:
    a worker that leaves is reported (dask retries its task elsewhere); no worker for ``timeout``
    seconds, or a scheduler that cannot be reached, ends the run with a message naming the
    slides not done (a DFAError) instead of waiting at 0 % for ever."""
    from dask.distributed import wait

    from ..errors import DFAError

    pending, reports = set(futures), []
    known = set(_workers(client, where))
    alone_since = None if known else time.monotonic()
    while pending:
        try:
            done, pending = wait(pending, timeout=POLL_SECONDS, return_when="FIRST_COMPLETED")
        except TimeoutError:
            done = set()
        for fut in done:
            slide = futures[fut]
            try:
                reports.append(fut.result())
            except Exception as exc:  # noqa: BLE001 - KilledWorker, CancelledError: that slide failed
                reports.append({"slide": slide, "ok": False, "path": None, "seconds": 0.0, "completed": False,
                                "tiles": 0, "error": f"{slide}: its dask task failed on {where} "
                                                     f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                                                     "rerun with --resume to continue its store"})
            if on_done is not None:
                on_done()
        if not pending:
            break
        now = set(_workers(client, where))
        for gone in sorted(known - now):
            print(f"napari-dfa predict: lost the dask worker {gone} on {where}; its slide is run again on "
                  "another worker and continues the store it began", file=sys.stderr)
        known = now
        if now:
            alone_since = None
        elif alone_since is None:
            alone_since = time.monotonic()
        elif time.monotonic() - alone_since > timeout:
            left = sorted(futures[f] for f in pending)
            for fut in pending:
                fut.cancel()
            raise DFAError(f"{where}: no dask worker connected for {timeout:g} s (all lost, or none started); "
                           f"{len(left)} slide(s) not done: {', '.join(left)}. Start workers and rerun with "
                           "--resume: their stores continue where they stopped")
    return reports


def _workers(client, where: str) -> list[str]:
    """The addresses of the workers the scheduler knows now (asked, not a cached list)."""
    from ..errors import DFAError

    try:
        return list(client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.workers)))
    except Exception as exc:  # noqa: BLE001 - the scheduler went away: no task can finish
        raise DFAError(f"{where}: lost the dask scheduler ({type(exc).__name__}: {exc}); rerun with --resume "
                       "once it is back: the stores continue where they stopped") from None


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
    from ..files.outputs import check_output

    check_output(args.out, folder=True, what="--out",
                 inputs=[("the model", args.model), *[("a slide", s) for s in args.slides]])
    if args.scheduler is not None and not args.scheduler.strip():
        raise ConfigError("--scheduler: give the scheduler's address, e.g. tcp://host:8786")
    check_unique_outputs(args.slides, args.out, options)
    problems = []
    for slide in args.slides:
        try:
            check_outputs(slide, args.out, options, model=args.model, slides=args.slides)
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

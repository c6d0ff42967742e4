"""``napari-dfa finetune``: a model fine-tuned on a pathologist's QuPath corrections, headless.

The same workflow as the Fine-tune widget (:func:`napari_dfa.corrections.workflow.finetune_on_corrections`):
the GeoJSON annotations are rasterised onto the slide at the model's level, and the model learns from
them the way ``--method`` says (default ``auto``: the pixel head for a class the model never had or
tissue unlike its training data, else the deep fine-tune; ``head`` / ``deep`` force one — deep trains
the layers after the encoder, the regions around the annotations replayed against forgetting, the
encoder too with ``--train-encoder``; ``both``: the one the guard promotes), and the guard decides on
the annotations held back whole. Whether the model was promoted is a result, not an error:
the command exits 0 either way, and writes the new model only when it was promoted (or ``--force``).
``--json`` writes everything the guard looked at.
"""

from __future__ import annotations

import os

HELP = "fine-tune a model on QuPath GeoJSON corrections of a slide; keep it only if the guard promotes it"


def add_arguments(parser) -> None:
    from ._args import level, positive_int

    parser.add_argument("slide", metavar="SLIDE", help="the slide the corrections were drawn on")
    parser.add_argument("--model", required=True, metavar="M",
                        help="'demo', a .safetensors checkpoint or a training run folder")
    parser.add_argument("--corrections", required=True, metavar="FILE",
                        help="QuPath GeoJSON annotations (.geojson, .json, .geojson.gz, .zip) in level-0 pixels; "
                             "QuPath's Ignore* class marks pixels as not corrected")
    parser.add_argument("--also", nargs=2, action="append", default=[], metavar=("SLIDE", "FILE"),
                        help="another slide and its GeoJSON corrections, trained on and held back alike: one "
                             "model from many slides (repeat for more)")
    parser.add_argument("--out", metavar="NEW", help="the fine-tuned model (.safetensors); written only when "
                                                     "promoted, unless --force (not needed with --dry-run)")
    parser.add_argument("--classes", metavar="A,B,...",
                        help="the exact class list of the new model: names the model has keep their learned "
                             "token, new names get a new one, names left out are removed (default: the model's)")
    parser.add_argument("--method", choices=("auto", "head", "deep", "both"), default=None,
                        help="auto (default): the pixel head for a class the model never had or tissue unlike its "
                             "training data, else deep; head: fit the pixel head on the annotations, the rest of "
                             "the model fixed (seconds; learns tissue and classes the model never saw); deep: train "
                             "the layers after the encoder (with --train-encoder the encoder too); both: both, and "
                             "the one the guard promotes is kept")
    parser.add_argument("--steps", type=positive_int,
                        help="optimizer steps of the method that runs (head: 150; deep: 200 with a GPU, 40 on a "
                             "CPU; with both: the deep fine-tune's, the head keeps its own)")
    parser.add_argument("--train-encoder", action="store_true",
                        help="with --method deep (implied): train the encoder too, on 512-px crops (~4x the "
                             "time): for slides whose look the layers after the encoder cannot learn from cached "
                             "features")
    parser.add_argument("--crop", type=positive_int, metavar="PX",
                        help="training crop side around the corrections (default: 256, or 512 with --train-encoder)")
    parser.add_argument("--level", type=level, default="auto",
                        help="pyramid level to train at (default auto: the one nearest the model's µm/px)")
    parser.add_argument("--dry-run", action="store_true",
                        help="read and rasterise the corrections and report them; no training")
    parser.add_argument("--json", metavar="REPORT", help="write the report (guard verdict and numbers) as JSON")
    parser.add_argument("--force", action="store_true", help="write NEW even when the guard did not promote it")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace NEW and REPORT if they exist (never an input of this command, nor a "
                             "training run's own checkpoints)")
    parser.add_argument("--device", default="cpu", choices=("auto", "cuda", "mps", "cpu"),
                        help="where to train (default cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the hold-out split, crops and check regions")


def _class_list(text: str | None, model_names: list[str]) -> list[str]:
    from ..classes import check_class_names

    if text is None:
        return list(model_names)
    return check_class_names(str(text).split(","), what=f"--classes {text!r}")


def run(args) -> int:
    import time
    from pathlib import Path

    from ..errors import DataError
    from ..files.outputs import claims

    t0 = time.monotonic()
    corrections = Path(args.corrections)
    if not corrections.is_file():
        raise DataError(f"--corrections {corrections}: no such file")
    for sp, cp in args.also:
        if not Path(cp).is_file():
            raise DataError(f"--also {cp}: no such file")
    out, report_path = check_finetune_outputs(args)
    if out is None and not args.dry_run:
        raise DataError("--out NEW.safetensors is needed (where the fine-tuned model goes when promoted)")
    # Held from here to the end: a second finetune to the same NEW or REPORT stops now, not after
    # training, and the leftovers of an interrupted one are cleared.
    with claims([out, report_path]):
        return _run(args, t0, corrections, out, report_path)


def check_finetune_outputs(args):
    """NEW and REPORT checked before any slide or model is opened: never an input of this command
    (the slide, the model and, for a training run's checkpoint, the run's files, the corrections),
    never a training run's own checkpoint, an existing one only with --overwrite."""
    from pathlib import Path

    from ..errors import DataError
    from ..files.outputs import check_distinct, check_output
    from ._args import resolve_model
    from .train import RUN_FILES

    out = Path(args.out) if args.out else None
    if args.out and str(args.out).endswith(("/", os.sep)):
        raise DataError(f"--out {args.out}: a folder; give the new model's file name, e.g. {Path(args.out) / 'new.safetensors'}")
    if out is not None and out.suffix != ".safetensors":
        raise DataError(f"--out {out}: give a .safetensors file")
    model = resolve_model(args.model)
    inputs = [("the slide", args.slide), ("--model", model), ("--corrections", args.corrections)]
    inputs += [(f"--also {sp}", sp) for sp, _ in args.also] + [(f"--also {cp}", cp) for _, cp in args.also]
    run_dir = training_run_of(model)
    if run_dir is not None:  # the parent's run: its other checkpoints and state are its inputs too
        inputs += [(f"a file of the training run {run_dir}", run_dir / n) for n in RUN_FILES]
    report = Path(args.json) if args.json else None
    for path, what in ((out, "--out"), (report, "--json")):
        if path is None:
            continue
        owner = training_run_of(path)
        if owner is not None and path.name in RUN_FILES:
            raise DataError(f"{what} {path}: a file of the training run in {owner} (it has a recipe.json); "
                            "napari-dfa train writes it, finetune never replaces it. Choose another name")
        check_output(path, inputs=inputs, overwrite=args.overwrite, what=what)
    check_distinct([("--out", out), ("--json", report)])
    return out, report




def training_run_of(path):
    """The run folder ``path`` is a checkpoint of (it holds a recipe.json), or None."""
    from pathlib import Path

    if path is None or str(path) == "demo":
        return None
    folder = Path(path).expanduser().parent
    return folder if (folder / "recipe.json").is_file() else None


def _run(args, t0, corrections, out, report_path) -> int:
    import sys
    import tempfile
    import time
    from pathlib import Path

    from tqdm import tqdm

    from ..corrections import CorrectionStore
    from ..corrections.geojson import geojson_classes, missing_classes
    from ..corrections.workflow import (
        ReplaySpec,
        check_regions,
        finetune_on_corrections,
        regions_around_corrections,
    )
    from ..errors import DataError
    from ..model import load_model
    from ..files.outputs import atomic_output
    from ..slide import auto_level, open_slide
    from ._args import resolve_model

    slide = open_slide(args.slide)
    seg = load_model(resolve_model(args.model), device=args.device)
    names = _class_list(args.classes, seg.class_names)

    # Every class of every file must be in the new class list: an unknown one is named, not skipped.
    extra = [(open_slide(sp), Path(cp)) for sp, cp in args.also]
    colors = {}
    for path in [corrections, *[cp for _, cp in extra]]:
        found = geojson_classes(path)
        missing = missing_classes(found, names)
        if missing:
            listed = "--classes" if args.classes else "the model's classes"
            raise DataError(f"{path}: class{'es' if len(missing) > 1 else ''} {', '.join(repr(m) for m in missing)} "
                            f"{'are' if len(missing) > 1 else 'is'} not in {listed} ({', '.join(names)}); "
                            f"give the new model's class list, e.g. --classes {','.join([*names, *missing])}")
        colors.update({n: found[n]["color"] for n in names if n in found and found[n]["color"] is not None
                       and n.lower() not in {m.lower() for m in seg.class_names} and n not in colors})

    def level_of(sl):
        if args.level == "auto":
            return auto_level(sl, seg.mpp)
        if int(args.level) >= len(sl.levels):
            raise DataError(f"--level {args.level}: {sl.path} has levels 0..{len(sl.levels) - 1}")
        return int(args.level)

    lv = level_of(slide)
    shapes = [tuple(int(v) for v in a.shape[:2]) for a in slide.levels]

    with tempfile.TemporaryDirectory(prefix="napari-dfa-finetune-") as tmp:
        store = CorrectionStore(Path(tmp) / "corrections.zarr", slide_path=str(slide.path), class_names=names)
        _patch, imported = store.import_geojson(corrections, level=lv, downsample=slide.downsamples[lv],
                                                level_shape=shapes[lv], report=True)
        report = {
            "slide": str(slide.path), "model": str(args.model), "corrections": str(corrections), "level": lv,
            "class_names": names, "corrected_pixels": store.counts_by_name(),
            "skipped_features": [{"where": w, "why": r} for w, r in imported.skipped],
            "notes": list(imported.notes),
            "dry_run": bool(args.dry_run),
        }
        print(f"{corrections.name}: {len(imported.polygons)} polygons at level {lv}: "
              + ", ".join(f"{n} {px} px" for n, px in report["corrected_pixels"].items())
              + (f"; skipped {len(imported.skipped)} features" if imported.skipped else ""))
        for where, why in imported.skipped[:20]:
            print(f"  skipped {where}: {why}")
        for note in imported.notes[:20]:  # kept, but settled by a rule: overlaps, self-crossing outlines
            print(f"  note: {note}")
        if args.dry_run:
            report.update(promoted=False, status="dry_run", written=None, steps=0,
                          reason="dry run: the corrections were read and rasterised; nothing was trained",
                          seconds=round(time.monotonic() - t0, 2))
            _write_json(report_path, report, overwrite=args.overwrite)
            print("dry run: nothing trained")
            return 0

        more = []
        for i, (sl, cp) in enumerate(extra):
            other = CorrectionStore(Path(tmp) / f"corrections-{i + 1}.zarr", slide_path=str(sl.path), class_names=names)
            olv = level_of(sl)
            other.import_geojson(cp, level=olv, downsample=sl.downsamples[olv],
                                 level_shape=tuple(int(v) for v in sl.levels[olv].shape[:2]))
            more.append((other, sl.read_region))
            print(f"{cp.name} ({sl.path.name}): " + ", ".join(f"{n} {px} px" for n, px in other.counts_by_name().items()))
        report["more_slides"] = [{"slide": str(sl.path), "corrections": str(cp), "corrected_pixels": st.counts_by_name()}
                                 for (sl, cp), (st, _) in zip(extra, more)]
        reviewed = regions_around_corrections(store, shapes)
        checks = check_regions(slide, lv, [r for _, r in reviewed], seed=args.seed)
        method = args.method or ("deep" if args.train_encoder else "auto")
        if method != "deep" and args.train_encoder:
            raise DataError("--train-encoder trains the deep model: use it with --method deep (or without --method)")
        steps = args.steps  # None: the method's own (auto: the chosen one's; both: each its own)

        def progress(step, total, **info):
            bar.total = total  # the head is fitted once per fold of its hold-out, then on all
            bar.n = step
            bar.set_postfix(loss=f"{info.get('loss') or 0:.3f}")

        with tqdm(total=steps or 1, desc="fine-tuning", unit="step", file=sys.stderr) as bar:
            outcome = finetune_on_corrections(
                seg, store, slide.read_region, steps=steps, replay=[ReplaySpec(level, region) for level, region in reviewed],
                check=checks, class_names=names, class_colors=colors or None, seed=args.seed,
                parent_source=str(resolve_model(args.model)), slide=str(slide.path), method=method,
                frozen_encoder=not args.train_encoder, crop=args.crop, progress=progress, more=more)

    written = None
    if outcome.promoted or args.force:
        new = outcome.candidate
        with atomic_output(out, overwrite=args.overwrite, claimed=True) as tmp:
            new.save(tmp, provenance=dict(new.metadata.get("provenance") or {}))
        written = str(out)
    report.update(outcome.report())
    report.update(written=written, forced=bool(args.force and not outcome.promoted),
                  reviewed_regions=[{"level": level, "region": list(r)} for level, r in reviewed],
                  check_regions=[{"level": level, "region": list(r)} for level, r in checks],
                  seconds=round(time.monotonic() - t0, 2))
    _write_json(report_path, report, overwrite=args.overwrite)
    if outcome.method_chosen:
        print(f"learnt with {outcome.method_chosen}")
    print(("promoted: " if outcome.promoted else f"not promoted ({outcome.verdict.status}): ") + outcome.verdict.reason)
    for n, s in report["held_out_scores"].items():
        print(f"  held-out {n}: {_fmt(s['old'])} -> {_fmt(s['new'])}")
    if written:
        print(f"wrote {written}" + (" (--force: the guard did not promote it)" if report["forced"] else ""))
    else:
        print(f"{out} not written (use --force to write a model the guard did not promote)")
    return 0


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _write_json(path, report: dict, *, overwrite: bool) -> None:
    import json

    from ..files.outputs import atomic_output

    if path:
        with atomic_output(path, overwrite=overwrite, claimed=True) as tmp:
            tmp.write_text(json.dumps(report, indent=1, default=_jsonable), encoding="utf-8")


def _jsonable(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)

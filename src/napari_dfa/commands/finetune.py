"""``napari-dfa finetune``: a model fine-tuned on a pathologist's QuPath corrections, headless.

The same workflow as the Fine-tune widget (:func:`napari_dfa.corrections.workflow.finetune_on_corrections`):
the GeoJSON annotations are rasterised onto the slide at the model's level, the model's pixel head is
fitted on them (``--method deep``: the layers after the encoder are trained instead, the regions
around the annotations replayed against forgetting, the encoder too with ``--train-encoder``;
``--method auto``: both, the better on the held-back annotations kept), and the guard decides on the
annotations held back whole. Whether the model was promoted is a result, not an error:
the command exits 0 either way, and writes the new model only when it was promoted (or ``--force``).
``--json`` writes everything the guard looked at.
"""

from __future__ import annotations

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
    parser.add_argument("--method", choices=("auto", "head", "deep"), default=None,
                        help="head (default): fit the pixel head on the annotations, the rest of the model fixed "
                             "(seconds; learns tissue and classes the model never saw); deep: train the layers "
                             "after the encoder (with --train-encoder the encoder too); auto: both, and the one "
                             "better on the annotations held back goes to the guard")
    parser.add_argument("--steps", type=positive_int,
                        help="optimizer steps (head: 150; deep: 200 with a GPU, 40 on a CPU; auto: the deep "
                             "fine-tune's)")
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
    parser.add_argument("--device", default="cpu", choices=("auto", "cuda", "mps", "cpu"),
                        help="where to train (default cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the hold-out split, crops and check regions")


def _class_list(text: str | None, model_names: list[str]) -> list[str]:
    from ..classes import check_class_names

    if text is None:
        return list(model_names)
    return check_class_names(str(text).split(","), what=f"--classes {text!r}")


def run(args) -> int:
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
        default_steps,
        finetune_on_corrections,
        regions_around_corrections,
    )
    from ..errors import DataError
    from ..model import load_model
    from ..slide import nearest_level, open_slide
    from ._args import resolve_model

    t0 = time.monotonic()
    corrections = Path(args.corrections)
    if not corrections.is_file():
        raise DataError(f"--corrections {corrections}: no such file")
    out = Path(args.out) if args.out else None
    if out is None and not args.dry_run:
        raise DataError("--out NEW.safetensors is needed (where the fine-tuned model goes when promoted)")
    if out is not None and out.suffix != ".safetensors":
        raise DataError(f"--out {out}: give a .safetensors file")
    for path, what in ((out, "--out"), (Path(args.json) if args.json else None, "--json")):
        if path is not None and not path.parent.is_dir():
            raise DataError(f"{what} {path}: the folder {path.parent} does not exist")
    slide = open_slide(args.slide)
    seg = load_model(resolve_model(args.model), device=args.device)
    names = _class_list(args.classes, seg.class_names)

    # Every class of every file must be in the new class list: an unknown one is named, not skipped.
    extra = [(open_slide(sp), Path(cp)) for sp, cp in args.also]
    for _, cp in extra:
        if not cp.is_file():
            raise DataError(f"--also {cp}: no such file")
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
        mpps = [sl.mpp * d if sl.mpp else None for d in sl.downsamples]
        if args.level == "auto":
            return nearest_level(mpps, seg.mpp) if sl.mpp and seg.mpp else 0
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
            "dry_run": bool(args.dry_run),
        }
        print(f"{corrections.name}: {len(imported.polygons)} polygons at level {lv}: "
              + ", ".join(f"{n} {px} px" for n, px in report["corrected_pixels"].items())
              + (f"; skipped {len(imported.skipped)} features" if imported.skipped else ""))
        for where, why in imported.skipped[:20]:
            print(f"  skipped {where}: {why}")
        if args.dry_run:
            report.update(promoted=False, status="dry_run", written=None, steps=0,
                          reason="dry run: the corrections were read and rasterised; nothing was trained",
                          seconds=round(time.monotonic() - t0, 2))
            _write_json(args.json, report)
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
        method = args.method or ("deep" if args.train_encoder else "head")
        if method != "deep" and args.train_encoder:
            raise DataError("--train-encoder trains the deep model: use it with --method deep (or without --method)")
        steps = args.steps or (default_steps("deep") if method == "auto" else default_steps(method))

        def progress(step, total, **info):
            bar.total = total  # the head is fitted twice: without the held-back strokes, then on all
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
        written = str(new.save(out, provenance=dict(new.metadata.get("provenance") or {})))
    report.update(outcome.report())
    report.update(written=written, forced=bool(args.force and not outcome.promoted),
                  reviewed_regions=[{"level": level, "region": list(r)} for level, r in reviewed],
                  check_regions=[{"level": level, "region": list(r)} for level, r in checks],
                  seconds=round(time.monotonic() - t0, 2))
    _write_json(args.json, report)
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


def _write_json(path, report: dict) -> None:
    import json
    from pathlib import Path

    if path:
        Path(path).write_text(json.dumps(report, indent=1, default=_jsonable))


def _jsonable(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)

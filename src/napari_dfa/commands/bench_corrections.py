"""``napari-dfa bench-corrections``: does the correction loop pay off on *your* slide?

    napari-dfa bench-corrections SLIDE --truth TRUTH --model M --out DIR [--classes A,B,...]
        [--region Y0,X0,H,W] [--rounds 3] [--seeds 0,1,2] [--no-forest]

A simulated pathologist corrects the model on a slide whose truth you have (QuPath GeoJSON
annotations, or a label image — napari-dfa labels, TIFF or PNG — of level 0 or of the model's
level): rounds of small squares of the true class, the Fine-tune loop (the guard on) against a
QuPath-style random forest trained on the same squares, scored where nobody painted
(:mod:`napari_dfa.corrections.simulate`). Writes ``DIR/bench-corrections.{json,md,png}`` (the curve).
"""

from __future__ import annotations

HELP = "simulate a pathologist correcting the model on a slide with truth: our loop vs a random forest, per round"


def add_arguments(parser) -> None:
    from ._args import level, positive_int

    parser.add_argument("slide", metavar="SLIDE")
    parser.add_argument("--truth", required=True, metavar="TRUTH",
                        help="QuPath GeoJSON annotations (level-0 px) or a label image (napari-dfa labels, TIFF, "
                             "PNG) of level 0 or of the level benchmarked")
    parser.add_argument("--model", default="demo", metavar="M", help="'demo', a .safetensors file or a run folder")
    parser.add_argument("--classes", metavar="A,B,...",
                        help="the class names of the truth's labels 1..K (default: a GeoJSON's classes, a "
                             "napari-dfa label image's own, else the model's)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the JSON, Markdown and PNG curve")
    parser.add_argument("--region", metavar="Y0,X0,H,W", help="level-0 box to benchmark (default: the whole level; "
                                                               "it is held in memory)")
    parser.add_argument("--level", type=level, default="auto", help="pyramid level (default: nearest the model's µm/px)")
    parser.add_argument("--rounds", type=positive_int, default=3)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (the squares and the tiles move)")
    parser.add_argument("--tile", type=positive_int, default=256, help="tile side in px: squares go on whole tiles")
    parser.add_argument("--tiles-per-round", type=positive_int, default=8)
    parser.add_argument("--squares", type=positive_int, default=6, help="squares per class per round")
    parser.add_argument("--side", type=positive_int, default=24, help="square side in px")
    parser.add_argument("--no-forest", action="store_true", help="skip the random-forest anchor")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier report in DIR")


def _truth_array(path, names, level_shape, downsample, box):
    """The truth as labels over ``box`` (y0, x0, h, w; level pixels), and the class names."""
    from pathlib import Path

    import numpy as np

    from ..corrections.geojson import geojson_classes, read_class_polygons
    from ..corrections.rasterise import rasterise_polygons
    from ..errors import DataError

    path = Path(path)
    y0, x0, h, w = box
    if path.suffix.lower() in (".geojson", ".json", ".gz", ".zip"):
        names = names or sorted(geojson_classes(path))
        found = read_class_polygons(path, names)
        mask, (my, mx) = rasterise_polygons(found.polygons, downsample=downsample, level_shape=level_shape, source=path)
        out = np.zeros((h, w), np.uint8)
        ty0, tx0, ty1, tx1 = max(y0, my), max(x0, mx), min(y0 + h, my + mask.shape[0]), min(x0 + w, mx + mask.shape[1])
        if ty1 > ty0 and tx1 > tx0:
            out[ty0 - y0:ty1 - y0, tx0 - x0:tx1 - x0] = mask[ty0 - my:ty1 - my, tx0 - mx:tx1 - mx]
        return out, names
    if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
        from PIL import Image

        labels, own = np.asarray(Image.open(path)), None
    else:
        from ..labels import read_labels

        labels, info = read_labels(path)
        own = list(info.get("class_names") or []) or None
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise DataError(f"{path}: a label image must be 2-D, got shape {labels.shape}")
    if labels.shape != tuple(level_shape):  # level 0: nearest onto the level's grid
        f = labels.shape[0] / level_shape[0]
        if abs(f - downsample) > 0.01 * downsample:
            raise DataError(f"{path}: {labels.shape} is neither the slide's level 0 nor the level benchmarked "
                            f"{tuple(level_shape)}")
        ys = np.minimum((np.arange(level_shape[0]) * f).astype(int), labels.shape[0] - 1)
        xs = np.minimum((np.arange(level_shape[1]) * f).astype(int), labels.shape[1] - 1)
        labels = labels[ys][:, xs]
    return np.asarray(labels[y0:y0 + h, x0:x0 + w]).astype(np.uint8), names or own


def run(args) -> int:
    import platform
    import sys
    from pathlib import Path

    import numpy as np

    from ..corrections.simulate import run_curve, write_report
    from ..errors import DataError
    from ..model import load_model
    from ..slide import auto_level, open_slide
    from ._args import resolve_model

    out = Path(args.out).expanduser()
    if out.exists() and (out / "bench-corrections.json").exists() and not args.overwrite:
        raise DataError(f"--out {out}: holds a report already; pass --overwrite to replace it")
    slide = open_slide(args.slide)
    seg = load_model(resolve_model(args.model))
    if args.level == "auto":
        lv = auto_level(slide, seg.mpp)
    else:
        lv = int(args.level)
        if lv >= len(slide.levels):
            raise DataError(f"--level {lv}: {slide.path} has levels 0..{len(slide.levels) - 1}")
    ds = slide.downsamples[lv]
    shape = tuple(int(v) for v in slide.levels[lv].shape[:2])
    if args.region:
        try:
            y0, x0, h, w = (int(v) for v in args.region.split(","))
        except ValueError:
            raise DataError(f"--region {args.region!r}: give Y0,X0,H,W in level-0 pixels") from None
        box = (int(y0 / ds), int(x0 / ds), max(1, int(h / ds)), max(1, int(w / ds)))
    else:
        box = (0, 0, *shape)
    names = [n.strip() for n in args.classes.split(",")] if args.classes else None
    truth, names = _truth_array(args.truth, names, shape, ds, box)
    names = names or list(seg.class_names)
    if int(truth.max()) > len(names):
        raise DataError(f"{args.truth}: label {int(truth.max())} but {len(names)} classes ({', '.join(names)}); "
                        "give them with --classes")
    rgb = np.asarray(slide.read_region(lv, box))
    print(f"{slide.path.name}: level {lv}, {box[2]}×{box[3]} px, classes {', '.join(names)}; "
          f"truth on {100 * (truth > 0).mean():.0f} % of it")
    rows = []
    for seed in [int(s) for s in str(args.seeds).split(",")]:
        rows += run_curve(seg, rgb, truth, names, rounds=args.rounds, tile=args.tile,
                          tiles_per_round=args.tiles_per_round, per_class=args.squares, side=args.side, seed=seed,
                          forest=not args.no_forest,
                          log=lambda r: print(f"seed {r['seed']} round {r['round']}: ours {r['ours']:.3f} "
                                              f"({r['verdict']}, {r['method']})"
                                              + (f", forest {r['forest']:.3f}" if "forest" in r else ""),
                                              flush=True))
    command = "napari-dfa " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["bench-corrections"] else \
        "napari-dfa bench-corrections"
    paths = write_report(rows, out, name="bench-corrections", command=command,
                         machine=f"{platform.node()} ({platform.machine()})")
    print(paths["markdown"].read_text())
    for what, path in paths.items():
        print(f"{what}: {path}")
    return 0

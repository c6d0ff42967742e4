"""``napari-dfa synth``: synthetic H&E data with known class frequency and difficulty.

    napari-dfa synth dataset OUT [--train N --val N --test N --tile 256 --seed S --config cfg.toml]
    napari-dfa synth slide OUT.tif [--size 8192 | --size 4096x6144] [--seed S] [--config cfg.toml]
"""

from __future__ import annotations

import sys

HELP = "generate synthetic H&E data: a SAM-Path-layout dataset or a pyramidal slide with truth"


def add_arguments(parser) -> None:
    from ._args import non_negative_int, positive_float, positive_int

    sub = parser.add_subparsers(dest="what", metavar="{dataset,slide}", required=True)
    ds = sub.add_parser("dataset", help="tiles in the SAM-Path layout: img/, mask/, cv.csv (img_id,fold)")
    ds.add_argument("out", help="output folder")
    ds.add_argument("--train", type=non_negative_int, default=48, help="training tiles (folds 1..4)")
    ds.add_argument("--val", type=non_negative_int, default=12, help="validation tiles (fold 0)")
    ds.add_argument("--test", type=non_negative_int, default=12, help="test tiles (fold -1)")
    ds.add_argument("--tile", type=positive_int, default=256, help="tile side in pixels")
    _common(ds)
    sl = sub.add_parser("slide", help="an Aperio-style pyramidal TIFF slide plus <stem>_truth.tif labels")
    sl.add_argument("out", help="output slide file (.tif or .svs)")
    sl.add_argument("--size", default="8192", help="level-0 size: N (square) or HxW, e.g. 4096x6144")
    sl.add_argument("--mpp", type=positive_float, default=None,
                    help="microns per pixel recorded in the file (default 0.5, the scale the textures are drawn at)")
    sl.add_argument("--compression", choices=("jpeg", "deflate"), default="jpeg")
    _common(sl)


def _common(p) -> None:
    from ._args import non_negative_int

    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed (same seed, same data)")
    p.add_argument("--config", default=None, help="TOML with a [synth] table (class frequency, difficulty, ...)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def check_output(args) -> None:
    """Refuse an output that exists (without --overwrite), whose folder is missing, or that is the
    --config it reads, before any work (the shared policy, napari_dfa.files.outputs)."""
    from pathlib import Path

    from ..errors import ConfigError
    from ..files.outputs import check_output as check

    out = Path(args.out)
    inputs = [("--config", args.config)]
    if args.what == "slide":
        from ..synth.writers import truth_path_for

        check(out, overwrite=args.overwrite, inputs=inputs)
        check(truth_path_for(out), overwrite=args.overwrite, inputs=inputs)
    else:
        check(out, folder=True, inputs=inputs)
        if out.exists() and any(out.iterdir()) and not args.overwrite:
            raise ConfigError(f"{out}: the folder is not empty; pass --overwrite to write the dataset into it")


def parse_size(text: str) -> tuple[int, int]:
    from ..errors import ConfigError

    parts = text.lower().replace("*", "x").split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"--size {text!r}: expected N or HxW, e.g. 8192 or 4096x6144") from None
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or min(dims) < 64:
        raise ConfigError(f"--size {text!r}: expected N or HxW with sides of at least 64 pixels")
    return dims[0], dims[1]


def run(args) -> int:
    from tqdm import tqdm

    from .. import synth

    check_output(args)
    size = parse_size(args.size) if args.what == "slide" else None
    config = synth.SynthConfig.from_toml(args.config) if args.config else synth.SynthConfig()
    bar = tqdm(total=0, unit="tile" if args.what == "dataset" else "row", disable=args.no_progress,
               desc=f"synth {args.what}", file=sys.stderr)

    def progress(done: int, total: int, **_):
        bar.total = total
        bar.n = done
        bar.refresh()

    from ..files.outputs import claims
    from ..synth.writers import truth_path_for

    # one writer per output; leftovers of an interrupted run of it cleared (the slide and its truth)
    held = [args.out, truth_path_for(args.out)] if args.what == "slide" else []
    try:
        with claims(held):
            if args.what == "dataset":
                root = synth.write_dataset(args.out, config, n_train=args.train, n_val=args.val, n_test=args.test,
                                           tile=args.tile, seed=args.seed, progress=progress)
                bar.close()
                print(f"wrote {args.train + args.val + args.test} tiles to {root} "
                      f"(img/, mask/, {synth.DATASET_CSV}, {synth.DATASET_JSON})")
            else:
                slide, truth = synth.write_slide(args.out, config, size=size, seed=args.seed, mpp=args.mpp,
                                                 compression=args.compression, progress=progress)
                bar.close()
                print(f"wrote {slide} ({size[0]}x{size[1]} px) and its truth labels {truth}")
    finally:
        bar.close()
    return 0

"""``napari-dfa evaluate``: per-class Dice/IoU of a model on a dataset split (SAM-Path layout)."""

from __future__ import annotations

HELP = "evaluate a model on a dataset split: per-class Dice and IoU (table, optional JSON)"


def add_arguments(parser) -> None:
    from ._args import non_negative_int, positive_int

    parser.add_argument("--model", required=True,
                        help="a .safetensors checkpoint, a training run folder (its best.safetensors), or 'demo'")
    parser.add_argument("--data", required=True,
                        help="dataset folder (SAM-Path layout: img/, mask/, CSV img_id,fold); its classes.json or "
                             "synth.json, if any, must name the model's classes")
    parser.add_argument("--classes", default=None, metavar="A,B,...",
                        help="class names of labels 1..K of the --data folder (instead of its classes.json)")
    parser.add_argument("--split", default="test", choices=("test", "val", "train"))
    parser.add_argument("--json", default=None, help="write the per-class report here (keyed by class name)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    parser.add_argument("--config", default=None, help="recipe TOML whose [data] csv/label_shift apply")
    parser.add_argument("--batch-size", type=positive_int, default=4)
    parser.add_argument("--crop", type=non_negative_int, default=0, help="centre crop of this size (0: whole images)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))


def run(args) -> int:
    import json
    import sys
    from pathlib import Path

    from tqdm import tqdm

    from ..classes import ClassSet
    from ..errors import ConfigError
    from ..model import load_model
    from ..training.datasets import SamPathDataset, resolve_folder_classes
    from ..training.evaluation import evaluate, format_report

    from ..errors import DataError
    from ..labels.outputs import check_destination
    from ..slide import SUFFIXES
    from ._args import resolve_model

    data = Path(args.data)
    wanted = "evaluate scores a model on a SAM-Path dataset folder (img/, mask/, a CSV img_id,fold)"
    slide_like = data.suffix.lower() in SUFFIXES
    if data.is_file() or (data.is_dir() and slide_like and not (data / "img").is_dir()):
        kind = "a slide" if slide_like else "a file"
        raise DataError(f"--data {args.data}: {kind}, not a dataset folder; {wanted}; to segment a slide use "
                        "napari-dfa predict")
    if not data.exists():
        raise DataError(f"--data {args.data}: dataset folder not found"
                        + (f" (the name is a slide's; {wanted})" if slide_like else ""))
    if args.json:  # a file output's folder must exist, as for every command (napari_dfa.files.outputs)
        check_destination(args.json, overwrite=args.overwrite,
                          inputs=[("--model", resolve_model(args.model)), ("--data", args.data),
                                  ("--config", args.config)])
    seg = load_model(resolve_model(args.model), device=args.device)
    csv, shift = "", 0
    if args.config:
        from ..training import TrainConfig

        data = TrainConfig.from_toml(args.config).data
        csv, shift = data.csv, data.label_shift
    model_classes = ClassSet(name="model", names=tuple(seg.class_names), colors=tuple(seg.class_colors))
    # The folder's own names (classes.json / --classes) must be the model's: a report never scores
    # one dataset's classes under another's names.
    classes = resolve_folder_classes(
        args.data, model_classes, named_by=f"the model {args.model}", classes=args.classes, csv=csv,
        label_shift=shift, fix="evaluate a model trained on this dataset's classes (napari-dfa train --data "
                               f"{args.data}), or correct the folder's list",
    )
    dataset = SamPathDataset(args.data, split=args.split, class_set=classes, csv=csv, label_shift=shift,
                             cache=False)
    if len(dataset) == 0:
        raise ConfigError(f"{dataset.csv_path}: the {args.split} split is empty")
    notes = converted_images(dataset)
    for note in notes:
        print(f"napari-dfa evaluate: note: {note}", file=sys.stderr)
    with tqdm(total=0, unit="batch", desc=f"evaluate {args.split}", file=sys.stderr) as bar:

        def progress(done, total):
            bar.total, bar.n = total, done
            bar.refresh()

        report = evaluate(seg, dataset, batch_size=args.batch_size, crop=args.crop, progress=progress)
    report["_meta"].update(model=str(args.model), data=str(Path(args.data)), split=args.split,
                           n_images_in_split=len(dataset), notes=notes)
    print(f"{args.model} on {args.data} ({args.split}, {len(dataset)} images)")
    print(format_report(report))
    for note in notes:  # again under the table it qualifies
        print(f"note: {note}")
    if args.json:
        from ..labels.outputs import atomic_output

        with atomic_output(args.json, overwrite=args.overwrite) as tmp:
            tmp.write_text(json.dumps(report, indent=1), encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def converted_images(dataset) -> list[str]:
    """What the scores rest on that is not an RGB tile as the model was trained on: greyscale tiles
    (their one channel repeated: an H&E model sees no stain colour, and scores far lower) and
    tiles with transparency (laid over white). One note per kind, naming a few files."""
    from ..training.datasets import image_kind

    kinds: dict[str, list] = {}
    for img, _ in dataset.items:
        kind = image_kind(img)
        if kind != "rgb":
            kinds.setdefault(kind, []).append(img.name)
    words = {"grey": ("greyscale", "read as grey RGB (the channel repeated); an H&E model sees no stain colour in "
                                   "them, so their scores are not those of the colour slides it was made for"),
             "rgba": ("with transparency", "laid over white (glass) before scoring; what lay under transparent "
                                           "pixels was ignored")}
    notes = []
    for kind, names in kinds.items():
        what, how = words[kind]
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        notes.append(f"{len(names)} of {len(dataset.items)} {dataset.split} images are {what} ({shown}): {how}")
    return notes

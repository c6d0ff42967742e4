"""``napari-dfa evaluate``: per-class Dice/IoU of a model on a dataset split (SAM-Path layout)."""

from __future__ import annotations

HELP = "evaluate a model on a dataset split: per-class Dice and IoU (table, optional JSON)"


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="a .safetensors checkpoint, or 'demo'")
    parser.add_argument("--data", required=True, help="dataset folder (SAM-Path layout: img/, mask/, CSV img_id,fold)")
    parser.add_argument("--split", default="test", choices=("test", "val", "train"))
    parser.add_argument("--json", default=None, help="write the per-class report here (keyed by class name)")
    parser.add_argument("--config", default=None, help="recipe TOML whose [data] csv/label_shift apply")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop", type=int, default=0, help="centre crop of this size (0: whole images)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))


def run(args) -> int:
    import json
    import sys
    from pathlib import Path

    from tqdm import tqdm

    from ..classes import ClassSet
    from ..errors import ConfigError
    from ..model import load_model
    from ..training.datasets import SamPathDataset
    from ..training.evaluation import evaluate, format_report

    seg = load_model(args.model, device=args.device)
    csv, shift = "", 0
    if args.config:
        from ..training import TrainConfig

        data = TrainConfig.from_toml(args.config).data
        csv, shift = data.csv, data.label_shift
    classes = ClassSet(name="model", names=tuple(seg.class_names), colors=tuple(seg.class_colors))
    dataset = SamPathDataset(args.data, split=args.split, class_set=classes, csv=csv, label_shift=shift,
                             cache=False)
    if len(dataset) == 0:
        raise ConfigError(f"{dataset.csv_path}: the {args.split} split is empty")
    with tqdm(total=0, unit="batch", desc=f"evaluate {args.split}", file=sys.stderr) as bar:

        def progress(done, total):
            bar.total, bar.n = total, done
            bar.refresh()

        report = evaluate(seg, dataset, batch_size=args.batch_size, crop=args.crop, progress=progress)
    report["_meta"].update(model=str(args.model), data=str(Path(args.data)), split=args.split,
                           n_images_in_split=len(dataset))
    print(f"{args.model} on {args.data} ({args.split}, {len(dataset)} images)")
    print(format_report(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1), encoding="utf-8")
        print(f"wrote {args.json}")
    return 0

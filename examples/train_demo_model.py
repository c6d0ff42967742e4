"""Train the bundled demo model: a `small` DFA model on the synthetic H&E data, at 0.5 µm/px.

    python examples/train_demo_model.py                 # the shipped recipe, ~34 min on one thread
    python examples/train_demo_model.py --dest src/napari_dfa/weights/demo.safetensors   # replace the shipped one
    python examples/demo_domain.py                      # then: its domain statistics (the domain check)
    python examples/train_demo_model.py --config training/synthetic.toml   # generator tiles only, minutes

The default recipe (training/demo.toml) trains on tiles cut from synthetic slides (glass and a
slide's large regions as context) and on generator tiles; its ``[demo_data]`` table says which,
and this script builds them once into a SAM-Path folder in the cache. Its test tiles are as large
as the default inference tile; the card then also gives the test mDice on the generator's 160-px
test tiles (training/synthetic.toml's test split). training/synthetic.toml trains on 128-px crops
of 160-px generator tiles only (the demo model before this one).

Writes the run folder (checkpoints, logs, plots) to --out (default runs/demo) and the demo model
(fp16 weights, a few MB) with its model card demo.json (classes, f_c, learned b_c against the prior,
validation and test Dice per class, the recipe) into that folder as well. The shipped model
src/napari_dfa/weights/demo.safetensors is only replaced when --dest names it.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import tomllib
import torch
from PIL import Image
from tqdm import tqdm

from napari_dfa.model import load_model
from napari_dfa.model.card import DEMO_CARD
from napari_dfa.files.paths import cache_dir
from napari_dfa.slide import open_slide
from napari_dfa.synth import SynthConfig, generate_tile, write_slide
from napari_dfa.synth.tiles import balance_proportions, tile_proportions
from napari_dfa.training import TrainConfig, open_split
from napari_dfa.training.evaluation import evaluate, format_report
from napari_dfa.training.trainer import train

REPO = Path(__file__).resolve().parent.parent
DEST = REPO / "src" / "napari_dfa" / "weights" / "demo.safetensors"
GENERATOR_TEST = REPO / "training" / "synthetic.toml"  # its test split: 24 generator tiles of 160 px


def _starts(length: int, tile: int) -> np.ndarray:
    """Starts of ``length // tile`` tiles spread evenly over ``[0, length)`` (one centred if none fits)."""
    n = length // tile
    if n <= 1:
        return np.array([max(0, (length - tile) // 2)])
    return np.round(np.linspace(0, length - tile, n)).astype(int)


def demo_dataset(spec: dict) -> Path:
    """The SAM-Path folder that ``[demo_data]`` describes, built once into the cache (keyed by it).

    Slide tiles: synthetic slides written as the sample slide is (JPEG pyramid, 70 % tissue) and
    cut into tiles with their truth; glass is label 0, ignored by the loss but in the context the
    class tokens attend to. Generator tiles: :func:`napari_dfa.synth.generate_tile` (many small
    regions, no glass), split mixes balanced to the configured frequencies as the dataset writer does.
    """
    key = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    root = cache_dir() / "demo-data" / key
    if (root / ".complete").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root.parent))
    try:
        (tmp / "img").mkdir()
        (tmp / "mask").mkdir()
        config = SynthConfig()
        rows = []

        def save(img_id, rgb, mask, fold):
            Image.fromarray(np.ascontiguousarray(rgb)).save(tmp / "img" / f"{img_id}.png", compress_level=1)
            Image.fromarray(np.ascontiguousarray(mask)).save(tmp / "mask" / f"{img_id}.png", compress_level=1)
            rows.append((img_id, fold))

        for split, fold in (("train", 1), ("val", 0), ("test", -1)):
            tile = spec["test_tile"] if split == "test" else spec["tile"]
            size = spec.get("test_slide_size", spec["slide_size"]) if split == "test" else spec["slide_size"]
            for seed in spec[f"{split}_slides"]:
                if seed == 0:
                    raise SystemExit("[demo_data]: seed 0 is the sample slide; keep it unseen")
                path, truth_path = write_slide(tmp / f"slide{seed}.tif", config, size=size, seed=seed)
                with open_slide(path) as slide:
                    rgb = np.asarray(slide.levels[0])
                truth = tifffile.imread(truth_path)
                kept = 0
                for y in _starts(truth.shape[0], tile):
                    for x in _starts(truth.shape[1], tile):
                        mask = truth[y:y + tile, x:x + tile]
                        if (mask > 0).mean() >= spec["min_tissue"]:
                            save(f"slide{seed}_{y}_{x}", rgb[y:y + tile, x:x + tile], mask, fold)
                            kept += 1
                path.unlink()
                truth_path.unlink()
                print(f"{split}: {kept} tiles of {tile} px from synthetic slide seed {seed}", flush=True)
        for index, (split, fold) in enumerate((("train", 1), ("val", 0))):
            n = spec.get(f"generator_{split}", 0)
            if not n:
                continue
            rng = np.random.default_rng([spec["generator_seed"], index, 0xDA7A])
            mixes = balance_proportions(tile_proportions(config, rng, n), config.frequencies)
            for i in range(n):
                rgb, mask = generate_tile(config, (spec["generator_seed"], index, i), size=spec["tile"],
                                          proportions=mixes[i])
                save(f"gen_{split}_{i:04d}", rgb, mask, fold)
            print(f"{split}: {n} generator tiles of {spec['tile']} px", flush=True)
        n_small = spec.get("small_generator_train", 0)
        if n_small:  # generator tiles as small as the old recipe's, for the small crops of [data] crops
            rng = np.random.default_rng([spec["generator_seed"], 2, 0xDA7A])
            mixes = balance_proportions(tile_proportions(config, rng, n_small), config.frequencies)
            for i in range(n_small):
                rgb, mask = generate_tile(config, (spec["generator_seed"], 2, i), size=spec["small_tile"],
                                          proportions=mixes[i])
                save(f"gen_small_{i:04d}", rgb, mask, 1)
            print(f"train: {n_small} generator tiles of {spec['small_tile']} px", flush=True)
        (tmp / "classes.json").write_text(json.dumps({"names": list(config.class_names),
                                                      "colors": [list(c) for c in config.class_colors]}))
        (tmp / "demo_data.json").write_text(json.dumps(spec, indent=1, sort_keys=True))
        with (tmp / "split.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["img_id", "fold"])
            writer.writerows(rows)
        (tmp / ".complete").touch()
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def load_recipe(path) -> tuple[TrainConfig, dict | None]:
    """The training recipe and its ``[demo_data]`` table (None without one), the latter's folder
    built and set as the recipe's data root."""
    path = Path(path)
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    spec = raw.pop("demo_data", None)
    config = TrainConfig.from_dict(raw, source=str(path))
    if spec is not None:
        config = config.replace(data={"root": str(demo_dataset(spec))})
    return config, spec


def training_data_text(config: TrainConfig, spec: dict) -> str:
    """The card's training_data sentence for a ``[demo_data]`` recipe: what the model saw and what
    it was tested on (the default recipe keeps DEMO_CARD's)."""
    crops = "/".join(str(c) for c in sorted(set(config.data.crops or (config.data.crop,)), reverse=True))
    small = (f", plus {spec['small_generator_train']} generator tiles of {spec['small_tile']} px"
             if spec.get("small_generator_train") else "")
    return (f"synthetic H&E from napari_dfa.synth with its default classes and settings at 0.5 µm/px "
            f"(training/demo.toml): {spec['tile']}-px tiles (random {crops}-px crops) cut from "
            f"{len(spec['train_slides'])} synthetic slide(s) of {spec['slide_size']} px (JPEG, tissue and glass) "
            f"and {spec['generator_train']} generator tiles{small}; validation on {len(spec['val_slides'])} slide(s) and "
            f"{spec['generator_val']} generator tiles; test on {spec['test_tile']}-px tiles (the default inference "
            f"tile) of {len(spec['test_slides'])} held-out slide(s) of {spec.get('test_slide_size', spec['slide_size'])} px "
            f"(test_mdice) and on the generator's 24 test tiles of 160 px (test_mdice_generator_160); "
            f"the sample slide (seed 0) is unseen; no patient data")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "training" / "demo.toml"))
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--out", default=str(REPO / "runs" / "demo"), help="run folder (default runs/demo)")
    ap.add_argument("--dest", default=None,
                    help=f"where the demo model goes (default OUT/demo.safetensors; the shipped one is {DEST})")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    ap.add_argument("--fp32", action="store_true", help="keep float32 weights (twice the size)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    config, spec = load_recipe(args.config)
    config = config.replace(name="demo")
    if args.epochs:
        config = config.replace(epochs=args.epochs)
    bar = tqdm(total=0, unit="batch", desc="demo model")

    def progress(done, total, epoch=None, loss=None):
        bar.total, bar.n = total, done
        bar.set_postfix(epoch=epoch, loss=f"{loss:.3f}", refresh=True)

    t0 = time.perf_counter()
    result = train(config, out_dir=args.out, device=args.device, progress=progress, resume=args.resume)
    bar.close()
    minutes = (time.perf_counter() - t0) / 60

    seg = load_model(result.best_path)
    test = evaluate(seg, open_split(config.data, "test"), batch_size=8)
    val = evaluate(seg, open_split(config.data, "val"), batch_size=8)
    print("validation (best epoch %d):" % result.best_epoch)
    print(format_report(val))
    print("test:")
    print(format_report(test))
    generator = test
    if spec is not None:  # the generator's own 160-px test tiles, as the old recipe was tested on
        generator = evaluate(seg, open_split(TrainConfig.from_toml(GENERATOR_TEST).data, "test"), batch_size=8)
        print("test, generator tiles of 160 px (training/synthetic.toml):")
        print(format_report(generator))

    def per_class(report, key):
        return {n: r[key] for n, r in report.items() if not n.startswith("_")}

    # The model card inside the checkpoint: licence, intended use, training data, held-out metrics.
    metrics = {"test_mdice": test["_mean"]["dice"], "validation_mdice": val["_mean"]["dice"]}
    metrics.update({f"test_dice_{n}": v for n, v in per_class(test, "dice").items()})
    metrics.update({f"test_iou_{n}": v for n, v in per_class(test, "iou").items()})
    if spec is not None:
        metrics["test_mdice_generator_160"] = generator["_mean"]["dice"]
    model_card = {**DEMO_CARD, "metrics": {k: round(float(v), 4) for k, v in metrics.items()}}
    if spec is not None:
        model_card["training_data"] = training_data_text(config, spec)

    dest = Path(args.dest) if args.dest else Path(args.out) / "demo.safetensors"
    dtype = None if args.fp32 else torch.float16
    seg.save(dest, model_card=model_card, provenance={
        "parent": None,
        "data": f"napari_dfa.synth defaults ({Path(args.config).name})",
        "demo_data": spec,
        "recipe": config.to_dict(),
        "trained_by": "examples/train_demo_model.py",
        "best_epoch": result.best_epoch,
        "weights_dtype": "float16" if dtype else "float32",
    }, dtype=dtype)
    check = load_model(dest)  # the shipped file loads and predicts like the trained one
    tile = open_split(config.data, "test")[0][0][:128, :128]
    agree = float((check.predict(tile) == seg.predict(tile)).mean())

    card = {
        "name": "demo",
        "file": dest.name,
        "size_bytes": dest.stat().st_size,
        "description": "small DFA model trained on synthetic H&E tiles (napari_dfa.synth); for demos and "
                       "tests, not for diagnosis",
        "preset": seg.config.preset,
        "bias_mode": seg.config.bias_mode,
        "mpp": seg.mpp,
        "classes": seg.class_names,
        "class_colors": [list(c) for c in seg.class_colors],
        "frequencies": [round(float(f), 4) for f in seg.frequencies],
        "prior_bias": [round(float(b), 4) for b in seg.prior_bias()],
        "class_bias": [round(float(b), 4) for b in seg.class_bias()],
        "validation_dice": per_class(val, "dice"),
        "validation_mdice": val["_mean"]["dice"],
        "test_dice": per_class(test, "dice"),
        "test_iou": per_class(test, "iou"),
        "test_mdice": test["_mean"]["dice"],
        "test_tile": spec["test_tile"] if spec else config.data.synth_tile,
        **({"test_dice_generator_160": per_class(generator, "dice"),
            "test_mdice_generator_160": generator["_mean"]["dice"]} if spec else {}),
        "best_epoch": result.best_epoch,
        "epochs": config.epochs,
        "training_minutes": round(minutes, 1),
        "fp16_vs_fp32_label_agreement": round(agree, 4),
        "command": "python examples/train_demo_model.py" + (f" --epochs {args.epochs}" if args.epochs else "")
                   + ("" if Path(args.config).resolve() == (REPO / "training" / "synthetic.toml").resolve()
                      else f" --config {os.path.relpath(Path(args.config).resolve(), REPO)}"),
        "machine": f"{platform.machine()} {platform.processor() or ''}, {torch.get_num_threads()} threads, "
                   f"torch {torch.__version__}, device {args.device}",
        "model_card": check.metadata["model_card"],
    }
    dest.with_suffix(".json").write_text(json.dumps(card, indent=1), encoding="utf-8")
    print(f"wrote {dest} ({card['size_bytes'] / 1e6:.1f} MB) and {dest.with_suffix('.json').name}; "
          f"fp16 agreement {agree:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

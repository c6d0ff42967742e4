"""Train the bundled demo model: a `small` DFA model on the synthetic H&E data, at 0.5 µm/px.

    python examples/train_demo_model.py                 # a few minutes on a CPU
    python examples/train_demo_model.py --epochs 5      # quicker, worse
    python examples/train_demo_model.py --dest src/napari_dfa/weights/demo.safetensors   # replace the shipped one

Writes the run folder (checkpoints, logs, plots) to --out (default runs/demo) and the demo model
(fp16 weights, a few MB) with its model card demo.json (classes, f_c, learned b_c against the prior,
validation and test Dice per class, the recipe) into that folder as well. The shipped model
src/napari_dfa/weights/demo.safetensors is only replaced when --dest names it.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from napari_dfa.model import load_model
from napari_dfa.model.card import DEMO_CARD
from napari_dfa.training import TrainConfig, open_split
from napari_dfa.training.evaluation import evaluate, format_report
from napari_dfa.training.trainer import train

REPO = Path(__file__).resolve().parent.parent
DEST = REPO / "src" / "napari_dfa" / "weights" / "demo.safetensors"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "training" / "synthetic.toml"))
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--out", default=str(REPO / "runs" / "demo"), help="run folder (default runs/demo)")
    ap.add_argument("--dest", default=None,
                    help=f"where the demo model goes (default OUT/demo.safetensors; the shipped one is {DEST})")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    ap.add_argument("--fp32", action="store_true", help="keep float32 weights (twice the size)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    config = TrainConfig.from_toml(args.config).replace(name="demo")
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

    def per_class(report, key):
        return {n: r[key] for n, r in report.items() if not n.startswith("_")}

    # The model card inside the checkpoint: licence, intended use, training data, held-out metrics.
    metrics = {"test_mdice": test["_mean"]["dice"], "validation_mdice": val["_mean"]["dice"]}
    metrics.update({f"test_dice_{n}": v for n, v in per_class(test, "dice").items()})
    metrics.update({f"test_iou_{n}": v for n, v in per_class(test, "iou").items()})
    model_card = {**DEMO_CARD, "metrics": {k: round(float(v), 4) for k, v in metrics.items()}}

    dest = Path(args.dest) if args.dest else Path(args.out) / "demo.safetensors"
    dtype = None if args.fp32 else torch.float16
    seg.save(dest, model_card=model_card, provenance={
        "parent": None,
        "data": "napari_dfa.synth defaults (training/synthetic.toml)",
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
        "best_epoch": result.best_epoch,
        "epochs": config.epochs,
        "training_minutes": round(minutes, 1),
        "fp16_vs_fp32_label_agreement": round(agree, 4),
        "command": "python examples/train_demo_model.py" + (f" --epochs {args.epochs}" if args.epochs else ""),
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

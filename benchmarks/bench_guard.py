"""Does the guard keep careless corrections out? Truth-painted corrections against one-class strokes.

    python benchmarks/bench_guard.py                          # the bundled demo model, 6 case slides
    python benchmarks/bench_guard.py --models demo,OTHER.safetensors --out runs/guard.jsonl

On 1024² synthetic slides (finer regions and a stain that strays from the training slides' in some
of them, as another lab's would), a simulated pathologist corrects the demo model in two ways:

- ``real``: the largest wrong regions of every class painted with their true class
  (tests/correction_fixtures.paint_largest_errors, what the correction tests paint);
- ``1``, ``2``, ``5``: three thick strokes of one class (inflammatory, tumour, necrosis) across the
  region, over whatever tissue lies there (one_class_strokes): careless corrections.

With ``--confirm`` the pathologist also confirms two 256² blocks as right ("Looks right": the
blocks where the model is most often right, its few errors there fixed first), as a careful one would; without it
the strokes are all the guard has. Each runs the Fine-tune click's workflow
(``finetune_on_corrections`` at the click's defaults: method ``auto``, which on these slides, the demo's
own classes on tissue the domain check may or may not find far, picks the pixel head or the deep
fine-tune with the reviewed region replayed; ``--method`` forces one, ``both`` keeps the one the guard
promotes) and records the guard's verdict and the mean Dice against the truth
where nothing was corrected, before and after. A careless correction the guard promotes while the
model got worse there is what the guard exists to stop. Prints a Markdown table; ``--out`` keeps
every verdict as JSON lines. Nothing here is timed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from _harness import correction_fixtures, table_head

REGION = (0, 0, 1024, 1024)
# (region size in px, stain jitter, seed): the sample slide's look (320, 0.05) and finer,
# stain-shifted ones; (120, 0.2, 12) is the correction tests' case slide.
CASES = [(120.0, 0.05, 4), (120.0, 0.2, 12), (320.0, 0.05, 4), (320.0, 0.05, 7), (120.0, 0.1, 9), (320.0, 0.15, 5)]
KINDS = ("real", "5", "1", "2")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="demo", help="comma-separated models (demo or .safetensors paths)")
    ap.add_argument("--out", help="JSON lines, one per fine-tuning")
    ap.add_argument("--method", default="auto", choices=("auto", "head", "deep", "both"), help="the fine-tuning method")
    ap.add_argument("--confirm", action="store_true", help="also confirm two 256² blocks as right (Looks right)")
    args = ap.parse_args(argv)

    import torch

    from napari_dfa import synth
    from napari_dfa._sample_data import open_truth
    from napari_dfa.corrections import CorrectionStore
    from napari_dfa.corrections.workflow import ReplaySpec, Resegment, finetune_on_corrections
    from napari_dfa.inference import segment
    from napari_dfa.model import load_model
    from napari_dfa.slide import open_slide

    fixtures = correction_fixtures()  # what the correction tests paint, and their scoring
    torch.set_num_threads(1)  # as the correction tests run it: results do not depend on the core count
    tmp = Path(tempfile.mkdtemp())
    out = open(args.out, "a") if args.out else None
    rows = []
    for name in args.models.split(","):
        seg = load_model(name)
        for size, jitter, seed in CASES:
            config = synth.SynthConfig(slide_region_size=size, stain_jitter=jitter)
            path, truth_path = synth.write_slide(tmp / f"case{size}_{jitter}_{seed}.tif", config, size=(1024, 1024),
                                                 seed=seed, mpp=0.5)
            slide = open_slide(path)
            truth = np.asarray(open_truth(truth_path)[0])
            before = np.asarray(segment(slide, seg, level=0, region=REGION).labels)
            for kind in KINDS:
                painted = fixtures.paint_largest_errors(truth, before) if kind == "real" else \
                    fixtures.one_class_strokes(truth.shape, label=int(kind))
                if (painted > 0).sum() < 1000:  # the model is right almost everywhere: nothing to paint
                    continue
                store = CorrectionStore.for_slide(slide.path, root=tmp / f"{len(rows)}", class_names=seg.class_names)
                patch = store.create_patch(level=0, region=REGION)
                store.write(patch.key, (0, 0), painted)
                if args.confirm:
                    for y, x in _best_blocks(truth, before):
                        # what looks right after fixing what did not: the truth there
                        store.confirm_region(level=0, region=(y, x, 256, 256), labels=truth[y:y + 256, x:x + 256])
                o = finetune_on_corrections(seg, store, slide.read_region, method=args.method,
                                            replay=ReplaySpec(0, REGION, before, painted),
                                            resegment=Resegment(slide, 0, REGION))
                where = (painted == 0) & (truth > 0)
                row = dict(model=name, size=size, jitter=jitter, seed=seed, kind=kind, status=o.verdict.status,
                           method=o.result.method, confirmed=bool(args.confirm),
                           before=fixtures.mean_dice(truth, before, where),
                           after=fixtures.mean_dice(truth, o.relabelled, where),
                           reason=o.verdict.reason)
                rows.append(row)
                print(f"{Path(name).name} {size:.0f} px, stain {jitter}, seed {seed}, {kind}: {row['status']}, "
                      f"{row['before']:.3f} -> {row['after']:.3f}", file=sys.stderr, flush=True)
                if out:
                    out.write(json.dumps({**row, "verdict": o.verdict.as_dict()}) + "\n")
                    out.flush()
    print(*table_head(["model", "corrections", "runs", "worse where nothing was corrected", "promoted",
                       "promoted and worse", "asked", "rejected"], "llrrrrrr"), sep="\n")
    for name in args.models.split(","):
        for label, kinds in (("truth-painted", {"real"}), ("one-class strokes", {"1", "2", "5"})):
            rs = [r for r in rows if r["model"] == name and r["kind"] in kinds]
            worse = [r for r in rs if r["after"] < r["before"]]
            count = lambda status, rr=rs: sum(r["status"] == status for r in rr)  # noqa: E731
            print(f"| {Path(name).name} | {label} | {len(rs)} | {len(worse)} | {count('promoted')} | "
                  f"{sum(r['status'] == 'promoted' for r in worse)} | {count('needs_confirmation')} | "
                  f"{count('rejected')} |")
    return 0


def _best_blocks(truth, before, n=2, block=256):
    scores = sorted(((before[y:y + block, x:x + block] == truth[y:y + block, x:x + block]).mean(), y, x)
                    for y in range(0, truth.shape[0] - block + 1, block)
                    for x in range(0, truth.shape[1] - block + 1, block))[::-1][:n]
    return [(y, x) for _, y, x in scores]


if __name__ == "__main__":
    raise SystemExit(main())

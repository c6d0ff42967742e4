"""Another lab's stain: mDice of the demo model on synthetic slides in a stain that strays from its
training slides', as stored and matched to its training stain (``segment(stain=True)``).

    python benchmarks/bench_stain.py                 # 17 slides of 1024², ~3 min on 2 cores
    python benchmarks/bench_stain.py --model OTHER.safetensors

Each slide is the generator's tissue (120-px regions, or the sample slide's 320) with its stain
drawn ``stain_jitter`` from the reference: 0.05 is the training slides' spread, 0.1–0.3 another
lab's. Scores: mean Dice over the classes against the slide's truth, on its tissue. Prints a
Markdown table. Nothing here is timed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from _harness import correction_fixtures, machine_line, table_head

# (region size, stain jitter, seed); (120, 0.2, 12) is the correction tests' case slide.
SLIDES = ([(120.0, 0.15, s) for s in (4, 5, 6, 7)] + [(120.0, 0.2, s) for s in (11, 12, 13)]
          + [(120.0, 0.3, s) for s in (4, 5, 6, 7)] + [(120.0, 0.1, s) for s in (8, 9)]
          + [(120.0, 0.05, 4), (320.0, 0.05, 4), (320.0, 0.05, 7), (320.0, 0.05, 9)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="demo")
    args = ap.parse_args(argv)

    from napari_dfa import synth
    from napari_dfa._sample_data import open_truth
    from napari_dfa.inference import segment
    from napari_dfa.inference.domain import check_slide
    from napari_dfa.model import load_model
    from napari_dfa.slide import open_slide

    mean_dice = correction_fixtures().mean_dice  # the correction tests' scoring
    seg = load_model(args.model)
    tmp = Path(tempfile.mkdtemp())
    print(f"Command: `python benchmarks/bench_stain.py{' --model ' + args.model if args.model != 'demo' else ''}`  ")
    print(f"Machine: {machine_line()}; nothing here is timed\n")
    print(*table_head(["regions", "stain jitter", "seed", "domain check: stain (flagged above 1)", "mDice as stored",
                       "matched to the training stain"], "rrrrrr"), sep="\n")
    rows = []
    for size, jitter, seed in SLIDES:
        config = synth.SynthConfig(slide_region_size=size, stain_jitter=jitter)
        path, truth_path = synth.write_slide(tmp / f"s{size}_{jitter}_{seed}.tif", config, size=(1024, 1024),
                                             seed=seed, mpp=0.5)
        truth = np.asarray(open_truth(truth_path)[0])
        with open_slide(path) as slide:
            far = check_slide(slide, seg, level=0).groups.get("stain", float("nan"))
            a = mean_dice(truth, np.asarray(segment(slide, seg, level=0).labels))
            b = mean_dice(truth, np.asarray(segment(slide, seg, level=0, stain=True).labels))
        rows.append((jitter, a, b))
        print(f"| {size:.0f} px | {jitter} | {seed} | {far:.2f} | {a:.3f} | {b:.3f} |", flush=True)
    for label, keep in (("training stain (0.05)", lambda j: j <= 0.05), ("another lab's (0.1-0.3)", lambda j: j > 0.05)):
        sel = [(a, b) for j, a, b in rows if keep(j)]
        if sel:
            a, b = np.array(sel).T
            print(f"\n{label}: {len(sel)} slides, mean mDice {a.mean():.3f} as stored, {b.mean():.3f} matched; "
                  f"{int((b > a + 0.01).sum())} better, {int((b < a - 0.01).sum())} worse by more than 0.01",
                  end="")
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

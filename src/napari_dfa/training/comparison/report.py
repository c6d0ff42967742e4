"""The Markdown report of a comparison (no Qt): the verdict and the tables of Dice, paired
differences, the mechanism probe, IoU and the classes' biases."""

from __future__ import annotations

import numpy as np

from .methods import METHODS
from .stats import paired_statistics, verdict


def _ms(values) -> str:
    v = np.array([np.nan if x is None else x for x in values], dtype=float)
    v = v[~np.isnan(v)]
    if not len(v):
        return "—"
    return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}"


def _mean(values):
    v = [x for x in values if x is not None and np.isfinite(x)]
    return float(np.mean(v)) if v else None


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f} %"


def _signed(v) -> str:
    return "—" if v is None else f"{v:+.3f}"


def comparison_markdown(results: dict) -> str:
    """The Markdown report of :func:`run_comparison` results (verdict, tables)."""
    names, seeds, methods, runs = results["classes"], results["seeds"], results["methods"], results["runs"]
    paired = results.get("paired") or paired_statistics(results)
    label = {m: METHODS[m].label if m in METHODS else m for m in methods}
    by_method = {m: [runs[f"{m}/{s}"] for s in seeds if f"{m}/{s}" in runs] for m in methods}
    out = [f"Data: {results.get('data', '?')}. Classes: {', '.join(names)}. {len(seeds)} paired seeds "
           "(seed s gives every method the same initial weights, data order and augmentation).\n",
           results.get("verdict") or verdict(results), ""]

    def mech(rs, key):
        return _mean([_mean(r["sensitivity"][key]) for r in rs if r.get("sensitivity")])

    out.append(f"Test-set per-class Dice (dataset level), mean ± sd over {len(seeds)} seeds; the last column is "
               "the mechanism probe averaged over classes: pixels whose label changes when b_c is raised by 1 "
               "vs when class c's output logit is raised by 1:\n")
    out.append("| method | " + " | ".join(names) + " | mDice | px changed: b_c + 1 / logit + 1 |")
    out.append("| --- |" + " ---: |" * (len(names) + 2))
    for m in methods:
        rs = by_method[m]
        cells = [_ms([r["dice"][k] for r in rs]) for k in range(len(names))]
        probe = f"{_pct(mech(rs, 'bias_px'))} / {_pct(mech(rs, 'logit_px'))}"
        out.append(f"| {label[m]} | " + " | ".join(cells) + f" | {_ms([r['mdice'] for r in rs])} | {probe} |")
    out.append("")
    if paired:
        out.append("Paired difference to none (method − none, same seed): mean [bootstrap 95 % interval], "
                   "two-sided sign-test p (wins:losses):\n")
        out.append("| method | " + " | ".join(names) + " | mDice |")
        out.append("| --- |" + " ---: |" * (len(names) + 1))
        for m, st in paired.items():
            cells = []
            for s in [*st["classes"], st["mdice"]]:
                if s["mean"] is None:
                    cells.append("—")
                    continue
                star = "**" if s["significant"] else ""
                cells.append(f"{star}{s['mean']:+.3f}{star} [{s['ci'][0]:+.3f}, {s['ci'][1]:+.3f}] "
                             f"p={s['p']:.2f} ({s['wins']}:{s['losses']})")
            out.append(f"| {label[m]} | " + " | ".join(cells) + " |")
        out.append("")
    out.append("Mechanism, per class (mean over seeds, on the first test images): pixels changed and change of "
               "that class's Dice when b_c + 1 (the attention bias; in DFA-out also the output) vs when its "
               "output logit + 1:\n")
    out.append("| method | " + " | ".join(names) + " |")
    out.append("| --- |" + " --- |" * len(names))
    for m in methods:
        rs = [r for r in by_method[m] if r.get("sensitivity")]
        cells = []
        for k in range(len(names)):
            def avg(key, k=k):
                return _mean([r["sensitivity"][key][k] for r in rs])

            cells.append(f"b {_pct(avg('bias_px'))} / {_signed(avg('bias_dice'))} · "
                         f"logit {_pct(avg('logit_px'))} / {_signed(avg('logit_dice'))}")
        out.append(f"| {label[m]} | " + " | ".join(cells) + " |")
    out.append("")
    out.append(f"Test-set per-class IoU, mean ± sd over {len(seeds)} seeds:\n")
    out.append("| method | " + " | ".join(names) + " | mIoU |")
    out.append("| --- |" + " ---: |" * (len(names) + 1))
    for m in methods:
        rs = by_method[m]
        cells = [_ms([r["iou"][k] for r in rs]) for k in range(len(names))]
        out.append(f"| {label[m]} | " + " | ".join(cells) + f" | {_ms([r['miou'] for r in rs])} |")
    out.append("")
    learned = [m for m in methods if by_method[m] and by_method[m][0].get("bias_start") is not None]
    out.append("Classes: training-pixel frequency f_c, difficulty where the data states it (synthetic generator: "
               "0 easy … 1 look-alike), the centred prior, and b_c of the learned methods at the start → end "
               "of training (mean over seeds):\n")
    out.append("| class | f_c | difficulty (look-alike) | prior γ·log(1−f_c) − mean | "
               + " | ".join(f"{m} b_c start → end" for m in learned)
               + (" | difficulty-mode b_c (centred) |" if "difficulty" in methods else " |"))
    out.append("| --- | ---: | --- | ---: |" + " ---: |" * (len(learned) + ("difficulty" in methods)))
    any_run = next(iter(runs.values()), None)
    for k, n in enumerate(names):
        d = results.get("difficulty", {}).get(n)
        look = results.get("lookalike", {}).get(n)
        dtxt = "—" if d is None else f"{d:.2f}" + (f" ({look})" if look else "")
        prior = any_run["prior"][k] if any_run else float("nan")
        row = f"| {n} | {results['frequencies'][k]:.3f} | {dtxt} | {prior:+.3f} |"
        for m in learned:
            rs = by_method[m]
            row += f" {np.mean([r['bias_start'][k] for r in rs]):+.3f} → {np.mean([r['bias'][k] for r in rs]):+.3f} |"
        if "difficulty" in methods:
            row += f" {_ms([r['bias'][k] - np.mean(r['bias']) for r in by_method['difficulty']])} |"
        out.append(row)
    secs = [r["seconds"] for r in runs.values()]
    out.append(f"\n{len(runs)} training runs, {np.mean(secs):.0f} s each on average "
               f"({results.get('jobs', 1)} at a time, device {results.get('device', '?')}).")
    return "\n".join(out)

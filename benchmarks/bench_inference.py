"""Whole-slide inference: speed against the model alone, the first click, consistency, memory.

All on the bundled sample slide (``napari_dfa._sample_data.sample_slide_path()``, 4096² at 0.5
µm/px, an SVS-style JPEG pyramid, with its truth) and the bundled demo model:

1. **Efficiency** at ``--levels`` (default 1: the whole 2048² level; 0 is 4096²). The model alone:
   ``Segmenter.predict_logits`` on the level's pixels pre-loaded in memory, cut into tiles that
   cover it exactly once (512² in batches of 4, 1024² in batches of 2, and 1024² one per pass with
   as many passes at once as torch has threads, each on one thread; the fastest counts), with
   channels-last and with contiguous (NCHW) weights. The pipeline: ``segment(slide, model,
   level=...)`` at its defaults — tissue mask, fitted lattice and its overlap, reading the JPEG
   tiles, blending, argmax — timed call to result, fixed costs included; once into memory and once
   into an OME-Zarr store (with its pyramid). Ratio = model alone ÷ pipeline, both in slide
   megapixels per second (the pipeline's overlap counts against it). Best of ``--repeats``
   interleaved rounds, per-round ratios beside.
2. **First click**: a fresh Python process imports napari_dfa, loads the demo model, opens the
   slide and segments a 1024² view at level 0 (the cold call), then two more views (warm); each
   phase timed. ``--cold-runs`` processes.
3. **Consistency** (deterministic, no timing): labels of two views offset by half a tile (the
   lattice is fixed by the level, so this should be ~1), of two *tilings* offset by half a tile
   (the image cropped by half a tile, so the lattice moves: the model's own dependence on tile
   context) at the default tile and at the former default 512/64, and Dice of the whole slide
   against its truth (beside the demo model's tile-level test mDice from its card).
4. **Memory**: peak RSS of ``segment`` (fresh process each) on flat synthetic slides of growing
   size with tissue in two bands and glass elsewhere.

    python benchmarks/bench_inference.py                 # the numbers in BENCHMARKS.md
    python benchmarks/bench_inference.py --quick         # smaller, for a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from _children import first_click as first_click_child
from _children import segment_memory
from _harness import ChildFailed, machine_line, markdown_table, run_child, table_head


def exact_batches(rgb: np.ndarray, tile: int, batch: int) -> list[np.ndarray]:
    """``rgb`` cut into tile × tile pieces that cover it exactly once (edges padded to the tile)."""
    h, w = rgb.shape[:2]
    pieces = []
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            piece = rgb[y : y + tile, x : x + tile]
            if piece.shape[:2] != (tile, tile):
                piece = np.pad(piece, ((0, tile - piece.shape[0]), (0, tile - piece.shape[1]), (0, 0)), mode="reflect")
            pieces.append(piece)
    return [np.stack(pieces[b : b + batch]) for b in range(0, len(pieces), batch)]


def time_model(model, batches: list[np.ndarray], channels_last: bool, at_once: int = 0) -> float:
    """Wall seconds of the forward passes over pre-loaded ``batches`` (after one warm-up pass);
    ``at_once`` > 0: that many passes side by side, each on one torch thread (as ``segment`` runs
    tiles on a CPU)."""
    import torch

    model.model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    def one(batch):
        with torch.inference_mode():
            return model.predict_logits(batch)["logits"].sum().item()  # .item(): wait for the device

    one(batches[0])  # warm-up (allocator, kernels for this shape)
    if not at_once:
        t0 = time.perf_counter()
        for batch in batches:
            one(batch)
        return time.perf_counter() - t0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(at_once) as pool:
            one(batches[0])
            t0 = time.perf_counter()
            list(pool.map(one, batches))
            return time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)


def efficiency(args, tmp: Path, slide_path: Path) -> list[str]:
    from napari_dfa.inference import Runtime, segment
    from napari_dfa.model import load_model
    from napari_dfa.slide import open_slide

    model = load_model("demo")
    rows: list[str] = []
    with open_slide(slide_path) as slide:
        for level in args.levels:
            rgb = np.asarray(slide.levels[level])
            mpx = rgb.shape[0] * rgb.shape[1] / 1e6
            import torch

            at_once = torch.get_num_threads()  # as segment runs tiles on this CPU
            cuts = {"512² ×4": (exact_batches(rgb, 512, 4), 0), "1024² ×2": (exact_batches(rgb, 1024, 2), 0),
                    f"1024² ×1, {at_once} at once on one thread each": (exact_batches(rgb, 1024, 1), at_once)}
            segment(slide, model, level=level, runtime=Runtime(device="cpu"))  # warm-up: first-call costs are part 2
            times: dict[str, list[float]] = {}
            info, cpu = {}, {}  # the fastest run's result and the process's CPU seconds in it
            for r in range(args.repeats):
                for fmt, cl in (("channels-last", True), ("NCHW", False)):
                    for cut, (batches, n) in cuts.items():
                        times.setdefault(f"{fmt} {cut}", []).append(time_model(model, batches, cl, n))
                for name, out in (("memory", None), ("store", tmp / f"lvl{level}_{r}.labels.zarr")):
                    c0, t0 = time.process_time(), time.perf_counter()
                    res = segment(slide, model, level=level, runtime=Runtime(device="cpu"), out=out)
                    wall = time.perf_counter() - t0
                    if wall <= min(times.get(name, [wall])):
                        info[name] = res
                        cpu[name] = time.process_time() - c0
                    times.setdefault(name, []).append(wall)
                if args.bf16:  # the opt-in bfloat16 arithmetic, against the model alone in bfloat16
                    model.precision = "bf16"
                    for cut, (batches, n) in cuts.items():
                        times.setdefault(f"bf16 {cut}", []).append(time_model(model, batches, True, n))
                    model.precision = "auto"
                    t0 = time.perf_counter()
                    segment(slide, model, level=level, runtime=Runtime(device="cpu", precision="bf16"))
                    times.setdefault("memory bf16", []).append(time.perf_counter() - t0)
            best = {k: min(v) for k, v in times.items()}
            fmts = ("channels-last", "NCHW", "bf16") if args.bf16 else ("channels-last", "NCHW")
            ref = {fmt: min((k for k in best if k.startswith(fmt)), key=best.get) for fmt in fmts}
            pipelines = ("memory", "store", "memory bf16")
            res = info["memory"]
            rows += [
                f"Level {level} of the sample slide: {rgb.shape[1]}×{rgb.shape[0]} ({mpx:.1f} Mpx), demo model; "
                f"`segment` defaults: tiles {res.tile_shape[0]}×{res.tile_shape[1]}, overlap {res.overlap[0]}, "
                f"{res.tiles_total} tiles ({res.tiles_skipped} glass), {res.computed_pixels / 1e6 / mpx:.3f}× the "
                f"level's pixels computed; best of {args.repeats} interleaved rounds.",
                "",
                *table_head(["measurement", "wall s", "slide Mpx/s", "ratio to model alone, channels-last",
                             "ratio to model alone, NCHW"], "lrrrr"),
            ]
            for key in sorted(k for k in best if k not in pipelines):
                mark = " (fastest cut)" if key in ref.values() else ""
                rows.append(f"| model alone, {key}{mark} | {best[key]:.2f} | {mpx / best[key]:.2f} | | |")
            for name, what in (("memory", "into memory"), ("store", "into an OME-Zarr store + pyramid")):
                t = best[name]

                def per_round(fmt):
                    return ", ".join(f"{m / p:.2f}" for m, p in zip(times[ref[fmt]], times[name]))

                rows.append(f"| `segment` defaults, {what} | {t:.2f} | {mpx / t:.2f} | "
                            f"**{best[ref['channels-last']] / t:.2f}** ({per_round('channels-last')}) | "
                            f"**{best[ref['NCHW']] / t:.2f}** ({per_round('NCHW')}) |")
            if args.bf16:
                t = best["memory bf16"]
                rounds = ", ".join(f"{m / p:.2f}" for m, p in zip(times[ref["bf16"]], times["memory bf16"]))
                rows.append(f"| `segment` precision=bf16, into memory | {t:.2f} | {mpx / t:.2f} | "
                            f"**{best[ref['bf16']] / t:.2f}** of the bf16 model alone ({rounds}); "
                            f"{best[ref['channels-last']] / t:.2f} of the fp32 one | |")
            cores = os.cpu_count() or 1
            rows += ["", f"Inside the best in-memory run ({best['memory']:.2f} s on {cores} cores): the process used "
                     f"{cpu['memory']:.2f} CPU s; its forward passes ran {res.model_seconds:.2f} s (wall, summed over the "
                     f"passes that ran at once); the rest is reading and decoding, the tissue mask and its glass, "
                     f"blending and the labels. The model alone used at most {best[ref['channels-last']] * cores:.2f} "
                     f"CPU s ({cores} cores × its wall time), so with every core busy all the time the pipeline could "
                     f"reach at most {best[ref['channels-last']] * cores / cpu['memory']:.2f} of it.", ""]
    return rows[:-1]


def first_click(args, slide_path: Path) -> list[str]:
    # The first view is the cold call; then a view 4 lattice tiles cover, and one that 9 cover
    # (a 1024² view crosses two tile overlaps of the 4096² level's lattice per axis).
    views = [[1536, 1536, 1024, 1024], [1600, 1600, 1024, 1024], [1024, 1024, 1024, 1024]]
    rows = table_head(["run", "import s", "load demo s", "open slide s", "first view s (cold)", "warm views s (tiles)",
                       "panned by half a view s (tiles run / touched)", "total to first labels s",
                       "distributed imported"], "lrrrrrrrl")
    for r in range(args.cold_runs):
        try:
            d = run_child(first_click_child, str(slide_path), views)
        except ChildFailed as failed:
            raise SystemExit(failed.stderr) from None
        total = d["import"] + d["load"] + d["open"] + d["views"][0]
        warm = ", ".join(f"{t:.2f} ({n})" for t, n in zip(d["views"][1:], d["tiles"][1:]))
        pans = ", ".join(f"{t:.2f} ({run}/{n})" for t, run, n in d["pans"])
        rows.append(f"| {r + 1} | {d['import']:.2f} | {d['load']:.2f} | {d['open']:.2f} | {d['views'][0]:.2f} "
                    f"({d['tiles'][0]} tiles) | {warm} | {pans} | **{total:.2f}** | {d['distributed']} |")
    return rows


def consistency(args, slide_path: Path) -> list[str]:
    """Deterministic label comparisons (no timing)."""
    from napari_dfa._sample_data import open_truth, sample_truth_path
    from napari_dfa.inference import Runtime, Tiling, segment
    from napari_dfa.model import load_model
    from napari_dfa.slide import open_slide

    model = load_model(args.model)
    card = json.loads(Path(model.metadata["source"]).with_suffix(".json").read_text())
    with open_slide(slide_path) as slide:
        rgb = np.asarray(slide.levels[0])
        truth = np.asarray(open_truth(sample_truth_path())[0])
        if args.quick:
            rgb, truth = rgb[:2048, :2048], truth[:2048, :2048]
        scored = truth > 0

        def dice(labels):
            pred = np.where(scored, labels, 0)
            return float(np.mean([2 * ((pred == c) & (truth == c)).sum() / max(1, (pred == c).sum() + (truth == c).sum())
                                  for c in range(1, len(model.class_names) + 1)]))

        def agree(a, b):
            either = (a > 0) | (b > 0)  # glass both call glass is no evidence
            return float((a == b)[either].mean())

        whole = segment(rgb, model, runtime=Runtime(device="cpu"))
        (ty, _), (oy, _) = whole.tile_shape, whole.overlap
        H, W = rgb.shape[:2]
        rows = table_head(["comparison", "pixels agreeing"], "lr")
        # Views offset by half a tile: the same lattice tiles, so the same labels.
        h = ty // 2
        size = min(H, W) - 2 * h - 256
        a = segment(rgb, model, region=(128, 128, size, size), runtime=Runtime(device="cpu")).labels
        b = segment(rgb, model, region=(128 + h, 128 + h, size, size), runtime=Runtime(device="cpu")).labels
        rows.append(f"| two views offset by half a tile ({h} px), default lattice | **{agree(a[h:, h:], b[:-h, :-h]):.4f}** |")
        rows.append(f"| a view against the whole-image run | **{agree(a, whole.labels[128:128 + size, 128:128 + size]):.4f}** |")
        dices = {"defaults": dice(whole.labels)}
        # Tilings offset by half a tile: crop the image, so the lattice moves with it.
        for label, tile, overlap in ((f"tile {ty}, overlap {oy} (the default's tile)", ty, oy),
                                     ("tile 512, overlap 64 (the former default)", 512, 64),
                                     ("tile 256, overlap 64", 256, 64)):
            h = tile // 2
            a = segment(rgb[: H - h, : W - h], model, tiling=Tiling(tile=tile, overlap=overlap),
                        runtime=Runtime(device="cpu")).labels
            b = segment(rgb[h:, h:], model, tiling=Tiling(tile=tile, overlap=overlap),
                        runtime=Runtime(device="cpu")).labels
            rows.append(f"| two tilings offset by half a tile, {label} | {agree(a[h:, h:], b[:-h, :-h]):.4f} |")
            if tile == 512:
                dices["tile 512, overlap 64"] = dice(segment(rgb, model, tiling=Tiling(tile=512, overlap=64),
                                                             runtime=Runtime(device="cpu")).labels)
    rows += ["", *markdown_table([(k, f"{v:.3f}") for k, v in dices.items()],
                                 ["labels of the whole slide (level 0)", "mDice against the slide's truth"], "lr")]
    rows.append(f"| (the demo model's card: test tiles, {card.get('name', 'demo')}) | {card['test_mdice']:.3f} |")
    return rows


# --- memory ----------------------------------------------------------------------------------------
def write_band_slide(path: Path, size: int, tile: int = 512) -> Path:
    """Pyramidal JPEG TIFF: glass with one tissue band across and one down, ``tile`` pixels wide
    at level 0 (the same band at every level), written tile by tile."""
    import tifffile

    rng = np.random.default_rng(0)
    texture = rng.integers(90, 200, (tile, tile, 3), dtype=np.uint8)
    texture[..., 1] //= 2  # pink-purple: saturated, so the tissue mask keeps it
    lo, hi = size // 2, size // 2 + tile

    def tiles(f: int):
        n = -(-size // f // tile)
        coords = np.arange(tile) * f
        for ty in range(n):
            ys = ty * tile * f + coords
            in_y = (ys >= lo) & (ys < hi)
            for tx in range(n):
                xs = tx * tile * f + coords
                in_x = (xs >= lo) & (xs < hi)
                band = in_y[:, None] | in_x[None, :]
                out = np.full((tile, tile, 3), 238, np.uint8)
                out[band] = texture[band]
                yield out

    levels = [1, 4, 16]
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for i, f in enumerate(levels):
            shape = (-(-size // f), -(-size // f), 3)
            kw = dict(subifds=len(levels) - 1) if i == 0 else dict(subfiletype=1)
            tif.write(tiles(f), shape=shape, dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                      compression="jpeg", **kw)
    return path


def memory(args, tmp: Path) -> list[str]:
    from napari_dfa.model import load_model

    model_path = load_model("demo").metadata["source"]
    sizes = [2048, 4096] if args.quick else [int(s) for s in args.sizes.split(",")]
    rows = table_head(["slide", "tiles (computed)", "seconds", "RSS before `segment`", "peak RSS during `segment`",
                       "growth", "blend accumulators (peak)"], "lrrrrrr")
    for size in sizes:
        path = write_band_slide(tmp / f"band_{size}.tif", size)
        out = tmp / f"band_{size}.labels.zarr"
        try:
            r = run_child(segment_memory, str(path), str(model_path), str(out))
        except ChildFailed as failed:
            raise SystemExit(failed.stderr) from None
        rows.append(f"| {size}² ({size * size / 1e6:.0f} Mpx) | {r['tiles']} ({r['tiles'] - r['skipped']}) | "
                    f"{r['seconds']:.0f} | {r['base'] / 2**20:.0f} MiB | {r['peak'] / 2**20:.0f} MiB | "
                    f"{(r['peak'] - r['base']) / 2**20:.0f} MiB | {r['float_bytes'] / 2**20:.1f} MiB |")
        print(rows[-1], file=sys.stderr, flush=True)  # progress while the next size runs
        path.unlink()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="level 1 only, 1 round, 1 cold run, a 2048² consistency crop")
    p.add_argument("--levels", default="1", help="sample-slide levels for the efficiency part, comma-separated")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cold-runs", type=int, default=3)
    p.add_argument("--sizes", default="8192,16384,32768", help="edges of the memory slides")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="also time precision=bf16 (default: when the CPU runs bfloat16 natively)")
    p.add_argument("--model", default="demo", help="model of the consistency part (a candidate demo model: its "
                   "card is the .json beside its weights)")
    p.add_argument("--skip", default="", help="comma list of parts to skip: efficiency,first-click,consistency,memory")
    args = p.parse_args()
    args.levels = [int(v) for v in str(args.levels).split(",")]
    if args.quick:
        args.repeats, args.cold_runs = 1, 1
    if args.bf16 is None:
        from napari_dfa.model.segmenter import _cpu_has_bf16

        args.bf16 = _cpu_has_bf16()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    from napari_dfa._sample_data import sample_slide_path

    slide_path = sample_slide_path()
    print("## Whole-slide inference: speed, first click, consistency, memory\n")
    print(f"Machine: {machine_line()}\n")
    print(f"Command: `python benchmarks/bench_inference.py {' '.join(sys.argv[1:])}`\n")
    with tempfile.TemporaryDirectory(prefix="napari-dfa-bench-") as tmp:
        if "efficiency" not in skip:
            print("### Pipeline at defaults against the model alone\n")
            print("\n".join(efficiency(args, Path(tmp), slide_path)), flush=True)
        if "first-click" not in skip:
            print("\n### First click: a fresh process segments a 1024² view of the sample slide (level 0)\n")
            print("\n".join(first_click(args, slide_path)), flush=True)
        if "consistency" not in skip:
            print("\n### Same pixel, same label (sample slide, level 0, demo model; deterministic)\n")
            print("\n".join(consistency(args, slide_path)), flush=True)
        if "memory" not in skip:
            print("\n### Peak memory of `segment` on growing slides (fresh process each, demo model, defaults)\n")
            print("\n".join(memory(args, Path(tmp))))


if __name__ == "__main__":
    main()

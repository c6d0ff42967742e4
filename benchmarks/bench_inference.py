"""Whole-slide inference speed and memory (issue 4).

1. Pipeline efficiency, on one synthetic pyramidal slide (SVS-style JPEG TIFF written by
   ``napari_dfa.synth``) and one model (untrained weights: speed does not depend on them):
   (a) the model alone — ``Segmenter.predict_logits`` on the very tiles the pipeline runs,
       pre-loaded in memory, in the same batches — with the weights contiguous (NCHW) and
       channels-last; the faster one is the reference;
   (b) the whole ``segment`` pipeline (read from the file, tissue mask, blend, argmax, write an
       OME-Zarr store with its pyramid), same tiles.
   (b) is run with reads and blending in threads beside the model and inline between forward
   passes (``segment(threads=...)``). Efficiency = time(a) / time(b), best of ``--repeats``
   interleaved rounds, plus the per-round ratios; megapixels/s of slide area. Measured on a small
   slide (1536², 16 tiles: per-call fixed costs weigh) and a larger one (4096², 81 tiles: fixed
   costs amortised, as on a real slide); ``--slide`` picks the edges.
2. Peak memory of ``segment`` (each run a fresh process, peak RSS from ``getrusage``) on flat
   synthetic slides of growing size: tissue in a full-width band and a full-height band (so the
   accumulators see the slide's whole width and height) and glass elsewhere (skipped as glass,
   like most of a real slide), written tile by tile with tifffile as JPEG pyramids.

    python benchmarks/bench_inference.py                 # the numbers in BENCHMARKS.md
    python benchmarks/bench_inference.py --quick         # smaller, for a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def machine() -> str:
    import torch

    try:
        import psutil

        mem = f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
    except ImportError:
        mem = "RAM unknown"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.platform()}, {os.cpu_count()} CPU cores, {mem}, {gpu}; python {platform.python_version()}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads)")


def build_model(preset: str):
    import torch

    from napari_dfa.model import ModelConfig, Segmenter

    torch.manual_seed(0)
    return Segmenter.from_config(ModelConfig.from_preset(preset, num_classes=5), mpp=0.5)


def time_model(model, batches: list[np.ndarray], channels_last: bool) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of the forward passes over pre-loaded ``batches``."""
    import torch

    model.model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    with torch.inference_mode():
        model.predict_logits(batches[0])  # warm-up (allocator, kernels)
        t0, c0 = time.perf_counter(), time.process_time()
        for batch in batches:
            out = model.predict_logits(batch)["logits"]
            out.sum().item()  # wait for the device
    return time.perf_counter() - t0, time.process_time() - c0


def efficiency(args, tmp: Path) -> list[str]:
    sizes = [1024] if args.quick else [int(s) for s in str(args.slide).split(",")]
    rows: list[str] = []
    for size in sizes:
        rows += efficiency_one(args, tmp, size) + [""]
    return rows[:-1]


def efficiency_one(args, tmp: Path, size: int) -> list[str]:
    from napari_dfa import synth
    from napari_dfa.inference.tiling import TileGrid
    from napari_dfa.inference import segment
    from napari_dfa.slide import open_slide

    slide_path, _ = synth.write_slide(tmp / f"bench_{size}.svs", size=(size, size), seed=0)
    model = build_model(args.preset)
    with open_slide(slide_path) as slide:
        grid = TileGrid(height=size, width=size, tile=args.tile, overlap=args.overlap, multiple=model.input_multiple)
        # The batches the pipeline makes: within a tile row, `batch` tiles at a time.
        batches = []
        for y in grid.ys.starts:
            row = [slide.read_region(0, (int(y), int(x), args.tile, args.tile)) for x in grid.xs.starts]
            batches += [np.stack(row[b : b + args.batch]) for b in range(0, len(row), args.batch)]
        # Interleaved rounds: the model alone in both weight formats, then the pipeline (NCHW weights,
        # as built) with reading/blending in threads beside the model and inline; best of each,
        # so that load from other processes on a shared machine hurts all of them alike.
        times: dict[str, list] = {}
        for r in range(args.repeats):
            for name, cl in (("channels-last", True), ("NCHW", False)):
                times.setdefault(name, []).append(time_model(model, batches, cl))
            for mode, threads in (("threads", True), ("inline", False)):
                out = tmp / f"bench_{size}_{r}_{mode}.labels.zarr"
                # No tissue mask: (b) runs exactly the tiles (a) runs.
                t0, c0 = time.perf_counter(), time.process_time()
                res = segment(slide, model, tile=args.tile, overlap=args.overlap, device="cpu", out=out,
                              batch_size=args.batch, tissue_mask=False, threads=threads)
                times.setdefault(mode, []).append((time.perf_counter() - t0, time.process_time() - c0,
                                                   res.model_seconds))
                assert res.completed and res.tiles_done == grid.total and res.tiles_skipped == 0

    def best(key, i=0):
        return min(t[i] for t in times[key])

    faster = min(("NCHW", "channels-last"), key=best)
    mpx = size * size / 1e6
    rows = [
        f"Slide: synthetic {size}×{size} SVS-style JPEG pyramid; model `{args.preset}` (5 classes); tile {args.tile}, "
        f"overlap {args.overlap}, batch {args.batch}, {grid.total} tiles; best of {args.repeats} interleaved rounds.",
        "",
        "| measurement | wall s | CPU s | forward passes inside s | tiles/s (wall) | slide Mpx/s (wall) | "
        "efficiency vs (a) NCHW |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    a = best("NCHW")
    for name in ("NCHW", "channels-last"):
        t, c = best(name), best(name, 1)
        rows.append(f"| (a) model alone, {name} weights{' (faster)' if name == faster else ''} | {t:.2f} | {c:.2f} | | "
                    f"{grid.total / t:.2f} | {mpx / t:.3f} | |")
    for mode, what in (("threads", "reads and blending in threads beside the model"),
                       ("inline", "reads and blending inline, between forward passes")):
        t, c = best(mode), best(mode, 1)
        fwd = min(times[mode], key=lambda v: v[0])[2]  # forward time inside the best run
        pairs = sorted(m[0] / p[0] for m, p in zip(times["NCHW"], times[mode]))
        rows.append(f"| (b) `segment`, {what} (tissue mask off; blend, argmax, store + pyramid) | {t:.2f} | {c:.2f} | {fwd:.2f} | "
                    f"{grid.total / t:.2f} | {mpx / t:.3f} | **{a / t:.2f}** (per round: "
                    f"{', '.join(f'{r:.2f}' for r in pairs)}) |")
    rows += ["", "Efficiency = (a) ÷ (b) by wall time, best of each; per-round ratios compare runs made one "
             "right after the other. CPU time counts every thread of the process; \"forward passes inside\" is "
             "`SegmentResult.model_seconds` of the best run (wall minus it = what the pipeline adds)."]
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


CHILD = r"""
import json, resource, sys, threading, time
import psutil, torch
from napari_dfa.inference import segment
from napari_dfa.model import load_model
from napari_dfa.slide import open_slide
slide_path, model_path, out, tile, overlap, batch = sys.argv[1:7]
model = load_model(model_path)
proc = psutil.Process()
base = proc.memory_info().rss
peak, stop = [base], threading.Event()
def sample():  # resident memory every 20 ms while segment runs
    while not stop.wait(0.02):
        peak[0] = max(peak[0], proc.memory_info().rss)
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
with open_slide(slide_path) as slide:
    res = segment(slide, model, tile=int(tile), overlap=int(overlap), device="cpu", out=out, batch_size=int(batch))
stop.set(); sampler.join()
print(json.dumps({"base": base, "peak": max(peak[0], proc.memory_info().rss), "tiles": res.tiles_total,
                  "skipped": res.tiles_skipped, "seconds": res.seconds, "float_bytes": res.peak_float_bytes,
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "completed": res.completed}))
"""


def memory(args, tmp: Path) -> list[str]:
    model_path = build_model(args.memory_preset).save(tmp / "bench_model.safetensors")
    sizes = [2048, 4096] if args.quick else [int(s) for s in args.sizes.split(",")]
    rows = ["| slide | tiles (computed) | seconds | RSS before `segment` | peak RSS during `segment` | growth | "
            "blend accumulators (peak) | process max RSS |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for size in sizes:
        path = write_band_slide(tmp / f"band_{size}.tif", size)
        out = tmp / f"band_{size}.labels.zarr"
        proc = subprocess.run([sys.executable, "-c", CHILD, str(path), str(model_path), str(out), str(args.tile),
                               str(args.overlap), str(args.batch)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(f"| {size}² ({size * size / 1e6:.0f} Mpx) | {r['tiles']} ({r['tiles'] - r['skipped']}) | "
                    f"{r['seconds']:.0f} | {r['base'] / 2**20:.0f} MiB | {r['peak'] / 2**20:.0f} MiB | "
                    f"{(r['peak'] - r['base']) / 2**20:.0f} MiB | {r['float_bytes'] / 2**20:.1f} MiB | "
                    f"{r['maxrss_kb'] / 1024:.0f} MiB |")
        print(rows[-1], file=sys.stderr, flush=True)  # progress while the next size runs
        path.unlink()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--preset", default="small", help="model preset for the efficiency part (demo model: small)")
    p.add_argument("--memory-preset", default="tiny", help="model preset for the memory part (cost only)")
    p.add_argument("--slide", default="1536,4096",
                   help="edges of the efficiency slides, comma-separated (small: per-call fixed costs weigh; "
                        "4096: 81 tiles, fixed costs amortised as on a real slide)")
    p.add_argument("--sizes", default="8192,16384,32768", help="edges of the memory slides")
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-efficiency", action="store_true")
    args = p.parse_args()
    print("## Whole-slide inference speed and memory\n")
    print(f"Machine: {machine()}\n")
    print(f"Command: `python benchmarks/bench_inference.py {' '.join(sys.argv[1:])}`\n")
    with tempfile.TemporaryDirectory(prefix="napari-dfa-bench-") as tmp:
        if not args.skip_efficiency:
            print("\n".join(efficiency(args, Path(tmp))))
        if not args.skip_memory:
            print(f"\n### Peak memory of `segment` on growing slides (fresh process each, model "
                  f"`{args.memory_preset}`, tile {args.tile}, overlap {args.overlap}, batch {args.batch})\n")
            print("\n".join(memory(args, Path(tmp))))


if __name__ == "__main__":
    main()

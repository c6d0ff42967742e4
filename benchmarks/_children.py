"""What a fresh interpreter runs for ``bench_inference.py`` and ``bench_synth.py``
(``_harness.run_child``): each function imports what it needs itself, so that what it times and
measures starts inside it; this module imports nothing at the top but the standard library.
"""

from __future__ import annotations

import sys
import time


def first_click(slide_path: str, views: list[list[int]]) -> dict:
    """Import napari_dfa, load the demo model, open the slide, segment ``views`` (y, x, h, w at
    level 0; the first is the cold call), then pan from the second as the Segment widget does;
    each phase timed."""
    t0 = time.perf_counter()
    from napari_dfa import Runtime, load_model, open_slide, segment

    t1 = time.perf_counter()
    model = load_model("demo")
    t2 = time.perf_counter()
    slide = open_slide(slide_path)
    t3 = time.perf_counter()
    from napari_dfa.inference.tile_cache import TileCache

    views = [tuple(v) for v in views]
    times, tiles = [], []
    for view in views:
        t = time.perf_counter()
        res = segment(slide, model, level=0, region=view, runtime=Runtime(device="cpu"))
        times.append(time.perf_counter() - t)
        tiles.append(res.tiles_total)
    # Panning, as the Segment widget does it: the tile cache holds the tiles of the view before.
    cache = TileCache()
    y, x, h, w = views[1]
    segment(slide, model, level=0, region=views[1], runtime=Runtime(device="cpu", tile_cache=cache))
    pans = []
    for dy, dx in ((0, w // 2), (h // 2, w // 2)):
        t = time.perf_counter()
        res = segment(slide, model, level=0, region=(y + dy, x + dx, h, w),
                      runtime=Runtime(device="cpu", tile_cache=cache))
        pans.append((time.perf_counter() - t, res.tiles_total - res.tiles_cached, res.tiles_total))
    return {"import": t1 - t0, "load": t2 - t1, "open": t3 - t2, "views": times, "tiles": tiles,
            "pans": pans, "distributed": "distributed" in sys.modules}


def segment_memory(slide_path: str, model_path: str, out: str) -> dict:
    """Resident memory (bytes) after loading the model and its peak while ``segment`` writes the
    slide's labels to ``out``, sampled every 20 ms; with ``segment``'s own counts."""
    import threading

    import psutil

    from napari_dfa.inference import Runtime, segment
    from napari_dfa.model import load_model
    from napari_dfa.slide import open_slide

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
        res = segment(slide, model, runtime=Runtime(device="cpu"), out=out)
    stop.set()
    sampler.join()
    return {"base": base, "peak": max(peak[0], proc.memory_info().rss), "tiles": res.tiles_total,
            "skipped": res.tiles_skipped, "seconds": res.seconds, "float_bytes": res.peak_float_bytes,
            "completed": res.completed}


def write_slide_memory(size: int, out: str) -> dict:
    """``napari_dfa.synth.write_slide`` of a size × size slide: wall and CPU seconds, and this
    process's peak resident set (VmHWM, KiB) after the imports and at the end."""
    from _harness import hwm_kib
    from napari_dfa.synth import write_slide

    base_kb = hwm_kib()
    t0, c0 = time.perf_counter(), time.process_time()
    write_slide(out, size=(size, size), seed=0)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"wall": wall, "cpu": cpu, "maxrss_kb": hwm_kib(), "base_kb": base_kb}

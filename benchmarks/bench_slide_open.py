"""Opening a whole slide costs the same whatever its size: time and memory of `open_slide`.

Writes, in a temporary folder, a small flat TIFF (the baseline) and 40000×40000 RGB slides
(4.8 GB of pixels each): a flat uncompressed BigTIFF (sparse file, memory-mapped path), a flat
tiled JPEG BigTIFF (tifffile's zarr store path), and an OME-Zarr (NGFF 0.5, zarr v3, 6 levels,
chunks not written). Each is opened in a fresh process, which reports the wall time of the first
`open_slide` and the median of 5 more, the rise of its resident memory (psutil RSS), and the time to
read one 1024×1024 region at level 0 and to build the napari layer's level list.

Run: `python benchmarks/bench_slide_open.py` (also part of `make bench`). Prints Markdown.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from _harness import ChildFailed, machine_line, rss_mb, run_child, table_head

SIZE = 40_000
TILE = 256


def measure(path: str) -> dict:
    """Runs in a fresh interpreter: everything imported first, so only opening is measured."""
    for name in ("dask.array", "tifffile", "zarr"):
        importlib.import_module(name)
    from napari_dfa import open_slide

    for name in ("napari_dfa.slide._tiff", "napari_dfa.slide._zarr"):
        importlib.import_module(name)

    rss0 = rss_mb()
    t0 = time.perf_counter()
    slide = open_slide(path)
    first = time.perf_counter() - t0
    rss1 = rss_mb()
    again = []
    for _ in range(5):
        t0 = time.perf_counter()
        open_slide(path).close()
        again.append(time.perf_counter() - t0)
    from napari_dfa._reader import layer_data

    t0 = time.perf_counter()
    layer_data(slide)  # what the napari reader adds on top of open_slide
    layer = time.perf_counter() - t0
    y, x = slide.shape[0] // 2, slide.shape[1] // 2
    t0 = time.perf_counter()
    tile = slide.read_region(0, (y, x, 1024, 1024))
    region = time.perf_counter() - t0
    t0 = time.perf_counter()
    slide.read_region(0, (y + 2048, x + 2048, 1024, 1024))  # thread pool and codecs warm now
    region2 = time.perf_counter() - t0
    return {
        "shape": slide.shape, "levels": len(slide.levels), "backend": slide.backend,
        "first_open_s": first, "layer_s": layer, "open_median_s": statistics.median(again), "rss_rise_mb": rss1 - rss0,
        "region_1024_s": region, "region2_1024_s": region2, "rss_after_region_mb": rss_mb() - rss0, "tile_mean": float(tile.mean()),
    }


def _tissue_tiles(n: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    base = np.array([224, 140, 185], np.int16)
    return [np.clip(base + rng.integers(-8, 9, (TILE, TILE, 3)), 0, 255).astype(np.uint8) for _ in range(n)]


def write_files(folder: Path) -> dict[str, tuple[Path, float]]:
    import tifffile
    import zarr

    files = {}
    t0 = time.perf_counter()
    small = folder / "small_2000.tif"
    tifffile.imwrite(small, np.full((2000, 2000, 3), 200, np.uint8), tile=(TILE, TILE), compression="zlib",
                     photometric="rgb")
    files["flat tiled TIFF 2000×2000 (baseline)"] = (small, time.perf_counter() - t0)

    t0 = time.perf_counter()
    flat = folder / "flat_uncompressed.tif"
    mm = tifffile.memmap(flat, shape=(SIZE, SIZE, 3), dtype=np.uint8, photometric="rgb", bigtiff=True)
    mm[:1024, :1024] = 230  # touch a corner; the rest stays a sparse hole
    mm.flush()
    del mm
    files[f"flat uncompressed BigTIFF {SIZE}×{SIZE}"] = (flat, time.perf_counter() - t0)

    t0 = time.perf_counter()
    tiled = folder / "flat_tiled.tif"
    tiles = _tissue_tiles()
    count = (-(-SIZE // TILE)) ** 2
    # JPEG tiles, as scanners write them
    tifffile.imwrite(tiled, (tiles[i % 4] for i in range(count)), shape=(SIZE, SIZE, 3), dtype=np.uint8,
                     tile=(TILE, TILE), compression="jpeg", compressionargs={"level": 80}, photometric="rgb",
                     bigtiff=True)
    files[f"flat tiled JPEG BigTIFF {SIZE}×{SIZE}"] = (tiled, time.perf_counter() - t0)

    t0 = time.perf_counter()
    store = folder / "slide.ome.zarr"
    root = zarr.open_group(store, mode="w", zarr_format=3)
    datasets = []
    for i in range(6):
        n = SIZE // 2**i
        root.create_array(f"s{i}", shape=(3, n, n), chunks=(3, 1024, 1024), dtype="uint8", fill_value=255)
        datasets.append({"path": f"s{i}", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 0.25 * 2**i, 0.25 * 2**i]}]})
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{"datasets": datasets, "axes": [
        {"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"}]}]}
    files[f"OME-Zarr 0.5 {SIZE}×{SIZE}, 6 levels"] = (store, time.perf_counter() - t0)
    return files


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    print("## Slide opening\n")
    print(f"Machine: {machine_line(torch=False)}, no GPU used\n")
    with tempfile.TemporaryDirectory(prefix="bench_slide_") as tmp:
        files = write_files(Path(tmp))
        print(*table_head(["slide", "file size on disk", "levels", "first open", "open (median of 5)",
                           "RSS rise at open", "+ napari layer data",
                           "read 1024² region at level 0 (first / second)"]), sep="\n")
        for label, (path, _) in files.items():
            try:
                r = run_child(measure, str(path))
            except ChildFailed as failed:
                print(f"| {label} | failed: {failed.tail(1)} |")
                continue
            disk = _du(path)
            print(f"| {label} ({r['backend']}) | {disk / 2**20:.0f} MiB | {r['levels']} | "
                  f"{r['first_open_s'] * 1e3:.1f} ms | {r['open_median_s'] * 1e3:.1f} ms | "
                  f"{r['rss_rise_mb']:.1f} MiB | {r['layer_s'] * 1e3:.1f} ms | {r['region_1024_s'] * 1e3:.0f} / {r['region2_1024_s'] * 1e3:.0f} ms |")
    print("\nOpening reads only the TIFF IFDs / zarr metadata; levels are dask graphs until a region is "
          "computed. The uncompressed BigTIFF is a sparse file (its pixels read as black).")


def _du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_blocks * 512
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


if __name__ == "__main__":
    main()

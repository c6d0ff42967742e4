"""GPU readiness: the inference pipeline against the model alone on CUDA, JPEG decoding on the
host's cores, peak GPU memory and fine-tuning steps per second. Under 5 minutes on one GPU.

    make bench-gpu                                   # with the project's venv
    make bench-gpu PY=python3                        # any Python with torch (no venv needed)
    PYTHONPATH=src python3 benchmarks/bench_gpu.py [--out DIR] [--quick]

What runs (each part is skipped, with the reason in the table, when a package it needs is missing:
the model and the in-memory pipeline need only numpy and torch; the slide parts need tifffile,
imagecodecs, zarr and dask; the fine-tune part napari_dfa.training's imports):

1. **model alone** — ``Segmenter.predict_logits`` (CUDA, bfloat16 autocast, channels-last) on a
   synthetic H&E-coloured image already on the device, cut into 1024² tiles that cover it once,
   batches of 8;
2. **pipeline, in-memory image** — ``segment(image, model, runtime=Runtime(device="cuda"))`` at its
   defaults (fitted ~1024² lattice, tissue mask, tiles staged in pinned memory and uploaded on a
   side stream, argmax on the device, blending of the overlaps on the host), call to result;
3. **pipeline, slide file** — the same on an SVS-style JPEG pyramid made of the sample slide
   repeated (``--slide-repeat``² copies), reading and decoding included; also into an OME-Zarr
   store;
4. **JPEG decode** — tifffile/imagecodecs decoding that slide's level 0 with 1 thread and with
   every core (megapixels per second);
5. **CUDA against CPU** — labels of a 2048² image by ``segment`` on CUDA (bfloat16) and on the CPU
   (float32): the share of pixels that agree;
6. **fine-tune** — ``napari_dfa.training.finetune`` of the demo model on a few synthetic corrected
   tiles (steps per second, setup excluded: the difference of a short and a longer run).

Prints a Markdown table at the end and writes ``bench_gpu.json`` to ``--out`` (default: ``$OUT``
when set, else ``runs/bench-gpu``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))  # runnable from a checkout without installing it

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _harness import table_head  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def environment() -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cpu_cores": os.cpu_count(), "platform": platform.platform()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), bf16=torch.cuda.is_bf16_supported())
    for mod in ("numpy", "tifffile", "imagecodecs", "zarr", "dask", "scipy"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - reported as missing
            env[mod] = None
    return env


def tissue_image(size: int, seed: int = 0) -> np.ndarray:
    """A size×size H&E-coloured texture (the model's speed does not depend on the content; every
    pixel is tissue to the tissue mask, so every tile is computed)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (size // 8 + 1, size // 8 + 1, 3), dtype=np.uint8)
    img = np.repeat(np.repeat(small, 8, axis=0), 8, axis=1)[:size, :size]
    img = (img // 2 + np.array([110, 40, 110], np.uint8)).astype(np.uint8)  # pink-purple, saturated
    return np.ascontiguousarray(img)


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def model_alone(model, img: np.ndarray, tile: int = 1024, batch: int = 8) -> dict:
    h, w = img.shape[:2]
    pieces = [img[y : y + tile, x : x + tile] for y in range(0, h, tile) for x in range(0, w, tile)]
    dev = model.device
    batches = [torch.from_numpy(np.stack(pieces[b : b + batch])).to(dev) for b in range(0, len(pieces), batch)]
    with torch.inference_mode():
        for b in batches[:2]:  # warm-up: cuDNN autotuning for the shapes
            model.predict_logits(b)
        sync()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for b in batches:
            model.predict_logits(b)
        sync()
        seconds = time.perf_counter() - t0
    mpx = h * w / 1e6
    return {"mpx": mpx, "seconds": seconds, "mpx_per_s": mpx / seconds, "tile": tile, "batch": batch,
            "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30}


def pipeline(model, data, mpx: float, repeats: int, **kw) -> dict:
    from napari_dfa.inference import Runtime, segment

    segment(data, model, runtime=Runtime(device="cuda"), **{k: v for k, v in kw.items() if k != "out"})  # warm-up
    best = None
    for r in range(repeats):
        out = kw.get("out")
        if out is not None:
            out = Path(str(out) + f".{r}")
        sync()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        res = segment(data, model, runtime=Runtime(device="cuda"), **{**kw, "out": out})
        seconds = time.perf_counter() - t0
        run = {"seconds": seconds, "mpx_per_s": mpx / seconds, "device_seconds": res.model_seconds,
               "tiles": res.tiles_total, "tile": list(res.tile_shape), "overlap": list(res.overlap),
               "computed_over_area": res.computed_pixels / (mpx * 1e6),
               "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30}
        if best is None or seconds < best["seconds"]:
            best = run
    best["mpx"] = mpx
    return best


def write_repeated_slide(path: Path, repeat: int) -> tuple[Path, int]:
    """The sample slide's level 0 repeated repeat×repeat as an SVS-style JPEG pyramid (levels 1, 4, 16)."""
    import tifffile

    from napari_dfa._sample_data import sample_slide_path
    from napari_dfa.slide import open_slide

    with open_slide(sample_slide_path()) as slide:
        base = np.asarray(slide.levels[0])
    big = np.tile(base, (repeat, repeat, 1))
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for i, f in enumerate((1, 4, 16)):
            level = np.ascontiguousarray(big[::f, ::f])
            kw = dict(subifds=2) if i == 0 else dict(subfiletype=1)
            tif.write(level, tile=(256, 256), photometric="rgb", compression="jpeg", compressionargs={"level": 90},
                      maxworkers=os.cpu_count(), **kw)
    return path, big.shape[0]


def jpeg_decode(path: Path) -> dict:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        mpx = page.shape[0] * page.shape[1] / 1e6
        out = {}
        for workers in (1, os.cpu_count() or 1):
            page.asarray(maxworkers=workers)  # warm the file cache
            t0 = time.perf_counter()
            page.asarray(maxworkers=workers)
            out[f"threads_{workers}"] = mpx / (time.perf_counter() - t0)
        out["mpx"] = mpx
        return out


def cuda_against_cpu(model) -> dict:
    import copy

    from napari_dfa.inference import Runtime, segment

    img = tissue_image(2048, seed=1)
    on_gpu = segment(img, model, runtime=Runtime(device="cuda")).labels
    cpu_model = copy.deepcopy(model).to("cpu")
    on_cpu = segment(img, cpu_model, runtime=Runtime(device="cpu")).labels
    return {"agreement": float((on_gpu == on_cpu).mean()), "mpx": img.shape[0] * img.shape[1] / 1e6}


def finetune_rate(model) -> dict:
    from napari_dfa.training import finetune

    rng = np.random.default_rng(0)
    samples = []
    for s in range(4):
        rgb = tissue_image(512, seed=s)
        mask = np.zeros((512, 512), np.uint8)
        for c in range(1, model.num_classes + 1):  # corrected blocks of every class
            y, x = rng.integers(0, 448, 2)
            mask[y : y + 64, x : x + 64] = c
        samples.append((rgb, mask))
    times = {}
    for steps in (5, 35):
        sync()
        t0 = time.perf_counter()
        finetune(model, samples, steps=steps, batch_size=4, crop=256, seed=0)
        sync()
        times[steps] = time.perf_counter() - t0
    return {"steps_per_s": 30 / max(times[35] - times[5], 1e-9), "batch": 4, "crop": 256,
            "seconds_5": times[5], "seconds_35": times[35]}


def part(results: dict, name: str, fn) -> None:
    log(f"-- {name}")
    t0 = time.perf_counter()
    try:
        results[name] = fn()
    except Exception as exc:  # noqa: BLE001 - a missing package or a failure skips this part only
        results[name] = {"skipped": f"{type(exc).__name__}: {exc}"}
        log(traceback.format_exc())
    log(f"   {time.perf_counter() - t0:.1f} s: {results[name]}")


def table(r: dict) -> str:
    def val(d, key, fmt="{:.1f}"):
        if not isinstance(d, dict) or "skipped" in d or key not in d:
            return "—"
        return fmt.format(d[key])

    alone = r.get("model alone", {})
    ref = alone.get("mpx_per_s") if isinstance(alone, dict) else None
    rows = table_head(["measurement", "Mpx", "s", "Mpx/s", "ratio to model alone", "peak GPU GiB", "notes"], "lrrrrrl")
    for name in ("model alone", "pipeline, in-memory image", "pipeline, slide file",
                 "pipeline, slide file into a store"):
        d = r.get(name)
        if d is None:
            continue
        if "skipped" in d:
            rows.append(f"| {name} | | | | | | skipped: {d['skipped'][:120]} |")
            continue
        ratio = f"**{d['mpx_per_s'] / ref:.2f}**" if ref and name != "model alone" else ""
        notes = (f"tile {d['tile']}, batch {d['batch']}" if name == "model alone" else
                 f"tiles {d['tiles']} of {d['tile'][0]}², overlap {d['overlap'][0]}, "
                 f"{d['computed_over_area']:.3f}× area computed, device busy {d['device_seconds']:.2f} s")
        rows.append(f"| {name} | {d['mpx']:.0f} | {d['seconds']:.2f} | {d['mpx_per_s']:.0f} | {ratio} | "
                    f"{d['peak_gpu_gib']:.2f} | {notes} |")
    jd = r.get("JPEG decode", {})
    if "skipped" in jd:
        rows.append(f"| JPEG decode (host) | | | | | | skipped: {jd['skipped'][:120]} |")
    elif jd:
        cores = os.cpu_count()
        rows.append(f"| JPEG decode, 1 thread | {jd['mpx']:.0f} | | {val(jd, 'threads_1', '{:.0f}')} | | | tifffile + imagecodecs |")
        rows.append(f"| JPEG decode, {cores} threads | {jd['mpx']:.0f} | | {val(jd, f'threads_{cores}', '{:.0f}')} | | | |")
    cc = r.get("CUDA against CPU", {})
    if "skipped" in cc:
        rows.append(f"| labels CUDA (bf16) vs CPU (fp32) | | | | | | skipped: {cc['skipped'][:120]} |")
    elif cc:
        rows.append(f"| labels CUDA (bf16) vs CPU (fp32) | {cc['mpx']:.0f} | | | | | {100 * cc['agreement']:.2f} % of "
                    "pixels agree |")
    ft = r.get("fine-tune", {})
    if "skipped" in ft:
        rows.append(f"| fine-tune | | | | | | skipped: {ft['skipped'][:120]} |")
    elif ft:
        rows.append(f"| fine-tune steps/s | | | {ft['steps_per_s']:.1f} | | | batch {ft['batch']} × {ft['crop']}², "
                    "napari_dfa.training.finetune |")
    return "\n".join(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "runs/bench-gpu", help="folder for bench_gpu.json")
    p.add_argument("--quick", action="store_true", help="smaller images, one round (a smoke run)")
    p.add_argument("--size", type=int, default=16384, help="edge of the in-memory image (default 16384: 268 Mpx)")
    p.add_argument("--slide-repeat", type=int, default=4, help="sample slide copies per side in the slide file")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if args.quick:
        args.size, args.slide_repeat, args.repeats = 4096, 2, 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        log("bench_gpu needs a CUDA GPU and a CUDA build of torch (torch.cuda.is_available() is False)")
        return 1
    from napari_dfa.model import load_model

    t_start = time.perf_counter()
    results: dict = {"environment": environment(), "args": vars(args)}
    log(json.dumps(results["environment"]))
    model = load_model("demo", device="cuda")
    img = tissue_image(args.size)
    mpx = img.shape[0] * img.shape[1] / 1e6
    part(results, "model alone", lambda: model_alone(model, img))
    part(results, "pipeline, in-memory image", lambda: pipeline(model, img, mpx, args.repeats))
    img = None  # freed before the slide parts (the two above have run)
    with tempfile.TemporaryDirectory(prefix="napari-dfa-gpu-") as tmp:
        slide = {}

        def make_slide():
            slide["path"], slide["edge"] = write_repeated_slide(Path(tmp) / "repeated.svs", args.slide_repeat)
            return {"edge": slide["edge"]}

        part(results, "slide file", make_slide)
        if "path" in slide:
            smpx = slide["edge"] ** 2 / 1e6
            part(results, "JPEG decode", lambda: jpeg_decode(slide["path"]))
            part(results, "pipeline, slide file", lambda: pipeline(model, slide["path"], smpx, args.repeats))
            part(results, "pipeline, slide file into a store",
                 lambda: pipeline(model, slide["path"], smpx, 1, out=Path(tmp) / "labels.zarr"))
        part(results, "CUDA against CPU", lambda: cuda_against_cpu(model))
        part(results, "fine-tune", lambda: finetune_rate(model))
    results["seconds"] = time.perf_counter() - t_start
    md = table(results)
    (out / "bench_gpu.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "bench_gpu.md").write_text(md + "\n")
    env = results["environment"]
    print(f"\n## GPU readiness ({env.get('gpu')}, {env['cpu_cores']} CPU cores, torch {env['torch']}, "
          f"CUDA {env['cuda']}; {results['seconds']:.0f} s)\n")
    print(md)
    print(f"\nJSON: {out / 'bench_gpu.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The anchors beside us: napari-dfa, MONAI and TIAToolbox on the same model, slide and region.

One synthetic Aperio-style SVS (16384 × 12288 px at 0.25 µm/px, JPEG tiles, written once by
``napari_dfa.synth.write_slide`` and cached), one region (2048² at level 1 = 0.5 µm/px, the demo
model's resolution, in the tissue), one model (``napari_dfa.load_model("demo")``, its torch module,
channels-last weights, fed RGB uint8 → float [0, 1] exactly as ``Segmenter.predict_logits`` does),
through:

0. **the model alone**: forward passes (``predict_logits``) over the very tiles ``segment`` runs for
   the region, read beforehand into memory, in batches of ``--batch`` tiles (``segment``'s on a
   GPU; ~2 Mpx on a CPU, where ``segment`` runs one tile per thread, several at once) — the reference;
1. **napari-dfa** ``segment(slide, model, level=1, region=...)`` at its defaults (tiles fitted to the
   level, raised-cosine blending of logits, tissue mask, labels in memory);
2. **MONAI** ``sliding_window_inference`` on the region read into memory (the read is timed too):
   the same tile edge and overlap as ours, ``mode="gaussian"`` (MONAI's blending closest to ours;
   ``--monai-mode constant`` for the plain mean), logits blended, argmax at the end;
3. **TIAToolbox** 2.x ``SemanticSegmentor.run(patch_mode=False)`` with a ``ModelABC`` wrapper around
   the same torch module, on a ``WSIReader`` of the SVS (OpenSlide), the region selected with a
   mask (TIAToolbox computes the patches of its lattice that touch the mask and merges them over
   the mask's bounds), the same patch edge and stride, patch output = patch input, softmax
   probabilities averaged where patches overlap (its merging), ``num_workers=0`` (its default).
   WSI mode always writes its result: a zarr in a temporary ``save_dir`` (``output_type="dict"``
   is turned into ``"zarr"`` there), with the labels of the whole level (zeros outside the mask).

Each runs in a fresh process (``--repeats`` interleaved rounds, best wall time kept) that imports,
loads the model and does one untimed warm-up forward pass of one batch before the timed call.
Printed per pipeline: tiles and forward-pass pixels, wall time of the call, megapixels/s of the
*region* (what the user asked for, whatever each pipeline computes around it), the ratio to the
model alone measured in the same run, and the child's resident memory before the call and its peak
(``getrusage`` ``ru_maxrss``: imports and model included; the RSS before the call tells them apart).
On the default region ``segment`` and TIAToolbox both run the 4 × 4 tiles of their level lattices
that touch it (~1056 px, ~17.8 Mpx of forward passes for 4.2 Mpx), MONAI the 2 × 2 windows laid
from the region's corner (~4.5 Mpx): the table shows both the region and the forward-pass rates.
On a CUDA GPU TIAToolbox ``torch.compile``s the model by default; the warm-up goes through the
compiled model, so compilation stays outside its timed call (``--tia-compile disable`` turns it off).

Set-up (``make bench-anchor`` does all of it; TIAToolbox needs its own venv, because it pins torch
and pulls torchvision, and there are no CPU-only torchvision wheels on PyPI — ~6.5 GB)::

    .venv/bin/pip install -e ".[bench]"        # MONAI: torch + numpy only, into the main venv
    python3 -m venv .venv-tia
    .venv-tia/bin/pip install torch==2.12.1 torchvision==0.27.1 tiatoolbox safetensors psutil

The TIAToolbox process runs ``.venv-tia/bin/python`` with ``PYTHONPATH=src`` (``napari_dfa.model``
needs only torch, numpy and safetensors). Commands::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_anchor.py       # the table (a quiet machine)
    .venv/bin/python benchmarks/bench_anchor.py --check                  # 512² agreement, no timings

``--check`` runs (1)–(3) once on a 512² region (with 512-px tiles, overlap 64, for all: MONAI pads
a region smaller than its window with black) and asserts that their label maps agree on ≥ 95 % of
the pixels (same model; tiling and blending differ); it prints no timings. ``--check --region
y0,x0,h,w`` with a region of at least one fitted tile checks the default lattice. The slide is
cached in ``$NAPARI_DFA_CACHE/bench`` when that is set, else in ``runs/bench-anchor/``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _harness import ROOT, ChildFailed, machine_line, peak_rss_mb, rss_mb, run_child, table_head

TIA_VENV = ROOT / os.environ.get("BENCH_TIA_VENV", ".venv-tia")  # `make bench-anchor` passes its TIA_VENV
SLIDE_HW = (12288, 16384)  # level 0 (height, width): 16k × 12k, a modest real slide
SLIDE_MPP = 0.25  # so that level 1 is 0.5 µm/px, the demo model's resolution
LEVEL = 1
REGION = (2048, 3072, 2048, 2048)  # (y0, x0, h, w) at level 1: the centre of the 8192 × 6144 level, tissue
# On the 448-px lattice of the check's 512-px tiles: one tile covers it whole in every pipeline, so
# the labels may differ only where neighbouring tiles overlap it (blending), and a misplaced read,
# another normalisation or a label offset shows at once. Elsewhere context differs too (the class
# tokens attend over the whole tile): 95.6 % MONAI vs segment at (2816, 3840).
CHECK_REGION = (2688, 3584, 512, 512)
MASK_SCALE = 16  # TIAToolbox's region mask is 1/16 of level 1 (region edges must be multiples of it)


# -- parent ---------------------------------------------------------------------------------------
def cache_folder() -> Path:
    env = os.environ.get("NAPARI_DFA_CACHE")
    return Path(env) / "bench" if env else ROOT / "runs" / "bench-anchor"


def ensure_slide() -> Path:
    """The synthetic SVS, written once (~2 min on 2 cores) and reused."""
    h, w = SLIDE_HW
    path = cache_folder() / f"anchor-{h}x{w}-mpp{SLIDE_MPP:g}-s0.svs"
    if path.is_file():
        return path
    from napari_dfa.synth import truth_path_for, write_slide

    print(f"writing the benchmark slide {path} ({w}×{h}, JPEG, {SLIDE_MPP} µm/px; cached) ...", flush=True)
    # Written under a temporary name and renamed, so that an interrupted run never leaves a slide
    # that looks complete.
    tmp = path.with_name(".tmp-" + path.name)
    slide, truth = write_slide(tmp, size=SLIDE_HW, seed=0, mpp=SLIDE_MPP, compression="jpeg")
    truth.replace(truth_path_for(path))
    slide.replace(path)
    return path


# Pixels per pass the pipelines that batch get on a CPU (two 1024² tiles): segment itself runs one
# tile per torch thread there, several at once, and batched like this before.
CPU_BATCH_PIXELS = 2 << 20


def plan(slide_path: Path, region, args) -> dict:
    """Tile edge, overlap and batch that ``segment`` uses for this region (the others copy them)."""
    from napari_dfa import load_model, open_slide
    from napari_dfa.inference.segment import GPU_BATCH_PIXELS
    from napari_dfa.inference.tiling import TileGrid

    seg = load_model("demo")
    with open_slide(slide_path) as slide:
        level_hw = tuple(int(v) for v in slide.levels[LEVEL].shape[:2])
        mpp = slide.level_mpp(LEVEL)
    grid = TileGrid(height=region[2], width=region[3], tile=args.tile, overlap=args.overlap,
                    multiple=seg.input_multiple, origin=region[:2], extent=level_hw)
    th, tw = grid.tile_shape
    pixels = CPU_BATCH_PIXELS if args.device == "cpu" else GPU_BATCH_PIXELS
    batch = args.batch or max(1, min(16, round(pixels / (th * tw))))
    boxes = [list(grid.tile_box(i, j)) for i in range(grid.rows) for j in range(grid.cols)]
    return dict(slide=str(slide_path), level=LEVEL, level_hw=level_hw, mpp=mpp, region=list(region),
                tile=[th, tw], overlap=list(grid.overlaps), batch=batch, boxes=boxes, device=args.device,
                tile_arg=args.tile, overlap_arg=args.overlap, monai_mode=args.monai_mode,
                tia_workers=args.tia_workers, tia_compile=args.tia_compile, warmup=not args.no_warmup)


def run_pipeline(name: str, spec: dict, out_dir: Path | None) -> dict:
    """One pipeline in a fresh process (TIAToolbox's under ``.venv-tia``): :func:`child`'s result,
    or its error."""
    if name == "tia":
        python = TIA_VENV / "bin" / "python"
        if not python.is_file():
            return {"name": name, "error": f"{python} is missing: `make bench-anchor` creates it"}
    else:
        python = Path(sys.executable)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    labels_out = None if out_dir is None else str(out_dir / f"{name}.npy")
    try:
        return run_child(child, name, spec, labels_out, python=python, env=env, cwd=ROOT)
    except ChildFailed as failed:
        return {"name": name, "error": f"exit status {failed.returncode}:\n{failed.tail(15)}"}


def machine(spec: dict) -> str:
    tia_torch = "not installed"
    if (TIA_VENV / "bin" / "python").is_file():
        probe = "import torch, tiatoolbox; print(torch.__version__, 'tiatoolbox', tiatoolbox.__version__)"
        tia_torch = subprocess.run([str(TIA_VENV / "bin" / "python"), "-c", probe], capture_output=True, text=True,
                                   check=False).stdout.strip() or "broken"
    try:
        import monai

        monai_v = monai.__version__
    except ImportError:
        monai_v = "not installed"
    return (f"{machine_line()}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
            f"device {spec['device']}; MONAI {monai_v}; torch {tia_torch} (.venv-tia)")


LABELS = {
    "model": "(0) model alone (`predict_logits`, tiles pre-read)",
    "segment": "(1) napari-dfa `segment`, defaults",  # "defaults" becomes the tile given, if one was
    "monai": "(2) MONAI `sliding_window_inference`, region in memory",
    "tia": "(3) TIAToolbox `SemanticSegmentor`, WSI + region mask",
}


def table(results: dict[str, list[dict]], spec: dict) -> list[str]:
    region_mpx = spec["region"][2] * spec["region"][3] / 1e6
    best = {n: min((r for r in rs if "error" not in r), key=lambda r: r["wall_s"], default=None)
            for n, rs in results.items()}
    ref = best.get("model")
    ref_mps = ref["computed_px"] / 1e6 / ref["wall_s"] if ref else None
    rows = table_head(["pipeline", "tiles × edge (overlap)", "blending", "forward-pass Mpx",
                       "wall s (best; all rounds)", "region MP/s", "× model alone", "forward-pass MP/s",
                       "RSS before call", "peak RSS"], "lllrrrrrrr")
    labels = dict(LABELS)
    if spec["tile_arg"] is not None:
        labels["segment"] = labels["segment"].replace("defaults", f"tile={spec['tile_arg']}, overlap={spec['overlap_arg']}")
    for name, rs in results.items():
        b = best[name]
        if b is None:
            err = next(r["error"] for r in rs if "error" in r).splitlines()
            rows.append(f"| {labels[name]} | not run: {err[-1] if err else '?'} |" + " |" * 8)
            continue
        walls = ", ".join(f"{r['wall_s']:.2f}" for r in rs if "error" not in r)
        comp = b["computed_px"] / 1e6
        if name == "model":  # no region: it runs the tiles only
            region_col, ratio = "—", 1.0
        else:
            region_col = f"{region_mpx / b['wall_s']:.2f}"
            ratio = region_mpx / b["wall_s"] / ref_mps if ref_mps else float("nan")
        rows.append(
            f"| {labels[name]} | {b['tiles']} × {b['tile'][0]}×{b['tile'][1]} ({b['overlap'][0]}/{b['overlap'][1]}) "
            f"| {b['blend']} | {comp:.1f} | {b['wall_s']:.2f} ({walls}) | {region_col} | {ratio:.2f} "
            f"| {comp / b['wall_s']:.2f} | {b['rss_before_mb']:.0f} MB | {b['peak_rss_mb']:.0f} MB |")
    notes = [("× model alone: the pipeline's megapixels of region per second over the model's forward-pass "
              "megapixels per second (tiles pre-read; the same tiles as `segment`). Forward-pass Mpx: what each "
              "pipeline fed the model, region and context around it.")]
    notes += [r.get("note") for r in best.values() if r and r.get("note")]
    return rows + [""] + [f"- {n}" for n in notes]


def agreement(out_dir: Path, names: list[str], minimum: float) -> bool:
    import numpy as np

    maps = {n: np.load(out_dir / f"{n}.npy") for n in names if (out_dir / f"{n}.npy").is_file()}
    ok = len(maps) == len(names)
    for n in names:
        if n not in maps:
            print(f"  {n}: no label map (the run failed; see above)")
    keys = list(maps)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            if maps[a].shape != maps[b].shape:
                print(f"  {a} vs {b}: shapes differ {maps[a].shape} / {maps[b].shape}")
                ok = False
                continue
            agree = float((maps[a] == maps[b]).mean())
            ok &= agree >= minimum
            print(f"  {a} vs {b}: {agree:.2%} of pixels agree {'(ok)' if agree >= minimum else '(TOO LOW)'}")
    for n, m in maps.items():
        counts = np.bincount(m.ravel(), minlength=6)
        print(f"  {n}: label counts 0..5 = {counts.tolist()}")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true",
                    help="run each pipeline once on a 512² region and compare the label maps (no timings)")
    ap.add_argument("--region", help="y0,x0,h,w at level 1 (multiples of 16); default: the 2048² centre "
                                     "(--check: a 512² one)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds (fresh processes); best kept")
    ap.add_argument("--only", help="comma-separated subset of model,segment,monai,tia")
    ap.add_argument("--device", default="cpu", help="cpu | cuda (every pipeline)")
    ap.add_argument("--tile", type=int, help="tile edge for all (default: segment's fitted lattice)")
    ap.add_argument("--overlap", type=int, help="overlap for all (default: segment's fitted lattice)")
    ap.add_argument("--batch", type=int, help="tiles per forward pass for all but segment (default: segment's on a "
                                              "GPU, ~2 Mpx of tiles on a CPU)")
    ap.add_argument("--monai-mode", default="gaussian", choices=("gaussian", "constant"))
    ap.add_argument("--tia-workers", type=int, default=0, help="TIAToolbox DataLoader workers (its default: 0)")
    ap.add_argument("--tia-compile", default="default",
                    help="TIAToolbox rcParam torch_compile_mode ('default' is its default: torch.compile "
                         "on a compatible GPU, nothing on CPU; 'disable' turns it off)")
    ap.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up forward pass")
    ap.add_argument("--min-agreement", type=float, default=0.95)
    args = ap.parse_args()

    region = tuple(int(v) for v in args.region.split(",")) if args.region else (CHECK_REGION if args.check else REGION)
    if len(region) != 4 or any(v % MASK_SCALE for v in region):
        sys.exit(f"--region {args.region}: give y0,x0,h,w at level 1, each a multiple of {MASK_SCALE} "
                 "(TIAToolbox's region mask is 1/16 of the level)")
    names = ["segment", "monai", "tia"] if args.check else ["model", "segment", "monai", "tia"]
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    slide_path = ensure_slide()
    spec = plan(slide_path, region, args)
    if args.check and args.tile is None and min(region[2:]) < max(spec["tile"]):
        # MONAI pads an image smaller than its window with zeros (black), which changes the labels:
        # a region under one fitted tile (~1024 px) is checked with 512-px tiles for every pipeline.
        args.tile, args.overlap = 512, 64 if args.overlap is None else args.overlap
        spec = plan(slide_path, region, args)
    print(f"slide {slide_path}, level {LEVEL} ({spec['mpp']} µm/px, {spec['level_hw'][1]}×{spec['level_hw'][0]}), "
          f"region y0,x0,h,w = {region}; tile {spec['tile']}, overlap {spec['overlap']}, batch {spec['batch']}",
          flush=True)

    if args.check:
        with tempfile.TemporaryDirectory(prefix="bench-anchor-") as tmp:
            for name in names:
                r = run_pipeline(name, spec, Path(tmp))
                if "error" in r:
                    print(f"{name}: FAILED\n{r['error']}")
                else:
                    print(f"{name}: ran ({r['tiles']} tiles of {r['tile'][0]}×{r['tile'][1]}, {r['blend']})")
            print("agreement of the label maps (labels 1..5; 0 = glass, segment only):")
            ok = agreement(Path(tmp), names, args.min_agreement)
        sys.exit(0 if ok else f"label maps agree on less than {args.min_agreement:.0%} of the pixels, or a run failed")

    results: dict[str, list[dict]] = {n: [] for n in names}
    for k in range(args.repeats):
        for name in names:
            print(f"round {k + 1}/{args.repeats}: {name} ...", flush=True)
            results[name].append(run_pipeline(name, spec, None))
            if "error" in results[name][-1]:
                print(results[name][-1]["error"], flush=True)
    print()
    print(f"Command: `{' '.join(['python', 'benchmarks/bench_anchor.py', *sys.argv[1:]])}`. Machine: {machine(spec)}.")
    print(f"Region {region[2]}×{region[3]} at level {LEVEL} ({region[2] * region[3] / 1e6:.2f} Mpx) of a "
          f"{SLIDE_HW[1]}×{SLIDE_HW[0]} synthetic SVS (JPEG, {SLIDE_MPP} µm/px), model `demo` (channels-last "
          f"weights), batch {spec['batch']}, best of {args.repeats} fresh processes, warm-up "
          f"{'skipped' if args.no_warmup else 'of one batch before the call'}.")
    print()
    print("\n".join(table(results, spec)))


# -- children -------------------------------------------------------------------------------------
def load_segmenter(spec: dict):
    """The demo model on the device with channels-last weights (what ``segment`` leaves it in on CPU
    and CUDA), so that every pipeline runs the same convolutions."""
    import torch

    from napari_dfa.model import load_model

    seg = load_model("demo", device=spec["device"])
    seg.model.to(memory_format=torch.channels_last)
    return seg


def to_model_input(batch_uint8_nhwc, device, channels_last: bool = True):
    """RGB uint8 B×H×W×3 → float [0, 1] B×3×H×W: what ``Segmenter.predict_logits`` does (tile edges
    here are multiples of the model's input multiple, so its reflect padding never applies)."""
    import torch

    x = batch_uint8_nhwc.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def autocast(device):
    """bfloat16 (or float16) autocast on CUDA, as ``predict_logits``; nothing elsewhere."""
    import contextlib

    import torch

    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return contextlib.nullcontext()


def sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def child(name: str, spec: dict, labels_out: str | None) -> dict:
    """Runs in a fresh process (:func:`run_pipeline`): one pipeline, its figures."""
    import numpy as np

    fn = {"model": child_model, "segment": child_segment, "monai": child_monai, "tia": child_tia}[name]
    result, labels = fn(spec)
    result.update(name=name, peak_rss_mb=peak_rss_mb())
    if labels_out and labels is not None:
        assert labels.shape == tuple(spec["region"][2:]), (name, labels.shape)
        np.save(labels_out, np.asarray(labels, dtype=np.uint8))
    return result


def warm_up(spec: dict, forward) -> None:
    """One untimed batch through ``forward`` (uint8 NHWC → anything): allocator, kernels, autotune."""
    import torch

    if spec["warmup"]:
        th, tw = spec["tile"]
        forward(torch.zeros((spec["batch"], th, tw, 3), dtype=torch.uint8))
        sync(spec["device"])


def child_model(spec: dict):
    """The reference: ``predict_logits`` over the tiles ``segment`` runs, pre-read, same batches."""
    import numpy as np

    from napari_dfa import open_slide

    seg = load_segmenter(spec)
    with open_slide(spec["slide"]) as slide:
        level = slide.levels[spec["level"]]
        tiles = [np.asarray(level[max(y, 0):y + h, max(x, 0):x + w]) for y, x, h, w in spec["boxes"]]
    th, tw = spec["tile"]
    # The lattice keeps tiles inside the level; pad the rare one that is not (a level under one tile).
    tiles = [np.pad(t, ((0, th - t.shape[0]), (0, tw - t.shape[1]), (0, 0)), mode="edge") for t in tiles]
    b = spec["batch"]
    batches = [np.stack(tiles[i:i + b]) for i in range(0, len(tiles), b)]
    warm_up(spec, lambda x: seg.predict_logits(x))
    rss = rss_mb()
    t0 = time.perf_counter()
    for batch in batches:
        seg.predict_logits(batch)["logits"].sum().item()  # .item() waits for the device
    wall = time.perf_counter() - t0
    return dict(wall_s=wall, tiles=len(tiles), tile=spec["tile"], overlap=spec["overlap"], blend="—",
                computed_px=len(tiles) * th * tw, rss_before_mb=rss), None


def child_segment(spec: dict):
    from napari_dfa import Runtime, Tiling, segment

    seg = load_segmenter(spec)
    warm_up(spec, lambda x: seg.predict_logits(x))
    rss = rss_mb()
    t0 = time.perf_counter()
    res = segment(spec["slide"], seg, level=spec["level"], region=tuple(spec["region"]),
                  tiling=Tiling(tile=spec["tile_arg"], overlap=spec["overlap_arg"]),
                  runtime=Runtime(device=spec["device"]))
    wall = time.perf_counter() - t0
    th, tw = res.tile_shape
    return dict(wall_s=wall, tiles=res.tiles_done, tile=[th, tw], overlap=list(res.overlap),
                blend="raised cosine, logits", computed_px=res.tiles_done * th * tw, rss_before_mb=rss), res.labels


def child_monai(spec: dict):
    import torch
    from monai.inferers import sliding_window_inference

    from napari_dfa import open_slide

    seg = load_segmenter(spec)
    net, dev = seg.model, seg.device
    th, tw = spec["tile"]
    oy, ox = spec["overlap"]
    calls = []

    def predictor(x):  # windows arrive as float [0, 1] NCHW: the region was normalised once
        calls.append(x.shape[0])
        return net(x.contiguous(memory_format=torch.channels_last))["logits"]

    def warm(x_uint8):
        with torch.inference_mode(), autocast(dev):
            net(to_model_input(x_uint8, dev))

    warm_up(spec, warm)
    rss = rss_mb()
    t0 = time.perf_counter()
    with open_slide(spec["slide"]) as slide:
        rgb = slide.read_region(spec["level"], tuple(spec["region"]))
    t_read = time.perf_counter() - t0
    with torch.inference_mode(), autocast(dev):
        x = to_model_input(torch.from_numpy(rgb)[None], dev, channels_last=False)
        # MONAI's scan interval is int(roi × (1 − overlap)); the half pixel makes it tile − overlap exactly.
        logits = sliding_window_inference(x, roi_size=(th, tw), sw_batch_size=spec["batch"], predictor=predictor,
                                          overlap=((oy - 0.5) / th, (ox - 0.5) / tw), mode=spec["monai_mode"])
        labels = (logits[0].argmax(0) + 1).to(torch.uint8).cpu().numpy()
    wall = time.perf_counter() - t0
    tiles = sum(calls)
    return dict(wall_s=wall, tiles=tiles, tile=[th, tw], overlap=[oy, ox], computed_px=tiles * th * tw,
                blend=f"{spec['monai_mode']}, logits", rss_before_mb=rss,
                note=f"MONAI: reading the region into memory took {t_read:.2f} s of its wall time "
                     f"(napari-dfa's reader; the windows then come from memory)."), labels


def child_tia(spec: dict):
    """TIAToolbox 2.x: a ModelABC around the same torch module, SemanticSegmentor on the SVS, the
    region given as a mask at 1/16 of level 1 (its patches that touch the mask are computed)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from tiatoolbox import rcParam
    from tiatoolbox.models.architecture.utils import argmax_last_axis
    from tiatoolbox.models.engine.io_config import IOSegmentorConfig
    from tiatoolbox.models.engine.semantic_segmentor import SemanticSegmentor
    from tiatoolbox.models.models_abc import ModelABC

    seg = load_segmenter(spec)

    class DFAModel(ModelABC):
        """The DFA network as TIAToolbox sees a segmentation model: patches in (uint8 NHWC, as its
        WSIPatchDataset yields them), per-pixel class probabilities out (NHWC), argmax as postproc."""

        def __init__(self, net, class_names):
            super().__init__()
            self.net = net
            self.class_dict = dict(enumerate(class_names))

        def forward(self, x):
            return self.net(x)["logits"]

        @staticmethod
        def infer_batch(model, batch_data, *, device):
            model.eval()
            # The normalisation of Segmenter.predict_logits; TIAToolbox's own models return softmax
            # probabilities, which it averages where patches overlap.
            with torch.inference_mode(), autocast(device):
                logits = model(to_model_input(torch.as_tensor(batch_data), device))
                probs = F.softmax(logits.float(), dim=1)
            return probs.permute(0, 2, 3, 1).cpu().numpy()

        @staticmethod
        def postproc(image):
            return argmax_last_axis(image=image)

    rcParam["torch_compile_mode"] = spec["tia_compile"]
    dev = str(seg.device)
    model = DFAModel(seg.model, seg.class_names)
    th, tw = spec["tile"]
    oy, ox = spec["overlap"]
    res = {"units": "mpp", "resolution": spec["mpp"]}
    ioconfig = IOSegmentorConfig(input_resolutions=[res], output_resolutions=[res], patch_input_shape=(th, tw),
                                 patch_output_shape=(th, tw), stride_shape=(th - oy, tw - ox))
    lh, lw = spec["level_hw"]
    y0, x0, h, w = spec["region"]
    s = MASK_SCALE
    mask = np.zeros((-(-lh // s), -(-lw // s)), dtype=np.uint8)
    mask[y0 // s:(y0 + h) // s, x0 // s:(x0 + w) // s] = 1

    engine = SemanticSegmentor(model=model, batch_size=spec["batch"], num_workers=spec["tia_workers"], device=dev,
                               verbose=False)
    warm_up(spec, lambda x: DFAModel.infer_batch(engine.model, x, device=dev))
    calls = []
    infer = DFAModel.infer_batch

    def counting(model, batch_data, *, device):
        calls.append(len(batch_data))
        return infer(model, batch_data, device=device)

    DFAModel.infer_batch = staticmethod(counting)
    with tempfile.TemporaryDirectory(prefix="bench-anchor-tia-") as tmp:
        rss = rss_mb()
        t0 = time.perf_counter()
        # WSI mode needs a save_dir and then always writes its zarr (output_type "dict" becomes "zarr").
        out = engine.run([Path(spec["slide"])], masks=[mask], patch_mode=False, ioconfig=ioconfig,
                         save_dir=Path(tmp) / "out", overwrite=True, output_type="zarr", device=dev,
                         auto_get_mask=False)
        wall = time.perf_counter() - t0
        import zarr

        pred = zarr.open(str(next(iter(out.values()))), mode="r")["predictions"]
        pred_shape = tuple(pred.shape)
        labels = np.asarray(pred[y0:y0 + h, x0:x0 + w]).astype(np.uint8) + 1  # TIAToolbox: 0..K-1; ours 1..K
    tiles = sum(calls)
    return dict(wall_s=wall, tiles=tiles, tile=[th, tw], overlap=[oy, ox], computed_px=tiles * th * tw,
                blend="mean of softmax", rss_before_mb=rss,
                note=(f"TIAToolbox: writes a zarr (WSI mode always does) whose predictions are {pred_shape} "
                      f"(the whole level: it pads its canvas over the mask's bounds back to the level), "
                      f"torch {torch.__version__}, "
                      f"num_workers={spec['tia_workers']}, torch_compile_mode={spec['tia_compile']!r}.")), labels


if __name__ == "__main__":
    main()

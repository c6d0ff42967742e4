"""Whole-slide inference: tiling and blending, seams, bounded memory, store, cancel/resume, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tifffile
import torch

from napari_dfa import synth
from napari_dfa.errors import CheckpointError, ConfigError, DataError, SlideError
from napari_dfa.inference.tissue import tissue_from_rgb
from napari_dfa.inference import Runtime, Tiling, segment
from napari_dfa.model import load_model
from napari_dfa.slide import open_slide
from bcss_classes import COLORS


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_segmenter):
    """An untrained `tiny` DFA model, saved and loaded back (the checkpoint path a CLI would get)."""
    seg = tiny_segmenter(class_colors=COLORS)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    seg.save(path)
    return load_model(path)


@pytest.fixture(scope="module")
def he_image():
    rgb, _ = synth.generate_tile(seed=3, size=768)
    return rgb


def _logits(model, rgb):
    return model.predict_logits(np.ascontiguousarray(rgb)[None])["logits"][0].numpy()


def _reference_blend(model, img, tile, overlap):
    """Independent reference: every tile through the model, weighted by a raised-cosine ramp over
    the overlap on sides with a neighbour, normalised — on a full canvas (fine for a test image)."""
    H, W, _ = img.shape

    def starts(n):
        s = list(range(0, n - tile, tile - overlap)) + [n - tile]
        return sorted(set(s))

    def ramp(n, first, last):
        w = np.ones(n)
        r = np.sin(0.5 * math.pi * (np.arange(overlap) + 0.5) / overlap) ** 2
        if not first:
            w[:overlap] = np.minimum(w[:overlap], r)
        if not last:
            w[-overlap:] = np.minimum(w[-overlap:], r[::-1])
        return w

    acc, wsum = None, np.zeros((H, W))
    ys, xs = starts(H), starts(W)
    for a, y in enumerate(ys):
        for b, x in enumerate(xs):
            lg = _logits(model, img[y : y + tile, x : x + tile])
            w = np.outer(ramp(tile, a == 0, a == len(ys) - 1), ramp(tile, b == 0, b == len(xs) - 1))
            if acc is None:
                acc = np.zeros((lg.shape[0], H, W))
            acc[:, y : y + tile, x : x + tile] += lg * w
            wsum[y : y + tile, x : x + tile] += w
    return acc / wsum


def test_tiled_segment_is_the_blend_of_its_tiles(tiny, he_image):
    """The cell bookkeeping, windows and normalisation reproduce a full-canvas blend exactly."""
    img = he_image[:448, :576]  # not a multiple of the stride: the last tiles are pulled back
    # threads=True: reader and blender threads (the GPU default; inline on small CPUs elsewhere here).
    res = segment(img, tiny, tiling=Tiling(tile=256, overlap=64, tissue_mask=False),
                  runtime=Runtime(device="cpu", threads=True), outputs=("labels", "probabilities"))
    ref = _reference_blend(tiny, img, 256, 64)
    probs = np.exp(ref - ref.max(0)) / np.exp(ref - ref.max(0)).sum(0)
    assert res.completed and res.tiles_done == res.tiles_total == 6
    np.testing.assert_allclose(res.probabilities, probs, atol=2e-5)
    # Labels equal wherever the top two classes are not tied within float noise.
    top2 = np.sort(ref, axis=0)[-2:]
    clear = (top2[1] - top2[0]) > 1e-4
    assert np.array_equal(res.labels[clear], (ref.argmax(0) + 1)[clear])
    assert res.labels.dtype == np.uint8 and set(np.unique(res.labels)) <= set(range(1, 6))


def test_tiling_adds_no_error_beyond_the_models_own_window_dependence(tiny, he_image):
    """Tiled vs one pass over the whole image.

    The DFA decoder's class tokens attend over the whole forward pass and its position codes are
    absolute, so the receptive field is the whole tile: a tile's logits depend on where the tile
    is cut. The tolerance is therefore the model's own disagreement between a tile-sized crop and
    the one-pass result, measured here: tiling with blended overlaps must not be worse than that.
    """
    img = he_image[:512, :512]
    full = _logits(tiny, img)
    res = segment(img, tiny, tiling=Tiling(tile=256, overlap=64, tissue_mask=False), runtime=Runtime(device="cpu"),
                  outputs=("labels", "probabilities"))
    logp = np.log(res.probabilities)

    def rel_err(a, b):  # class-contrast error, invariant to a per-pixel shift of the logits
        a, b = a - a.mean(0), b - b.mean(0)
        return float(np.abs(a - b).mean() / np.abs(b).mean())

    inner = (slice(None), slice(32, -32), slice(32, -32))  # away from the image border
    tiled_err = rel_err(logp[inner], full[inner])
    tiled_agree = float((res.labels[inner[1:]] == full.argmax(0)[inner[1:]] + 1).mean())
    crop = _logits(tiny, img[128:384, 128:384])
    crop_err = rel_err(crop, full[:, 128:384, 128:384])
    crop_agree = float((crop.argmax(0) == full[:, 128:384, 128:384].argmax(0)).mean())
    assert tiled_err <= crop_err
    assert tiled_agree >= crop_agree - 0.02


def test_trained_demo_model_tiled_agrees_with_one_pass_and_keeps_its_accuracy():
    """With the bundled (trained) demo model, confident predictions make the comparison sharp:
    blended tiles agree with the one-pass labels far more than hard-stitched tiles do, and score
    as well against the synthetic truth."""
    demo = load_model("demo")
    rgb, truth = synth.generate_tile(seed=3, size=512)
    one_pass = _logits(demo, rgb).argmax(0) + 1
    inner = (slice(32, -32), slice(32, -32))
    scored = truth > 0

    def agree(a, b):
        return float((a == b).mean())

    blended = segment(rgb, demo, tiling=Tiling(tile=256, overlap=64, tissue_mask=False),
                      runtime=Runtime(device="cpu")).labels
    hard = segment(rgb, demo, tiling=Tiling(tile=256, overlap=0, tissue_mask=False),
                   runtime=Runtime(device="cpu")).labels
    assert agree(blended[inner], one_pass[inner]) >= 0.88
    # Measured with the bundled model: 0.970 against 0.955.
    assert agree(blended[inner], one_pass[inner]) > agree(hard[inner], one_pass[inner]) + 0.01
    # Tolerance = the model's own dependence on tile context (tile-global class tokens; since the
    # mask features include the decoder-updated memory, also per pixel): measured for the bundled demo
    # model, one pass minus blended 256-px tiles = 0.054 on this tile, 0.032 mean over synth seeds 5-10
    # (0.025 for the model before that change; 0.079 on its worst tile).
    assert agree(blended[scored], truth[scored]) >= agree(one_pass[scored], truth[scored]) - 0.06


def _seam_rates(labels, starts, tile):
    """Label changes between neighbouring columns at tile borders, and everywhere else."""
    change = (labels[:, 1:] != labels[:, :-1]).mean(0)
    seam = sorted({b + d for s in starts for b in (s, s + tile) for d in (-1, 0) if 0 <= b + d < len(change)})
    other = np.setdiff1d(np.arange(len(change)), seam)
    return float(change[seam].mean()), float(change[other].mean())


def test_no_seams_on_a_synthetic_slide(tiny, he_image):
    from napari_dfa.inference.tiling import tile_starts

    blended = segment(he_image, tiny, tiling=Tiling(tile=256, overlap=64, tissue_mask=False),
                      runtime=Runtime(device="cpu")).labels
    hard = segment(he_image, tiny, tiling=Tiling(tile=256, overlap=0, tissue_mask=False),
                   runtime=Runtime(device="cpu")).labels
    ratios = {}
    for name, lab, overlap in (("blended", blended, 64), ("hard", hard, 0)):
        starts = tile_starts(768, 256, 256 - overlap)
        ratios[name] = [a / b for a, b in (_seam_rates(lab, starts, 256), _seam_rates(lab.T, starts, 256))]
    # Blended: tile borders look like anywhere else, in both directions.
    assert max(ratios["blended"]) < 1.25, ratios
    # The same measure does see the seams of hard-stitched tiles (so it can fail).
    assert max(ratios["hard"]) > 1.5, ratios


def test_float_memory_is_bounded_by_the_tiles_in_flight(tiny):
    """No K×H×W float canvas: the accumulators hold at most about an overlap strip of a tile row."""
    rng = np.random.default_rng(0)
    img = rng.integers(60, 200, (320, 1280, 3), dtype=np.uint8)  # 3 tile rows of 13 tiles
    res = segment(img, tiny, tiling=Tiling(tile=128, overlap=32, tissue_mask=False),
                  runtime=Runtime(device="cpu", batch_size=2))
    k, (height, width) = 5, img.shape[:2]
    canvas = k * height * width * 4
    # The overlap strip under a tile row, plus the cells of the batch in flight (logits + weights).
    strip = k * 32 * width * 4 + 2 * (k + 1) * 128 * 128 * 4
    assert 0 < res.peak_float_bytes <= strip < canvas / 4


def test_the_process_never_holds_a_float_canvas_of_the_image(tiny):
    """What the process allocates, not what the blender counts: numpy's allocations, traced while a
    512×2048 image is segmented, peak far below a K×H×W float canvas (a canvas, or a float copy of
    the image, anywhere in the pipeline fails here even if the blender's own counter says little)."""
    import tracemalloc

    rng = np.random.default_rng(1)
    img = rng.integers(60, 200, (512, 2048, 3), dtype=np.uint8)
    segment(img[:128, :256], tiny, tiling=Tiling(tile=128, overlap=32, tissue_mask=False),
            runtime=Runtime(device="cpu"))  # imports, caches
    canvas = tiny.num_classes * img.shape[0] * img.shape[1] * 4
    tracemalloc.start()
    try:
        res = segment(img, tiny, tiling=Tiling(tile=128, overlap=32, tissue_mask=False),
                      runtime=Runtime(device="cpu", batch_size=2))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert res.labels.shape == img.shape[:2]
    # the labels themselves (uint8 H×W) and the tiles in flight; a canvas would be 5× the labels' 4 bytes
    assert peak < canvas / 4, f"peak {peak / 1e6:.1f} MB of numpy allocations; a float canvas is {canvas / 1e6:.1f} MB"


def test_store_cancel_and_resume_equal_an_uninterrupted_run(tiny, he_image, tmp_path):
    img = he_image[:512, :384]
    whole = segment(img, tiny, tiling=Tiling(tile=256, overlap=64, tissue_mask=False, chunk=64),
                    runtime=Runtime(device="cpu", threads=True), out=tmp_path / "a.zarr")
    assert whole.completed and whole.path == tmp_path / "a.zarr"

    seen = []

    def cancel():
        return len(seen) >= 3  # stop after 3 of 6 tiles (batches of one)

    part = segment(img, tiny, tiling=Tiling(tile=256, overlap=64, tissue_mask=False, chunk=64),
                   runtime=Runtime(device="cpu", batch_size=1), out=tmp_path / "b.zarr", cancel=cancel,
                   progress=lambda d, t, **i: seen.append((d, t, i.get("eta"))))
    assert not part.completed and 0 < part.tiles_done < part.tiles_total
    assert seen and seen[-1][0] == part.tiles_done and seen[-1][1] == part.tiles_total
    assert all(e is not None and e >= 0 for _, _, e in seen)
    written = np.asarray(part.labels[:])
    rows = int(np.nonzero(written.any(axis=1))[0].max()) + 1
    assert 0 < rows < img.shape[0]  # what was written is kept...
    np.testing.assert_array_equal(written[:rows], np.asarray(whole.labels[:rows]))  # ...and final

    resumed = segment(img, tiny, tiling=Tiling(tile=256, overlap=64, tissue_mask=False, chunk=64),
                      runtime=Runtime(device="cpu"), out=tmp_path / "b.zarr", resume=True)
    assert resumed.completed and resumed.tiles_done == resumed.tiles_total
    np.testing.assert_array_equal(np.asarray(resumed.labels[:]), np.asarray(whole.labels[:]))

    with pytest.raises(ConfigError, match="b.zarr"):  # other settings: refuse to mix two runs
        segment(img, tiny, tiling=Tiling(tile=128, overlap=16, tissue_mask=False, chunk=64),
                runtime=Runtime(device="cpu"), out=tmp_path / "b.zarr", resume=True)


def _cancelled_store(tiny, he_image, tmp_path):
    """A store at ``tmp_path / "c.zarr"`` that a run cancelled after 6 tiles left; the image and the
    segment() keywords that wrote it."""
    img = he_image[:1024, :384]
    kw = dict(tiling=Tiling(tile=256, overlap=64, tissue_mask=False, chunk=64),
              runtime=Runtime(device="cpu", batch_size=1), out=tmp_path / "c.zarr")
    done = []
    part = segment(img, tiny, cancel=lambda: len(done) >= 6, progress=lambda d, t, **i: done.append(d), **kw)
    assert not part.completed and part.tiles_done >= 6
    return img, kw


def _segment_counting_passes(tiny, img, **kw):
    """segment() and the encoder's forward passes it made (one each, per tile in batches of one)."""
    passes = []
    hook = next(tiny.model.children()).register_forward_hook(lambda *_: passes.append(1))
    try:
        return segment(img, tiny, **kw), passes
    finally:
        hook.remove()


def test_resume_reuses_the_rows_a_cancelled_run_finished(tiny, he_image, tmp_path):
    """A resumed run computes only the tile rows not yet written (issue 25: a resume that
    recomputed everything gave the same labels, so equality alone could not tell)."""
    img, kw = _cancelled_store(tiny, he_image, tmp_path)
    resumed, passes = _segment_counting_passes(tiny, img, resume=True, **kw)
    assert resumed.completed
    assert 0 < len(passes) <= resumed.tiles_total - 2, (len(passes), resumed.tiles_total)  # a row or more reused
    whole = segment(img, tiny, **dict(kw, out=tmp_path / "whole.zarr"))
    np.testing.assert_array_equal(np.asarray(resumed.labels[:]), np.asarray(whole.labels[:]))


def test_without_resume_a_partial_store_is_computed_again_in_full(tiny, he_image, tmp_path):
    """A cancelled run left rows in the store; a run without ``resume`` starts over: every tile is
    computed again (a store reused because it exists would keep rows of other settings)."""
    img, kw = _cancelled_store(tiny, he_image, tmp_path)
    from napari_dfa.labels.store import LabelsStore

    assert LabelsStore.open(tmp_path / "c.zarr", mode="r").rows_done > 0  # rows a resume would reuse
    again, passes = _segment_counting_passes(tiny, img, **kw)
    assert again.completed and len(passes) == again.tiles_total


def test_optional_outputs(tiny, he_image, tmp_path):
    img = he_image[:320, :384]
    outputs = ("labels", "probabilities", "uncertainty", "focus")
    res = segment(img, tiny, tiling=Tiling(tile=256, overlap=64, tissue_mask=False), runtime=Runtime(device="cpu"),
                  outputs=outputs)
    assert res.probabilities.shape == (5, 320, 384) and res.focus.shape == (5, 320, 384)
    np.testing.assert_allclose(res.probabilities.sum(0), 1.0, atol=1e-5)
    np.testing.assert_allclose(res.focus.sum(0), 1.0, atol=1e-4)  # blended attention stays a distribution
    top = np.sort(res.probabilities, axis=0)
    np.testing.assert_allclose(res.uncertainty, 1 - (top[-1] - top[-2]), atol=1e-5)
    assert np.array_equal(res.labels, res.probabilities.argmax(0) + 1)
    # In a store they sit beside the labels, as float16, chunk rows written like the labels.
    stored = segment(img, tiny, tiling=Tiling(tile=256, overlap=64, tissue_mask=False, chunk=64),
                     runtime=Runtime(device="cpu"), outputs=outputs, out=tmp_path / "x.zarr")
    for name in ("probabilities", "uncertainty", "focus"):
        arr = getattr(stored, name)
        assert arr.dtype == np.float16
        np.testing.assert_allclose(np.asarray(arr[:], np.float32), getattr(res, name), atol=2e-3)


def _write_pyramid(path, img, mpp=None):
    levels = [img, img[::2, ::2], img[::4, ::4]]
    kw = dict(tile=(128, 128), photometric="rgb", compression="zlib")
    res = dict(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER") if mpp else {}
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(levels[0], subifds=2, **res, **kw)
        for lv in levels[1:]:
            tif.write(lv, subfiletype=1, **kw)
    return path


def test_glass_tiles_are_skipped_and_get_label_zero(tiny, he_image, tmp_path):
    img = np.full((256, 640, 3), 235, np.uint8)  # bright, grey glass
    img[:, :256] = he_image[:256, :256]  # tissue on the left only
    path = _write_pyramid(tmp_path / "half.tif", img)
    with open_slide(path) as slide:
        res = segment(slide, tiny, tiling=Tiling(tile=128, overlap=32), runtime=Runtime(device="cpu"))
    # Tiles start every 96 px; those from x = 288 on hold no tissue.
    assert res.tiles_skipped == 3 * 4 and res.tiles_done == res.tiles_total == 3 * 7
    assert (res.labels[:, 320:] == 0).all()  # glass: no prediction
    # Tissue: a class on every stained pixel; only white holes that open onto the glass at the
    # tissue's cut edge (here < 2 % of it) count as glass.
    stained = tissue_from_rgb(img[:, :256])
    assert (res.labels[:, :256][stained] > 0).all()
    assert (res.labels[:, :256] > 0).mean() > 0.98
    # Glass inside computed tiles at the tissue's edge is no class either (the mask keeps one
    # pixel of margin; here the mask is at full resolution).
    assert (res.labels[:, 258:320] == 0).all()


def test_glass_enclosed_by_tissue_keeps_its_class(tiny, he_image, tmp_path):
    """A lumen (a white hole in the tissue, here 80² px) keeps a class; a glass patch of 384 × 192
    px beside the tissue, in tiles that are computed, gets label 0."""
    img = he_image[:384, :576].copy()
    img[150:230, 150:230] = 240  # a lumen
    img[:, 384:] = 235  # glass
    with open_slide(_write_pyramid(tmp_path / "lumen.tif", img)) as slide:
        res = segment(slide, tiny, tiling=Tiling(tile=128, overlap=32), runtime=Runtime(device="cpu"))
    assert res.tiles_done == res.tiles_total
    assert (res.labels[150:230, 150:230] > 0).all()
    assert (res.labels[:, 386:] == 0).all()
    assert (res.labels[:, :384][tissue_from_rgb(img[:, :384])] > 0).all()
    assert (res.labels[:, :384] > 0).mean() > 0.98


def test_level_auto_and_placement(tiny, he_image, tmp_path):
    path = _write_pyramid(tmp_path / "mpp.tif", he_image, mpp=0.25)  # level 1 is 0.5 µm/px
    with open_slide(path) as slide:
        res = segment(slide, tiny, level="auto", region=(64, 32, 256, 320),
                      tiling=Tiling(tile=128, overlap=32, tissue_mask=False), runtime=Runtime(device="cpu"))
    assert res.level == 1 and res.downsample == pytest.approx(2.0)
    assert res.translate == pytest.approx((128.0, 64.0)) and res.labels.shape == (256, 320)


def test_small_region_smaller_than_a_tile(tiny, he_image):
    res = segment(he_image, tiny, region=(10, 20, 50, 70), tiling=Tiling(tile=256, overlap=64, tissue_mask=False),
                  runtime=Runtime(device="cpu"))
    assert res.labels.shape == (50, 70) and (res.labels > 0).all()


def test_bad_inputs_raise_package_errors_naming_the_file(tiny, he_image, tmp_path):
    path = _write_pyramid(tmp_path / "ok.tif", he_image[:256, :256])
    with open_slide(path) as slide:
        with pytest.raises(ConfigError, match="ok.tif.*outside"):
            segment(slide, tiny, region=(200, 0, 100, 100), runtime=Runtime(device="cpu"))
        with pytest.raises(ConfigError, match="ok.tif.*level 7"):
            segment(slide, tiny, level=7, runtime=Runtime(device="cpu"))
    with pytest.raises(ConfigError, match="multiple"):
        segment(he_image, tiny, tiling=Tiling(tile=200), runtime=Runtime(device="cpu"))
    with pytest.raises(DataError, match="uint8"):
        segment(he_image.astype(np.float32), tiny, runtime=Runtime(device="cpu"))
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"II*\x00" + b"\x00" * 20)
    with pytest.raises(SlideError, match="broken.svs"):
        segment(bad, tiny, runtime=Runtime(device="cpu"))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        segment(he_image, junk, runtime=Runtime(device="cpu"))


CHILD = r"""
import json, sys
import numpy as np
from napari_dfa.inference import Runtime, Tiling, segment
from napari_dfa.model import load_model
from napari_dfa.slide import open_slide
model = load_model(sys.argv[1])
image = np.asarray(np.random.default_rng(0).integers(60, 200, (300, 400, 3)), dtype=np.uint8)
segment(image, model, runtime=Runtime(device="cpu"))
before = {name: name in sys.modules for name in ("zarr", "distributed")}
with open_slide(sys.argv[2]) as slide:  # a dask-backed level: tiles and the tissue mask are computed
    segment(slide, model, tiling=Tiling(tile=128, overlap=32), runtime=Runtime(device="cpu"))
import torch
print(json.dumps({"array": before, "distributed": "distributed" in sys.modules,
                  "cuda_initialised": torch.cuda.is_initialized()}))
"""


def test_a_local_run_never_imports_distributed_nor_touches_cuda(tiny, he_image, tmp_path):
    """dask consults ``distributed`` for a client on every compute whose scheduler is not handed
    over as a function (even ``scheduler="sync"``): importing it took ~10 s on a loaded machine at
    the first read of a process. An in-memory image needs no zarr either, and a CPU run never
    initialises CUDA (pinned memory, streams and events are CUDA-only)."""
    import json
    import subprocess
    import sys

    model_path = tmp_path / "tiny.safetensors"
    tiny.save(model_path)
    path = _write_pyramid(tmp_path / "slide.tif", he_image[:384, :512])
    proc = subprocess.run([sys.executable, "-c", CHILD, str(model_path), str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen == {"array": {"zarr": False, "distributed": False}, "distributed": False, "cuda_initialised": False}


def test_autocast_stays_off_on_cpu_and_logits_are_float32(tiny, he_image):
    """Autocast (bfloat16) is for CUDA only; on CPU the forward pass runs in float32 even inside a
    caller's autocast region, and the logits are float32 either way."""
    assert not torch.is_autocast_enabled("cpu")
    rgb = np.ascontiguousarray(he_image[:128, :160])
    plain = tiny.predict_logits(rgb)["logits"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = tiny.predict_logits(rgb)["logits"]
    assert plain.dtype == inside.dtype == torch.float32
    assert type(tiny._autocast()).__name__ == "nullcontext"


def test_half_precision_logits_are_blended_in_float32(tiny, he_image):
    """What autocast hands back on a GPU (bfloat16 mask logits) goes through the same pipeline:
    predict_logits returns float32, the labels follow the rounded logits."""
    img = he_image[:384, :384]
    full = segment(img, tiny, tiling=Tiling(tile=256, overlap=64, tissue_mask=False),
                   runtime=Runtime(device="cpu")).labels
    forward = tiny.model.forward

    def bf16_forward(x, return_attention=False):
        out = forward(x, return_attention=return_attention)
        return {**out, "logits": out["logits"].to(torch.bfloat16)}

    tiny.model.forward = bf16_forward
    try:
        half = segment(img, tiny, tiling=Tiling(tile=256, overlap=64, tissue_mask=False),
                       runtime=Runtime(device="cpu")).labels
    finally:
        del tiny.model.forward
    assert half.dtype == np.uint8 and set(np.unique(half)) <= set(range(1, 6))
    assert (half == full).mean() > 0.9  # an untrained model: many near-ties that bfloat16 rounds


def test_packed_downloads_are_cut_back_into_tile_boxes():
    """On CUDA a batch's boxes come back as one packed pinned buffer; cutting it back must give
    each tile its boxes (checked here with CPU tensors: the packing is device-independent)."""
    from napari_dfa.inference.scheduler import _Pending

    rng = np.random.default_rng(0)
    boxes = [[(0, 8, 0, 32), (24, 32, 0, 32)], [(0, 32, 0, 4)]]
    arrays = [[rng.random((5, y1 - y0, x1 - x0), dtype=np.float32) for y0, y1, x0, x1 in bs] for bs in boxes]
    flat = torch.cat([torch.from_numpy(a).reshape(-1) for tile in arrays for a in tile])
    labels = torch.from_numpy(rng.integers(1, 6, (2, 32, 32), dtype=np.uint8))
    layout = [(bs, [a.shape for a in tile]) for bs, tile in zip(boxes, arrays)]
    windows = [(np.ones(32, np.float32), np.ones(32, np.float32))] * 2
    outs = _Pending(labels=labels, parts=flat, layout=layout, windows=windows, timing=None, runner=None).resolve()
    for out, bs, tile, lab in zip(outs, boxes, arrays, labels.numpy()):
        assert [b[:4] for b in out.bands] == bs
        for band, a in zip(out.bands, tile):
            np.testing.assert_array_equal(band[4], a)
        np.testing.assert_array_equal(out.labels, lab)


def test_default_lattice_and_result_geometry(tiny, he_image):
    res = segment(he_image, tiny, tiling=Tiling(tissue_mask=False),
                  runtime=Runtime(device="cpu"))  # 768²: one 768² tile
    assert res.tile_shape == (768, 768) and res.tiles_total == 1 and res.computed_pixels == 768 * 768
    big = np.tile(he_image, (2, 3, 1))  # 1536 × 2304
    res = segment(big, tiny, tiling=Tiling(tissue_mask=False), runtime=Runtime(device="cpu"))
    assert res.tile_shape[0] % 32 == 0 and min(res.overlap) >= 32
    assert res.computed_pixels <= 1.1 * big.shape[0] * big.shape[1]

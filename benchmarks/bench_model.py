"""Model cost per preset: parameters, checkpoint size, forward+backward and inference speed.

    python benchmarks/bench_model.py [--threads N] [--device auto|cpu|cuda] [--repeats R]

Prints Markdown tables with the machine they ran on. Times are the median of R runs after one
warm-up run, on random tensors (the model's cost only; data loading is in the training benchmark).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from _harness import machine_line, table_head
from napari_dfa.model import ModelConfig, Segmenter, build_model, load_model, resolve_device

# (preset, training batch, training crop, inference tile)
CASES = [("tiny", 2, 128, 512), ("small", 4, 256, 512), ("base", 2, 256, 512)]


def timed(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up (allocations, cuDNN autotuning)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_preset(name, batch, crop, tile, device, repeats):
    torch.manual_seed(0)
    config = ModelConfig.from_preset(name, num_classes=5)
    model = build_model(config, frequencies=[0.4, 0.3, 0.15, 0.1, 0.05]).to(device)
    params = sum(p.numel() for p in model.parameters())
    x = torch.rand(batch, 3, crop, crop, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step():
        opt.zero_grad(set_to_none=True)
        model(x)["logits"].float().mean().backward()
        opt.step()

    model.train()
    t_train = timed(train_step, repeats, device)
    seg = Segmenter(model, device=device)
    tiles = torch.randint(0, 256, (4, tile, tile, 3), dtype=torch.uint8)
    t_infer = timed(lambda: seg.predict_logits(tiles, attention=True), repeats, device)
    with tempfile.TemporaryDirectory() as d:
        f32 = seg.save(Path(d) / "m.safetensors")
        f16 = seg.save(Path(d) / "h.safetensors", dtype=torch.float16)
        t_load = timed(lambda: load_model(f32), repeats, torch.device("cpu"))
        sizes = f32.stat().st_size / 1e6, f16.stat().st_size / 1e6
    return {
        "preset": name, "params": params, "mb32": sizes[0], "mb16": sizes[1],
        "train": f"{batch}×{crop}²", "t_train": t_train, "tps_train": batch / t_train,
        "tps_infer": 4 / t_infer, "tile": tile, "t_load": t_load,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--presets", default="tiny,small,base")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    wanted = args.presets.split(",")
    print(f"### Model cost per preset\n\nMachine: {machine_line()}; device {device}.\n")
    print(*table_head(["preset", "parameters", "checkpoint fp32 / fp16 (MB)", "train step (fwd+bwd+AdamW)",
                       "train tiles/s", "inference tiles/s (4×512², focus maps on)", "load_model (s)"], "lrrlrrr"),
          sep="\n")
    for name, batch, crop, tile in CASES:
        if name not in wanted:
            continue
        r = bench_preset(name, batch, crop, tile, device, args.repeats)
        print(f"| {r['preset']} | {r['params'] / 1e6:.2f} M | {r['mb32']:.1f} / {r['mb16']:.1f} | "
              f"{r['train']}: {r['t_train'] * 1000:.0f} ms | {r['tps_train']:.1f} | {r['tps_infer']:.1f} | "
              f"{r['t_load']:.2f} |", flush=True)


if __name__ == "__main__":
    main()

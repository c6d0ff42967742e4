"""The DFA model: where the bias acts, the bias modes, warm start, optimizer groups, presets, Segmenter."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from napari_dfa.errors import ConfigError, DataError
from napari_dfa.model import (
    PRESETS,
    ModelConfig,
    Segmenter,
    bias_l2_penalty,
    build_model,
    param_groups,
    resolve_device,
)

FREQS = [0.6, 0.25, 0.1, 0.04, 0.01]


@pytest.fixture(autouse=True)
def _seeded(one_torch_thread):
    torch.manual_seed(0)


def tiny(**overrides) -> ModelConfig:
    return ModelConfig.from_preset("tiny", num_classes=5, **overrides)


def images(b=2, size=64, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g)


def ce_loss(logits: torch.Tensor, seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, logits.shape[1], (logits.shape[0], *logits.shape[2:]), generator=g)
    return F.cross_entropy(logits, target)


# -- where the bias acts -------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["dfa", "dfa-anchored", "dfa-out"])
def test_loss_gradient_reaches_every_delta(mode):
    model = build_model(tiny(bias_mode=mode), frequencies=FREQS)
    loss = ce_loss(model(images())["logits"])
    loss.backward()
    grad = model.bias.delta.grad
    assert grad is not None
    assert torch.all(grad.abs() > 1e-8), grad


def test_changing_one_class_bias_changes_the_prediction():
    model = build_model(tiny(), frequencies=FREQS).eval()
    x = images(b=1, size=96)
    with torch.no_grad():
        before = model(x)["logits"].argmax(1)
        model.bias.delta[3] += 8.0  # one class only
        after = model(x)["logits"].argmax(1)
    changed = (before != after).float().mean().item()
    assert changed > 0.01, f"only {changed:.2%} of pixels changed label"


def test_bias_has_leverage_on_the_mask_features():
    """b_c acts in the pixel → class attention, which updates the stride-16 memory; the mask
    features must include that updated memory (SAM style), or b_c reaches the masks only through
    the class tokens and barely moves a pixel (the old wiring: ~2 % of labels per +1 at init,
    0.04–0.24 % after training). With the fusion, +1 on one class moves ~10 % at init."""
    model = build_model(tiny(), frequencies=FREQS).eval()
    x = images(b=2, size=128)
    shares = []
    with torch.no_grad():
        before = model(x)["logits"].argmax(1)
        for k in range(5):
            model.bias.delta[k] += 1.0
            shares.append((model(x)["logits"].argmax(1) != before).float().mean().item())
            model.bias.delta[k] -= 1.0
    mean = float(np.mean(shares))
    assert mean > 0.05, f"raising one b_c by 1 changes only {mean:.2%} of labels on average ({shares})"
    assert min(shares) > 0.02, shares


def _twins(seed=0):
    """A dfa and a dfa-out model with the very same weights (same seed, same state-dict layout)."""
    models = {}
    for mode in ("dfa", "dfa-out"):
        torch.manual_seed(seed)
        models[mode] = build_model(tiny(bias_mode=mode), frequencies=FREQS).eval()
    a, b = models["dfa"].state_dict(), models["dfa-out"].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return models["dfa"], models["dfa-out"]


def test_dfa_out_adds_delta_to_the_output_logits():
    """dfa-out = dfa with δ also on class c's output logit: the same attention, logits + δ_c."""
    dfa, out = _twins()
    x = images(b=2, size=64)
    with torch.no_grad():
        ref, got = dfa(x, return_attention=True), out(x, return_attention=True)
    delta = dfa.bias.delta.detach()
    assert delta.abs().max() > 0.05  # warm-started from the prior, not zero
    torch.testing.assert_close(got["logits"], ref["logits"] + delta[None, :, None, None], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["attention"], ref["attention"])


def test_dfa_out_bias_moves_more_pixels_than_dfa_at_init():
    """+1 on δ_c moves more labels in dfa-out (attention and output) than on b_c in dfa (attention
    only), with the same weights: the learned bias reaches the masks."""
    dfa, out = _twins()
    x = images(b=2, size=128)
    shares = {}
    with torch.no_grad():
        for name, model in (("dfa", dfa), ("dfa-out", out)):
            before = model(x)["logits"].argmax(1)
            shares[name] = []
            for k in range(5):
                model.bias.delta[k] += 1.0
                shares[name].append((model(x)["logits"].argmax(1) != before).float().mean().item())
                model.bias.delta[k] -= 1.0
    assert all(o > d for o, d in zip(shares["dfa-out"], shares["dfa"])), shares
    assert np.mean(shares["dfa-out"]) > 2 * np.mean(shares["dfa"]), shares


def test_dfa_out_trains_and_delta_gets_a_gradient():
    from napari_dfa.training.losses import SegmentationLoss
    from napari_dfa.training.optim import make_optimizer

    rgb, mask = synthetic_tiles(n=2, size=64)
    freqs = np.bincount(mask.ravel(), minlength=4)[1:] / mask.size
    model = build_model(ModelConfig.from_preset("tiny", num_classes=3, bias_mode="dfa-out"), frequencies=freqs)
    opt = make_optimizer(model, lr=3e-3, weight_decay=1e-4)
    crit = SegmentationLoss()
    x = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(mask)
    start = model.bias.delta.detach().clone()
    losses = []
    for _ in range(4):
        opt.zero_grad()
        loss = crit(model(x)["logits"], y)
        loss.backward()
        assert torch.isfinite(loss)
        assert torch.all(model.bias.delta.grad.abs() > 1e-7), model.bias.delta.grad
        opt.step()
        losses.append(loss.item())
    assert not torch.equal(model.bias.delta.detach(), start)
    assert losses[-1] < losses[0], losses


def test_mask_features_include_the_updated_memory():
    """The decoder returns the mask features its logits read — the FPN's plus the memory its
    two-way layers updated, through ``memory_upsampler`` (zeroing that path changes the logits)."""
    model = build_model(tiny(), frequencies=FREQS).eval()
    x = images(b=1, size=64)
    with torch.no_grad():
        feats = model.pixel_decoder(model.encoder((x - model.pixel_mean) / model.pixel_std))
        masks, focus, fused = model.decoder(feats[1], feats[0], model.bias())
        assert fused.shape == feats[0].shape  # B×C×h4×w4
        assert not torch.allclose(fused, feats[0])  # the updated memory is in them
        ref = model(x)["logits"]
        model.decoder.memory_upsampler.proj.weight.zero_()
        model.decoder.memory_upsampler.norm.bias.fill_(-1e4)  # GELU(−1e4) = 0: the path contributes nothing
        assert not torch.allclose(model(x)["logits"], ref, atol=1e-4)


def test_per_class_constant_over_pixels_changes_nothing():
    """A per-class constant in the token → pixel logits (softmax over pixels) cancels: same outputs,
    zero gradient. The hook really inserts it into those logits, in every layer."""
    torch.manual_seed(0)
    model = build_model(tiny(), frequencies=FREQS)
    x = images()
    ref = model(x, return_attention=True)
    model.decoder.token_pixel_bias = nn.Parameter(torch.tensor([4.0, -3.0, 0.5, 9.0, -7.0]))
    out = model(x, return_attention=True)
    torch.testing.assert_close(out["logits"], ref["logits"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["attention"], ref["attention"], atol=1e-5, rtol=1e-5)
    assert torch.equal(out["logits"].argmax(1), ref["logits"].argmax(1))

    loss = ce_loss(out["logits"])
    loss.backward()
    useless = model.decoder.token_pixel_bias.grad.abs().max().item()
    useful = model.bias.delta.grad.abs().min().item()
    assert useless < 1e-5, useless
    assert useful > 1000 * useless  # the same constant on the class axis does get a gradient


def test_pixel_to_token_logits_follow_the_dfa_formula():
    """logit[p, c] = q_p·k_c/√d_head + b_c in every head, softmax over the K class tokens."""
    from napari_dfa.model.decoder import TwoWayDFALayer

    layer = TwoWayDFALayer(dim=32, heads=4, mlp_dim=64)
    tokens, token_pe = torch.randn(2, 5, 32), torch.randn(1, 5, 32)
    memory, memory_pe = torch.randn(2, 12, 32), torch.randn(1, 12, 32)
    b = torch.tensor([1.5, -2.0, 0.0, 0.7, 3.0])
    out_tokens, _, attn = layer(tokens, token_pe, memory, memory_pe, b)
    # steps 1-3 by the layer's own modules, step 4 by hand
    p2t = layer.pixel_to_token
    q = p2t.q_proj(memory + memory_pe).reshape(2, 12, 4, 8).transpose(1, 2)
    k = p2t.k_proj(out_tokens + token_pe).reshape(2, 5, 4, 8).transpose(1, 2)
    expected = (q @ k.transpose(-2, -1) / 8 ** 0.5 + b).softmax(dim=-1)
    assert attn.shape == (2, 4, 12, 5)
    torch.testing.assert_close(attn, expected, rtol=1e-5, atol=1e-6)


def test_attention_is_a_distribution_over_classes():
    model = build_model(tiny(), frequencies=FREQS).eval()
    out = model(images(b=2, size=128), return_attention=True)
    att = out["attention"]
    assert att.shape == (2, 5, 8, 8)  # stride 16
    torch.testing.assert_close(att.sum(1), torch.ones(2, 8, 8))
    assert (att >= 0).all()
    assert model(images(b=1))["attention"] is None


# -- bias modes and warm start ----------------------------------------------------------------------

def test_warm_start_equals_formula():
    f = np.array(FREQS)
    gamma, alpha = 2.0, 0.5
    model = build_model(tiny(gamma=gamma, delta_init_scale=alpha), frequencies=f)
    prior = gamma * np.log(1 - f)
    expected = alpha * (prior - prior.mean())
    np.testing.assert_allclose(model.bias.delta.detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    # rarer classes start with a larger bias
    assert np.all(np.diff(model.bias.delta.detach().numpy()) > 0)
    cold = build_model(tiny(delta_init_scale=0.0), frequencies=f)
    assert torch.count_nonzero(cold.bias.delta) == 0


def test_frequencies_are_clamped_and_normalised():
    model = build_model(tiny(bias_mode="cffa"), frequencies=[2.0, 0.0, 0.0, 0.0, 0.0])
    b = model.bias().detach().numpy()
    assert np.all(np.isfinite(b))
    np.testing.assert_allclose(b[0], 2.0 * np.log(1e-6), rtol=1e-2)  # float32 rounding of 1 - 1e-6
    with pytest.raises(ConfigError, match="frequencies"):
        build_model(tiny(), frequencies=[0.5, 0.5])


@pytest.mark.parametrize("mode", ["none", "cffa", "difficulty", "dfa", "dfa-anchored", "dfa-out"])
def test_class_bias_follows_the_mode_table(mode):
    dice = (0.9, 0.8, 0.5, 0.3, 0.95)
    seg = Segmenter.from_config(tiny(bias_mode=mode, difficulty_dice=dice, gamma=1.5), frequencies=FREQS)
    delta = torch.tensor([0.3, -0.2, 0.1, 0.7, -0.4])
    with torch.no_grad():
        seg.model.bias.delta.copy_(delta)
    f, d, g = np.array(FREQS), np.array(dice), 1.5
    expected = {
        "none": np.zeros(5),
        "cffa": g * np.log(1 - f),
        "difficulty": g * np.log(1 - d),
        "dfa": delta.numpy(),
        "dfa-anchored": g * np.log(1 - f) + delta.numpy(),
        "dfa-out": delta.numpy(),
    }[mode]
    np.testing.assert_allclose(seg.class_bias(), expected, rtol=1e-5, atol=1e-6)
    prior = g * np.log(1 - f)
    np.testing.assert_allclose(seg.prior_bias(), prior - prior.mean(), rtol=1e-5, atol=1e-6)
    assert seg.model.bias.delta.requires_grad == (mode in ("dfa", "dfa-anchored", "dfa-out"))


def test_difficulty_mode_needs_dice():
    with pytest.raises(ConfigError, match="difficulty_dice"):
        tiny(bias_mode="difficulty")


def test_param_groups_give_delta_its_own_learning_rate():
    model = build_model(tiny(), frequencies=FREQS)
    groups = param_groups(model, lr=1e-3, weight_decay=0.05, delta_lr_multiplier=20)
    by_name = {g["name"]: g for g in groups}
    assert by_name["delta"]["params"] == [model.bias.delta]
    assert by_name["delta"]["lr"] == pytest.approx(0.02)
    assert by_name["delta"]["weight_decay"] == 0.0
    assert by_name["model"]["weight_decay"] == 0.05
    assert all(p is not model.bias.delta for p in by_name["model"]["params"])
    n_trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in groups) == n_trainable
    # AdamW accepts the groups as they are; one step moves δ.
    opt = torch.optim.AdamW(groups)
    before = model.bias.delta.detach().clone()
    ce_loss(model(images(b=1))["logits"]).backward()
    opt.step()
    assert not torch.equal(before, model.bias.delta.detach())

    fixed = build_model(tiny(bias_mode="cffa"), frequencies=FREQS)
    assert [g["name"] for g in param_groups(fixed, lr=1e-3)] == ["model"]


def test_make_optimizer_is_adamw_over_the_dfa_groups():
    from napari_dfa.training.optim import make_optimizer

    model = build_model(tiny(delta_lr_multiplier=5.0), frequencies=FREQS)
    opt = make_optimizer(model, lr=1e-3, weight_decay=0.05)
    assert isinstance(opt, torch.optim.AdamW)
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["delta"]["lr"] == pytest.approx(5e-3)  # the model config's multiplier
    assert by_name["delta"]["weight_decay"] == 0.0 and by_name["model"]["weight_decay"] == 0.05
    assert not opt.defaults.get("fused")  # CPU parameters: the fused CUDA kernel is off
    assert make_optimizer(model, lr=1e-3, weight_decay=0.0, delta_lr_multiplier=2.0).param_groups[1]["lr"] == \
        pytest.approx(2e-3)


def test_zero_delta_multiplier_keeps_delta_at_its_warm_start():
    """dfa-warm-only: δ is left out of the optimizer; everything else trains."""
    from napari_dfa.training.optim import make_optimizer

    model = build_model(tiny(), frequencies=FREQS)
    warm = model.bias.warm_start_delta().clone()
    torch.testing.assert_close(model.bias.delta.detach(), warm)
    opt = make_optimizer(model, lr=1e-2, weight_decay=0.1, delta_lr_multiplier=0.0)
    assert [g["name"] for g in opt.param_groups] == ["model"]
    head = model.decoder.mask_mlp.layers[0].weight.detach().clone()
    for _ in range(2):
        opt.zero_grad()
        ce_loss(model(images(b=1))["logits"]).backward()
        opt.step()
    assert torch.equal(model.bias.delta.detach(), warm)
    assert not torch.equal(model.decoder.mask_mlp.layers[0].weight.detach(), head)


def test_cold_start_delta_is_zero():
    model = build_model(tiny(delta_init_scale=0.0), frequencies=FREQS)
    assert torch.equal(model.bias.delta.detach(), torch.zeros(5))


def test_bundled_demo_checkpoint_loads_and_predicts_as_before():
    """Adding bias modes must not change what the demo model (bias_mode dfa) computes: its logits
    are the decoder's masks upsampled, with no output offset, and its labels on a fixed tile are
    the ones recorded before dfa-out existed."""
    from napari_dfa import synth
    from napari_dfa.model import load_model

    seg = load_model("demo")
    assert seg.config.bias_mode == "dfa" and not seg.model.bias.reaches_output
    rgb, _ = synth.generate_tile(seed=123, size=128)
    labels = seg.predict(rgb)
    counts = np.bincount(labels.ravel(), minlength=6)
    # Recorded with the bundled weights (training/demo.toml); the labels of the weights before them
    # were recorded before dfa-out existed and stayed the same after it.
    recorded = np.array([0, 0, 2818, 3861, 9093, 612])
    assert np.abs(counts - recorded).sum() <= 0.002 * labels.size, counts.tolist()
    model = seg.model
    x = torch.from_numpy(rgb)[None].permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        feats = model.encoder((x - model.pixel_mean) / model.pixel_std)
        mask_features, memory = model.pixel_decoder(feats)
        masks = model.decoder(memory, mask_features, model.bias())[0]
        old = F.interpolate(masks, size=x.shape[-2:], mode="bilinear", align_corners=False)
        torch.testing.assert_close(model(x)["logits"], old, atol=0, rtol=0)


def test_bias_l2_penalty():
    model = build_model(tiny(), frequencies=FREQS)
    expected = 0.1 * model.bias.delta.detach().pow(2).sum()
    torch.testing.assert_close(bias_l2_penalty(model, 0.1).detach(), expected)
    assert bias_l2_penalty(model, 0.0).item() == 0.0


def test_frozen_encoder_does_not_train():
    model = build_model(tiny(freeze_encoder=True), frequencies=FREQS)
    assert not any(p.requires_grad for p in model.encoder.parameters())
    before = [p.detach().clone() for p in model.encoder.parameters()]
    opt = torch.optim.SGD(param_groups(model, lr=0.1), lr=0.1)
    ce_loss(model(images(b=1))["logits"]).backward()
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.encoder.parameters()))


# -- presets, configs, devices ------------------------------------------------------------------------

def test_presets_have_the_promised_sizes():
    counts = {}
    for name in ("tiny", "small", "base"):
        with torch.device("meta"):
            model = build_model(ModelConfig.from_preset(name, num_classes=5))
        counts[name] = sum(p.numel() for p in model.parameters())
    assert 1e5 < counts["tiny"] < 5e5
    assert counts["small"] * 4 < 3.5e6 or counts["small"] * 2 < 3e6  # demo model: 1–3 MB of weights
    assert counts["base"] > 5 * counts["small"]
    assert set(PRESETS) >= {"tiny", "small", "base", "sam-vit-b"}


def test_config_round_trips_and_refuses_typos():
    cfg = tiny(bias_mode="dfa-anchored", gamma=1.0)
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    assert ModelConfig.from_dict({"preset": "tiny", "num_classes": 5, "bias_mode": "dfa-anchored",
                                  "gamma": 1.0}) == cfg
    assert ModelConfig.from_dict({"preset": "tiny", "use_prior_in_forward": True}).bias_mode == "dfa-anchored"
    with pytest.raises(ConfigError, match="gama"):
        ModelConfig.from_dict({"preset": "tiny", "gama": 1.0})
    with pytest.raises(ConfigError, match="bias_mode"):
        tiny(bias_mode="focal")
    with pytest.raises(ConfigError, match="'num_classes' must be int"):
        ModelConfig.from_dict({"preset": "tiny", "num_classes": "5"})
    with pytest.raises(ConfigError, match="'encoder_widths' must be"):
        ModelConfig.from_dict({"preset": "tiny", "encoder_widths": [16, "32", 48, 64]})
    assert ModelConfig.from_dict({"preset": "tiny", "gamma": 2}).gamma == 2.0  # TOML ints are fine as floats
    with pytest.raises(ConfigError, match="unknown model preset"):
        ModelConfig.from_preset("huge")


def test_config_from_toml(tmp_path):
    path = tmp_path / "recipe.toml"
    path.write_text('[model]\npreset = "small"\nnum_classes = 3\nbias_mode = "cffa"\ngamma = 1.0\n')
    cfg = ModelConfig.from_toml(path)
    assert cfg == ModelConfig.from_preset("small", num_classes=3, bias_mode="cffa", gamma=1.0)
    path.write_text('[model]\npreset = "small"\nbias = "cffa"\n')
    with pytest.raises(ConfigError, match="recipe.toml.*unknown model config keys"):
        ModelConfig.from_toml(path)


def test_core_import_pulls_in_neither_timm_nor_torchvision():
    import subprocess

    code = ("import sys, napari_dfa.model\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('timm', 'torchvision')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else None
    if expected:
        assert resolve_device("auto").type == "cuda"
    else:
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ConfigError):
        resolve_device("tpu")


def test_timm_encoder_without_timm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError, installed or not
    with pytest.raises(ConfigError, match=r"pip install napari-dfa\[timm\]"):
        build_model(tiny(encoder="timm:convnext_tiny"))


# -- Segmenter ----------------------------------------------------------------------------------------

def test_segmenter_predict_returns_uint8_labels_of_any_size():
    seg = Segmenter.from_config(tiny(), frequencies=FREQS)
    rng = np.random.default_rng(0)
    for shape in ((64, 64), (70, 45), (20, 33)):
        rgb = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        labels = seg.predict(rgb)
        assert labels.shape == shape and labels.dtype == np.uint8
        assert labels.min() >= 1 and labels.max() <= 5
        # labels are the argmax of predict_logits, shifted to 1..K
        logits = seg.predict_logits(rgb[None])["logits"]
        np.testing.assert_array_equal(labels, logits.argmax(1)[0].numpy() + 1)


def test_predict_logits_takes_numpy_or_torch_and_returns_focus_maps():
    seg = Segmenter.from_config(tiny(), frequencies=FREQS)
    batch = np.random.default_rng(1).integers(0, 256, (2, 96, 80, 3), dtype=np.uint8)
    a = seg.predict_logits(batch, attention=True)
    b = seg.predict_logits(torch.from_numpy(batch))
    assert a["logits"].shape == (2, 5, 96, 80) and a["logits"].dtype == torch.float32
    torch.testing.assert_close(a["logits"], b["logits"])
    assert b["attention"] is None
    assert a["attention"].shape == (2, 5, 96, 80)
    torch.testing.assert_close(a["attention"].sum(1), torch.ones(2, 96, 80))


def test_predict_refuses_bad_input():
    seg = Segmenter.from_config(tiny())
    with pytest.raises(DataError, match="uint8"):
        seg.predict(np.zeros((32, 32, 3), dtype=np.float32))
    with pytest.raises(DataError, match="H×W×3"):
        seg.predict(np.zeros((32, 32), dtype=np.uint8))
    with pytest.raises(DataError, match="class names"):
        Segmenter(build_model(tiny()), class_names=["a", "b"])


def test_record_bias_tracks_the_trajectory():
    seg = Segmenter.from_config(tiny(), frequencies=FREQS, class_names=list("abcde"))
    seg.record_bias(epoch=0)
    with torch.no_grad():
        seg.model.bias.delta += 1.0
    seg.record_bias(epoch=1)
    hist = seg.metadata["bias_history"]
    assert [h["epoch"] for h in hist] == [0, 1]
    np.testing.assert_allclose(np.subtract(hist[1]["bias"], hist[0]["bias"]), 1.0, rtol=1e-6)


# -- it learns ------------------------------------------------------------------------------------------

def synthetic_tiles(n=2, size=64, seed=0):
    """Tiles of 3 classes with distinct colour and texture: discs and stripes on a background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    rgbs, masks = [], []
    for _ in range(n):
        mask = np.ones((size, size), np.int64)  # class 1: pink background
        for _ in range(3):
            cy, cx, r = rng.integers(8, size - 8, 2).tolist() + [int(rng.integers(5, 12))]
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 2  # class 2: dark purple discs
        y0 = int(rng.integers(0, size - 16))
        mask[y0:y0 + 12, :] = 3  # class 3: a pale band
        palette = np.array([[0, 0, 0], [230, 150, 190], [90, 40, 130], [245, 235, 240]], np.float32)
        rgb = palette[mask] + rng.normal(0, 12, (size, size, 3))
        rgbs.append(np.clip(rgb, 0, 255).astype(np.uint8))
        masks.append(mask)
    return np.stack(rgbs), np.stack(masks)


def test_tiny_overfits_synthetic_tiles():
    rgb, mask = synthetic_tiles()
    freqs = np.bincount(mask.ravel(), minlength=4)[1:] / mask.size
    seg = Segmenter.from_config(ModelConfig.from_preset("tiny", num_classes=3), frequencies=freqs)
    model = seg.model.train()
    opt = torch.optim.AdamW(param_groups(model, lr=3e-3, weight_decay=1e-4, delta_lr_multiplier=20))
    x = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(mask) - 1
    for _ in range(80):
        opt.zero_grad()
        F.cross_entropy(model(x)["logits"], y).backward()
        opt.step()
    pred = np.stack([seg.predict(t) for t in rgb])
    dice = [2 * np.sum((pred == c) & (mask == c)) / (np.sum(pred == c) + np.sum(mask == c)) for c in (1, 2, 3)]
    assert min(dice) > 0.9, dice


class _FakeFeatureInfo:
    def __init__(self, reductions, channels):
        self._r, self._c = reductions, channels

    def reduction(self):
        return list(self._r)

    def channels(self):
        return list(self._c)


class _FeaturesOnlyNet(nn.Module):
    """Behaves like a timm ``features_only`` model: a list of maps at strides 2..32, channels-last
    from stride 16 on (as Swin-style models return them)."""

    def __init__(self):
        super().__init__()
        chans = [8, 12, 16, 24, 32]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip([3] + chans, chans))
        self.feature_info = _FakeFeatureInfo([2, 4, 8, 16, 32], chans)

    def forward(self, x):
        out = []
        for i, conv in enumerate(self.convs):
            x = conv(x)
            out.append(x.permute(0, 2, 3, 1) if i >= 3 else x)
        return out


def test_timm_adapter_picks_strides_4_to_32_and_loads_local_safetensors(tmp_path, monkeypatch):
    """The adapter's own logic, against an object with timm's features_only interface (timm itself
    pulls torchvision, which cannot be installed beside this torch)."""
    import types

    from safetensors.torch import save_file

    fake = types.ModuleType("timm")
    fake.create_model = lambda name, pretrained, features_only: _FeaturesOnlyNet()
    monkeypatch.setitem(sys.modules, "timm", fake)
    weights = {k: torch.full_like(v, 0.01) for k, v in _FeaturesOnlyNet().state_dict().items()}
    save_file(weights, str(tmp_path / "backbone.safetensors"))
    model = build_model(tiny(encoder="timm:fake_net", encoder_weights=str(tmp_path / "backbone.safetensors")))
    assert model.encoder.out_channels == (12, 16, 24, 32)
    assert torch.all(model.encoder.backbone.convs[0].weight == 0.01)
    feats = model.encoder(torch.rand(1, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in feats] == [(12, 16, 16), (16, 8, 8), (24, 4, 4), (32, 2, 2)]
    assert model(torch.rand(1, 3, 64, 64))["logits"].shape == (1, 5, 64, 64)
    (tmp_path / "backbone.pth").write_bytes(b"\x80\x04pickle")
    from napari_dfa.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"backbone\.pth.*\.safetensors"):
        build_model(tiny(encoder="timm:fake_net", encoder_weights=str(tmp_path / "backbone.pth")))

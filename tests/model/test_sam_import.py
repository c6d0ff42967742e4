"""SAM ViT image encoder: SAM's key layout, the one-off .pth → safetensors import, and its maths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from napari_dfa.errors import CheckpointError
from napari_dfa.model import ImageEncoderViT, ModelConfig, build_model, import_sam_weights, param_groups
from napari_dfa.model.sam_vit import Attention

SMALL_VIT = dict(vit_img_size=64, vit_patch=16, vit_dim=64, vit_depth=2, vit_heads=4, vit_window=2,
                 vit_global_blocks=(1,), vit_neck_dim=32)


@pytest.fixture(autouse=True)
def _seeded(one_torch_thread):
    torch.manual_seed(0)


def small_vit() -> ImageEncoderViT:
    vit = ImageEncoderViT(img_size=64, patch=16, dim=64, depth=2, heads=4, window=2, global_blocks=(1,),
                          neck_dim=32)
    with torch.no_grad():  # SAM zero-initialises positions; random values make the comparison meaningful
        for p in vit.parameters():
            p.normal_(0, 0.05)
    return vit


def test_vit_b_has_sams_state_dict_layout():
    with torch.device("meta"):
        vit = ImageEncoderViT()  # ViT-B defaults
    shapes = {k: tuple(v.shape) for k, v in vit.state_dict().items()}
    # 14 tensors per block × 12 + patch embedding (2) + absolute positions (1) + neck (6)
    assert len(shapes) == 177
    expected = {
        "patch_embed.proj.weight": (768, 3, 16, 16),
        "patch_embed.proj.bias": (768,),
        "pos_embed": (1, 64, 64, 768),
        "blocks.0.norm1.weight": (768,),
        "blocks.0.attn.qkv.weight": (2304, 768),
        "blocks.0.attn.qkv.bias": (2304,),
        "blocks.0.attn.proj.weight": (768, 768),
        "blocks.0.attn.rel_pos_h": (27, 64),  # windowed block: 2·14 − 1
        "blocks.2.attn.rel_pos_w": (127, 64),  # global block: 2·64 − 1
        "blocks.11.attn.rel_pos_h": (127, 64),
        "blocks.10.attn.rel_pos_h": (27, 64),
        "blocks.0.mlp.lin1.weight": (3072, 768),
        "blocks.0.mlp.lin2.bias": (768,),
        "blocks.11.norm2.bias": (768,),
        "neck.0.weight": (256, 768, 1, 1),
        "neck.1.weight": (256,),
        "neck.1.bias": (256,),
        "neck.2.weight": (256, 256, 3, 3),
        "neck.3.bias": (256,),
    }
    for key, shape in expected.items():
        assert shapes.get(key) == shape, key
    n = sum(v.numel() for v in vit.state_dict().values())
    assert 89e6 < n < 90e6  # SAM ViT-B image encoder: 89.7 M parameters


def test_import_round_trip_is_bit_exact(tmp_path):
    vit = small_vit()
    sam_state = {f"image_encoder.{k}": v for k, v in vit.state_dict().items()}
    # The official file also holds the prompt encoder and mask decoder: they must be dropped.
    sam_state["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.randn(2, 128)
    sam_state["mask_decoder.iou_token.weight"] = torch.randn(1, 256)
    pth = tmp_path / "sam_small.pth"
    torch.save(sam_state, pth)

    out = import_sam_weights(pth, tmp_path / "sam_small.safetensors")
    from safetensors.torch import load_file

    converted = load_file(str(out))
    assert set(converted) == {k for k in sam_state if k.startswith("image_encoder.")}

    config = ModelConfig.from_preset("sam-vit-b", num_classes=3, encoder_weights=str(out), pixel_dim=32,
                                     decoder_dim=32, decoder_heads=2, decoder_mlp_dim=64, **SMALL_VIT)
    model = build_model(config)
    loaded = model.encoder.image_encoder.state_dict()
    for key, value in vit.state_dict().items():
        assert torch.equal(loaded[key], value), key
    with torch.no_grad():  # same weights, same maths: identical features
        x = torch.rand(1, 3, 64, 64)
        torch.testing.assert_close(model.encoder.image_encoder(x), vit(x), rtol=0, atol=0)


def test_sam_model_runs_on_tiles_of_other_sizes_and_freezes_the_vit(tmp_path):
    config = ModelConfig.from_preset("sam-vit-b", num_classes=3, pixel_dim=32, decoder_dim=32, decoder_heads=2,
                                     decoder_mlp_dim=64, **SMALL_VIT)
    model = build_model(config, frequencies=[0.5, 0.3, 0.2])
    assert not any(p.requires_grad for p in model.encoder.image_encoder.parameters())
    assert all(p.requires_grad for p in model.encoder.up4.parameters())
    frozen = {id(p) for p in model.encoder.image_encoder.parameters()}
    assert not any(id(p) in frozen for g in param_groups(model, lr=1e-3) for p in g["params"])
    out = model(torch.rand(2, 3, 96, 128), return_attention=True)  # not SAM's 1024, not square
    assert out["logits"].shape == (2, 3, 96, 128)
    assert out["attention"].shape == (2, 3, 6, 8)
    out["logits"].mean().backward()
    assert model.bias.delta.grad is not None
    assert all(p.grad is None for p in model.encoder.image_encoder.parameters())


def reference_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """SAM's explicit formulation: softmax(q·kᵀ·scale + q·R_h + q·R_w) v, written out loop by loop."""
    b, h, w, c = x.shape
    heads, hd = attn.heads, c // attn.heads
    qkv = attn.qkv(x).reshape(b, h * w, 3, heads, hd).permute(2, 0, 3, 1, 4).reshape(3, b * heads, h * w, hd)
    q, k, v = qkv
    logits = (q * hd ** -0.5) @ k.transpose(-2, -1)

    def table(size, rel):
        n = 2 * size - 1
        if rel.shape[0] != n:
            rel = F.interpolate(rel.T[None], size=n, mode="linear")[0].T
        idx = torch.arange(size)[:, None] - torch.arange(size)[None, :] + size - 1
        return rel[idx]

    rh, rw = table(h, attn.rel_pos_h), table(w, attn.rel_pos_w)
    rq = q.reshape(b * heads, h, w, hd)
    rel_h = torch.zeros(b * heads, h, w, h)
    rel_w = torch.zeros(b * heads, h, w, w)
    for i in range(h):
        for j in range(w):
            rel_h[:, i, j] = rq[:, i, j] @ rh[i].T
            rel_w[:, i, j] = rq[:, i, j] @ rw[j].T
    logits = (logits.view(b * heads, h, w, h, w) + rel_h[..., None] + rel_w[..., None, :]).view(b * heads, h * w, -1)
    out = logits.softmax(-1) @ v
    return attn.proj(out.view(b, heads, h, w, hd).permute(0, 2, 3, 1, 4).reshape(b, h, w, c))


@pytest.mark.parametrize("grid,trained_grid", [((4, 4), (4, 4)), ((3, 5), (4, 4))])
def test_relative_position_attention_matches_sams_formula(grid, trained_grid):
    attn = Attention(dim=32, heads=4, grid=trained_grid)
    with torch.no_grad():
        attn.rel_pos_h.normal_()
        attn.rel_pos_w.normal_()
    x = torch.randn(2, *grid, 32)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), reference_attention(attn, x), rtol=1e-4, atol=1e-5)


def test_import_refuses_files_that_are_not_sam(tmp_path):
    torch.save({"encoder.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="other.pth.*not a SAM checkpoint"):
        import_sam_weights(tmp_path / "other.pth", tmp_path / "out.safetensors")
    (tmp_path / "junk.pth").write_bytes(b"not a pickle at all")
    with pytest.raises(CheckpointError, match="junk.pth"):
        import_sam_weights(tmp_path / "junk.pth", tmp_path / "out.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        import_sam_weights(tmp_path / "missing.pth", tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_encoder_weights_of_the_wrong_size_are_refused(tmp_path):
    vit = small_vit()
    torch.save({f"image_encoder.{k}": v for k, v in vit.state_dict().items()}, tmp_path / "s.pth")
    out = import_sam_weights(tmp_path / "s.pth", tmp_path / "s.safetensors")
    config = ModelConfig.from_preset("sam-vit-b", num_classes=3, encoder_weights=str(out), pixel_dim=32,
                                     decoder_dim=32, decoder_heads=2, decoder_mlp_dim=64,
                                     **{**SMALL_VIT, "vit_dim": 128})
    with pytest.raises(CheckpointError, match="s.safetensors"):
        build_model(config)


def test_missing_sam_weights_say_how_to_get_them(tmp_path):
    config = ModelConfig.from_preset("sam-vit-b", num_classes=3,
                                     encoder_weights=str(tmp_path / "sam_vit_b_01ec64.safetensors"), **SMALL_VIT)
    with pytest.raises(CheckpointError, match=r"sam_vit_b_01ec64\.safetensors: SAM encoder weights not found.*python -m napari_dfa\.model\.import_sam"):
        build_model(config)


def test_conversion_command(tmp_path, capsys):
    from napari_dfa.model.import_sam import main

    torch.save({f"image_encoder.{k}": v for k, v in small_vit().state_dict().items()}, tmp_path / "sam.pth")
    assert main([str(tmp_path / "sam.pth"), str(tmp_path / "sam.safetensors")]) == 0
    assert (tmp_path / "sam.safetensors").is_file()
    assert main([str(tmp_path / "nothing.pth"), str(tmp_path / "x.safetensors")]) == 1
    assert "nothing.pth: SAM weights file not found" in capsys.readouterr().err

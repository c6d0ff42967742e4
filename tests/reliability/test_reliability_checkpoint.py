"""Crafted and damaged checkpoints: every one is refused with a CheckpointError naming the file,
before anything is allocated — never a hang, a traceback, or a model that paints one class."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from napari_dfa.errors import CheckpointError
from napari_dfa.model import ModelConfig, Segmenter, load_model, read_checkpoint
from napari_dfa.model.shapes import expected_tensors
from napari_dfa.model.validate import (MAX_PARAMETERS, check_config_bounds, check_metadata, check_model_path,
                                       check_tensors, json_depth)
from bcss_classes import COLORS, NAMES


@pytest.fixture(scope="module")
def good(tmp_path_factory, tiny_segmenter):
    """A saved tiny model: its metadata and tensors, for crafting bad copies."""
    seg = tiny_segmenter(class_colors=COLORS, frequencies=[0.3, 0.3, 0.2, 0.1, 0.1])
    path = seg.save(tmp_path_factory.mktemp("ck") / "good.safetensors", dtype=torch.float16)
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
        state = {k: fh.get_tensor(k) for k in fh.keys()}
    return {"path": path, "meta": meta, "state": state}


def craft(path, good, tensors=None, **meta):
    save_file(tensors if tensors is not None else good["state"], str(path), metadata={**good["meta"], **meta})
    return path


def refused(path, *match):
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    text = str(err.value)
    assert path.name in text, text
    for m in match:
        assert m in text, text
    return text


def config_with(good, **changes):
    cfg = json.loads(good["meta"]["config"])
    cfg.update(changes)
    return json.dumps(cfg)


def test_the_untouched_file_loads(good):
    assert load_model(good["path"]).class_names == NAMES


def test_huge_sizes_in_the_config_are_refused_before_building(tmp_path, good):
    # decoder_depth 100000 used to build 100000 layers (> 180 s, 4 GB) before the tensors were checked.
    refused(craft(tmp_path / "deep.safetensors", good, config=config_with(good, decoder_depth=100000)),
            "decoder_depth", "out of range")
    refused(craft(tmp_path / "wide.safetensors", good,
                  config=config_with(good, encoder_widths=[100000, 100000, 100000, 100000])), "encoder_widths")
    refused(craft(tmp_path / "k.safetensors", good, config=config_with(good, num_classes=10**6)), "num_classes")


def test_sizes_within_bounds_that_do_not_match_the_tensors_are_refused(tmp_path, good):
    refused(craft(tmp_path / "d3.safetensors", good, config=config_with(good, decoder_depth=3)),
            "do not match", "missing")


@pytest.mark.parametrize("kind", ["shape", "missing", "depth", "dtype", "names"])
def test_a_bad_checkpoint_is_refused_before_any_weight_is_read(tmp_path, good, monkeypatch, kind):
    """Header, config and metadata are checked before the tensors are read: the weight reader is made
    to fail the test if called (issue 25: checks moved after the read still passed every test)."""
    import safetensors.torch as st

    state, meta = dict(good["state"]), {}
    key = "decoder.mask_mlp.layers.0.weight"
    if kind == "shape":
        state[key] = torch.zeros(state[key].shape[0] + 1, *state[key].shape[1:], dtype=state[key].dtype)
    elif kind == "missing":
        state.pop(key)
    elif kind == "depth":
        meta["config"] = config_with(good, decoder_depth=3)
    elif kind == "dtype":
        state[key] = state[key].to(torch.float64)
    else:
        meta["class_names"] = json.dumps(["only one"])
    path = craft(tmp_path / f"{kind}.safetensors", good, tensors=state, **meta)

    def read_weights(*args, **kwargs):  # pytest.fail is a BaseException: no `except Exception` hides it
        pytest.fail("the weights were read before the checkpoint was validated")

    monkeypatch.setattr(st, "load_file", read_weights)
    refused(path)


@pytest.mark.parametrize("dtype", [torch.int16, torch.bfloat16, torch.float64])
def test_weights_of_another_dtype_are_refused(tmp_path, good, dtype):
    """int16 or bf16 bytes where float16 belongs used to load and predict one class everywhere."""
    state = dict(good["state"])
    key = "decoder.mask_mlp.layers.0.weight"
    state[key] = state[key].view(dtype) if dtype != torch.float64 else state[key].to(dtype)
    if state[key].shape != good["state"][key].shape:  # view() keeps the shape for 2-byte dtypes only
        state[key] = good["state"][key].to(dtype)
    refused(craft(tmp_path / f"{str(dtype)[6:]}.safetensors", good, tensors=state), key, "stored as")


def test_all_weights_in_bf16_are_refused(tmp_path, good):
    state = {k: v.view(torch.bfloat16) if v.dtype == torch.float16 else v for k, v in good["state"].items()}
    refused(craft(tmp_path / "bf16.safetensors", good, tensors=state), "BF16", "float32 or float16")


@pytest.mark.parametrize("key,value,words", [
    ("class_colors", json.dumps(["red", "green", "blue", "grey", "gold"]), "RGB triples"),
    ("class_colors", json.dumps([[300, 0, 0]] * 5), "RGB triples"),
    ("class_names", json.dumps([1, 2, 3, 4, 5]), "strings"),
    ("mpp", '"abc"', "microns per pixel"),
    ("mpp", "[0.5]", "microns per pixel"),
    ("mpp", "0", "microns per pixel"),
    ("mpp", "-0.5", "microns per pixel"),
    ("mpp", "NaN", "microns per pixel"),
    ("frequencies", "[NaN, 0.2, 0.2, 0.2, 0.2]", "frequencies"),
    ("frequencies", "[-1, 0.2, 0.2, 0.2, 0.2]", "frequencies"),
    ("extra", '"a string"', "JSON object"),
    ("provenance", "[1, 2]", "JSON object"),
    ("bias_history", "{}", "JSON list"),
    ("config", "[]", "config"),
    ("config", '{"num_classes": "five"}', "num_classes"),
    ("extra", "[" * 100_000 + "]" * 100_000, "nested"),
    ("provenance", "1" * 5000, "not valid JSON"),
])
def test_metadata_of_the_wrong_type_or_range_is_one_clear_error(tmp_path, good, key, value, words):
    refused(craft(tmp_path / f"bad_{key}.safetensors", good, **{key: value}), key, words)


def test_a_symlink_loop_and_a_dangling_link_are_named(tmp_path):
    loop = tmp_path / "loop.safetensors"
    os.symlink(loop, loop)
    assert "symbolic link loop" in refused(loop)
    dangling = tmp_path / "gone.safetensors"
    os.symlink(tmp_path / "moved.safetensors", dangling)
    assert "broken symbolic link" in refused(dangling)


def test_a_run_folder_names_its_best_checkpoint(tmp_path, good):
    run = tmp_path / "syn"
    run.mkdir()
    (run / "best.safetensors").write_bytes(good["path"].read_bytes())
    assert str(run / "best.safetensors") in refused(run)


def test_writing_refuses_what_reading_would(tmp_path):
    seg = Segmenter.from_config(ModelConfig.from_preset("tiny", num_classes=2), mpp=0.0)
    with pytest.raises(CheckpointError, match="mpp"):
        seg.save(tmp_path / "zero.safetensors")
    with pytest.raises(CheckpointError, match="float32 or float16"):
        Segmenter.from_config(ModelConfig.from_preset("tiny", num_classes=2)).save(
            tmp_path / "bf.safetensors", dtype=torch.bfloat16)
    assert not list(tmp_path.iterdir())


def test_json_depth_skips_brackets_in_strings():
    assert json_depth('{"a": "[[[[[[", "b": [[1]]}') == 3
    assert json_depth('"\\"[[[["') == 0


# --- fuzzing --------------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=6),
    max_leaves=30,
)
META_KEYS = ("class_names", "class_colors", "frequencies", "mpp", "provenance", "bias_history", "extra", "bias_mode")


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(META_KEYS), json_values | st.text(max_size=40).map(lambda t: ("raw", t)),
                       max_size=len(META_KEYS)))
def test_fuzz_metadata_gives_a_checkpoint_error_or_valid_values(changes):
    meta = {"class_names": json.dumps(NAMES), "class_colors": json.dumps([list(c) for c in COLORS]),
            "frequencies": json.dumps([0.2] * 5), "mpp": "0.5"}
    for key, value in changes.items():
        meta[key] = value[1] if isinstance(value, tuple) else json.dumps(value)
    try:
        out = check_metadata(__import__("pathlib").Path("fuzz.safetensors"), meta, num_classes=5)
    except CheckpointError as exc:
        assert "fuzz.safetensors" in str(exc)
        return
    assert len(out["class_names"]) == 5 and all(isinstance(n, str) for n in out["class_names"])
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in out["class_colors"])
    assert np.isfinite(out["frequencies"]).all()
    assert out["mpp"] is None or (np.isfinite(out["mpp"]) and out["mpp"] > 0)
    assert isinstance(out["extra"], dict) and isinstance(out["provenance"], dict)


CONFIG_FIELDS = ("num_classes", "encoder_widths", "encoder_depths", "decoder_depth", "decoder_dim", "decoder_heads",
                 "decoder_mlp_dim", "pixel_dim", "gamma", "input_multiple", "encoder", "bias_mode", "preset",
                 "difficulty_dice", "vit_depth")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(CONFIG_FIELDS), json_values, min_size=1, max_size=3))
def test_fuzz_config_through_the_loader(tmp_path, good, changes):
    """Any config the file may hold: a CheckpointError naming the file, or a model that loads."""
    path = craft(tmp_path / "fuzz.safetensors", good, config=config_with(good, **changes))
    try:
        seg = read_checkpoint(path, tensor_spec=expected_tensors)
    except CheckpointError as exc:
        assert "fuzz.safetensors" in str(exc)
        return
    assert seg.config.num_classes == 5


# --- the config's bounds at their edges (checked before any layer is built) ------------------------
def _config(**fields):
    """A config of just these fields: the bounds are checked field by field, whatever else it holds."""
    import dataclasses

    return dataclasses.make_dataclass("Config", [(k, object) for k in fields])(**fields)


def _refused_config(field, *, says=None, **fields):
    """Refused, naming the file, the field, the value found (``says``: what follows it) and why."""
    with pytest.raises(CheckpointError) as err:
        check_config_bounds(_config(**fields), source="m.safetensors")
    text = str(err.value)
    assert text.startswith(f"m.safetensors: model config {field} = "), text
    assert text.endswith("; the file is damaged or was not written by napari-dfa"), text
    if says is not None:
        assert text.startswith(f"m.safetensors: model config {field} = {says}"), text


@pytest.mark.parametrize("field, lo, hi, below, above", [
    ("decoder_depth", 1, 64, 0, 65),  # an int field: 1..64
    ("gamma", 0.0, 100.0, -1e-9, 100.000001),  # a float field: 0..100
    ("input_multiple", 32, 1024, 31, 1025),
])
def test_a_config_number_is_accepted_at_its_bounds_and_refused_past_them(field, lo, hi, below, above):
    check_config_bounds(_config(**{field: lo}), source="m.safetensors")
    check_config_bounds(_config(**{field: hi}), source="m.safetensors")
    _refused_config(field, says=f"{below!r} is out of range ({lo}..{hi})", **{field: below})
    _refused_config(field, says=f"{above!r} is out of range ({lo}..{hi})", **{field: above})
    for bad in (True, float("nan"), float("inf"), "8", [8]):
        _refused_config(field, **{field: bad})


def test_a_config_list_is_bounded_per_item_and_in_length():
    """encoder_depths: 1 to 8 stages of 0..64 blocks; vit_global_blocks may be empty."""
    check_config_bounds(_config(encoder_depths=(0, 64), vit_global_blocks=()), source="m.safetensors")
    check_config_bounds(_config(encoder_depths=[64] * 8), source="m.safetensors")
    check_config_bounds(_config(encoder_depths=(3,)), source="m.safetensors")
    for bad in [(0, 65), (-1, 3), (1.5 + 63,), (True,)]:
        _refused_config("encoder_depths", says=f"{bad!r} is out of range (each value in 0..64)", encoder_depths=bad)
    for bad in [(), [1] * 9, 4, "1234"]:
        _refused_config("encoder_depths", says=f"{bad!r} is out of range (1..8 values)", encoder_depths=bad)
    _refused_config("vit_global_blocks", says="[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,...",
                    vit_global_blocks=[0] * 65)


def test_a_config_string_is_bounded_in_length():
    check_config_bounds(_config(preset="p" * 64, encoder="e" * 256), source="m.safetensors")
    _refused_config("preset", says="'" + "p" * 56 + "... is out of range (a string of at most 64 characters)",
                    preset="p" * 65)  # the value cut to 60 characters
    _refused_config("encoder", encoder="e" * 257)
    _refused_config("preset", says="64 is out of range (a string of at most 64 characters)", preset=64)


def test_a_config_field_may_be_none_and_one_this_version_does_not_know_needs_a_sane_value():
    """None stands for a field's default; a field added by a later version passes with a plain value
    (a number, a string, a short list) and is refused with anything else. Every field is checked:
    one that passes never ends the check early."""
    check_config_bounds(_config(difficulty_dice=None, encoder_weights=None, added_later=(1.0, 2.0),
                                also_later="x", flag=True), source="m.safetensors")
    _refused_config("added_later", says="{'a': 1} is out of range (a number, a string or a short list)",
                    added_later={"a": 1})
    _refused_config("added_later", says="10000000000 is out of range", added_later=10**10)
    _refused_config("decoder_depth", says="65 is out of range", difficulty_dice=None, added_later=1,
                    preset="tiny", encoder_depths=(1, 1), decoder_depth=65)


def test_a_path_that_is_no_regular_file_is_named_as_such(tmp_path):
    """A named pipe would block the reader; a path through a file is no path at all."""
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="not a regular file"):
        check_model_path(fifo)
    plain = tmp_path / "plain.safetensors"
    plain.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="cannot read the model file"):
        check_model_path(plain / "inner.safetensors")
    with pytest.raises(CheckpointError, match="model file not found"):
        check_model_path(tmp_path / "none.safetensors")
    check_model_path(plain)  # a file, readable or not, is the reader's to judge


# --- the header's tensors against what the config builds (a shape-only spec stands in for the model)
def _tensors_refused(header, spec, *words):
    with pytest.raises(CheckpointError) as err:
        check_tensors(__import__("pathlib").Path("m.safetensors"), header, None, lambda config: spec)
    for w in ("m.safetensors", *words):
        assert w in str(err.value), str(err.value)


def test_a_config_of_too_many_parameters_is_refused_even_past_64_bit_integers():
    """At most MAX_PARAMETERS; a crafted shape whose element count wraps a 64-bit integer (2^32 x 2^32
    = 2^64 -> 0) is counted in floating point and refused, never taken for an empty tensor."""
    path = __import__("pathlib").Path("m.safetensors")
    at_most = {"w": ((MAX_PARAMETERS // 2,), "F32"), "b": ((MAX_PARAMETERS // 2,), "F32")}
    check_tensors(path, dict(at_most), None, lambda config: at_most)
    one_more = {"w": ((MAX_PARAMETERS // 2,), "F32"), "b": ((MAX_PARAMETERS // 2 + 1,), "F32")}
    _tensors_refused(one_more, one_more, "parameters")
    wraps = {"w": ((2**32, 2**32), "F32")}
    _tensors_refused(wraps, wraps, "parameters")


def test_floats_are_float32_or_float16_all_alike_and_other_tensors_exactly_as_built():
    spec = {"w": ((2, 3), "F32"), "b": ((3,), "F32"), "n": ((), "I64")}
    path = __import__("pathlib").Path("m.safetensors")
    for dtype in ("F32", "F16"):
        check_tensors(path, {"w": ((2, 3), dtype), "b": ((3,), dtype), "n": ((), "I64")}, None, lambda c: spec)
    # a spec of another float dtype (a model built in double) still wants what napari-dfa writes
    for want in ("F16", "BF16", "F64"):
        other = {"w": ((2, 3), want), "b": ((3,), want)}
        for dtype in ("F32", "F16"):
            check_tensors(path, {"w": ((2, 3), dtype), "b": ((3,), dtype)}, None, lambda c: other)
        _tensors_refused({"w": ((2, 3), "F64"), "b": ((3,), "F16")}, other, "tensor w is stored as F64")
    _tensors_refused({"w": ((2, 3), "F32"), "b": ((3,), "F16"), "n": ((), "I64")}, spec, "mix F16 and F32")
    _tensors_refused({"w": ((2, 3), "F32"), "b": ((3,), "F32"), "n": ((), "F32")}, spec,
                     "tensor n is stored as F32, expected I64")
    _tensors_refused({"w": ((2, 3), "BF16"), "b": ((3,), "BF16"), "n": ((), "I64")}, spec, "tensor w is stored as BF16")


def test_a_config_that_cannot_be_built_says_why():
    def spec(config):
        raise ValueError("decoder_dim 36 is not divisible by decoder_heads 8")

    with pytest.raises(CheckpointError) as err:
        check_tensors(__import__("pathlib").Path("m.safetensors"), {}, "the config", spec)
    assert str(err.value).startswith("m.safetensors: the model config cannot be built (ValueError: decoder_dim 36 "
                                     "is not divisible by decoder_heads 8)"), str(err.value)


def test_tensors_missing_unexpected_or_misshapen_are_each_refused_and_counted():
    """Each kind alone is refused; together, the message counts each and names the first three."""
    from napari_dfa.model.validate import check_tensor_shapes

    expected = {f"e{i}": (i + 1,) for i in range(8)}
    path = __import__("pathlib").Path("m.safetensors")
    check_tensor_shapes(path, expected, {k: list(v) for k, v in expected.items()})  # lists from the header: fine
    lead = "m.safetensors: the tensors do not match the model config stored in the file: "
    cases = [
        ({k: v for k, v in expected.items() if k != "e5"}, "1 missing (e.g. ['e5'])"),
        ({**expected, "zz": (1,)}, "1 unexpected (e.g. ['zz'])"),
        ({**expected, "e2": (4,)}, "1 with the wrong shape (e.g. ['e2 (4,) != (3,)'])"),
        ({**{k: v for k, v in expected.items() if k not in ("e0", "e1", "e2", "e3")}, "e4": (1,), "e5": (2,),
          "e6": (3,), "e7": (4, 2), "u1": (), "u2": (), "u3": (), "u4": ()},
         "4 missing (e.g. ['e0', 'e1', 'e2']); 4 unexpected (e.g. ['u1', 'u2', 'u3']); 4 with the wrong shape "
         "(e.g. ['e4 (1,) != (5,)', 'e5 (2,) != (6,)', 'e6 (3,) != (7,)'])"),
    ]
    for got, says in cases:
        with pytest.raises(CheckpointError) as err:
            check_tensor_shapes(path, expected, got)
        assert str(err.value) == lead + says

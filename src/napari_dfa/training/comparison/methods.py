"""The methods of the comparison and the recipe they share (no Qt): which recipe changes each method
makes, the comparison file (``[bench]``, ``[synth]``), and what the report says about the data."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ...errors import ConfigError
from ..config import TrainConfig, read_toml


@dataclass(frozen=True)
class Method:
    """One row of the comparison: a label and the recipe changes it makes."""

    label: str
    model: dict
    train: dict


METHODS: dict[str, Method] = {
    "none": Method("none (b = 0)", {"bias_mode": "none"}, {}),
    "cffa": Method("CFFA prior γ·log(1−f)", {"bias_mode": "cffa"}, {}),
    "difficulty": Method("difficulty γ·log(1−Dice)", {"bias_mode": "difficulty"}, {}),
    "dfa": Method("**DFA** (learned δ)", {"bias_mode": "dfa"}, {}),
    "dfa-out": Method("DFA-out (δ also on the output logits)", {"bias_mode": "dfa-out"}, {}),
    "dfa-warm-only": Method("DFA, δ frozen at its warm start", {"bias_mode": "dfa", "delta_lr_multiplier": 0.0}, {}),
    "dfa-cold": Method("DFA, cold start (δ₀ = 0)", {"bias_mode": "dfa", "delta_init_scale": 0.0}, {}),
    "logit_adjust": Method("logit adjustment τ·log f (τ = 1)", {"bias_mode": "none"}, {"logit_adjust_tau": 1.0}),
    "weighted_ce": Method("class-weighted CE", {"bias_mode": "none"}, {"loss": "weighted_ce"}),
}
DEFAULT_METHODS = ("none", "dfa", "dfa-out", "difficulty", "logit_adjust")
REFERENCE = "none"
# Six seeds is the fewest for which a two-sided sign test can reach p < 0.05 (2/2^6 = 0.031).
DEFAULT_SEEDS = 6


def comparison_config(*, epochs: int = 15, preset: str = "tiny", tile: int = 128, n_train: int = 64, n_val: int = 16,
                      n_test: int = 32, batch_size: int = 8, lr: float = 3e-3, data_seed: int = 0) -> TrainConfig:
    """The recipe every method of the comparison shares (CPU-sized synthetic data by default)."""
    return TrainConfig(
        name="bench", epochs=epochs, batch_size=batch_size, lr=lr, schedule="cosine", warmup_steps=10,
        model={"preset": preset, "gamma": 2.0, "delta_init_scale": 0.5, "delta_lr_multiplier": 20.0},
    ).replace(data={"kind": "synthetic", "classes": "synthetic", "crop": tile, "synth_tile": tile,
                    "synth_n_train": n_train, "synth_n_val": n_val, "synth_n_test": n_test, "synth_seed": data_seed})


# -- configuration files and data folders --------------------------------------------------------------

BENCH_KEYS = {"seeds": int, "methods": list, "jobs": int, "probe_images": int}


def load_comparison_toml(path, base: TrainConfig | None = None) -> tuple[TrainConfig, dict]:
    """Read a comparison file: any training-recipe keys (``epochs``, ``batch_size``, ``[model]``,
    ``[data]``, ``[augment]``, ...) over ``base``, a ``[synth]`` table (the synthetic generator:
    class frequencies, difficulties, see :class:`napari_dfa.synth.SynthConfig`) and a ``[bench]``
    table (``seeds``, ``methods``, ``jobs``, ``probe_images``). A file holding only ``[synth]`` is fine.

    Returns ``(recipe, bench settings)``; unknown keys raise ConfigError naming the file.
    """
    path = Path(path)
    raw = read_toml(path, what="comparison config", example="training/gpu_bench.toml")
    bench = raw.pop("bench", {})
    synth_table = raw.pop("synth", None)
    if not isinstance(bench, dict):
        raise ConfigError(f"{path}: [bench] must be a table")
    unknown = sorted(set(bench) - set(BENCH_KEYS))
    if unknown:
        raise ConfigError(f"{path} [bench]: unknown key(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(BENCH_KEYS))}")
    for key, kind in BENCH_KEYS.items():
        if key in bench and not isinstance(bench[key], kind):
            raise ConfigError(f"{path} [bench]: {key} must be a {kind.__name__}, got {bench[key]!r}")
    merged = (base or comparison_config()).to_dict()
    for key, value in raw.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    data = merged.setdefault("data", {})
    if data.get("root") and not Path(data["root"]).is_absolute():
        data["root"] = str((path.parent / data["root"]).resolve())
    if synth_table is not None:
        if not isinstance(synth_table, dict):
            raise ConfigError(f"{path}: [synth] must be a table")
        from ...synth import SynthConfig

        SynthConfig.from_dict(synth_table, source=f"{path} [synth]")  # validate now, name the file
        data["synth"] = synth_table
    return TrainConfig.from_dict(merged, source=str(path)), dict(bench)


def _synth_config(data):
    from ... import synth

    return synth.SynthConfig.from_dict(dict(data.synth)) if data.synth else synth.SynthConfig()


def with_synth_classes(config: TrainConfig) -> TrainConfig:
    """Synthetic data: the class list is the generator's (a [synth] table may rename classes)."""
    if config.data.kind != "synthetic" or config.data.class_names:
        return config
    cfg = _synth_config(config.data)
    return config.replace(data={"class_names": cfg.class_names, "class_colors": cfg.class_colors})


def class_difficulty(config: TrainConfig, root: Path) -> dict:
    """``{name: (difficulty, look-alike)}`` where the data says it (synthetic generator or a
    folder's synth.json); empty otherwise."""
    try:
        if config.data.kind == "synthetic":
            return {c.name: (c.difficulty, c.lookalike) for c in _synth_config(config.data).classes}
        path = Path(root) / "synth.json"
        if path.is_file():
            entries = json.loads(path.read_text(encoding="utf-8")).get("classes", [])
            return {e["name"]: (e.get("difficulty"), e.get("lookalike")) for e in entries if "name" in e}
    except (ConfigError, OSError, ValueError, TypeError, KeyError, AttributeError):
        pass  # the table works without the difficulty column
    return {}


def describe_data(config: TrainConfig, root: Path) -> str:
    d = config.data
    if d.kind == "synthetic":
        what = "synthetic generator" + (" with a [synth] table" if d.synth else " (default classes)")
        return (f"{what}: {d.synth_n_train} train / {d.synth_n_val} val / {d.synth_n_test} test tiles of "
                f"{d.synth_tile}² px, data seed {d.synth_seed}, crops {d.crop}² px")
    return f"SAM-Path folder `{root}`, crops {d.crop}² px"


def method_config(base: TrainConfig, method: str, seed: int, difficulty_dice=None) -> TrainConfig:
    """The recipe of ``method`` with ``seed`` (``difficulty`` needs the none run's Dice)."""
    spec = METHODS[method]
    model = dict(spec.model)
    if method == "difficulty":
        if difficulty_dice is None:
            raise ConfigError("method difficulty needs the none run's validation Dice of the same seed")
        model["difficulty_dice"] = [float(v) for v in difficulty_dice]
    return base.replace(seed=seed, model=model, **spec.train)

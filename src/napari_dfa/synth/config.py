"""Configuration of the synthetic H&E generator: per-class frequency, difficulty and appearance.

Frequency (how much of the tissue a class covers) and difficulty (how much its appearance overlaps
a look-alike class, and how blurred its borders are) are set independently, so that the benchmark
can ask whether a learned attention bias helps where difficulty, not rarity, is the problem.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from ..classes import SYNTHETIC
from ..errors import ConfigError


@dataclass(frozen=True)
class Appearance:
    """Texture and stain parameters of one tissue class (concentrations in optical-density units).

    Every field is a float so that a hard class can be interpolated toward its look-alike.

    Arguments:
      eosin: eosin concentration of the background (cytoplasm, collagen): pinkness.
      haem: haematoxylin concentration of the background (bluish cytoplasm, mucin).
      fibre: 0..1 amplitude of wavy oriented collagen fibres that modulate the eosin.
      nuclei: fraction of the area covered by nuclei.
      radius: equivalent nucleus radius in level-0 pixels at 0.5 µm/px (sqrt of the semi-axes' product).
      radius_sd: relative spread of the nucleus radius.
      elongation: major/minor axis ratio of the nuclei; elongated nuclei follow the fibres.
      nucleus_haem: haematoxylin concentration at a nucleus's rim.
      vesicular: 0..1 paleness of a nucleus's centre (open chromatin of tumour cells).
      lumen: fraction of the area in white holes (fat, vessels, tears).
      mottle: amplitude of low-frequency patchiness of the stain concentrations.
      grain: per-pixel noise amplitude (relative optical density).
    """

    eosin: float
    haem: float
    fibre: float
    nuclei: float
    radius: float
    radius_sd: float
    elongation: float
    nucleus_haem: float
    vesicular: float
    lumen: float
    mottle: float
    grain: float

    def lerp(self, other: "Appearance", t: float) -> "Appearance":
        """The appearance a fraction ``t`` of the way from this one to ``other``."""
        return Appearance(**{
            f.name: (1 - t) * getattr(self, f.name) + t * getattr(other, f.name) for f in fields(self)
        })


@dataclass(frozen=True)
class ClassSpec:
    """One tissue class of the generator.

    Arguments:
      name: class name (label ids follow the order of ``SynthConfig.classes``, starting at 1).
      frequency: share of the annotated (non-ignored) pixels this class covers, over a dataset.
      difficulty: 0..1; how far the appearance moves toward ``lookalike`` and how blurred its
        borders are (0 = distinctive, sharp borders; 1 = near copy of the look-alike, wide blur).
      lookalike: name of the class this one is confused with, or None.
      appearance: the class's own texture and stain parameters at difficulty 0.
    """

    name: str
    frequency: float
    difficulty: float
    lookalike: str | None
    appearance: Appearance


# Appearances at 0.5 µm/px. Inflammatory: dense small dark lymphocyte nuclei (distinctive).
# Tumour: large pleomorphic vesicular nuclei on purple-pink cytoplasm. Stroma: pink wavy collagen
# with sparse spindle nuclei. Other (fat, vessels, normal tissue): paler pink with white holes.
# Necrosis: pink patchy debris with fragmented nuclear dust.
_INFLAMMATORY = Appearance(eosin=0.15, haem=0.35, fibre=0.0, nuclei=0.70, radius=3.6, radius_sd=0.10,
                           elongation=1.1, nucleus_haem=2.6, vesicular=0.0, lumen=0.0, mottle=0.10, grain=0.06)
_TUMOUR = Appearance(eosin=0.50, haem=0.28, fibre=0.0, nuclei=0.30, radius=7.0, radius_sd=0.25,
                     elongation=1.4, nucleus_haem=1.1, vesicular=0.5, lumen=0.02, mottle=0.12, grain=0.06)
_STROMA = Appearance(eosin=0.95, haem=0.05, fibre=0.75, nuclei=0.04, radius=4.0, radius_sd=0.20,
                     elongation=3.2, nucleus_haem=1.4, vesicular=0.0, lumen=0.0, mottle=0.10, grain=0.05)
_OTHER = Appearance(eosin=0.60, haem=0.10, fibre=0.25, nuclei=0.10, radius=5.0, radius_sd=0.20,
                    elongation=1.6, nucleus_haem=1.1, vesicular=0.2, lumen=0.12, mottle=0.15, grain=0.05)
_NECROSIS = Appearance(eosin=0.80, haem=0.20, fibre=0.0, nuclei=0.22, radius=1.8, radius_sd=0.40,
                       elongation=1.3, nucleus_haem=1.6, vesicular=0.0, lumen=0.03, mottle=0.35, grain=0.08)

# GLASS is the look of label 0 on a slide (no tissue): a faint off-white.
GLASS = Appearance(eosin=0.015, haem=0.01, fibre=0.0, nuclei=0.0, radius=1.0, radius_sd=0.0,
                   elongation=1.0, nucleus_haem=0.0, vesicular=0.0, lumen=0.0, mottle=0.0, grain=0.02)


def default_classes() -> tuple[ClassSpec, ...]:
    """BCSS-like classes: rare-easy, common-easy, common-hard, moderate, rare-hard."""
    return (
        ClassSpec("inflammatory", 0.05, 0.10, None, _INFLAMMATORY),  # rare and easy
        ClassSpec("tumour", 0.35, 0.15, None, _TUMOUR),  # common and easy
        ClassSpec("stroma", 0.30, 0.60, "other", _STROMA),  # common and hard
        ClassSpec("other", 0.25, 0.25, None, _OTHER),  # common, moderate (blurred borders only)
        ClassSpec("necrosis", 0.05, 0.80, "tumour", _NECROSIS),  # rare and hard
    )


@dataclass(frozen=True)
class SynthConfig:
    """Everything that shapes the synthetic data; one source of defaults.

    Arguments:
      classes: the K tissue classes, label ids 1..K in this order (names as in ``classes.SYNTHETIC``).
      ignore_fraction: share of each dataset tile outside the annotated ROI (mask 0, still tissue).
      region_size: typical diameter in level-0 pixels of one tissue region on a dataset tile.
      slide_region_size: the same on a whole slide (slides have larger structures).
      tissue_fraction: share of a slide covered by tissue; the rest is glass (label 0).
      concentration: Dirichlet concentration of the per-tile class mix around the frequencies
        (large = every tile has the configured mix; small = tiles dominated by few classes).
      max_overlap: how far toward its look-alike a class of difficulty 1 moves (< 1 keeps it
        learnable in principle).
      border_blur: Gaussian sigma in pixels of a class's border blur at difficulty 1.
      stain_jitter: per-image spread of the stain vectors and concentrations.
      fibre_period: pixels between collagen fibres.
      mpp: microns per level-0 pixel.
    """

    classes: tuple[ClassSpec, ...] = field(default_factory=default_classes)
    ignore_fraction: float = 0.10
    region_size: float = 80.0
    slide_region_size: float = 320.0
    tissue_fraction: float = 0.70
    concentration: float = 12.0
    max_overlap: float = 0.85
    border_blur: float = 10.0
    stain_jitter: float = 0.05
    fibre_period: float = 9.0
    mpp: float = 0.5

    def __post_init__(self):
        self.validate()

    # -- derived -------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    @property
    def class_colors(self) -> tuple[tuple[int, int, int], ...]:
        return tuple(_color_of(c.name, i) for i, c in enumerate(self.classes))

    @property
    def frequencies(self) -> tuple[float, ...]:
        return tuple(c.frequency for c in self.classes)

    @property
    def difficulties(self) -> tuple[float, ...]:
        return tuple(c.difficulty for c in self.classes)

    def effective_appearances(self) -> list[Appearance]:
        """Appearance per label id 0..K after moving each class toward its look-alike (0 = glass)."""
        by_name = {c.name: c for c in self.classes}
        out = [GLASS]
        for c in self.classes:
            if c.lookalike is None or c.difficulty == 0:
                out.append(c.appearance)
            else:
                out.append(c.appearance.lerp(by_name[c.lookalike].appearance, c.difficulty * self.max_overlap))
        return out

    def blur_sigmas(self) -> list[float]:
        """Border blur sigma per label id 0..K (glass gets a thin soft tissue edge)."""
        return [1.5] + [c.difficulty * self.border_blur for c in self.classes]

    # -- validation and (de)serialisation --------------------------------------------------
    def validate(self) -> None:
        if not self.classes:
            raise ConfigError("synth config: at least one class is required")
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ConfigError(f"synth config: class names must be unique, got {names}")
        for c in self.classes:
            if not 0.0 <= c.frequency <= 1.0:
                raise ConfigError(f"synth config: class {c.name!r} frequency {c.frequency} is outside [0, 1]")
            if not 0.0 <= c.difficulty <= 1.0:
                raise ConfigError(f"synth config: class {c.name!r} difficulty {c.difficulty} is outside [0, 1]")
            if c.lookalike is not None and (c.lookalike not in names or c.lookalike == c.name):
                raise ConfigError(
                    f"synth config: class {c.name!r} has look-alike {c.lookalike!r}; "
                    f"use another class name from {names}"
                )
        total = sum(c.frequency for c in self.classes)
        if abs(total - 1.0) > 1e-3:
            raise ConfigError(
                f"synth config: class frequencies sum to {total:.4f}, they must sum to 1 "
                f"({', '.join(f'{c.name}={c.frequency}' for c in self.classes)})"
            )
        if not 0.0 <= self.ignore_fraction < 0.9:
            raise ConfigError(f"synth config: ignore_fraction {self.ignore_fraction} must be in [0, 0.9)")
        if not 0.05 <= self.tissue_fraction <= 1.0:
            raise ConfigError(f"synth config: tissue_fraction {self.tissue_fraction} must be in [0.05, 1]")
        if not 0.0 <= self.max_overlap <= 1.0:
            raise ConfigError(f"synth config: max_overlap {self.max_overlap} must be in [0, 1]")
        for name in ("region_size", "slide_region_size", "concentration", "fibre_period", "mpp"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"synth config: {name} must be positive, got {getattr(self, name)}")
        if self.border_blur < 0 or self.stain_jitter < 0:
            raise ConfigError("synth config: border_blur and stain_jitter must not be negative")

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (JSON/TOML-friendly); ``from_dict(to_dict())`` round-trips."""
        d = asdict(self)
        d["classes"] = {
            c.name: {"frequency": c.frequency, "difficulty": c.difficulty, "lookalike": c.lookalike or "",
                     **asdict(c.appearance)}
            for c in self.classes
        }
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "config") -> "SynthConfig":
        """Build from a mapping such as a TOML ``[synth]`` table; unknown keys are refused.

        ``classes`` maps class names to ``{frequency, difficulty, lookalike, <appearance fields>}``;
        classes left out keep their defaults, so a table may override a single class's difficulty.
        A ``classes`` table naming only new classes replaces the default list entirely when
        ``replace_classes = true``.
        """
        data = dict(data)
        scalar_names = {f.name for f in fields(cls)} - {"classes"}
        unknown = set(data) - scalar_names - {"classes", "replace_classes"}
        if unknown:
            raise ConfigError(
                f"{source}: unknown synth setting(s) {sorted(unknown)}; known: {sorted(scalar_names | {'classes'})}"
            )
        kwargs: dict[str, Any] = {}
        for name in scalar_names & set(data):
            try:
                kwargs[name] = float(data[name])
            except (TypeError, ValueError):
                raise ConfigError(f"{source}: synth setting {name} must be a number, got {data[name]!r}") from None
        classes = [] if data.get("replace_classes") else list(default_classes())
        table = data.get("classes", {})
        if not isinstance(table, Mapping):
            raise ConfigError(f"{source}: synth 'classes' must be a table of class name -> settings")
        for name, spec in table.items():
            classes = _merge_class(classes, name, spec, source)
        try:
            return cls(classes=tuple(classes), **kwargs)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @classmethod
    def from_toml(cls, path: str | Path) -> "SynthConfig":
        """Load from a TOML file: a ``[synth]`` table if present, else the top level."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: synth config file not found") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc}); fix the syntax") from None
        return cls.from_dict(data.get("synth", data), source=str(path))


def _merge_class(classes: list[ClassSpec], name: str, spec: Any, source: str) -> list[ClassSpec]:
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{source}: synth class {name!r} must be a table, got {spec!r}")
    spec = dict(spec)
    appearance_names = {f.name for f in fields(Appearance)}
    unknown = set(spec) - appearance_names - {"frequency", "difficulty", "lookalike"}
    if unknown:
        raise ConfigError(f"{source}: synth class {name!r} has unknown setting(s) {sorted(unknown)}")
    idx = next((i for i, c in enumerate(classes) if c.name == name), None)
    if idx is None:
        missing = {"frequency", "difficulty"} | appearance_names
        if not missing <= set(spec):
            raise ConfigError(
                f"{source}: new synth class {name!r} needs frequency, difficulty and every appearance field "
                f"({', '.join(sorted(appearance_names))})"
            )
        base = ClassSpec(name, 0.0, 0.0, None, Appearance(**{k: 0.0 for k in appearance_names}))
    else:
        base = classes[idx]
    try:
        app = replace(base.appearance, **{k: float(v) for k, v in spec.items() if k in appearance_names})
        lookalike = spec.get("lookalike", base.lookalike)
        new = ClassSpec(
            name=name,
            frequency=float(spec.get("frequency", base.frequency)),
            difficulty=float(spec.get("difficulty", base.difficulty)),
            lookalike=(str(lookalike) or None) if lookalike is not None else None,
            appearance=app,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: synth class {name!r}: {exc}") from None
    out = list(classes)
    if idx is None:
        out.append(new)
    else:
        out[idx] = new
    return out


def _color_of(name: str, index: int) -> tuple[int, int, int]:
    lowered = [n.lower() for n in SYNTHETIC.names]
    if name.lower() in lowered:
        return SYNTHETIC.colors[lowered.index(name.lower())]
    # A user-defined class: a distinct colour from a fixed palette.
    palette = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (148, 103, 189), (140, 86, 75), (23, 190, 207))
    return palette[index % len(palette)]

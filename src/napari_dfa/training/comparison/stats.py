"""Paired statistics of the comparison (no Qt, numpy only): per-seed differences to ``none``, a
two-sided sign test, a bootstrap interval of the mean difference, and the one-line verdict."""

from __future__ import annotations

import math

import numpy as np

from .methods import REFERENCE

SIGNIFICANCE = 0.05
BOOTSTRAP_SAMPLES = 10_000


def sign_test(diffs) -> float:
    """Two-sided exact sign test of the paired differences (zeros dropped); 1.0 without data."""
    d = np.asarray([v for v in diffs if v is not None and np.isfinite(v)], dtype=float)
    pos, neg = int((d > 0).sum()), int((d < 0).sum())
    n = pos + neg
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(pos, neg) + 1)) / 2.0 ** n
    return float(min(1.0, 2 * tail))


def bootstrap_ci(diffs, *, level: float = 0.95, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean difference, resampling the seeds (numpy only)."""
    d = np.asarray([v for v in diffs if v is not None and np.isfinite(v)], dtype=float)
    if d.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(samples, d.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def _stat(diffs) -> dict:
    d = [v for v in diffs if v is not None and np.isfinite(v)]
    lo, hi = bootstrap_ci(d)
    p = sign_test(d)
    return {"mean": float(np.mean(d)) if d else None, "ci": [lo, hi] if d else None, "p": p, "n": len(d),
            "wins": int(sum(v > 0 for v in d)), "losses": int(sum(v < 0 for v in d)),
            "significant": bool(d) and p < SIGNIFICANCE and (lo > 0 or hi < 0)}


def paired_statistics(results: dict) -> dict:
    """Per method (not ``none``): per-class and mDice differences to ``none`` of the same seed."""
    runs, names = results["runs"], results["classes"]
    out = {}
    for m in results["methods"]:
        if m == REFERENCE:
            continue
        pairs = [(runs[f"{m}/{s}"], runs[f"{REFERENCE}/{s}"]) for s in results["seeds"]
                 if f"{m}/{s}" in runs and f"{REFERENCE}/{s}" in runs]

        def diff(a, b):
            return None if a is None or b is None else a - b

        out[m] = {
            "classes": [_stat([diff(a["dice"][k], b["dice"][k]) for a, b in pairs]) for k in range(len(names))],
            "mdice": _stat([diff(a["mdice"], b["mdice"]) for a, b in pairs]),
        }
    return out


def verdict(results: dict) -> str:
    """One line: per method, whether it differs from ``none`` beyond seed noise."""
    paired, names = results.get("paired") or paired_statistics(results), results["classes"]
    n = len(results["seeds"])
    rule = (f"{n} paired seeds; a difference counts when its bootstrap 95 % interval excludes 0 and the sign "
            f"test gives p < {SIGNIFICANCE}")
    floor = 2 / 2 ** n
    if floor >= SIGNIFICANCE:
        rule += f" — with {n} seeds the sign test cannot go below p = {floor:.3f}, so nothing can count; use ≥ 6"
    parts = []
    for m, st in paired.items():
        md = st["mdice"]
        if md["mean"] is None:
            parts.append(f"{m}: no paired runs")
            continue
        lo, hi = md["ci"]
        if md["significant"]:
            head = "better than none" if md["mean"] > 0 else "worse than none"
        else:
            head = "within seed noise of none"
        cls = [f"{'+' if s['mean'] > 0 else '−'} {names[k]} ({s['mean']:+.3f})"
               for k, s in enumerate(st["classes"]) if s["significant"]]
        tail = f"; per class: {', '.join(cls)}" if cls else ""
        parts.append(f"{m} {head} (mDice {md['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}], p = {md['p']:.3f}){tail}")
    return f"**Verdict** ({rule}): " + "; ".join(parts) + "."

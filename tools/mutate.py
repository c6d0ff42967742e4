"""`make mutate`: mutation testing of the modules that hold the README's promises (docs/testing.md).

Runs mutmut (configured in pyproject.toml: the modules, the tests that cover them) over the
functions below, then prints the score per promise and every survivor. A survivor listed in
``tools/equivalent_mutants.txt`` (its function and its one-line change, with why it is equivalent)
is not counted against the score (there, each signature line follows the "#" lines that say why);
any other survivor makes the run fail, so a change that leaves a promise untested is caught here.

Usage: python tools/mutate.py [--max-children N] [--only PROMISE] [--report-only] [--markdown PATH]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENT = ROOT / "tools" / "equivalent_mutants.txt"

# promise -> mutant-name patterns (no survivor allowed but the equivalent ones)
PROMISES: dict[str, list[str]] = {
    "guard (corrections/guard.py)": ["napari_dfa.corrections.guard.*"],
    "fine-tune split by whole stroke (training/holdout.py)": [
        f"napari_dfa.training.holdout.x_{f}__mutmut_*"
        for f in ("split_holdout_by_stroke", "fold_strokes", "right_kept", "stroke_counts", "plan_holdout",
                  "plan_folds", "trained_strokes", "seen_stroke_maps", "stroke_signature", "all_stroke_signatures")],
    "store resume (inference/segment.py, labels/store.py)": [
        "napari_dfa.inference.segment.x__open_store__mutmut_*",
        "napari_dfa.labels.store.xǁLabelsStoreǁrows_done__mutmut_*",
        "napari_dfa.labels.store.xǁLabelsStoreǁcompleted__mutmut_*",
        "napari_dfa.labels.store.xǁLabelsStoreǁwrite_rows__mutmut_*",
        "napari_dfa.labels.store.x_completeness__mutmut_*"],
    # what is checked before a weight is read: the file, the config's bounds, the tensors' names,
    # shapes and dtypes against the header (the metadata's JSON types have their own tests)
    "checkpoint validation (model/validate.py)": [
        f"napari_dfa.model.validate.x_{f}__mutmut_*"
        for f in ("check_tensors", "check_tensor_shapes", "check_config_bounds", "check_model_path")],
    # the scanline fill: two polygons sharing an edge paint each pixel once
    "GeoJSON rasteriser (corrections/rasterise.py)": ["napari_dfa.corrections.rasterise.x_fill_polygon__mutmut_*"],
    # the tile lattice: fitted to the level, overlaps and the blending taper
    "inference tiling (inference/tiling.py)": [
        f"napari_dfa.inference.tiling.x_{f}__mutmut_*" for f in ("tile_starts", "fit_axis", "taper")],
}

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped",
          36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", None: "not checked"}


def _equivalents() -> set[str]:
    if not EQUIVALENT.exists():
        return set()
    # one signature per line (as signature() writes it); the lines starting with "#" say why
    return {line.strip() for line in EQUIVALENT.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.lstrip().startswith("#")}


def _results() -> dict[str, str]:
    out = {}
    for meta in (ROOT / "mutants").rglob("*.meta"):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            out[name] = STATUS.get(code, "suspicious")
    return out


def signature(name: str) -> str:
    """A survivor's function and its changed line, e.g. ``guard.judge: - x < y | + x <= y``: stable
    when other code moves (mutmut's numbers are not)."""
    diff = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=ROOT, capture_output=True,
                          text=True).stdout
    minus = [ln[1:].strip() for ln in diff.splitlines() if ln.startswith("-") and not ln.startswith("---")]
    plus = [ln[1:].strip() for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    func = name.split("__mutmut_")[0].replace("napari_dfa.", "").replace("ǁ", ".").replace(".x_", ".").replace(".x.", ".")
    return f"{func}: - {' '.join(minus)} | + {' '.join(plus)}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--report-only", action="store_true", help="report the last run's results, run nothing")
    ap.add_argument("--markdown", type=Path, help="also write the table here")
    ap.add_argument("--only", help="run and report only the promises whose name contains this (e.g. guard)")
    args = ap.parse_args(argv)
    promises = {k: v for k, v in PROMISES.items() if not args.only or args.only.lower() in k.lower()}
    if not promises:
        ap.error(f"no promise matches {args.only!r}: " + "; ".join(PROMISES))
    patterns = [p for pats in promises.values() for p in pats]
    if not args.report_only:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # mutants run in forked children: one thread each
        run = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(args.max_children),
                              *patterns], cwd=ROOT, env=env)
        if run.returncode:
            print(f"mutmut run failed (exit {run.returncode})", file=sys.stderr)
            return run.returncode
    results = _results()
    equivalent = _equivalents()
    rows, failing = [], []
    for promise, pats in promises.items():
        names = sorted(n for n in results if any(fnmatch.fnmatchcase(n, p) for p in pats))
        counts: dict[str, int] = defaultdict(int)
        survivors = []
        for n in names:
            status = results[n]
            if status == "survived":
                sig = signature(n)
                if sig in equivalent:
                    status = "equivalent"
                else:
                    survivors.append((n, sig))
            counts[status] += 1
        caught = counts["killed"] + counts["timeout"]
        judged = caught + counts["survived"] + counts["no tests"]
        rows.append((promise, len(names), caught, counts["equivalent"], counts["survived"], counts["no tests"],
                     f"{100 * caught / judged:.0f} %" if judged else "-"))
        for n, sig in survivors:
            print(f"SURVIVED {n}\n    {sig}")
        if survivors:
            failing.append(promise)
    table = ["| promise | mutants | killed | equivalent | survived | no test | score |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    table += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]} | {r[6]} |" for r in rows]
    print("\n".join(table))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text("\n".join(table) + "\n")
    if failing:
        print("non-equivalent survivors in: " + "; ".join(failing) + " (write a test that kills each, or "
              "list it in tools/equivalent_mutants.txt with why)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

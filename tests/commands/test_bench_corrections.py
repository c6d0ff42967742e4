"""The corrections benchmark runs end to end (--quick) and writes a table, a curve and JSON with
sane values; the simulated pathologist paints the largest wrong regions within its budget."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_corrections.py"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_corrections", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_pathologist_paints_the_largest_wrong_region_first(bench):
    truth = np.ones((100, 100), np.uint8)
    truth[:, 50:] = 2
    prediction = truth.copy()
    prediction[10:40, 10:40] = 2  # 900 wrong pixels
    prediction[60:70, 60:70] = 1  # 100 wrong pixels
    prediction[0:2, 98:100] = 1  # 4 wrong pixels: too small to paint
    corrections = np.zeros_like(truth)
    assert bench.paint_round(corrections, prediction, truth, budget=950) == 950
    assert (corrections[10:40, 10:40] == 1).all()  # the big region, whole, with its true class
    assert (corrections[60:70, 60:70] == 2).sum() == 50  # what was left of the budget, as one blob
    assert corrections[0:2, 98:100].sum() == 0
    # A region larger than the budget gets a blob at its thickest point, not the whole region.
    again = np.zeros_like(truth)
    assert bench.paint_round(again, prediction, truth, budget=100) == 100
    ys, xs = np.nonzero(again)
    assert 10 <= ys.min() and ys.max() < 40 and 10 <= xs.min() and xs.max() < 40
    # Already corrected pixels are not painted twice: what is left is the other half of the small
    # region (less its pieces under 16 px).
    before = corrections.copy()
    assert 16 <= bench.paint_round(corrections, prediction, truth, budget=10_000) <= 50
    assert (corrections[before > 0] == before[before > 0]).all()
    assert (corrections[60:70, 60:70] == 2).sum() > 50


def test_own_classes_merge_and_define_the_invasive_front(bench):
    truth = np.full((80, 200), 2, np.uint8)  # tumour ...
    truth[:, 150:] = 3  # ... beside stroma
    truth[:5, :5] = 4
    own = bench.own_truth(truth)
    names = bench.OWN_NAMES
    assert names[own[40, 140] - 1] == "invasive front"  # tumour 10 px from stroma
    assert names[own[40, 20] - 1] == "tumour"  # far from it
    assert names[own[40, 180] - 1] == names[own[0, 0] - 1] == "connective"  # stroma and "other" merged


def test_quick_run_writes_table_curve_and_json(bench, tmp_path):
    out = tmp_path / "bench"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    summary = json.loads((out / "corrections.json").read_text())
    assert set(summary["setups"]) == {"demo classes", "own classes"}
    assert summary["class_names"]["own classes"] == bench.OWN_NAMES
    for setup, rows in summary["setups"].items():
        assert [r["round"] for r in rows] == [0, 1, 2]
        assert rows[0]["c"] is None  # nothing to learn from before the first correction
        shares = [r["corrected_share"] for r in rows]
        assert shares[0] == 0 and 0 < shares[1] <= shares[2] < 0.25  # budget 5 % per round
        for r in rows:
            for m in ("a", "b", "a_unseen", "b_unseen"):
                assert 0 <= r[m] <= 1, (setup, r)
        for r in rows[1:]:
            assert 0 <= r["c"] <= 1 and 0 <= r["c_unseen"] <= 1
            assert all(isinstance(k, bool) for k in r["kept"])
    # The demo model knows these synthetic slides before any correction.
    assert summary["setups"]["demo classes"][0]["a"] > 0.8
    table = (out / "corrections.md").read_text()
    assert "| round | corrected (% of tissue) | (a) fine-tune demo | (b) from scratch | (c) random forest" in table
    assert "### own classes: tumour, invasive front, connective, inflammatory, necrosis" in table
    assert "python benchmarks/bench_corrections.py --quick" in table
    png = (out / "corrections.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_bench_corrections_command_runs_the_curve_on_a_slide_with_truth(tmp_path):
    """napari-dfa bench-corrections on a synthetic slide and its truth TIFF: one round of squares,
    the guarded loop and the random forest, the report and the curve written."""
    import json

    from PIL import Image

    from napari_dfa import synth
    from napari_dfa.cli import main

    slide, truth = synth.write_slide(tmp_path / "s.ome.tif", size=(1024, 1024), seed=5, mpp=0.5)
    out = tmp_path / "report"
    names = "inflammatory,tumour,stroma,other,necrosis"
    assert main(["bench-corrections", str(slide), "--truth", str(truth), "--classes", names, "--out", str(out),
                 "--rounds", "1", "--tiles-per-round", "5", "--squares", "3"]) == 0
    rows = json.loads((out / "bench-corrections.json").read_text())
    assert len(rows) == 1 and rows[0]["corrected_pixels"] == 5 * 3 * 24 * 24
    assert rows[0]["verdict"] in ("promoted", "needs_confirmation", "rejected") and 0 <= rows[0]["forest"] <= 1
    assert 0 <= rows[0]["ours"] <= 1 and rows[0]["method"] in ("head", "deep")
    assert "random forest" in (out / "bench-corrections.md").read_text()
    assert Image.open(out / "bench-corrections.png").size[0] > 100
    # an earlier report is not replaced silently
    assert main(["bench-corrections", str(slide), "--truth", str(truth), "--out", str(out)]) == 1

"""``napari-dfa finetune`` on a small synthetic slide with QuPath GeoJSON corrections written from its
truth (napari_dfa.labels.write_geojson): the dry run, the JSON report, NEW written only when the
guard promotes it (or --force), an unknown class named, a class of the user's own added."""

from __future__ import annotations

import json

import numpy as np
import pytest
from correction_fixtures import CASE_CONFIG, CASE_SEED, confirm_blocks, one_class_strokes, paint_largest_errors
from scipy import ndimage as ndi

from napari_dfa import synth
from napari_dfa._sample_data import open_truth
from napari_dfa.cli import main
from napari_dfa.inference import segment
from napari_dfa.labels import write_geojson
from napari_dfa.model import load_model
from napari_dfa.slide import open_slide
from bcss_classes import NAMES

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """Slide, truth, and corrections where the demo model is wrong, painted from the truth (per
    class, the largest wrong regions) and written as QuPath GeoJSON with two features QuPath users
    also export: a detection (skipped) and an Ignore* annotation."""
    folder = tmp_path_factory.mktemp("cli")
    path, truth_path = synth.write_slide(folder / "case.tif", CASE_CONFIG, size=(1024, 1024), seed=CASE_SEED, mpp=0.5)
    truth = np.asarray(open_truth(truth_path)[0])
    before = np.asarray(segment(open_slide(path), load_model("demo"), level=0).labels)
    errors = paint_largest_errors(truth, before)
    # and annotated two blocks where the model is right, as they are: evidence of what it got right
    painted = np.where(errors > 0, errors, confirm_blocks(truth, before)).astype(np.uint8)
    gj = write_geojson(folder / "corrections.geojson", painted, NAMES)
    doc = json.loads(gj.read_text())
    square = [[[0, 0], [40, 0], [40, 40], [0, 40], [0, 0]]]
    doc["features"] += [
        {"type": "Feature", "id": "b1c7a3e2-0000-4000-8000-000000000001", "geometry": {"type": "Polygon", "coordinates": square},
         "properties": {"objectType": "detection", "classification": {"name": "Tumour"}}},
        {"type": "Feature", "id": "b1c7a3e2-0000-4000-8000-000000000002", "geometry": {"type": "Polygon", "coordinates": square},
         "properties": {"objectType": "annotation", "classification": {"name": "Ignore*"}}},
    ]
    gj.write_text(json.dumps(doc))
    return path, truth, painted, gj


def test_dry_run_reports_the_corrections(case, tmp_path, capsys):
    slide, truth, painted, gj = case
    report = tmp_path / "report.json"
    assert main(["finetune", str(slide), "--model", "demo", "--corrections", str(gj), "--dry-run",
                 "--json", str(report)]) == 0
    r = json.loads(report.read_text())
    assert r["promoted"] is False and r["dry_run"] is True and r["steps"] == 0
    assert r["class_names"] == NAMES and r["level"] == 0
    expected = {NAMES[c - 1]: int((painted == c).sum()) for c in range(1, 6) if (painted == c).any()}
    got = r["corrected_pixels"]
    assert set(got) == set(expected)
    for name, px in expected.items():  # the Ignore* square clears what lay under it
        assert px - 1600 <= got[name] <= px, (name, got[name], px)
    assert [s["where"] for s in r["skipped_features"]] == [f"feature {len(json.loads(gj.read_text())['features']) - 2}"]
    assert "detection" in r["skipped_features"][0]["why"]
    assert "nothing trained" in capsys.readouterr().out


def test_finetune_writes_the_model_only_when_promoted(case, tmp_path):
    slide, truth, painted, gj = case
    out, report = tmp_path / "new.safetensors", tmp_path / "report.json"
    assert main(["finetune", str(slide), "--model", "demo", "--corrections", str(gj), "--out", str(out),
                 "--steps", "40", "--json", str(report)]) == 0
    r = json.loads(report.read_text())
    for key in ("promoted", "reason", "class_names", "corrected_pixels", "skipped_features", "held_out_scores",
                "agreement_outside_corrections", "class_shares", "steps", "seconds"):
        assert key in r, key
    assert isinstance(r["promoted"], bool) and r["seconds"] > 0 and r["frozen_encoder"] is True
    # the default, auto: one method, chosen and said why; --steps are its steps
    assert r["method"] in ("head", "deep") and r["method_chosen"].startswith(r["method"] + ": ")
    assert r["other_method"] is None and r["steps"] == 40
    assert set(r["held_out_scores"]) <= set(NAMES) and all({"old", "new"} <= set(v) for v in r["held_out_scores"].values())
    assert set(r["class_shares"]) == set(NAMES)
    assert all({"before", "after"} <= set(v) for v in r["class_shares"].values())
    assert len(r["check_regions"]) >= 1 or r["reviewed_regions"][0]["region"] == [0, 0, 1024, 1024]
    # Corrections painted from the truth where the model is wrong: promoted, and written.
    assert r["promoted"] is True, r["reason"]
    assert out.exists() and r["written"] == str(out)
    new = load_model(out)
    assert new.class_names == NAMES
    assert new.metadata["provenance"]["guard"]["status"] == "promoted"
    assert new.metadata["provenance"]["parent"] == str(load_model("demo").metadata["source"])


def test_not_promoted_is_not_written_unless_forced(case, tmp_path):
    slide, truth, painted, gj = case
    # One class over mixed tissue: three thick strokes of "inflammatory" across stroma, other, tumour.
    strokes = one_class_strokes(truth.shape, label=1)
    one = write_geojson(tmp_path / "one.geojson", strokes, NAMES)
    out, report = tmp_path / "new.safetensors", tmp_path / "report.json"
    assert main(["finetune", str(slide), "--model", "demo", "--corrections", str(one), "--out", str(out),
                 "--steps", "40", "--json", str(report)]) == 0
    r = json.loads(report.read_text())
    # Held-out strokes of one class test only whether the model finds it: never promoted.
    assert r["promoted"] is False and r["written"] is None
    assert r["reason"].startswith(("All your verified pixels are inflammatory: ", "Kept the old model: ")), r["reason"]
    assert not out.exists()
    assert main(["finetune", str(slide), "--model", "demo", "--corrections", str(one), "--out", str(out),
                 "--steps", "40", "--force", "--json", str(report), "--overwrite"]) == 0  # the report exists
    r = json.loads(report.read_text())
    assert out.exists() and r["forced"] is True and r["promoted"] is False


def test_unknown_class_is_named_and_their_own_classes_are_learnt(case, tmp_path, capsys):
    """A pathologist who calls the small dark round cells "lymphocytes" (the model says
    "inflammatory"): without --classes the new name is an error naming it; with a class list that
    replaces "inflammatory" by "lymphocytes" the model gets a new class token, learns it from the
    largest such region, and finds the class elsewhere too."""
    slide, truth, painted, gj = case
    lab, n = ndi.label(truth == 1)
    largest = np.argmax(ndi.sum(truth == 1, lab, range(1, n + 1))) + 1
    own = np.zeros(truth.shape, np.uint8)
    own[ndi.binary_erosion(lab == largest, iterations=3)] = 1
    # the rest of the tissue in two blocks annotated as it is (lymphocytes aside): other classes too
    before = np.asarray(segment(open_slide(slide), load_model("demo"), level=0).labels)
    rest = confirm_blocks(truth, before)
    rest[rest == 1] = 0
    rest[ndi.binary_dilation(own > 0, iterations=8)] = 0
    own = np.where(own > 0, own, rest).astype(np.uint8)
    names = ["lymphocytes", *NAMES[1:]]
    lymph = write_geojson(tmp_path / "lymph.geojson", own, names, [(20, 60, 200), *[(128, 128, 128)] * 4])
    assert main(["finetune", str(slide), "--model", "demo", "--corrections", str(lymph), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "'lymphocytes'" in err and "--classes inflammatory,tumour,stroma,other,necrosis,lymphocytes" in err

    out, report = tmp_path / "lymph.safetensors", tmp_path / "report.json"
    assert main(["finetune", str(slide), "--model", "demo", "--corrections", str(lymph), "--out", str(out),
                 "--classes", ",".join(names), "--steps", "40", "--force", "--json", str(report)]) == 0
    r = json.loads(report.read_text())
    assert r["class_names"] == names and r["corrected_pixels"]["lymphocytes"] == int((own == 1).sum())
    assert r["class_shares"]["lymphocytes"]["before"] == 0.0 and "inflammatory" not in r["class_shares"]
    # One lymphocyte region is one stroke: nothing of it can be held back, so the guard cannot promote
    # it (it asks for another stroke, or says what got worse); --force writes it.
    assert r["promoted"] is False and r["written"] == str(out) and r["forced"] is True
    assert "lymphocytes" in r["held_out_too_few"] or r["status"] == "rejected", r["reason"]
    new = load_model(out)
    assert new.class_names == names and tuple(new.class_colors[0]) == (20, 60, 200)  # QuPath's colour
    edit = new.metadata["provenance"]["classes_edit"]
    assert edit["added"] == ["lymphocytes"] and edit["removed"] == ["inflammatory"]
    # learnt where it was painted, and found where it was not
    labels = np.asarray(segment(open_slide(slide), new, level=0).labels)
    elsewhere = (truth == 1) & (own != 1)
    assert elsewhere.sum() > 1000 and (labels[elsewhere] == 1).mean() > 0.5


def test_train_encoder_trains_it_on_larger_crops(case, tmp_path):
    """--train-encoder: the encoder's weights change too (frozen by default), on 512-px crops."""
    import torch

    slide, truth, painted, gj = case
    out, report = tmp_path / "deep.safetensors", tmp_path / "report.json"
    assert main(["finetune", str(slide), "--model", "demo", "--corrections", str(gj), "--out", str(out),
                 "--steps", "3", "--train-encoder", "--force", "--json", str(report)]) == 0
    r = json.loads(report.read_text())
    assert r["frozen_encoder"] is False and r["crop"] == 512 and r["steps"] == 3
    old, new = load_model("demo").model, load_model(out).model
    changed = [n for n, p in new.encoder.named_parameters()
               if not torch.equal(p, dict(old.encoder.named_parameters())[n])]
    assert changed, "the encoder did not train"
    assert load_model(out).metadata["provenance"]["finetune"]["frozen_encoder"] is False


def test_one_model_from_two_slides(case, tmp_path):
    """--also SLIDE FILE: the corrections of a second slide train the same model and count alike."""
    slide, truth, painted, gj = case
    other, other_truth = synth.write_slide(tmp_path / "other.tif", CASE_CONFIG, size=(512, 512), seed=CASE_SEED + 1,
                                           mpp=0.5)
    truth2 = np.asarray(open_truth(other_truth)[0])
    strokes = np.zeros_like(truth2)
    for y in (40, 200, 360):
        for x in (40, 200, 360):
            strokes[y:y + 24, x:x + 24] = truth2[y + 12, x + 12]
    gj2 = write_geojson(tmp_path / "other.geojson", strokes, NAMES)
    report = tmp_path / "report.json"
    assert main(["finetune", str(slide), "--model", "demo", "--corrections", str(gj), "--also", str(other), str(gj2),
                 "--out", str(tmp_path / "new.safetensors"), "--method", "head", "--force",
                 "--json", str(report)]) == 0
    r = json.loads(report.read_text())
    first = {NAMES[c - 1]: int((painted == c).sum()) for c in range(1, 6) if (painted == c).any()}
    second = {NAMES[c - 1]: int((strokes == c).sum()) for c in range(1, 6) if (strokes == c).any()}
    assert r["more_slides"][0]["corrected_pixels"] == second
    both = {n: first.get(n, 0) + second.get(n, 0) for n in set(first) | set(second)}
    for n, px in both.items():  # the Ignore* square of the first file clears up to 1600 px
        assert px - 1600 <= r["corrected_pixels"][n] <= px, (n, r["corrected_pixels"][n], px)
    prov = load_model(tmp_path / "new.safetensors").metadata["provenance"]
    assert len(prov["more_correction_stores"]) == 1

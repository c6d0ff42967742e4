"""The class list a pathologist edits, and the accept step, without a display (no Qt, no viewer):
add / rename / recolour / remove against the model's classes, what changed and where each of the
model's labels goes, saved corrections of a class the list lacks, teaching the list to a real model;
whether a fine-tuned model may be accepted (promoted, needs confirmation, rejected; guard on and
off), and what accepting it writes into its provenance."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dfa.classes import default_colors
from napari_dfa.corrections import CorrectionStore
from napari_dfa.corrections.classdraft import ClassDraft
from napari_dfa.corrections.guard import GuardVerdict
from napari_dfa.corrections.outcome import FinetuneOutcome, next_version
from napari_dfa.errors import DataError
from napari_dfa.model import load_model
from napari_dfa.training import FinetuneResult

NAMES = ["tumour", "stroma", "necrosis"]
COLORS = [(200, 0, 0), (0, 200, 0), (0, 0, 200)]


@pytest.fixture
def draft():
    return ClassDraft(NAMES, COLORS)


# --- the class list -------------------------------------------------------------------------------
def test_a_fresh_draft_is_the_models_list_and_teaches_nothing(draft):
    assert draft.names() == NAMES and draft.colors() == COLORS
    assert not draft.changed and draft.edit() == {} and draft.renames == {}
    np.testing.assert_array_equal(draft.label_map(), [0, 1, 2, 3])
    assert ClassDraft.of(None).names() == []


def test_a_new_class_gets_the_colour_farthest_from_those_in_use(draft):
    assert draft.add("  artefact ") == "artefact"
    assert draft.names() == [*NAMES, "artefact"] and draft.changed
    new = np.array(draft.color_of("artefact"), float)
    # of the hues on offer, none is farther from the nearest colour in use
    used = np.array(COLORS, float)
    nearest = np.min(np.linalg.norm(used - new, axis=1))
    offered = default_colors(12)
    assert all(np.min(np.linalg.norm(used - np.array(c, float), axis=1)) <= nearest for c in offered)
    assert nearest > 100  # not a shade of red, green or blue in use
    # a colour the user picked is kept (as RGB, whatever else came with it)
    draft.add("mucin", (10, 20, 30, 255))
    assert draft.color_of("mucin") == (10, 20, 30)


def test_a_name_that_is_empty_or_taken_is_refused_and_nothing_changes(draft):
    for bad, why in (("", "needs a name"), ("   ", "needs a name"), ("Tumour", "already")):
        with pytest.raises(DataError, match=why):
            draft.add(bad)
    with pytest.raises(DataError, match="empty or taken"):
        draft.rename("stroma", "NECROSIS")
    with pytest.raises(DataError, match="no class 'fat'"):
        draft.rename("fat", "adipose")
    with pytest.raises(DataError, match="no class 'fat'"):
        draft.recolor("fat", (1, 2, 3))
    assert draft.names() == NAMES and not draft.changed


def test_a_renamed_class_keeps_the_models_name_through_every_rename_and_back(draft):
    assert draft.rename("stroma", " Stroma (collagen) ") == "Stroma (collagen)"
    assert draft.renames == {"stroma": "Stroma (collagen)"}
    draft.rename("Stroma (collagen)", "collagen")  # renamed again: still the model's stroma
    assert draft.renames == {"stroma": "collagen"}
    np.testing.assert_array_equal(draft.label_map(), [0, 1, 2, 3])  # it keeps its label
    assert draft.edit() == {"class_names": ["tumour", "collagen", "necrosis"], "class_colors": COLORS,
                            "renames": {"stroma": "collagen"}}
    draft.rename("collagen", "stroma")  # back to its own name: no rename, nothing to teach
    assert draft.renames == {} and not draft.changed
    draft.rename("tumour", "TUMOUR")  # the case of its own name may change
    assert draft.renames == {"tumour": "TUMOUR"} and draft.changed
    draft.add("mucin")
    draft.rename("mucin", "mucus")  # a class the model never had is no rename of the model's
    assert draft.renames == {"tumour": "TUMOUR"}


def test_recolouring_changes_the_list_and_only_that_colour(draft):
    draft.recolor("necrosis", (5, 6, 7))
    assert draft.colors() == [COLORS[0], COLORS[1], (5, 6, 7)] and draft.changed
    assert draft.edit()["renames"] is None
    draft.recolor("necrosis", COLORS[2])
    assert not draft.changed


def test_removing_a_class_moves_the_labels_after_it_and_drops_its_rename(draft):
    draft.rename("stroma", "collagen")
    draft.remove("collagen")
    assert draft.names() == ["tumour", "necrosis"] and draft.renames == {}
    np.testing.assert_array_equal(draft.label_map(), [0, 1, 0, 2])  # stroma's pixels: no class
    draft.remove("tumour")
    with pytest.raises(DataError, match="last class"):
        draft.remove("necrosis")
    with pytest.raises(DataError, match="no class 'tumour'"):
        draft.check_removable("tumour")
    assert draft.names() == ["necrosis"]


def test_saved_corrections_of_a_class_the_list_lacks_add_it_and_keep_their_pixels(draft, tmp_path):
    store = CorrectionStore(tmp_path / "c.zarr", class_names=["tumour", "fat", "stroma", "gland"])
    patch = store.create_patch(level=0, region=(0, 0, 20, 20))
    block = np.zeros((20, 20), np.uint8)
    block[:5] = 2  # fat
    block[5:10] = 3  # stroma
    store.write(patch.key, (0, 0), block)
    assert draft.bind(store) == ["fat"]  # gland has no corrections: not added
    assert draft.names() == [*NAMES, "fat"] and store.class_names == draft.names()
    assert store.counts_by_name() == {"stroma": 100, "fat": 100}  # renumbered by name, nothing lost
    assert draft.color_of("fat") not in COLORS
    assert draft.bind(store) == []  # bound: nothing more to add


def test_applying_the_list_to_a_real_model_keeps_renamed_classes(tiny_model_path):
    seg = load_model(tiny_model_path)
    draft = ClassDraft.of(seg)
    old = list(seg.class_names)
    draft.rename(old[2], "collagen")
    draft.remove(old[0])
    draft.add("artefact", (1, 2, 3))
    new = draft.apply(seg, {"artefact": 300, "collagen": 100})
    assert new is not seg and new.class_names == [*old[1:2], "collagen", *old[3:], "artefact"]
    assert tuple(new.class_colors[-1]) == (1, 2, 3) and seg.class_names == old  # the input is untouched
    np.testing.assert_array_equal(draft.label_map(), [0, 0, 1, 2, 3, 4])
    assert ClassDraft.of(new).names() == draft.names()


def test_version_labels_count_only_the_versions_of_their_kind():
    labels = ["tiny.safetensors", "fine-tune 1", "classes 1", "my-fine-tune 9.safetensors", "fine-tune 2"]
    assert next_version(labels, "fine-tune") == "fine-tune 3"
    assert next_version(labels, "classes") == "classes 2"
    assert next_version([], "classes") == "classes 1"


# --- the accept step ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def old(tiny_model_path):
    return load_model(tiny_model_path)


def _outcome(old, path, status: str, *, guard: bool = True) -> FinetuneOutcome:
    """What fine-tuning ``old`` returned: a candidate model (a real one) and the guard's ``status``."""
    candidate = load_model(path)
    candidate.metadata.setdefault("provenance", {})["guard"] = {"status": status, "kept": False}
    result = FinetuneResult(segmenter=candidate, promoted=status == "promoted", old_score=0.5, new_score=0.6)
    verdict = GuardVerdict(status=status, reason=f"The guard says {status}.")
    return FinetuneOutcome(result=result, verdict=verdict, kept=False, segmenter=old, candidate=candidate,
                           guard=guard)


@pytest.mark.parametrize("status, guard, acceptable", [
    ("promoted", True, True),
    ("needs_confirmation", True, True),  # too little to test it: the user decides
    ("rejected", True, False),
    ("rejected", False, True),  # the guard is off: the user judges
    ("needs_confirmation", False, True),
])
def test_what_may_be_accepted(old, tiny_model_path, status, guard, acceptable):
    assert _outcome(old, tiny_model_path, status, guard=guard).acceptable is acceptable


def test_accepting_keeps_the_candidate_and_says_so_in_its_provenance(old, tiny_model_path):
    asked = _outcome(old, tiny_model_path, "needs_confirmation")
    assert asked.accept() is asked.candidate
    assert asked.kept and asked.segmenter is asked.candidate
    guard = asked.candidate.metadata["provenance"]["guard"]
    assert guard == {"status": "needs_confirmation", "kept": True, "confirmed": True}
    assert "guard" not in (old.metadata.get("provenance") or {})  # the old model's record is its own

    promoted = _outcome(old, tiny_model_path, "promoted")
    promoted.accept()
    assert promoted.candidate.metadata["provenance"]["guard"] == {"status": "promoted", "kept": True,
                                                                  "confirmed": False}


def test_a_model_the_guard_rejected_cannot_be_accepted(old, tiny_model_path):
    rejected = _outcome(old, tiny_model_path, "rejected")
    with pytest.raises(DataError, match="guard rejected"):
        rejected.accept()
    assert not rejected.kept and rejected.segmenter is old
    assert rejected.candidate.metadata["provenance"]["guard"]["kept"] is False

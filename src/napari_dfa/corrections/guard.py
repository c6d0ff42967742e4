"""The guard: does a fine-tuned model replace the one the corrections were made against? (no Qt)

It judges only on what the pathologist verified: strokes they painted, QuPath annotations they
drew, and regions they confirmed as right ("Looks right": the labels shown there, stored with the
corrections). The old model's labels anywhere else are **not** evidence: on tissue or classes the
model never saw they are the error the corrections fight, and a guard that protected them kept
the worse model and promoted arbitrary ones (issue 21). What the new model would change where
nothing is verified is measured and shown (agreement, class shares: the review's magenta layer and
table), never used to reject: only to ask the pathologist to look when it is large (rule (e)).

The verified pixels are split by whole strokes (:func:`napari_dfa.training.holdout.split_holdout_by_stroke`):
a model is fitted without the held-back ones and both models are scored on them, per class.

(a) **Better where the pathologist said what is right.** The mean Dice over the scored classes
    must improve (or stay within 0.01 when the old model is already above :data:`SATURATED`),
    and no scored class may drop by more than :data:`CLASS_DROP`: a class that collapses into
    another fails here, as soon as a stroke or a confirmed region of it is held back. A drop
    counts when the held-back strokes agree on it: resampled by whole stroke, the class is worse in
    at least :data:`DROP_HOLDS` of the resamplings (a drop one or two of a handful of squares carry
    is noise). On a real-pixel mosaic the look-alike drops that rejected better models held across
    their strokes; what settled them was more evidence — from a second round on, the strokes an
    earlier head trained on, scored by its recipe refitted without them (training/head.py).
    A gain below :data:`MIN_GAIN` (on an old mean below :data:`SATURATED`) is no evidence either
    way: the guard asks.
(b) **Enough to test every verified class.** A class with verified pixels but too few held back
    (a single stroke: nothing to hold back without losing all of it) cannot be scored; the guard
    then asks (``needs_confirmation``) and says what would settle it: one more stroke of that
    class, or a confirmed region with it.
    It must also keep what the old model had right by the pathologist's word (pooled, not
    resampled: confirmed regions hold a few large pieces, and careless strokes' damage to one of
    them is real, resampled or not): of each class's
    held-back verified pixels the old model labelled right, the new one may get at most
    :data:`RIGHT_SLACK` wrong (one class painted carelessly over confirmed tissue fails here, even when its own gain
    lifts the mean), unless it traded them for more in that class: it labels more of the class's
    held-back verified pixels right than the old model did, or the class's own held-out Dice rose
    by at least :data:`CLASS_DROP` (necrosis the old model found by painting it far too widely,
    0.39 → 0.73 with a fifth of its old hits given up, is a gain, not a regression). The rule protects a class the old model knew by the pathologist's word, most
    of whose held-back verified pixels it had right (:data:`RIGHT_MAJORITY`): on a class it mostly
    got wrong, a few pixels it had right by chance say nothing (a real-pixel round whose new model
    raised the class's held-out Dice 0.05 → 0.74 flipped 39 % of them).
(c) **Something verified where the model was right.** Strokes are painted where the model errs,
    so held-back strokes say what the new model learnt, not whether it got worse where the old
    one was right: on the demo's own tissue, a head fitted on such strokes alone was promoted and
    fell from 0.91 to 0.58 mean Dice where nothing was corrected. When the old model knew the
    verified classes but labelled none of the verified pixels right, the guard asks for a
    confirmed region ("Looks right"). (A class list of the pathologist's own, none of whose
    classes the model had, is judged on the strokes alone: the old model is right nowhere.)
(d) **More than one class verified.** When every verified pixel is of one class, the held-back
    pixels test whether the new model finds that class, not whether it now paints it where it
    does not belong (a model that paints it everywhere scores perfectly: cellpose #947/#1377 show
    the same failure in another tool). The guard then asks for another class or a confirmed
    region; one-class strokes are never promoted (benchmarks/bench_guard.py).

(e) **No more change than the verified pixels can vouch for.** A model the verified pixels favour
    that would change more than :data:`LOOK_SHARE` of the tissue nobody verified (compared where
    the old model's class is still in the list) is asked about, not promoted: careless one-class
    strokes beside confirmed regions that the new model kept right passed (a)–(d) and changed half
    the tissue. A class list of one's own is compared only by the names it kept.

When the class list changes, the old model scores 0 on a class it did not have (by name), and
the changes shown are compared by class name (a new class starts at 0 %, a removed one is not
compared).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

CLASS_DROP = 0.10  # largest held-out Dice drop of one class
# Share of resamplings of the held-back strokes (whole strokes, with replacement) in which a class
# must be worse for its drop to count: about a one-sided 90 % bootstrap interval.
DROP_HOLDS = 0.9
DROP_RESAMPLES = 400
# Fewer held-back strokes of a class than this: resampling them says little, the pooled pixels decide
# (a confirmed region is a few large pieces of each class, and damage to one of them is real).
MIN_RESAMPLED_STROKES = 5
SATURATED = 0.98  # held-out mean Dice above which "not worse" is as good as "better"
# Smallest held-out mean gain that promotes; a smaller one is asked about: careless one-class strokes
# over tissue the model is sure of moved it by 0.00-0.02 once the head kept the model's sure answers,
# and still cost 0.13-0.15 mean Dice where nothing was corrected; corrections that helped gained
# 0.08-0.39 (benchmarks/bench_guard.py, bench_corrections.py, bench_realpix.py).
MIN_GAIN = 0.05
# Of the held-back verified pixels the old model labelled right, the share the new one may get wrong
# (one-class strokes over confirmed tissue flipped 30 % of them; truth-painted ones 15 %, where the confirmed
# labels held some of the old model's errors, which the new model fixed).
RIGHT_SLACK = 0.20
MIN_RIGHT_PIXELS = 100
RIGHT_MAJORITY = 0.5  # share of a class's held-back verified pixels the old model had right for the rule to hold
# Share of the compared tissue (the old model's classes the new one keeps, nothing verified there)
# above which a model the verified pixels favour is not promoted but asked about: careless one-class
# strokes beside confirmed regions that the new model kept right changed 30-50 % of it (0.97 -> 0.41
# mean Dice there, benchmarks/bench_guard.py); truth-painted corrections 13 %.
LOOK_SHARE = 0.25
MIN_COMPARED_PIXELS = 256  # fewer compared pixels in a region: it is not judged

PROMOTED, NEEDS_CONFIRMATION, REJECTED = "promoted", "needs_confirmation", "rejected"


@dataclass
class RegionComparison:
    """Old and new labels over one region: what the new model would change there (shown, not judged).

    Arguments:
      name: how the region is called in messages ("reviewed region", "check region 2", ...).
      old: h×w labels of the old model (its own label numbers; 0 = no tissue).
      new: h×w labels of the new model (0 = no tissue).
      corrected: h×w, non-zero where a correction lies (not compared); None: none.
      trained: h×w bool, pixels whose old labels were replayed in training (not compared: the new
        model was taught to keep them); None: none.
      tissue: h×w bool, the pixels to compare; None: where the old labels are non-zero.
    """

    name: str
    old: np.ndarray
    new: np.ndarray
    corrected: np.ndarray | None = None
    trained: np.ndarray | None = None
    tissue: np.ndarray | None = None


@dataclass
class HeldOut:
    """What the held-out corrections say (from :class:`~napari_dfa.training.FinetuneResult`).

    Arguments:
      old / new: Dice per class name on the held-out pixels, for the classes scored.
      pixels: held-out pixels per class name.
      too_few: ``{class: held-out pixels}`` of corrected classes that could not be scored.
      confusion: (K+1)×(K+1) over every corrected pixel, rows the correction, columns the old
        label there, in the new model's label numbers (what the corrections changed).
    """

    old: dict[str, float] = field(default_factory=dict)
    new: dict[str, float] = field(default_factory=dict)
    pixels: dict[str, int] = field(default_factory=dict)
    too_few: dict[str, int] = field(default_factory=dict)
    confusion: np.ndarray | None = None
    # per label of the new list: (held-back verified pixels the old model had right, still right)
    right_kept: dict = field(default_factory=dict)
    # per held-back stroke: (its label, the old model's labels over it counted, the new model's), as
    # napari_dfa.training.holdout.stroke_counts gives them; None: only the pooled scores are known
    strokes: tuple | None = None


@dataclass
class GuardVerdict:
    """The guard's answer.

    Attributes:
      status: ``promoted``, ``needs_confirmation`` (nothing against it, but too little held out
        to test it: the user decides) or ``rejected``.
      reason: the verdict in plain words, one or a few sentences.
      problems: each failed check in plain words (empty when promoted).
      held_out_old / held_out_new: mean Dice over the scored classes (None when none).
      agreement: share of the compared tissue where new and old labels agree (None: nothing
        compared): what the review shows, not what decides.
      regions: per region ``{"name", "pixels", "agreement"}``.
      shares: per class name ``{"before", "after", "new_class"}`` (shares of the compared tissue).
      compared_pixels: pixels compared where nothing is verified.
    """

    status: str
    reason: str
    problems: list[str] = field(default_factory=list)
    held_out: HeldOut = field(default_factory=HeldOut)
    held_out_old: float | None = None
    held_out_new: float | None = None
    agreement: float | None = None
    regions: list[dict] = field(default_factory=list)
    shares: dict[str, dict] = field(default_factory=dict)
    compared_pixels: int = 0

    @property
    def promoted(self) -> bool:
        return self.status == PROMOTED

    @property
    def needs_confirmation(self) -> bool:
        return self.status == NEEDS_CONFIRMATION

    def as_dict(self) -> dict:
        """JSON-ready: status, reason, problems, held-out scores per class, agreement, shares."""
        ho = self.held_out
        return {
            "status": self.status, "promoted": self.promoted, "reason": self.reason, "problems": list(self.problems),
            "held_out": {"old_mean": self.held_out_old, "new_mean": self.held_out_new,
                         "per_class": {n: {"old": ho.old.get(n), "new": ho.new.get(n), "pixels": ho.pixels.get(n, 0)}
                                       for n in sorted(set(ho.old) | set(ho.pixels), key=str)},
                         "too_few": dict(ho.too_few)},
            "agreement_outside_corrections": self.agreement,
            "regions": list(self.regions), "class_shares": dict(self.shares),
            "compared_pixels": self.compared_pixels,
        }


def label_map(old_names: Sequence[str], new_names: Sequence[str], renames: dict[str, str] | None = None) -> np.ndarray:
    """Look-up table old label → new label (by class name, case-insensitive, after ``renames``;
    0 for a class the new list does not have)."""
    renames = {str(k).lower(): str(v).lower() for k, v in (renames or {}).items()}
    lookup = {str(n).lower(): i + 1 for i, n in enumerate(new_names)}
    lut = np.zeros(len(old_names) + 1, np.uint8)
    for i, n in enumerate(old_names):
        low = str(n).lower()
        lut[i + 1] = lookup.get(renames.get(low, low), 0)
    return lut


def _resamplings(strokes, c: int, resamples: int, seed: int):
    """Stroke multiplicities of ``resamples`` resamplings of the held-back strokes (whole strokes,
    with replacement), those that hold a stroke of label ``c``, and which strokes are of ``c``;
    None when there is nothing to resample (no per-stroke counts, or fewer than
    :data:`MIN_RESAMPLED_STROKES` strokes of ``c``)."""
    if strokes is None:
        return None
    classes = np.asarray(strokes[0])
    is_c = classes == c
    if is_c.sum() < MIN_RESAMPLED_STROKES:
        return None
    n = len(classes)
    weights = np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=resamples)  # resamples × n
    return weights[weights @ is_c > 0], is_c


def drop_holds(strokes, c: int, *, resamples: int = DROP_RESAMPLES, seed: int = 0) -> float:
    """Share of resamplings of the held-back strokes (whole strokes, with replacement) in which
    label ``c``'s Dice is lower for the new model than for the old; resamplings without a stroke of
    ``c`` do not count. 1.0 when there is nothing to resample (``strokes`` None, or fewer than
    :data:`MIN_RESAMPLED_STROKES` strokes of ``c``): the pooled scores decide alone."""
    drawn = _resamplings(strokes, c, resamples, seed)
    if drawn is None:
        return 1.0
    weights, is_c = drawn
    old, new = np.asarray(strokes[1]), np.asarray(strokes[2])

    def dice(counts):
        tp = weights @ np.where(is_c, counts[:, c], 0)
        size = weights @ np.where(is_c, counts.sum(1), 0)
        fp = weights @ np.where(is_c, 0, counts[:, c])
        return 2 * tp / np.maximum(tp + size + fp, 1)

    return float((dice(new) < dice(old)).mean())


def _pct(v: float) -> str:
    return f"{100 * v:.0f} %" if v >= 0.01 or v == 0 else f"{100 * v:.1f} %"


def judge(held_out: HeldOut, regions: Sequence[RegionComparison], *, old_names: Sequence[str],
          new_names: Sequence[str], renames: dict[str, str] | None = None) -> GuardVerdict:
    """Decide whether the fine-tuned model replaces the old one (see the module docstring).

    Arguments:
      held_out: scores on the held-out corrections (new model's class names).
      regions: old and new labels where the change is compared.
      old_names / new_names: the class lists of the two models (labels 1..K).
      renames: ``{old name: new name}`` of classes that were renamed.

    Returns: a :class:`GuardVerdict`.
    """
    new_names = list(new_names)
    k = len(new_names)
    lut = label_map(old_names, new_names, renames)
    known_new = np.zeros(k + 1, bool)  # new labels that an old class maps to
    known_new[lut[lut > 0]] = True
    problems: list[str] = []

    # (a) held-out corrections, per class
    scored = [n for n in held_out.new if n in held_out.old]
    old_mean = float(np.mean([held_out.old[n] for n in scored])) if scored else None
    new_mean = float(np.mean([held_out.new[n] for n in scored])) if scored else None
    if scored:
        better = new_mean > old_mean or (old_mean >= SATURATED and new_mean >= old_mean - 0.01)
        if not better:
            problems.append(f"it is not better on the corrections held back to test it "
                            f"(mean Dice {old_mean:.2f} → {new_mean:.2f})")
        for n in scored:
            if held_out.new[n] >= held_out.old[n] - CLASS_DROP:
                continue
            share = drop_holds(held_out.strokes, new_names.index(n) + 1 if n in new_names else -1)
            if share < DROP_HOLDS:
                logger.info("guard: %s %.2f -> %.2f on the held-back strokes, but worse in only %.0f %% of "
                            "their resamplings: not counted", n, held_out.old[n], held_out.new[n], 100 * share)
            else:
                problems.append(f"{n} got worse on the held-back corrections "
                                f"(Dice {held_out.old[n]:.2f} → {held_out.new[n]:.2f})")

    # (b) what the old model had right by the pathologist's word stays right
    for c, counts in sorted((held_out.right_kept or {}).items()):
        right, kept = counts[:2]
        now_right = counts[2] if len(counts) > 2 else kept  # (right, kept) alone: nothing made up for
        if not 0 < c <= k or right < max(MIN_RIGHT_PIXELS, RIGHT_MAJORITY * held_out.pixels.get(new_names[c - 1], 0)):
            continue
        name = new_names[c - 1]
        traded = now_right >= right or held_out.new.get(name, 0.0) >= held_out.old.get(name, 1.0) + CLASS_DROP
        if kept < (1 - RIGHT_SLACK) * right and not traded:
            problems.append(f"it gets {_pct(1 - kept / right)} of the held-back {name} you verified wrong "
                            f"where the old model had it right (at most {_pct(RIGHT_SLACK)})")

    # What the corrections say: rows the verified class, columns the old label under it.
    conf = held_out.confusion
    if conf is None or conf.shape != (k + 1, k + 1):
        conf = np.zeros((k + 1, k + 1), np.int64)

    # What the new model would change where nothing is verified (shown, not judged)
    before = np.zeros(k + 1, np.int64)
    after = np.zeros(k + 1, np.int64)
    region_rows, total, agree_total, both_total = [], 0, 0, 0
    per_region = []
    for r in regions:
        old = np.asarray(r.old)
        new = np.asarray(r.new)
        mask = np.asarray(r.tissue, bool) if r.tissue is not None else old > 0
        if r.corrected is not None:
            mask &= np.asarray(r.corrected) == 0
        if r.trained is not None:
            mask &= ~np.asarray(r.trained, bool)
        mapped = lut[np.clip(old[mask], 0, len(lut) - 1)]
        newv = new[mask].astype(np.int64)
        # Only pixels whose old class the new model still has can be compared (by name).
        mapped, newv = mapped[mapped > 0], newv[mapped > 0]
        both = (mapped > 0) & (newv > 0) & known_new[np.clip(newv, 0, k)]
        n = int(mapped.size)
        if n < MIN_COMPARED_PIXELS:
            continue
        before += np.bincount(mapped, minlength=k + 1)[:k + 1]
        after += np.bincount(np.clip(newv, 0, k), minlength=k + 1)[:k + 1]
        agree = int((mapped[both] == newv[both]).sum())
        per_region.append((r.name, n, agree, int(both.sum())))
        total += n
        agree_total += agree
        both_total += int(both.sum())

    agreement = None
    shares: dict[str, dict] = {}
    if total:
        agreement = agree_total / both_total if both_total else None
        for name, n, agree, both in per_region:
            region_rows.append({"name": name, "pixels": n, "agreement": agree / both if both else None})
        for c in range(1, k + 1):
            shares[new_names[c - 1]] = {"before": float(before[c] / total), "after": float(after[c] / total),
                                        "new_class": not bool(known_new[c])}

    too_few = {n: px for n, px in held_out.too_few.items()}
    verified = [new_names[c - 1] for c in range(1, k + 1) if conf[c, :].sum() > 0]
    # Verified pixels of classes the old model had, and those of them it labelled right already.
    known_verified = int(sum(conf[c, :].sum() for c in range(1, k + 1) if known_new[c]))
    right_verified = int(sum(conf[c, c] for c in range(1, k + 1) if known_new[c]))
    changed = None if agreement is None else 1 - agreement
    where = "" if changed is None else (f" Where nothing is verified it would change {_pct(changed)} of the tissue "
                                         "(shown in magenta): look before accepting.")
    per = ", ".join(f"{n} {held_out.old[n]:.2f} → {held_out.new[n]:.2f}" for n in scored)  # the scored classes
    if problems:
        status = REJECTED
        reason = ("Kept the old model: " + "; ".join(problems) + ". Reject it, and paint or confirm more of "
                  "what it gets wrong.")
    elif too_few or not scored:
        status = NEEDS_CONFIRMATION
        names = list(too_few) or verified or ["any class"]
        reason = (f"Too little verified to test the new model on {', '.join(names)}: strokes are held back "
                  f"whole, and {'these classes have' if len(names) > 1 else 'this class has'} only one. "
                  f"Paint one more stroke of {' and of '.join(names)} somewhere else, or confirm a region with "
                  f"{'them' if len(names) > 1 else 'it'} (Looks right), then fine-tune again; or look at what "
                  f"changed and accept it only if it looks right.{where}")
    elif known_verified and not right_verified:
        status = NEEDS_CONFIRMATION
        reason = ("Every verified pixel lies where the model was wrong: that shows what the new model learnt, "
                  "not whether it got worse where the model was right. Confirm a region where the labels are "
                  "right (Looks right), then fine-tune again; or look at what changed and accept it only if it "
                  f"looks right.{where}")
    elif len(verified) == 1:
        status = NEEDS_CONFIRMATION
        name = verified[0]
        reason = (f"All your verified pixels are {name}: the held-back strokes test whether the model finds {name}, "
                  f"not whether it now paints it where it does not belong. Paint another class, or confirm a "
                  f"region where the labels are right (Looks right), then fine-tune again; or look at what "
                  f"changed and accept it only if it looks right.{where}")
    elif scored and old_mean < SATURATED and new_mean < old_mean + MIN_GAIN:
        status = NEEDS_CONFIRMATION
        reason = (f"The fine-tuned model is barely better on the verified pixels held back to test it (mean Dice "
                  f"{old_mean:.2f} → {new_mean:.2f}: {per}; less than {MIN_GAIN:.2f} is within what a few strokes "
                  "vary by). Paint where it is still wrong, or confirm a region (Looks right), then fine-tune "
                  f"again; or look at what changed and accept it only if it looks right.{where}")
    elif changed is not None and changed > LOOK_SHARE:
        status = NEEDS_CONFIRMATION
        reason = (f"The fine-tuned model is better on the verified pixels held back to test it (mean Dice "
                  f"{old_mean:.2f} → {new_mean:.2f}: {per}), but where nothing is verified it would change "
                  f"{_pct(changed)} of the tissue (shown in magenta), more than what you verified can vouch for "
                  f"(at most {_pct(LOOK_SHARE)}). Look at the changes and accept them only if they look right, or "
                  "confirm more regions (Looks right) and fine-tune again.")
    else:
        status = PROMOTED
        reason = (f"The fine-tuned model is better on the verified pixels held back to test it (mean Dice "
                  f"{old_mean:.2f} → {new_mean:.2f}: {per}), and no verified class got worse.{where}")
    verdict = GuardVerdict(status=status, reason=reason, problems=problems, held_out=held_out,
                           held_out_old=old_mean, held_out_new=new_mean, agreement=agreement,
                           regions=region_rows, shares=shares, compared_pixels=total)
    logger.info("guard: %s (%s)", status, reason)
    return verdict

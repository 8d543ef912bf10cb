"""Contradicting near-duplicates: frames of one subject that are near-identical in pixels but
whose masks disagree (one empty and the other not, or overlapping with a Dice below 0.2).

In the nerve competition a subject's scan sometimes holds the same view twice, annotated once
with the nerve and once without: the network is taught both answers for one image. data.py
lists such pairs in contradictions.csv and, with --drop-contradictions, drops the empty-masked
member of each (annotators missed nerves far more often than they drew phantom ones).

Similarity: each frame shrunk to 32x24 (area averaging: speckle and small shifts vanish) and
standardised; two frames' similarity is the correlation of their thumbnails (1: the same
picture up to brightness and contrast). On the competition's subjects 1 and 2
(../shared/data/nerve-kaggle-sample) repeated frames score 0.987 to 1.000, then there is a gap:
the next pairs (0.979, 0.976, 0.975) are neighbouring but visibly moved views. Hence 0.98.
"""

import csv
import io
import logging

import cv2
import numpy as np

from kit import arrays

log = logging.getLogger(__name__)

THUMBNAIL = (32, 24)  # (width, height): the frames' 580x420 aspect, 768 values
SIMILAR = 0.98  # thumbnail correlation from which two frames count as the same view
POOR_DICE = 0.2  # two masks of one view overlapping less than this disagree
NAME = "contradictions.csv"
COLUMNS = ("index_a", "index_b", "name_a", "name_b", "subject", "similarity", "dice", "empty",
           "dropped")


def thumbnails(images, sizes=None):
    """(N, 768) float32: each frame (its own part, grey) shrunk to THUMBNAIL, mean 0, std 1.
    A flat frame becomes all zeros: similar to nothing, not even to another flat frame."""
    out = np.empty((len(images), THUMBNAIL[0] * THUMBNAIL[1]), np.float32)
    for i in range(len(images)):
        image = images[i] if sizes is None else images[i, :sizes[i][0], :sizes[i][1]]
        small = cv2.resize(np.ascontiguousarray(image), THUMBNAIL, interpolation=cv2.INTER_AREA)
        small = small.astype(np.float32)
        small = small.mean(-1) if small.ndim == 3 else small
        std = small.std()
        out[i] = ((small - small.mean()) / std if std > 0 else 0 * small).ravel()
    return out


def mask_dice(a, b):
    """Dice of two masks' foregrounds (any label), 1 when both are empty (the competition's)."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return 1.0 if total == 0 else 2.0 * np.count_nonzero(a & b) / total


def find(images, masks, subjects, sizes=None, similar=SIMILAR, poor=POOR_DICE):
    """Pairs (i, j, similarity, dice) of frames of one subject whose thumbnails correlate at
    `similar` or more and whose masks' Dice is below `poor`, by subject, then i, then j.
    One matrix product per subject: the competition's 5,635 frames take seconds."""
    features = thumbnails(images, sizes)
    subjects = np.asarray(subjects)
    pairs = []
    for subject in np.unique(subjects):
        index = np.flatnonzero(subjects == subject)
        similarity = features[index] @ features[index].T / features.shape[1]
        for a, b in zip(*np.nonzero(np.triu(similarity >= similar, 1))):
            i, j = int(index[a]), int(index[b])
            dice = mask_dice(masks[i], masks[j])
            if dice < poor:
                pairs.append((i, j, float(similarity[a, b]), dice))
    return pairs


def empty_member(masks, i, j):
    """'a' or 'b' when exactly one of the two masks is empty, '' otherwise."""
    empty_i, empty_j = not np.any(masks[i]), not np.any(masks[j])
    return "a" if empty_i and not empty_j else "b" if empty_j and not empty_i else ""


def table(pairs, masks, subjects, names, drop):
    """The rows of contradictions.csv, and the frames that --drop-contradictions drops."""
    rows, dropped = [], set()
    for i, j, similarity, dice in pairs:
        empty = empty_member(masks, i, j)
        gone = {"a": i, "b": j}.get(empty) if drop else None
        if gone is not None:
            dropped.add(gone)
        rows.append((i, j, names[i], names[j], subjects[i], f"{similarity:.4f}", f"{dice:.3f}",
                     empty, "" if gone is None else names[gone]))
    return rows, sorted(dropped)


def check(out, names, drop=False, similar=SIMILAR):
    """Before data.py commits its arrays (out: the files.OutputSet they are staged in): find the
    contradicting pairs of the training set, stage them as contradictions.csv, and with `drop`
    stage the training arrays again without the empty-masked member of each pair. names: each
    frame's file stem. Returns the dropped frames' indices (in data.py's numbering, as in the
    CSV)."""
    images, masks, subjects = arrays.load_training_set(out)  # memory-mapped
    sizes = arrays.load_sizes(out, "train", len(images))
    pairs = find(images, masks, subjects, sizes, similar)
    rows, dropped = table(pairs, masks, subjects, names, drop)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerows([COLUMNS, *rows])
    out.stage(out.work / NAME).write_text(text.getvalue())
    one_empty = sum(1 for row in rows if row[7])
    log.info(f"{len(pairs)} near-duplicate pair(s) with disagreeing masks ({one_empty} with one "
             f"mask empty) -> {out.work / NAME}")
    if dropped:
        del images, masks  # the memory maps of the staged arrays, which are staged again
        keep = np.setdiff1d(np.arange(len(names)), dropped)
        arrays.keep_training_frames(out, keep)
        log.info(f"--drop-contradictions: dropped {len(dropped)} empty-masked frame(s), "
                 f"{len(keep)} training frames left (the CSV's 'dropped' column)")
    return dropped

"""Video-level metrics (yt8m.metrics) and the segment MAP@K (yt8m.segment_metrics)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from vidistill.yt8m.metrics import VideoMetrics, gap, hit_at_one, mean_average_precision, perr, top_indices
from vidistill.yt8m.segment_metrics import segment_average_precision, segment_map

# 3 videos x 4 classes. Video 2 has no labels.
#   v0: scores [0.9, 0.8, 0.1, 0.0 ]  labels [1, 0, 1, 0]
#   v1: scores [0.2, 0.7, 0.6, 0.3 ]  labels [0, 1, 0, 1]
#   v2: scores [0.5, 0.4, 0.3, 0.95]  labels [0, 0, 0, 0]
# Hit@1: argmax v0 -> c0 (pos), v1 -> c1 (pos), v2 -> c3 (neg)  => 2/3.
# PERR: v0 k=2, top2 {c0, c1}: 1 positive => 1/2; v1 k=2, top2 {c1, c2}: 1/2; v2 k=0 => 0.  => (1/2+1/2+0)/3 = 1/3.
# Total positives: 4 (v0 c0, v0 c2, v1 c1, v1 c3).
# GAP@2: entries v0 (c0 .9 +) (c1 .8 -), v1 (c1 .7 +) (c2 .6 -), v2 (c3 .95 -) (c0 .5 -).
#   sorted: .95- .9+ .8- .7+ .6- .5-  => hits at ranks 2 and 4: (1/2 + 2/4) / 4 = 0.25
#   (the positives v0 c2 and v1 c3 never make a top-2 but still count in the denominator).
# mAP@2: c0: .9+ .5- => 1/1, 1 positive -> 1; c1: .8- .7+ -> (1/2)/1; c2: .6- with 1 positive -> 0;
#   c3: .95- with 1 positive -> 0.  => (1 + 0.5 + 0 + 0) / 4 = 0.375
# GAP@20 (all 12 entries): .95- .9+ .8- .7+ .6- .5- .4- then the tie 0.3: pooled order is by class, so
#   v2 c2 (-) comes before v1 c3 (+); then .2- .1+ .0-. Hits at ranks 2, 4, 9, 11:
#   (1/2 + 2/4 + 3/9 + 4/11) / 4 = 14/33
# mAP@20: c0 .9+ .5- .2- -> 1; c1 .8- .7+ .4- -> 1/2; c2 .6- .3- .1+ -> 1/3; c3 .95- .3+ .0- -> 1/2
#   => (1 + 1/2 + 1/3 + 1/2) / 4 = 7/12
P = np.array([[0.9, 0.8, 0.1, 0.0], [0.2, 0.7, 0.6, 0.3], [0.5, 0.4, 0.3, 0.95]])
L = np.array([[1, 0, 1, 0], [0, 1, 0, 1], [0, 0, 0, 0]])


def test_hand_example_hit_perr():
    assert hit_at_one(P, L) == pytest.approx(2 / 3, abs=1e-15)
    assert perr(P, L) == pytest.approx(1 / 3, abs=1e-15)


def test_hand_example_gap_map_top2_counts_positives_outside_top_k():
    assert gap(P, L, top_k=2) == 0.25
    assert mean_average_precision(P, L, top_k=2) == 0.375


def test_hand_example_gap_map_all_entries():
    assert gap(P, L) == pytest.approx(14 / 33, abs=1e-15)
    assert mean_average_precision(P, L) == pytest.approx(7 / 12, abs=1e-15)


def test_result_dict_and_float_labels():
    m = VideoMetrics(4, top_k=2)
    m.accumulate(P.astype(np.float32), L.astype(np.float32))
    r = m.result()
    assert set(r) == {"hit_at_one", "perr", "gap", "map", "num_videos"}
    assert r["num_videos"] == 3 and r["gap"] == 0.25 and r["map"] == 0.375


def test_empty_accumulator_is_zero():
    assert VideoMetrics(5).result() == {"hit_at_one": 0.0, "perr": 0.0, "gap": 0.0, "map": 0.0, "num_videos": 0}


def test_gap_tie_uses_class_then_video_order():
    # All scores tie. Pooled order by (class, video): (c0 v0 -), (c0 v1 -), (c1 v0 +), (c1 v1 -):
    # the only positive is at rank 3 => 1/3. (A video-major order would put it at rank 2 => 1/2.)
    p = np.full((2, 2), 0.5)
    y = np.array([[0, 1], [0, 0]])
    assert gap(p, y, top_k=2) == pytest.approx(1 / 3, abs=1e-15)
    # mAP: class 1 entries (v0 +), (v1 -) in video order => AP 1; class 0 has no positives and is skipped.
    assert mean_average_precision(p, y, top_k=2) == 1.0


def test_top_k_within_video_tie_takes_lower_class():
    p = np.array([[0.5, 0.5, 0.5]])
    assert gap(p, np.array([[1, 0, 0]]), top_k=1) == 1.0
    assert gap(p, np.array([[0, 1, 0]]), top_k=1) == 0.0
    assert hit_at_one(p, np.array([[0, 0, 1]])) == 0.0
    # PERR with k=2 takes classes {0, 1}: one of the two positives => 1/2.
    assert perr(p, np.array([[0, 1, 1]])) == 0.5
    assert top_indices(np.array([[1.0, 3.0, 3.0, 2.0, 3.0]]), 2).tolist() == [[1, 2]]
    assert top_indices(np.array([[1.0, 3.0, 3.0, 2.0, 3.0]]), 4).tolist() == [[1, 2, 4, 3]]
    assert top_indices(np.array([[1, 3, 0, 2]], dtype=np.uint8), 9).tolist() == [[1, 3, 0, 2]]


def test_perr_needs_positive_score_and_counts_label_free_videos():
    # v0: k=2, top2 = {c0 (0.0), c1 (-1.0)} both positive but no score > 0 => 0.
    # v1: k=1, top1 = c2 (0.3) positive => 1.  v2: no labels => 0.  Mean = 1/3.
    p = np.array([[0.0, -1.0, -2.0], [0.1, 0.2, 0.3], [0.9, 0.1, 0.1]])
    y = np.array([[1, 1, 0], [0, 0, 1], [0, 0, 0]])
    assert perr(p, y) == pytest.approx(1 / 3, abs=1e-15)


def test_map_skips_classes_without_positives_and_gap_zero_without_positives():
    # Class 1 and 2 have no positives: mAP is the AP of class 0 alone.
    p = np.array([[0.9, 0.8, 0.1], [0.7, 0.95, 0.2]])
    y = np.array([[0, 0, 0], [1, 0, 0]])
    # class 0 entries: v0 .9 (-), v1 .7 (+) => AP 1/2
    assert mean_average_precision(p, y, top_k=3) == 0.5
    assert mean_average_precision(p, np.zeros_like(y), top_k=3) == 0.0
    assert gap(p, np.zeros_like(y)) == 0.0


def _random_case(rng, n, c):
    p = rng.integers(-2, 6, size=(n, c)) / 4.0  # many ties, some zero and negative scores
    y = (rng.random((n, c)) < 0.12).astype(np.int64)
    y[0] = 0  # a label-free video
    y[:, 1] = 0  # a class without positives
    y[2, :8] = 1  # a video with more positives than top_k
    return p, y


@pytest.mark.parametrize("splits", [[1] * 60, [7, 13, 40], [59, 1], [30, 0, 30], [3] * 20])
def test_batch_split_is_bit_for_bit_single_pass(splits):
    rng = np.random.default_rng(0)
    p, y = _random_case(rng, 60, 25)
    single = VideoMetrics(25, top_k=5)
    single.accumulate(p, y)
    streamed = VideoMetrics(25, top_k=5)
    start = 0
    for size in splits:
        streamed.accumulate(p[start : start + size], y[start : start + size])
        start += size
    assert start == 60
    assert streamed.result() == single.result()


def test_random_batch_splits_float32():
    rng = np.random.default_rng(1)
    p = rng.random((500, 40)).astype(np.float32)
    p[rng.random(p.shape) < 0.3] = 0.5
    y = (rng.random((500, 40)) < 0.1).astype(np.float32)
    single = VideoMetrics(40)
    single.accumulate(p, y)
    expected = single.result()
    for trial in range(5):
        cuts = np.sort(rng.choice(np.arange(1, 500), size=trial + 3, replace=False))
        m = VideoMetrics(40)
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, 500]):
            m.accumulate(p[a:b], y[a:b])
        assert m.result() == expected


def test_memory_is_top_k_entries_per_video():
    m = VideoMetrics(1000, top_k=20)
    m.accumulate(np.random.default_rng(2).random((50, 1000)), np.zeros((50, 1000)))
    assert sum(a.size for a in m._class) == 50 * 20


def test_shape_validation():
    m = VideoMetrics(4)
    with pytest.raises(ValueError, match="2-D"):
        m.accumulate(np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError, match="!= labels shape"):
        m.accumulate(np.zeros((2, 4)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="expected 4 classes"):
        m.accumulate(np.zeros((2, 5)), np.zeros((2, 5)))
    with pytest.raises(ValueError, match="NaN"):
        m.accumulate(np.full((1, 4), np.nan), np.zeros((1, 4)))
    with pytest.raises(ValueError, match="2-D"):
        gap(np.zeros(3), np.zeros(3))
    assert m.result()["num_videos"] == 0


# ---- independent slow reference, following yt8m.md literally ----


def _ref_top(row, k):
    return sorted(range(len(row)), key=lambda c: -row[c])[:k]  # Python's sort is stable


def _ref_entries_by_class(p, y, k):
    by_class = [[] for _ in range(p.shape[1])]
    for v in range(p.shape[0]):
        for c in _ref_top(list(p[v]), k):
            by_class[c].append((float(p[v, c]), y[v, c] > 0))
    return by_class


def _ref_ap(entries, positives):
    hits, total = 0, 0.0
    for rank, (_, label) in enumerate(sorted(entries, key=lambda e: -e[0]), start=1):
        if label:
            hits += 1
            total += hits / rank
    return total / positives if positives else 0.0


def ref_gap(p, y, k):
    pooled = [e for entries in _ref_entries_by_class(p, y, k) for e in entries]
    return _ref_ap(pooled, int((y > 0).sum()))


def ref_map(p, y, k):
    aps = [
        _ref_ap(entries, int((y[:, c] > 0).sum()))
        for c, entries in enumerate(_ref_entries_by_class(p, y, k))
        if (y[:, c] > 0).sum()
    ]
    return sum(aps) / len(aps) if aps else 0.0


def ref_perr(p, y):
    total = 0.0
    for v in range(p.shape[0]):
        k = int((y[v] > 0).sum())
        if k:
            total += sum(1 for c in _ref_top(list(p[v]), k) if y[v, c] > 0 and p[v, c] > 0) / k
    return total / p.shape[0]


def ref_hit(p, y):
    return sum(float(y[v, _ref_top(list(p[v]), 1)[0]] > 0) for v in range(p.shape[0])) / p.shape[0]


@pytest.mark.parametrize("seed,top_k", [(0, 20), (1, 5), (2, 1), (3, 3), (4, 30)])
def test_against_slow_reference(seed, top_k):
    rng = np.random.default_rng(seed)
    p, y = _random_case(rng, 80, 30)
    m = VideoMetrics(30, top_k)
    m.accumulate(p, y)
    r = m.result()
    assert r["gap"] == pytest.approx(ref_gap(p, y, top_k), rel=1e-12, abs=1e-15)
    assert r["map"] == pytest.approx(ref_map(p, y, top_k), rel=1e-12, abs=1e-15)
    assert r["perr"] == pytest.approx(ref_perr(p, y), rel=1e-12, abs=1e-15)
    assert r["hit_at_one"] == pytest.approx(ref_hit(p, y), rel=1e-12, abs=1e-15)
    assert 0.0 < r["gap"] < 1.0 and 0.0 < r["map"] < 1.0


def test_no_tensorflow_import():
    root = Path(__file__).resolve().parents[1] / "yt8m"
    for name in ("metrics.py", "segment_metrics.py", "submission.py"):
        tree = ast.parse((root / name).read_text())
        modules = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        modules += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not any(m.split(".")[0] == "tensorflow" for m in modules), name


# ---- segment MAP@K ----

GT = {
    # class 3: positives a:0, b:5, c:0; rated negative d:0
    3: {"a:0": 1.0, "b:5": 1.0, "c:0": 1.0, "d:0": 0.0},
    # class 7: one positive
    7: {"x:10": 1.0, "y:0": 0.0},
    # class 9: rated, but no positives
    9: {"z:0": 0.0},
}


def test_segment_map_hand_case():
    submission = {
        # kept after dropping unrated (u:0, v:0) and the repeated a:0: a+ d- b+ -> ranks 1, 3 among kept ids;
        # c:0 is never submitted but counts: (1/1 + 2/3) / 3 = 5/9
        3: ["u:0", "a:0", "d:0", "a:0", "v:0", "b:5"],
        # y- x+ => (1/2) / 1
        7: ["y:0", "x:10"],
        9: ["z:0"],  # no positives: skipped
        11: ["a:0"],  # not in the ground truth: skipped
    }
    r = segment_map(GT, submission)
    assert r["num_classes_scored"] == 2 and r["num_classes_skipped"] == 2
    assert r["map"] == pytest.approx((5 / 9 + 1 / 2) / 2, abs=1e-15)


def test_segment_map_k_cut_applies_before_dropping_unrated_ids():
    ids = ["u:0", "v:0", "a:0", "b:5", "c:0"]
    # k=3 keeps u, v, a: a+ at kept rank 1 => 1/3
    assert segment_average_precision(ids, GT[3], k=3) == pytest.approx(1 / 3, abs=1e-15)
    # k=2 keeps only unrated ids => 0
    assert segment_map(GT, {3: ids}, k=2) == {"map": 0.0, "num_classes_scored": 1, "num_classes_skipped": 0}
    # all three positives first => 1
    assert segment_map(GT, {3: ids})["map"] == 1.0


def test_segment_map_ids_are_str():
    assert segment_map(GT, {7: ["x:10"]})["map"] == 1.0
    with pytest.raises(TypeError, match="str"):
        segment_map(GT, {7: [b"x:10"]})
    with pytest.raises(TypeError, match="str"):
        segment_map({7: {b"x:10": 1.0}}, {7: ["x:10"]})


def test_segment_map_empty_submission():
    assert segment_map(GT, {}) == {"map": 0.0, "num_classes_scored": 0, "num_classes_skipped": 0}

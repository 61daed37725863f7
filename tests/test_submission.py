"""CSV files of the official inference (yt8m.submission)."""

from __future__ import annotations

import numpy as np
import pytest

from vidistill.yt8m.errors import DataError
from vidistill.yt8m.segment_metrics import segment_map
from vidistill.yt8m.submission import (
    read_segment_predictions,
    read_video_predictions,
    write_segment_predictions,
    write_video_predictions,
)


def test_video_file_exact_text(tmp_path):
    path = tmp_path / "pred.csv"
    p = np.array([[0.1, 0.75, 0.5, 0.75], [1e-7, 0.0, 0.25, 123456789.0]], dtype=np.float32)
    write_video_predictions(path, [b"vid1", "vid2"], p, top_k=3)
    assert path.read_text() == (
        "VideoId,LabelConfidencePairs\n"
        "vid1,1 0.75 3 0.75 2 0.5\n"  # tie 0.75: lower class first
        "vid2,3 1.23457e+08 2 0.25 0 1e-07\n"
    )
    assert not (tmp_path / "pred.csv.tmp").exists()


def test_video_round_trip_top20(tmp_path):
    rng = np.random.default_rng(0)
    p = rng.random((12, 3862)).astype(np.float32)
    ids = [f"v{i:03d}" for i in range(12)]
    path = tmp_path / "pred.csv"
    write_video_predictions(path, ids, p)
    read_ids, q = read_video_predictions(path)
    assert read_ids == ids and q.dtype == np.float32 and q.shape == (12, 3862)
    for row in range(12):
        top = np.argsort(-p[row], kind="stable")[:20]
        np.testing.assert_allclose(q[row, top], p[row, top], rtol=1e-5)
        rest = np.ones(3862, bool)
        rest[top] = False
        assert not q[row, rest].any()
        assert np.count_nonzero(q[row]) == 20


def test_video_read_tolerates_blank_lines_crlf_and_empty_pairs(tmp_path):
    path = tmp_path / "pred.csv"
    path.write_bytes(b"VideoId,LabelConfidencePairs\r\nab,2 0.5  0 1\r\n\r\ncd,\r\n\n")
    ids, q = read_video_predictions(path, num_classes=3)
    assert ids == ["ab", "cd"]
    assert q.tolist() == [[1.0, 0.0, 0.5], [0.0, 0.0, 0.0]]
    path.write_text("VideoId,LabelConfidencePairs\n")
    ids, q = read_video_predictions(path, num_classes=3)
    assert ids == [] and q.shape == (0, 3)


@pytest.mark.parametrize(
    "text,line,problem",
    [
        ("", 1, "empty file"),
        ("\n  \n", 1, "empty file"),
        ("Id,Pairs\nv1,0 0.5\n", 1, "expected the header"),
        ("v1,0 0.5\n", 1, "expected the header"),
        ("VideoId,LabelConfidencePairs\nv1,0 0.5\nv2,0 0.5 1\n", 3, "odd number"),
        ("VideoId,LabelConfidencePairs\nv1,x 0.5\n", 2, "not an integer"),
        ("VideoId,LabelConfidencePairs\nv1,1.0 0.5\n", 2, "not an integer"),
        ("VideoId,LabelConfidencePairs\nv1,0 abc\n", 2, "not a number"),
        ("VideoId,LabelConfidencePairs\nv1,0 0.5\n\nv2,5 0.5\n", 4, "out of range"),
        ("VideoId,LabelConfidencePairs\nv1,-1 0.5\n", 2, "out of range"),
        ("VideoId,LabelConfidencePairs\nv1,0 0.5\nv1,1 0.5\n", 3, "duplicate video id"),
        ("VideoId,LabelConfidencePairs\nv1 0 0.5\n", 2, "expected 'id,label"),
        ("VideoId,LabelConfidencePairs\nv1,0 0.5 0 0.25\n", 2, "listed twice"),
    ],
)
def test_video_read_errors(tmp_path, text, line, problem):
    path = tmp_path / "bad_video.csv"
    path.write_text(text)
    with pytest.raises(DataError) as info:
        read_video_predictions(path, num_classes=5)
    message = str(info.value)
    assert "bad_video.csv" in message and f"line {line}:" in message and problem in message


def test_video_write_rejects_bad_ids_and_keeps_old_file(tmp_path):
    path = tmp_path / "pred.csv"
    path.write_text("old")
    with pytest.raises(ValueError, match="comma"):
        write_video_predictions(path, ["ok", "a,b"], np.zeros((2, 3)))
    assert path.read_text() == "old"
    assert not (tmp_path / "pred.csv.tmp").exists()
    with pytest.raises(ValueError, match="shape"):
        write_video_predictions(path, ["a"], np.zeros((2, 3)))


def test_segment_file_exact_text_and_round_trip(tmp_path):
    path = tmp_path / "seg.csv"
    ids = ["a:0", "a:5", "b:0", "b:5"]
    p = np.array([[0.1, 0.9, 0.5], [0.3, 0.9, 0.4], [0.2, 0.1, 0.6], [0.3, 0.0, 0.7]])
    write_segment_predictions(path, ids, p, top_k=3)
    assert path.read_text() == (
        "Class,Segments\n"
        "0,a:5 b:5 b:0\n"  # tie 0.3: earlier segment first
        "1,a:0 a:5 b:0\n"
        "2,b:5 b:0 a:0\n"
    )
    assert read_segment_predictions(path) == {
        0: ["a:5", "b:5", "b:0"],
        1: ["a:0", "a:5", "b:0"],
        2: ["b:5", "b:0", "a:0"],
    }
    write_segment_predictions(path, ids, p, classes=[2, 0])
    assert read_segment_predictions(path) == {2: ["b:5", "b:0", "a:0", "a:5"], 0: ["a:5", "b:5", "b:0", "a:0"]}
    assert not (tmp_path / "seg.csv.tmp").exists()


def test_segment_write_no_segments_gives_empty_lists(tmp_path):
    path = tmp_path / "seg.csv"
    write_segment_predictions(path, [], np.zeros((0, 2)))
    assert path.read_text() == "Class,Segments\n0,\n1,\n"
    assert read_segment_predictions(path) == {0: [], 1: []}


def test_segment_write_validation(tmp_path):
    path = tmp_path / "seg.csv"
    with pytest.raises(ValueError, match="out of range"):
        write_segment_predictions(path, ["a:0"], np.zeros((1, 2)), classes=[2])
    with pytest.raises(ValueError, match="duplicates"):
        write_segment_predictions(path, ["a:0", "a:0"], np.zeros((2, 2)))
    with pytest.raises(ValueError, match="shape"):
        write_segment_predictions(path, ["a:0"], np.zeros((2, 2)))
    assert not path.exists()


def test_segment_read_whitespace_and_last_id_kept(tmp_path):
    path = tmp_path / "seg.csv"
    path.write_text("Class,Segments\n5,a:0  b:5 \n7,\n\n 9 ,c:10\n\n")
    assert read_segment_predictions(path) == {5: ["a:0", "b:5"], 7: [], 9: ["c:10"]}


@pytest.mark.parametrize(
    "text,line,problem",
    [
        ("", 1, "empty file"),
        ("5,a:0\n", 1, "expected the header"),
        ("Class,Segments\n5,a:0\nx,b:0\n", 3, "not an integer"),
        ("Class,Segments\n5,a:0\n-1,b:0\n", 3, "negative"),
        ("Class,Segments\n5,a:0\n\n5,b:0\n", 4, "duplicate line for class 5"),
        ("Class,Segments\n5 a:0 b:0\n", 2, "expected 'class,"),
        ("Class,Segments\n5,a:0,b:0\n", 2, "comma"),
    ],
)
def test_segment_read_errors(tmp_path, text, line, problem):
    path = tmp_path / "bad_seg.csv"
    path.write_text(text)
    with pytest.raises(DataError) as info:
        read_segment_predictions(path)
    message = str(info.value)
    assert "bad_seg.csv" in message and f"line {line}:" in message and problem in message


def test_segment_file_to_metric(tmp_path):
    # The last id of each line must count (an official-script bug dropped it).
    path = tmp_path / "seg.csv"
    path.write_text("Class,Segments\n3,n:0 p:5\n4,q:0\n")
    truth = {3: {"n:0": 0.0, "p:5": 1.0}, 4: {"q:0": 0.0}}
    r = segment_map(truth, read_segment_predictions(path))
    assert r == {"map": 0.5, "num_classes_scored": 1, "num_classes_skipped": 1}

"""``crossentropy score`` end to end through the console script."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from test_cli_explain import run

# The article's cat image as a CSV row, plus a dog and a bird (probabilities sum to 1).
ARTICLE_CSV = (
    "cat,dog,bird,label\n"
    "0.997694,0.002237,0.000069,cat\n"
    "0.25,0.5,0.25,dog\n"
    "0.125,0.125,0.75,bird\n"
)
# Hand-computed, in bits: -log2(0.997694) = 0.00333069653505 (mpmath), -log2(0.5) = 1,
# -log2(0.75) = 0.415037499278844 (mpmath); mean = 0.472789398604631
MEAN_BITS = (0.00333069653505178 + 1.0 + 0.415037499278844) / 3


def test_score_text_and_json(tmp_path: Path) -> None:
    f = tmp_path / "article.csv"
    f.write_text(ARTICLE_CSV)
    r = run("score", str(f), "--base", "2")
    assert r.returncode == 0, r.stderr
    assert "cross-entropy  0.472789 bits" in r.stdout
    assert "accuracy       1\n" in r.stdout
    assert r.stderr == ""  # no progress bar in a pipe
    r = run("score", str(f), "--base", "2", "--json")
    doc = json.loads(r.stdout)
    assert doc["cross_entropy"] == pytest.approx(MEAN_BITS, rel=1e-13)
    assert doc["perplexity"] == pytest.approx(2.0**MEAN_BITS, rel=1e-13)
    assert [c["class"] for c in doc["per_class"]] == ["cat", "dog", "bird"]


def test_score_reliability_png_and_output(tmp_path: Path) -> None:
    f = tmp_path / "a.csv"
    f.write_text(ARTICLE_CSV)
    png = tmp_path / "rel.png"
    out = tmp_path / "report.json"
    r = run("score", str(f), "--reliability", str(png), "-o", str(out), "--progress")
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000
    assert json.loads(out.read_text())["rows"] == 3
    assert "rows/s" in r.stderr  # --progress forces the bar on stderr


def test_score_logits_npy(tmp_path: Path) -> None:
    z = np.array([[9.8, 3.7, 0.2], [0.0, 0.0, 0.0]])
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "y.npy", np.array([0, 2]))
    r = run("score", str(tmp_path / "z.npy"), "--label", str(tmp_path / "y.npy"), "--logits",
            "--base", "2", "--json")
    assert r.returncode == 0, r.stderr
    # mpmath: -log2 softmax([9.8, 3.7, 0.2])[0] = 0.00332964080008076; -log2(1/3) = log2 3
    want = (0.00332964080008076 + math.log2(3.0)) / 2
    assert json.loads(r.stdout)["cross_entropy"] == pytest.approx(want, rel=1e-13)


def test_score_errors_name_the_place_and_write_nothing(tmp_path: Path) -> None:
    f = tmp_path / "bad.csv"
    f.write_text(ARTICLE_CSV + "0.5,oops,0.5,cat\n")
    png = tmp_path / "rel.png"
    out = tmp_path / "r.json"
    r = run("score", str(f), "--reliability", str(png), "-o", str(out))
    assert r.returncode == 1
    assert f"{f}: line 5, column 'dog': 'oops' is not a number" in r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout == ""
    assert not png.exists() and not out.exists()
    assert list(tmp_path.iterdir()) == [f]  # no temporary files left either
    r = run("score", str(tmp_path / "missing.csv"))
    assert r.returncode == 1 and "no such file" in r.stderr
    r = run("score", str(f), "--label", "nope")
    assert r.returncode == 1 and "--label: no column named 'nope'" in r.stderr


def test_score_multilabel_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = tmp_path / "m.parquet"
    pq.write_table(pa.table({"p_a": [0.9, 0.5], "p_b": [0.2, 0.7], "y_a": [1, 1],
                             "y_b": [0, 0]}), f)
    r = run("score", str(f), "--multilabel", "--columns", "p_*", "--targets", "y_*", "--json")
    assert r.returncode == 0, r.stderr
    want = -(math.log(0.9) + math.log(0.8) + math.log(0.5) + math.log(0.3)) / 4
    doc = json.loads(r.stdout)
    assert doc["task"] == "multilabel"
    assert doc["cross_entropy"] == pytest.approx(want, rel=1e-14)


def test_score_per_class_limit_and_infinite_loss(tmp_path: Path) -> None:
    f = tmp_path / "w.csv"
    # class c gets probability 0 for its only sample: infinite loss, listed first
    f.write_text("a,b,c,label\n0.5,0.5,0,c\n0.75,0.25,0,a\n0.5,0.5,0,b\n")
    r = run("score", str(f), "--per-class", "2")
    assert r.returncode == 0, r.stderr
    table = r.stdout.split("-----")[-1]
    assert table.index("c ") < table.index("b ")  # inf first, then -ln 0.5, and a left out
    assert "... and 1 more" in r.stdout
    assert "1 rows gave the true label probability 0" in r.stdout


def test_score_json_null_for_undefined_and_new_metrics(tmp_path: Path) -> None:
    f = tmp_path / "u.csv"
    # class c never occurs and is never predicted: its recall and precision are undefined
    f.write_text("a,b,c,label\n0.5,0.25,0.25,a\n0.25,0.75,0,b\n")
    r = run("score", str(f), "--json", "--top-k", "1,2")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    c = doc["per_class"][2]
    assert c["recall"] is None and c["precision"] is None and c["cross_entropy"] is None
    assert '"nan"' not in r.stdout
    # by hand: Brier = ((0.5)^2 + 0.25^2 + 0.25^2 + 0.25^2 + (0.25)^2 + 0) / 2 = 0.25
    assert doc["brier"] == pytest.approx(0.25, rel=1e-14)
    assert doc["top_k_accuracy"] == {"1": 1.0, "2": 1.0}
    assert doc["reliability"][0]["confidence"] is None  # an empty bin
    r = run("score", str(f), "--top-k", "1,2")
    assert "top-2 accuracy 1" in r.stdout and "Brier          0.25" in r.stdout
    r = run("score", str(f), "--top-k", "0")
    assert r.returncode == 2 and "--top-k values must be at least 1" in r.stderr


def test_score_parquet_split_footer_matches(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = tmp_path / "g.parquet"
    pq.write_table(pa.table({"a": [0.5, 0.25] * 5, "b": [0.5, 0.75] * 5, "label": [0, 1] * 5}),
                   f, row_group_size=1)
    whole = json.loads(run("score", str(f), "--json").stdout)
    r = run("score", str(f), "--max-footer-mb", "0.0001", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == whole

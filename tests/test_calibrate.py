"""``crossentropy calibrate``: temperature and Platt scaling, streamed, against independent fits.

References: scipy.optimize.minimize_scalar (bounded) on the mean cross-entropy computed with
scipy.special.log_softmax; scikit-learn's unregularised LogisticRegression for Platt scaling;
`crossentropy score` itself for the calibrated files written with -o.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.optimize
import scipy.special

from crossentropy.score import ColumnSpec, ScoreError, ScoreOptions
from crossentropy.score.calibrate import calibrate_file, fit_platt, fit_temperature
from test_cli_explain import run


def _model(n: int, c: int, seed: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated logits (labels drawn from their softmax), multiplied by `scale`."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=1.5, size=(n, c))
    p = scipy.special.softmax(z, axis=1)
    u = rng.random(n)[:, None]
    y = np.minimum(np.sum(np.cumsum(p, axis=1) < u, axis=1), c - 1)
    return z * scale, y


def _scipy_temperature(z: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> float:
    w = np.ones(len(y)) if w is None else w

    def f(t: float) -> float:
        lp = scipy.special.log_softmax(z / t, axis=1)[np.arange(len(y)), y]
        return float(-np.sum(w * lp) / np.sum(w))

    r = scipy.optimize.minimize_scalar(f, bounds=(0.05, 50.0), method="bounded",
                                       options={"xatol": 1e-12, "maxiter": 500})
    return float(r.x)


def _csv(path: Path, pred: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> None:
    c = pred.shape[1]
    head = [f"p{j}" for j in range(c)] + ["label"] + (["w"] if w is not None else [])
    lines = [",".join(head)]
    for i in range(len(y)):
        cells = [repr(float(v)) for v in pred[i]] + [str(int(y[i]))]
        if w is not None:
            cells.append(repr(float(w[i])))
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")


def test_temperature_matches_scipy_logits_npy(tmp_path: Path) -> None:
    z, y = _model(600, 5, seed=3, scale=2.0)
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "y.npy", y)
    opts = ScoreOptions(columns=ColumnSpec(label=str(tmp_path / "y.npy")), logits=True,
                        chunk_rows=97)
    fit = fit_temperature(str(tmp_path / "z.npy"), opts)
    assert fit.converged
    want = _scipy_temperature(z, y)
    assert fit.temperature == pytest.approx(want, rel=1e-6)
    # the first 32 MB hold the whole file: fitted in memory, then checked by one more pass
    assert fit.passes == 2
    # the same T from one chunk as from chunks of 97 rows (each pass streams the file)
    one = fit_temperature(str(tmp_path / "z.npy"),
                          ScoreOptions(columns=opts.columns, logits=True, chunk_rows=10_000))
    assert one.temperature == pytest.approx(fit.temperature, rel=1e-10)


def test_temperature_streams_a_file_larger_than_the_sample(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    import crossentropy.score.calibrate as cal

    z, y = _model(600, 5, seed=3, scale=2.0)
    z[:200] *= 0.8  # the first rows (the in-memory sample) are less over-confident
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "y.npy", y)
    opts = ScoreOptions(columns=ColumnSpec(label=str(tmp_path / "y.npy")), logits=True,
                        chunk_rows=50)
    monkeypatch.setattr(cal, "_SAMPLE_BYTES", 4 * 50 * 5 * 8)  # 4 chunks: 200 rows
    fit = fit_temperature(str(tmp_path / "z.npy"), opts)
    assert fit.converged
    assert fit.temperature == pytest.approx(_scipy_temperature(z, y), rel=1e-6)
    assert 3 <= fit.passes <= 8
    # the first pass is at T = 1, the second at the sample's T (not the file's)
    t_sample = _scipy_temperature(z[:200], y[:200])
    assert fit.history[1]["temperature"] == pytest.approx(t_sample, rel=1e-6)
    assert fit.after is not None and fit.after.rows == 600


def test_temperature_matches_scipy_weighted_probabilities_csv(tmp_path: Path) -> None:
    z, y = _model(400, 4, seed=4, scale=0.5)  # under-confident: T < 1
    p = scipy.special.softmax(z, axis=1)
    w = np.random.default_rng(0).uniform(0.0, 3.0, size=len(y))
    _csv(tmp_path / "p.csv", p, y, w)
    fit = fit_temperature(str(tmp_path / "p.csv"),
                          ScoreOptions(columns=ColumnSpec(weight="w"), chunk_rows=33))
    # probability input: z = log p, the same T as for the logits up to rounding of p
    want = _scipy_temperature(np.log(p), y, w)
    assert fit.temperature == pytest.approx(want, rel=1e-6)
    assert fit.temperature < 1.0


def test_overconfident_model_recovers_its_temperature(tmp_path: Path) -> None:
    # logits of a calibrated model times 2.5: the fitted T is 2.5 within sampling error
    # (the standard error of T at 20,000 rows and 10 classes is about 0.02)
    z, y = _model(20_000, 10, seed=11, scale=2.5)
    np.savez(tmp_path / "m.npz", logits=z, labels=y)
    fit = fit_temperature(str(tmp_path / "m.npz"), ScoreOptions(logits=True))
    assert abs(fit.temperature - 2.5) < 0.08
    assert fit.after is not None and fit.before is not None
    # calibration improves; the accuracy does not change (argmax is invariant under T > 0)
    assert fit.after.cal.ece() < fit.before.cal.ece() / 3
    assert fit.after.correct == fit.before.correct


def test_platt_matches_sklearn_logistic_regression(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(2)
    n = 500
    x = rng.normal(scale=2.0, size=(n, 2))
    t = (rng.random((n, 2)) < scipy.special.expit(0.6 * x + np.array([0.4, -0.7]))).astype(float)
    w = rng.uniform(0.2, 2.0, size=n)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "t.npy", t)
    np.save(tmp_path / "w.npy", w)
    opts = ScoreOptions(columns=ColumnSpec(targets=str(tmp_path / "t.npy"), multilabel=True,
                                           weight=str(tmp_path / "w.npy")),
                        logits=True, chunk_rows=64)
    fit = fit_platt(str(tmp_path / "x.npy"), opts)
    assert fit.converged
    for j in range(2):
        lr = LogisticRegression(C=1e12, tol=1e-12, max_iter=10_000)
        lr.fit(x[:, j:j + 1], t[:, j], sample_weight=w)
        assert fit.a[j] == pytest.approx(lr.coef_[0, 0], rel=1e-6)
        assert fit.b[j] == pytest.approx(lr.intercept_[0], rel=1e-6, abs=1e-9)


def test_platt_binary_probabilities_csv(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(8)
    n = 300
    p = rng.uniform(0.02, 0.98, size=n)
    t = (rng.random(n) < p**2).astype(float)  # over-confident for positives
    f = tmp_path / "b.csv"
    f.write_text("p,y\n" + "".join(f"{float(pi)!r},{int(ti)}\n"
                                    for pi, ti in zip(p, t, strict=True)))
    opts = ScoreOptions(columns=ColumnSpec(pred="p", targets="y", multilabel=True))
    fit = fit_platt(str(f), opts)
    logit = np.log(p) - np.log1p(-p)
    lr = LogisticRegression(C=1e12, tol=1e-12, max_iter=10_000).fit(logit[:, None], t)
    assert fit.a[0] == pytest.approx(lr.coef_[0, 0], rel=1e-6)
    assert fit.b[0] == pytest.approx(lr.intercept_[0], rel=1e-6)


@pytest.mark.parametrize("fmt", ["csv", "npy", "npz", "parquet"])
def test_apply_then_score_equals_the_report(tmp_path: Path, fmt: str) -> None:
    z, y = _model(120, 3, seed=5, scale=3.0)
    p = scipy.special.softmax(z, axis=1)
    if fmt == "csv":
        src, extra = tmp_path / "in.csv", []
        _csv(src, p, y)
    elif fmt == "npy":
        src = tmp_path / "in.npy"
        np.save(src, p)
        np.save(tmp_path / "y.npy", y)
        extra = ["--label", str(tmp_path / "y.npy")]
    elif fmt == "npz":
        src, extra = tmp_path / "in.npz", []
        np.savez(src, probs=p, labels=y)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        src, extra = tmp_path / "in.parquet", []
        pq.write_table(pa.table({**{f"p{j}": p[:, j] for j in range(3)}, "label": y}), src,
                       row_group_size=50)
    out = tmp_path / f"out.{fmt}"
    r = run("calibrate", str(src), *extra, "--apply", "2.5", "-o", str(out), "--json",
            "--chunk-rows", "40")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["temperature"] == 2.5 and rep["output"] == str(out)
    r2 = run("score", str(out), *extra, "--json")
    assert r2.returncode == 0, r2.stderr
    scored = json.loads(r2.stdout)
    for key in ("cross_entropy", "ece", "brier", "mce", "classwise_ece", "accuracy"):
        assert scored[key] == pytest.approx(rep["after"][key], rel=1e-12, abs=1e-15), key
    # and independently: the cross-entropy of softmax(log p / 2.5)
    lp = scipy.special.log_softmax(np.log(p) / 2.5, axis=1)[np.arange(len(y)), y]
    assert scored["cross_entropy"] == pytest.approx(-lp.mean(), rel=1e-12)
    assert list(tmp_path.glob("*.tmp*")) == []


def test_fit_on_one_file_apply_to_another(tmp_path: Path) -> None:
    zv, yv = _model(800, 4, seed=6, scale=2.0)
    zt, yt = _model(300, 4, seed=7, scale=2.0)
    np.savez(tmp_path / "val.npz", logits=zv, labels=yv)
    np.savez(tmp_path / "test.npz", logits=zt, labels=yt)
    out = tmp_path / "test_cal.npz"
    r = run("calibrate", str(tmp_path / "val.npz"), "--logits", "--apply-to",
            str(tmp_path / "test.npz"), "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    t = rep["temperature"]
    assert t == pytest.approx(_scipy_temperature(zv, yv), rel=1e-6)
    assert rep["applied_to"] == str(tmp_path / "test.npz")
    lp = scipy.special.log_softmax(zt / t, axis=1)[np.arange(len(yt)), yt]
    assert rep["after"]["cross_entropy"] == pytest.approx(-lp.mean(), rel=1e-12)
    assert rep["fit_after"]["cross_entropy"] < rep["fit_before"]["cross_entropy"]
    with np.load(out) as d:
        np.testing.assert_allclose(d["logits"], zt / t, rtol=1e-15)
        np.testing.assert_array_equal(d["labels"], yt)
    # the saved report reapplies the same temperature
    saved = tmp_path / "cal.json"
    r = run("calibrate", str(tmp_path / "val.npz"), "--logits", "--report", str(saved))
    assert r.returncode == 0, r.stderr
    assert f"temperature    {t:.10g}" in r.stdout
    r = run("calibrate", str(tmp_path / "test.npz"), "--logits", "--apply", str(saved),
            "--json")
    assert json.loads(r.stdout)["after"]["cross_entropy"] == pytest.approx(-lp.mean(),
                                                                           rel=1e-9)


def test_apply_platt_multilabel_writes_probabilities(tmp_path: Path) -> None:
    f = tmp_path / "m.csv"
    f.write_text("p_a,p_b,y_a,y_b\n0.9,0.2,1,0\n0.5,0.7,1,0\n0.3,0.4,0,1\n")
    out = tmp_path / "o.csv"
    r = run("calibrate", str(f), "--multilabel", "--columns", "p_*", "--targets", "y_*",
            "--apply", "2,-0.5", "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    got = np.loadtxt(out, delimiter=",", skiprows=1)
    p = np.array([[0.9, 0.2], [0.5, 0.7], [0.3, 0.4]])
    want = scipy.special.expit(2 * scipy.special.logit(p) - 0.5)
    np.testing.assert_allclose(got[:, :2], want, rtol=1e-15)
    np.testing.assert_array_equal(got[:, 2:], [[1, 0], [1, 0], [0, 1]])
    assert out.read_text().splitlines()[0] == "p_a,p_b,y_a,y_b"


BAD = [
    "a,b,label\n0.5,0.5,0\n0.5,x,1\n",
    "a,b,label\n0.5,0.5,0\n0.5,0.5\n",
    "a,b,label\n1.5,-0.5,0\n",
    "a,b,label\n0.5,0.6,0\n",
    "a,b,label\n0.5,0.5,2\n",
    "a,b\n0.5,0.5\n",
    "",
    "a,b,label\n",
]


@pytest.mark.parametrize("text", BAD)
def test_malformed_files_give_the_errors_of_score(tmp_path: Path, text: str) -> None:
    f = tmp_path / "bad.csv"
    f.write_text(text)
    s = run("score", str(f))
    c = run("calibrate", str(f), "-o", str(tmp_path / "o.csv"))
    assert s.returncode == c.returncode == 1
    assert c.stderr.replace("crossentropy calibrate", "crossentropy score") == s.stderr
    assert len(c.stderr.splitlines()) == 1 and "Traceback" not in c.stderr
    assert not (tmp_path / "o.csv").exists()


def test_no_finite_temperature_and_bad_options(tmp_path: Path) -> None:
    f = tmp_path / "right.csv"
    f.write_text("a,b,label\n0.9,0.1,0\n0.2,0.8,1\n")  # always right: T -> 0
    with pytest.raises(ScoreError, match=r"keeps falling as T -> 0"):
        calibrate_file(str(f), ScoreOptions())
    g = tmp_path / "wrong.csv"
    g.write_text("a,b,label\n0.9,0.1,1\n0.2,0.8,0\n")  # always wrong: T -> infinity
    with pytest.raises(ScoreError, match=r"keeps falling as T -> infinity"):
        calibrate_file(str(g), ScoreOptions())
    h = tmp_path / "zero.csv"
    h.write_text("a,b,label\n1,0,1\n0.2,0.8,0\n")
    with pytest.raises(ScoreError, match=r"line 2: the true class has probability 0"):
        calibrate_file(str(h), ScoreOptions())
    m = tmp_path / "m.csv"
    m.write_text("p,y\n0.3,0\n0.6,0\n")
    with pytest.raises(ScoreError, match=r"label 'p': every target is 0"):
        calibrate_file(str(m), ScoreOptions(columns=ColumnSpec(pred="p", targets="y",
                                                               multilabel=True)))
    r = run("calibrate", str(f), "--apply", "-1")
    assert r.returncode == 1 and "the temperature must be one finite number > 0" in r.stderr
    r = run("calibrate", str(f), "--apply", "2", "--apply-to", str(g))
    assert r.returncode == 2 and "do not go together" in r.stderr
    r = run("calibrate", str(f), "-o", str(f))
    assert r.returncode == 2 and "would overwrite an input file" in r.stderr


def test_before_after_figure_and_plot_from_json(tmp_path: Path) -> None:
    from test_plot import png_info

    z, y = _model(300, 3, seed=9, scale=2.0)
    np.savez(tmp_path / "m.npz", logits=z, labels=y)
    png = tmp_path / "ba.png"
    rep = tmp_path / "cal.json"
    r = run("calibrate", str(tmp_path / "m.npz"), "--logits", "--reliability", str(png),
            "--report", str(rep))
    assert r.returncode == 0, r.stderr
    doc = json.loads(rep.read_text())
    _, _, text = png_info(png)
    want = (f"reliability before/after, ECE {doc['before']['ece']:.6g} -> "
            f"{doc['after']['ece']:.6g}")
    assert text["Title"] == want
    png2 = tmp_path / "again.png"
    r = run("plot", "reliability", "--report", str(rep), "-o", str(png2))
    assert r.returncode == 0, r.stderr
    assert png_info(png2)[2]["Title"] == want
    r = run("plot", "reliability", "--report", str(tmp_path / "m.npz"))
    assert r.returncode == 1 and "not a JSON report" in r.stderr
    assert len(r.stderr.splitlines()) == 1


def test_probability_temperature_equals_logit_temperature(tmp_path: Path) -> None:
    # softmax(log softmax(z) / T) = softmax(z / T): the same fit from logits or probabilities
    z, y = _model(200, 3, seed=10, scale=1.7)
    np.savez(tmp_path / "z.npz", logits=z, labels=y)
    np.savez(tmp_path / "p.npz", probs=scipy.special.softmax(z, axis=1), labels=y)
    a = fit_temperature(str(tmp_path / "z.npz"), ScoreOptions(logits=True))
    b = fit_temperature(str(tmp_path / "p.npz"), ScoreOptions())
    assert b.temperature == pytest.approx(a.temperature, rel=1e-9)
    assert math.isfinite(a.temperature)


def test_fit_and_write_tsv_keeps_names_and_labels(tmp_path: Path) -> None:
    z, y = _model(150, 3, seed=12, scale=2.0)
    p = scipy.special.softmax(z, axis=1)
    names = ["cat", "dog", "bird"]
    f = tmp_path / "in.tsv"
    f.write_text("cat\tdog\tbird\ty\n" + "".join(
        "\t".join(repr(float(v)) for v in p[i]) + f"\t{names[y[i]]}\n" for i in range(len(y))))
    out = tmp_path / "out.tsv"
    r = run("calibrate", str(f), "--label", "y", "-o", str(out), "--json", "--top-k", "2")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    t = rep["temperature"]
    assert t == pytest.approx(_scipy_temperature(np.log(p), y), rel=1e-6)
    lines = out.read_text().splitlines()
    assert lines[0] == "cat\tdog\tbird\ty"
    assert [ln.rsplit("\t", 1)[1] for ln in lines[1:]] == [names[v] for v in y]
    got = np.array([[float(c) for c in ln.split("\t")[:3]] for ln in lines[1:]])
    np.testing.assert_allclose(got, scipy.special.softmax(np.log(p) / t, axis=1), rtol=1e-14)
    # top-k accuracy is unchanged by a temperature (the order of the classes is kept)
    assert rep["before"]["top_k_accuracy"]["2"] == rep["after"]["top_k_accuracy"]["2"]
    r = run("calibrate", str(f), "--label", "y", "--top-k", "2")
    assert f"temperature    {t:.10g}  (fitted in {rep['passes']} passes" in r.stdout
    assert "top-2" in r.stdout


def test_platt_text_report_lists_the_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(13)
    x = rng.normal(size=(200, 2))
    t = (rng.random((200, 2)) < scipy.special.expit(0.5 * x)).astype(float)
    np.savez(tmp_path / "m.npz", logits=x, targets=t)
    r = run("calibrate", str(tmp_path / "m.npz"), "--multilabel", "--targets", "targets",
            "--logits")
    assert r.returncode == 0, r.stderr
    assert "Platt          a, b per label (fitted in" in r.stdout
    assert "  0            a = " in r.stdout and "  1            a = " in r.stdout


# --------------------------------------------------------------------------- issue 27:
# perfectly separated labels have no finite Platt fit; calibrate says so (exit status 1)


@pytest.mark.parametrize(("rows", "why"), [
    # complete separation, a -> +inf: every target-1 score above every target-0 score
    ("0.9,1\n0.8,1\n0.2,0\n0.1,0\n", "logit(p) >= 1.38629"),
    # the other way round, a -> -inf
    ("0.9,0\n0.8,0\n0.2,1\n0.1,1\n", "logit(p) <= -1.38629"),
    # quasi-complete: the two target values meet at p = 0.5 (logit 0) but do not cross
    ("0.9,1\n0.5,1\n0.5,0\n0.1,0\n", "logit(p) >= 0"),
    # the one row that would overlap has weight 0, so it does not count
    ("0.9,1,1\n0.3,1,0\n0.5,0,1\n0.1,0,1\n", "logit(p) >= 2.19722"),
])
def test_separated_labels_have_no_finite_platt_fit(tmp_path: Path, rows: str,
                                                    why: str) -> None:
    f = tmp_path / "sep.csv"
    weighted = rows.count(",") > rows.count("\n")
    f.write_text(("p,y,w\n" if weighted else "p,y\n") + rows)
    args = ["calibrate", str(f), "--multilabel", "--columns", "p", "--targets", "y"]
    if weighted:
        args += ["--weight", "w"]
    r = run(*args)
    # before: 100 passes, exit status 0 and "NOT converged" on standard output
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout == ""
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert "label 'p': the scores separate the targets" in r.stderr
    assert why in r.stderr
    assert "no finite fit" in r.stderr
    # found on the first pass over the file, not by letting a and b grow for 100 passes
    passes: list[int] = []
    spec = ColumnSpec(pred="p", targets="y", multilabel=True, weight="w" if weighted else None)
    with pytest.raises(ScoreError, match="separate the targets"):
        fit_platt(str(f), ScoreOptions(columns=spec), on_pass=lambda k: passes.append(k))
    assert passes == [1]


def test_separated_logits_and_one_label_of_several(tmp_path: Path) -> None:
    # label b is separated (logits -2, -1 have target 0; 1, 3 have target 1), label a is not
    f = tmp_path / "two.csv"
    f.write_text("a,b,ya,yb\n2,-2,1,0\n-1,-1,1,0\n1,1,0,1\n-2,3,0,1\n")
    r = run("calibrate", str(f), "--multilabel", "--logits", "--columns", "a,b",
            "--targets", "ya,yb")
    assert r.returncode == 1
    assert "label 'b': the scores separate the targets (every entry with target 1 has " \
           "logit >= 1, every one with target 0 has logit <= -1)" in r.stderr


def test_overlapping_labels_still_fit_like_sklearn(tmp_path: Path) -> None:
    # one overlap (0.3 with target 1 below 0.5 with target 0): a finite maximum-likelihood fit
    from sklearn.linear_model import LogisticRegression

    p = np.array([0.9, 0.3, 0.5, 0.1])
    t = np.array([1, 1, 0, 0])
    f = tmp_path / "overlap.csv"
    f.write_text("p,y\n" + "".join(f"{a!r},{b}\n"
                                    for a, b in zip(p.tolist(), t.tolist(), strict=True)))
    fit = fit_platt(str(f), ScoreOptions(columns=ColumnSpec(pred="p", targets="y",
                                                           multilabel=True)))
    assert fit.converged
    x = scipy.special.logit(p)[:, None]
    lr = LogisticRegression(C=1e12, tol=1e-12, max_iter=10_000).fit(x, t)
    assert fit.a[0] == pytest.approx(float(lr.coef_[0, 0]), rel=1e-5)
    assert fit.b[0] == pytest.approx(float(lr.intercept_[0]), rel=1e-5, abs=1e-6)

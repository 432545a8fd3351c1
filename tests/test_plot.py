"""``crossentropy plot``: the PNG files are opened; their size, text and pixels are checked."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from test_cli_explain import run

C0 = (0x1F, 0x77, 0xB4)  # matplotlib's first colour: the curves
C3 = (0xD6, 0x27, 0x28)  # the marked example points


def png_info(path: Path) -> tuple[int, int, dict[str, str]]:
    """(width, height, text chunks) of a PNG, read chunk by chunk with the CRCs checked."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, text, size = 8, {}, (0, 0)
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert zlib.crc32(kind + body) == crc
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"tEXt":
            k, _, v = body.partition(b"\0")
            text[k.decode("latin-1")] = v.decode("latin-1")
        elif kind == b"iTXt":
            k, _, rest = body.partition(b"\0")
            text[k.decode()] = rest[2:].split(b"\0", 2)[2].decode()
        pos += 12 + n
    return size[0], size[1], text


def has_colour(img: np.ndarray, rgb: tuple[int, int, int], min_pixels: int) -> bool:
    px = (img[..., :3] * 255).round().astype(int)
    hit = np.all(np.abs(px - np.array(rgb)) <= 8, axis=-1)
    return int(hit.sum()) >= min_pixels


EXPECT = {
    # mpmath: sigmoid(-243) = 2.92712249651537e-106, 1 - sigmoid(424.5) = 4.385230560917e-185
    "sigmoid": ((1100, 450), ["sigmoid(1) = 0.731059", "sigmoid(-243) = 2.92712e-106",
                              "1 - sigmoid = 4.38523e-185"]),
    "softmax": ((1000, 450), ["Z3 = 6.3 -> 0.961327", "cat 9.8 -> 0.997695"]),
    # mpmath: -log2(0.997694) = 0.00333069653505, -log2(1 - 0.002237) = 0.00323092394375
    "bce": ((700, 450), ["cat: p = 0.997694, y = 1, loss = 0.0033307 bits",
                         "dog: p = 0.002237, y = 0, loss = 0.00323092 bits"]),
    "cross-entropy": ((700, 450), ["cat: q = 0.997695, H = 0.00332964 bits",
                                   "bird: q = 6.75726e-05, H = 13.8532 bits"]),
}


@pytest.fixture(scope="module")
def plots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("plots")
    r = run("plot", "all", "--outdir", str(d))
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == sorted(str(d / f"{k}.png") for k in EXPECT)
    return d


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_plot_file(plots: Path, name: str) -> None:
    from matplotlib.image import imread

    path = plots / f"{name}.png"
    (w, h), labels = EXPECT[name]
    width, height, text = png_info(path)
    assert (width, height) == (w, h)
    assert path.stat().st_size > 15_000
    for label in labels:
        assert label in text["Description"], (label, text["Description"])
    img = imread(path)
    assert img.shape[:2] == (h, w)
    if name == "softmax":  # bars in C0 and C2 (green); C1's are under 1 pixel (p < 0.004)
        for rgb in (C0, (0x2C, 0xA0, 0x2C)):
            assert has_colour(img, rgb, 200)
    else:
        assert has_colour(img, C3, 20)  # the marked points are drawn
    if name == "bce":
        # both points whole (about 61 pixels each at 100 dpi), not half under the x axis
        assert has_colour(img, C3, 100)
        assert has_colour(img, C0, 200)  # the curve is drawn
    assert float(np.std(img[..., :3])) > 0.05  # not a blank canvas


def test_plot_single_output_and_usage(tmp_path: Path) -> None:
    out = tmp_path / "s.png"
    r = run("plot", "bce", "-o", str(out), "--dpi", "50")
    assert r.returncode == 0, r.stderr
    assert png_info(out)[:2] == (350, 225)
    r = run("plot", "all", "-o", str(out))
    assert r.returncode == 2 and "--outdir" in r.stderr


def test_reliability_diagram(tmp_path: Path) -> None:
    from crossentropy.plot import reliability_diagram
    from crossentropy.score import ScoreOptions, score_file

    f = tmp_path / "e.csv"
    f.write_text("a,b,c,label\n0.9,0.1,0,0\n0.8,0.2,0,1\n0.4,0.6,0,1\n0.4,0.3,0.3,2\n")
    rep = score_file(str(f), ScoreOptions(bins=2))
    png = tmp_path / "rel.png"
    reliability_diagram(rep, str(png))
    _, _, text = png_info(png)
    assert text["Title"] == "reliability diagram, ECE = 0.175"
    # bin [0.5, 1): 3 rows, mean confidence 2.3 / 3, accuracy 2 / 3
    assert "bin [0.5, 1): confidence 0.7667, accuracy 0.6667, weight 3" in text["Description"]


def test_plot_all_creates_the_outdir(tmp_path: Path) -> None:
    # the README's 'crossentropy plot all --outdir figures/' in a fresh directory
    out = tmp_path / "new" / "figures"
    r = run("plot", "all", "--outdir", f"{out}/", "--dpi", "20", cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{k}.png" for k in EXPECT)
    # a file in the way: one line, no traceback
    (tmp_path / "file").write_text("")
    r = run("plot", "all", "--outdir", str(tmp_path / "file" / "sub"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("crossentropy plot: error:")


# --------------------------------------------------------------------------- issue 27: the
# format the suffix names, unknown suffixes refused, a missing folder named

MAGIC = {
    "png": (b"\x89PNG\r\n\x1a\n",),
    "jpg": (b"\xff\xd8\xff",),
    "jpeg": (b"\xff\xd8\xff",),
    "JPG": (b"\xff\xd8\xff",),
    "pdf": (b"%PDF-",),
    "svg": (b"<?xml",),
    "eps": (b"%!PS-Adobe-3.0 EPSF-",),
    "ps": (b"%!PS-Adobe-3.0\n",),
    "tif": (b"II*\x00", b"MM\x00*"),
    "tiff": (b"II*\x00", b"MM\x00*"),
}


@pytest.mark.parametrize("suffix", sorted(MAGIC))
def test_plot_writes_the_format_its_suffix_names(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"s.{suffix}"
    r = run("plot", "sigmoid", "-o", str(out), "--dpi", "20")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # the PostScript writer's note on transparency is kept quiet
    assert r.stdout == f"{out}\n"
    data = out.read_bytes()
    assert data.startswith(MAGIC[suffix]), data[:20]  # before: PNG bytes whatever the suffix
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left
    if suffix == "pdf":
        assert b"/Title (sigmoid)" in data and b"/Subject (sigmoid\\(1\\) = 0.731059" in data
    if suffix == "svg":
        assert b"<svg" in data and b"<dc:title>sigmoid</dc:title>" in data
        assert b"sigmoid(-243) = 2.92712e-106" in data
    if suffix in ("eps", "ps"):
        assert b"%%Creator: crossentropy" in data and b".tmp" not in data[:400]
    if suffix in ("jpg", "tif"):
        from PIL import Image  # matplotlib's own dependency, which writes these formats

        with Image.open(out) as img:
            assert img.format == ("JPEG" if suffix == "jpg" else "TIFF")
            assert img.size == (220, 90)  # 11 x 4.5 inches at 20 dpi


def test_score_and_calibrate_reliability_in_other_formats(tmp_path: Path) -> None:
    f = tmp_path / "v.csv"
    f.write_text("a,b,label\n0.9,0.1,0\n0.8,0.2,1\n0.3,0.7,1\n0.6,0.4,0\n")
    r = run("score", str(f), "--reliability", str(tmp_path / "r.pdf"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "r.pdf").read_bytes().startswith(b"%PDF-")
    r = run("calibrate", str(f), "--reliability", str(tmp_path / "c.jpg"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "c.jpg").read_bytes().startswith(b"\xff\xd8\xff")
    rep = tmp_path / "s.json"
    assert run("score", str(f), "-o", str(rep)).returncode == 0
    r = run("plot", "reliability", "--report", str(rep), "-o", str(tmp_path / "p.svg"))
    assert r.returncode == 0, r.stderr
    assert b"<svg" in (tmp_path / "p.svg").read_bytes()


SUFFIXES = ".png, .pdf, .svg, .jpg (.jpeg), .eps, .ps, .tif (.tiff)"


@pytest.mark.parametrize(("args", "message"), [
    (["plot", "sigmoid", "-o", "x.gif"],
     f"--output x.gif: cannot write a '.gif' image; the suffix picks the image format: one "
     f"of {SUFFIXES}"),
    (["plot", "bce", "-o", "x.foo"], "--output x.foo: cannot write a '.foo' image"),
    (["plot", "softmax", "-o", "picture"],
     f"--output picture: the file name needs a suffix to pick the image format: one of "
     f"{SUFFIXES}"),
    (["score", "v.csv", "--reliability", "r.webm"], "--reliability r.webm: cannot write"),
    (["calibrate", "v.csv", "--reliability", "r.txt"], "--reliability r.txt: cannot write"),
])
def test_unknown_suffix_is_refused_in_one_line(tmp_path: Path, args: list[str],
                                                message: str) -> None:
    (tmp_path / "v.csv").write_text("a,b,label\n0.9,0.1,0\n0.3,0.7,0\n")
    r = run(*args, cwd=str(tmp_path))
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stdout == ""
    assert len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith(f"crossentropy {args[0]}: error: ")
    assert message in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.csv"]  # nothing written


@pytest.mark.parametrize("args", [
    ["plot", "sigmoid", "-o", "nodir/x.png"],
    ["plot", "reliability", "--report", "s.json", "-o", "nodir/x.png"],
    ["explain", "-o", "nodir/e.txt"],
    ["score", "v.csv", "-o", "nodir/r.json"],
    ["score", "v.csv", "--reliability", "nodir/r.png"],
    ["calibrate", "v.csv", "-o", "nodir/c.csv"],
    ["calibrate", "v.csv", "--report", "nodir/c.json"],
    ["calibrate", "v.csv", "--reliability", "nodir/c.png"],
])
def test_missing_output_folder_is_named(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "v.csv").write_text("a,b,label\n0.9,0.1,0\n0.3,0.7,0\n0.6,0.4,1\n")
    (tmp_path / "s.json").write_text("{}")
    r = run(*args, cwd=str(tmp_path))
    assert r.returncode == 1, r.stdout + r.stderr
    out = next(a for a in args if a.startswith("nodir/"))
    assert r.stderr == (f"crossentropy {args[0]}: error: {out}: the folder 'nodir' does not "
                        "exist\n")  # before: the temporary name, nodir/x.png.tmp1234.png
    assert r.stdout == ""


def test_output_in_place_of_a_folder(tmp_path: Path) -> None:
    (tmp_path / "v.csv").write_text("a,b,label\n0.9,0.1,0\n0.3,0.7,0\n")
    r = run("score", "v.csv", "-o", "v.csv/r.json", cwd=str(tmp_path))
    assert r.returncode == 1
    assert r.stderr == "crossentropy score: error: v.csv/r.json: 'v.csv' is a file, not a " \
                       "folder\n"
    (tmp_path / "d.png").mkdir()
    r = run("plot", "sigmoid", "-o", "d.png", cwd=str(tmp_path))
    assert r.returncode == 1
    assert r.stderr == "crossentropy plot: error: d.png: is a folder; name a file to write\n"

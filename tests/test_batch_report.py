"""The report page of a whole-data-set job (lumos.report.batch, ``lumos report --batch``): its sections
and numbers, self-contained and deterministic, user strings escaped, and a real browser's verdict."""
from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("jinja2")

import lumos.batch as lb  # noqa: E402
from conftest import browse  # noqa: E402
from lumos.report.batch import BATCH_SECTIONS, build_batch, render_batch  # noqa: E402
from test_batch import BG, X, _tiny_cnn, make_model4  # noqa: E402

EVIL = ['<script>alert("x")</script>', '<img src=x onerror=alert(1)>', "a&b", "plain"]


@pytest.fixture(scope="module")
def table_job(tmp_path_factory):
    import pandas as pd

    out = tmp_path_factory.mktemp("tab") / "job"
    frame = pd.DataFrame(X[:, :4], columns=EVIL)
    bg = pd.DataFrame(BG[:, :4], columns=EVIL)
    res = lb.explain_dataset(make_model4, frame, "exact_shapley", out, shard_size=6, background=bg,
                             metrics={"sparseness": {}, "deletion": {"n_steps": 3, "fill": 0.0}})
    return out, res


@pytest.fixture(scope="module")
def image_job(tmp_path_factory):
    root = tmp_path_factory.mktemp("img")
    x = np.random.default_rng(0).random((7, 3, 8, 8)).astype(np.float32)
    masks = np.zeros((7, 8, 8), dtype=bool)
    masks[:, :, :4] = True
    np.save(root / "masks.npy", masks)
    res = lb.explain_dataset(_tiny_cnn, x, "gradient_x_input", root / "job", shard_size=3, target=1,
                             metrics={"relevance_mass_accuracy": {"masks": masks}})
    return root / "job", res, masks, root / "masks.npy"


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_sections_and_numbers_of_a_table_job(table_job):
    out, res = table_job
    html = render_batch(out)
    for sid, title in BATCH_SECTIONS:
        if sid == "masks":
            assert 'id="masks"' not in html  # no masks given, no section
        else:
            assert f'id="{sid}"' in html and title.replace("|", "") in html.replace("|", "")
    text = _text(html)
    man = res.manifest
    for value in ("exact_shapley", man["model"]["hash"], man["data"]["sha256"], "complete"):
        assert value in text
    for s in res.shards:  # every shard with its rows, file, checksum and check
        assert f"{s['start']}..{s['stop'] - 1} {s['file']} {s['sha256'][:16]} done ok" in text
    # mean |attribution| per feature, largest first, the numbers of BatchResults.mean_abs
    mabs = res.mean_abs()
    rows = re.findall(r"<tr><td>([^<]*)</td><td class=\"num\">([^<]*)</td></tr>",
                      html.split('id="attributions"')[1].split("</section>")[0])
    assert [float(v) for _, v in rows] == [float(f"{m:.4g}") for m in sorted(mabs, reverse=True)]
    # metric distributions: the quantiles and counts of metric_distribution
    for name in ("sparseness", "deletion"):
        d = res.metric_distribution(name)
        block = html.split(f"<h3>{name} ")[1].split("</div>")[0]
        assert f'<td class="num">{d.count}</td>' in block
        assert f"quantile 0.5</th><td class=\"num\">{d.quantiles[0.5]:.4g}" in block
        assert block.count("data:image/png;base64,") == 1  # its histogram
    # example rows: four, evenly spaced, with their metric scores
    assert re.findall(r"<h3>row (\d+)</h3>", html) == ["0", "7", "15", "22"]
    assert f"{res.metric('deletion')[22]:.4g}" in html.split("<h3>row 22</h3>")[1]


def test_image_job_shows_the_mean_map_and_the_masks(image_job):
    out, res, masks, _ = image_job
    html = render_batch(out, masks=masks)
    assert 'id="masks"' in html and 'alt="mean absolute attribution per pixel"' in html
    share = res.mask_share(masks)
    text = _text(html)
    assert f"mean share of |attribution| inside the given region is {share.mean():.4g}" in text
    assert f"in a share {np.mean(share > 0.5):.4g} of the images" in text
    # the mean map is the picture of BatchResults.mean_abs (channels summed), on its own scale
    m = np.abs(res[:].values.astype(np.float64)).sum(axis=1).mean(axis=0)
    assert f"maximum {m.max():.4g} at pixel {tuple(int(t) for t in np.unravel_index(np.argmax(m), m.shape))}" in text
    assert "relevance_mass_accuracy" in text


def test_self_contained_and_escaped(table_job):
    out, _ = table_job
    html = render_batch(out)
    assert "<script" not in html.lower() and "onerror=" not in html.lower().replace("onerror=alert(1)&gt;", "")
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "a&amp;b" in html
    srcs = re.findall(r'\bsrc="([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    body = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)  # base64 may spell anything
    assert "http" not in body.lower() and "//" not in body and "<link" not in body and "url(" not in body


def test_same_output_folder_gives_the_same_bytes(table_job, tmp_path):
    out, _ = table_job
    a = build_batch(out, tmp_path / "a.html").read_bytes()
    b = build_batch(out, tmp_path / "b.html").read_bytes()
    assert a == b


def test_a_corrupted_or_missing_shard_is_flagged(table_job, tmp_path):
    src, _ = table_job
    out = tmp_path / "job"
    shutil.copytree(src, out)
    path = out / "shard-00001.parquet"
    data = bytearray(path.read_bytes())
    data[40] ^= 0xFF
    path.write_bytes(bytes(data))
    (out / "shard-00003.parquet").unlink()
    from lumos.report.batch import _verify

    checks = [s["check"] for s in _verify(lb.open(out))]
    assert checks == ["ok", "checksum differs", "ok", "missing"]


def test_cli_report_batch(image_job, tmp_path, capsys):
    from lumos.cli import main

    out, _, masks, masks_path = image_job
    assert main(["report", "--batch", str(out), "--masks", str(masks_path), "--out", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").read_bytes() == render_batch(out, masks=masks).encode()
    assert main(["report", "--batch", str(out), "--out", str(tmp_path / "folder")]) == 0
    assert (tmp_path / "folder" / "batch.html").exists()
    assert main(["report", "--batch", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.html")]) == 2
    assert "manifest" in capsys.readouterr().err
    assert main(["report", "--masks", str(masks_path)]) == 2


def test_batch_report_in_a_real_browser(table_job, image_job, tmp_path):
    """Chromium opens both pages with no console message and no network request."""
    out, *_ = table_job
    img_out, _, masks, _ = image_job
    for name, path in (("t", build_batch(out, tmp_path / "t.html")),
                       ("i", build_batch(img_out, tmp_path / "i.html", masks=masks))):
        dom, console, urls = browse(tmp_path, path)
        assert console == [] and urls == [], (name, console, urls)
        assert "Metric distributions" in dom and "Example rows" in dom

"""Notebook display (issue 18): the ``_repr_html_`` of Explanation, MetricResult and Comparison look like
the static report (its table styles), hold the comparison's numbers, escape every user string, reference
nothing outside themselves, and render in a real headless Chromium with user strings as text."""
from __future__ import annotations

import os
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SmallCNN, browse, headless_browser

import lumos
from lumos.core.explanation import Explanation
from lumos.display._html import REPORT_RULES
from lumos.metrics.comparison import Comparison, _fmt, compare
from lumos.metrics.results import MetricResult

XSS = "<script>alert(1)</script>"
ATTR = '" onerror="alert(2)'
TEMPLATE = Path(lumos.__file__).parent / "report" / "templates" / "report.html.j2"


# ----------------------------------------------------------------------------- objects to show
def _table_explanation():
    rng = np.random.default_rng(0)
    return Explanation(values=rng.normal(size=(2, 4)), inputs=rng.normal(size=(2, 4)),
                       target=np.array([XSS, ATTR]), method=XSS, params={"fill": ATTR, "n": 3},
                       feature_names=[XSS, ATTR, "age", "income"], meta={XSS: 1})


def _image_explanation():
    rng = np.random.default_rng(1)
    return Explanation(values=rng.normal(size=(1, 3, 12, 12)), inputs=rng.random((1, 3, 12, 12)),
                       target=np.array([2]), method="saliency", params={"abs": True})


def _metric_result():
    return MetricResult(name=XSS, scores=np.array([0.1, 0.4, np.nan]), direction="higher", method=ATTR,
                        params={"fill": XSS, "scale": "probability"})


def _xss_comparison():
    """Method, metric and missing-result texts that carry markup; curves, so the picture is drawn."""
    x = np.linspace(0, 1, 5)
    methods, metrics = [XSS, ATTR, "random"], ["deletion", XSS]
    results = {}
    for i, m in enumerate(methods):
        y = np.stack([np.linspace(1, 0.1 * i, 5), np.linspace(0.9, 0.1 * i, 5)])
        results[m] = {"deletion": MetricResult("deletion", y.mean(1), "lower", m, {"n_steps": 4},
                                               curves={"x": x, "y": y}),
                      XSS: MetricResult(XSS, np.array([i, i + 1.0]), "higher", m) if i else f"failed: {ATTR}"}
    return Comparison(methods, metrics, results, {}, {}, 2)


@pytest.fixture(scope="module")
def real_comparison():
    torch.manual_seed(0)
    model = SmallCNN(n_classes=3).eval()
    x = torch.rand(4, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    masks = np.zeros((4, 12, 12), bool)
    masks[:, 2:7, 3:9] = True
    return compare(model, x, ["saliency", "gradient_x_input", "integrated_gradients", "random"],
                   ["deletion", "sparseness", "pointing_game"], masks=masks,
                   metric_params={"deletion": {"n_steps": 4}})


@pytest.fixture(scope="module")
def pages():
    """name -> the notebook HTML of each object (what Jupyter shows)."""
    return {"table explanation": _table_explanation()._repr_html_(),
            "image explanation": _image_explanation()._repr_html_(),
            "metric result": _metric_result()._repr_html_(),
            "comparison": _xss_comparison()._repr_html_()}


# ----------------------------------------------------------------------------- parsing
class _Parse(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.elements, self.texts, self.stack = [], [], []

    def handle_starttag(self, tag, attrs):
        el = {"tag": tag, "attrs": dict(attrs), "text": ""}
        self.elements.append(el)
        if tag not in ("img", "br", "meta"):
            self.stack.append(el)

    def handle_endtag(self, tag):
        while self.stack:
            if self.stack.pop()["tag"] == tag:
                break

    def handle_data(self, data):
        self.texts.append(data)
        for el in self.stack:
            el["text"] += data


def _parse(html: str) -> _Parse:
    p = _Parse()
    p.feed(html)
    return p


def _decls(style: str) -> set[str]:
    """``a: b; c: d`` -> {"a:b", "c:d"} (spaces and the last semicolon do not count)."""
    return {re.sub(r"\s+", " ", d).replace(": ", ":").strip() for d in style.split(";") if d.strip()}


def _report_rules() -> dict[str, set[str]]:
    css = re.search(r"<style>(.*?)</style>", TEMPLATE.read_text(), re.S).group(1)
    return {sel.strip(): _decls(body) for sel, body in re.findall(r"([^{}]+)\{([^}]*)\}", css)}


# ----------------------------------------------------------------------------- the report's look
def test_the_notebook_styles_are_the_reports():
    report = _report_rules()
    for sel, decls in REPORT_RULES.items():
        assert sel in report, sel
        if sel == "body":  # the page's margins are not a table's
            assert _decls(decls) <= report[sel], (sel, _decls(decls) - report[sel])
        else:
            assert _decls(decls) == report[sel], (sel, _decls(decls) ^ report[sel])


@pytest.mark.parametrize("name", ["table explanation", "image explanation", "metric result", "comparison"])
def test_every_table_element_carries_the_report_style(pages, name):
    rules = {k: _decls(v) for k, v in REPORT_RULES.items()}
    p = _parse(pages[name])
    root = p.elements[0]  # the box: a div, or the table itself for a metric result
    assert root["tag"] in ("div", "table") and rules["body"] <= _decls(root["attrs"]["style"])
    assert "background:#fff" in _decls(root["attrs"]["style"])  # readable on a dark notebook theme
    seen = set()
    for el in p.elements:
        style, cls = _decls(el["attrs"].get("style", "")), el["attrs"].get("class", "").split()
        if el["tag"] == "table":
            assert rules["table"] <= style
        elif el["tag"] == "th":
            assert rules["th, td"] | rules["th"] <= style
        elif el["tag"] == "td":
            assert rules["th, td"] <= style
            if "num" in cls:
                assert rules["td.num"] <= style
            if "best" in cls:
                assert rules["td.best"] <= style
            if "best" not in cls:
                assert not rules["td.best"] <= style
        elif el["tag"] == "code":
            assert rules["code, pre"] <= style
        elif "note" in cls:
            assert rules[".note"] <= style
        seen.add(el["tag"])
    assert {"table", "th", "td"} <= seen


# ----------------------------------------------------------------------------- escaping
@pytest.mark.parametrize("name", ["table explanation", "metric result", "comparison"])
def test_user_strings_are_shown_as_text(pages, name):
    html = pages[name]
    assert XSS not in html and 'onerror="' not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&#34; onerror=&#34;alert(2)" in html
    p = _parse(html)
    assert "script" not in [el["tag"] for el in p.elements]
    assert not any(k.startswith("on") for el in p.elements for k in el["attrs"])
    text = "".join(p.texts)
    assert XSS in text and ATTR in text


def test_each_user_string_lands_where_it_belongs(pages):
    def row(html, key):
        return next(el["text"] for el in _parse(html).elements if el["tag"] == "tr" and el["text"].startswith(key))

    e = pages["table explanation"]
    assert XSS in row(e, "method") and XSS in row(e, "features") and ATTR in row(e, "features")
    assert XSS in row(e, "target") and ATTR in row(e, "target")  # class names
    assert ATTR in row(e, "params") and XSS in row(e, "meta")
    r = _parse(pages["metric result"])
    assert next(el["text"] for el in r.elements if el["tag"] == "caption") == XSS
    assert ATTR in row(pages["metric result"], "method") and XSS in row(pages["metric result"], "params")
    c = _parse(pages["comparison"])
    methods = [el["text"] for el in c.elements if "method" in el["attrs"].get("class", "").split()]
    assert sorted(methods) == sorted([XSS, ATTR, "random"])
    heads = [el["text"] for el in c.elements if el["tag"] == "th"]
    assert f"{XSS} ↑" in heads and "deletion ↓" in heads
    assert any(f"n/a {XSS} × {XSS}: failed: {ATTR}" == el["text"] for el in c.elements if el["tag"] == "p")


# ----------------------------------------------------------------------------- self-contained
@pytest.mark.parametrize("name", ["table explanation", "image explanation", "metric result", "comparison"])
def test_no_external_reference(pages, name):
    html = pages[name]
    body = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)
    assert "http" not in body.lower() and "//" not in body and "url(" not in body
    p = _parse(html)
    assert not {"script", "link", "iframe", "object", "embed", "style", "svg"} & {el["tag"] for el in p.elements}
    for el in p.elements:
        assert "href" not in el["attrs"] and "srcset" not in el["attrs"]
        if "src" in el["attrs"]:
            assert el["attrs"]["src"].startswith("data:image/png;base64,")


def test_pictures_are_there_and_decode(pages):
    import base64
    import io

    from PIL import Image

    for name, n in (("table explanation", 1), ("image explanation", 1), ("metric result", 0), ("comparison", 1)):
        blobs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', pages[name])
        assert len(blobs) == n, name
        for b in blobs:
            im = Image.open(io.BytesIO(base64.b64decode(b)))
            assert im.format == "PNG" and np.asarray(im.convert("L")).std() > 5


# ----------------------------------------------------------------------------- the numbers
def test_comparison_table_holds_the_comparisons_numbers(real_comparison):
    comp = real_comparison
    p = _parse(comp._repr_html_())
    ranks, mean_ranks = comp.ranks(), comp.mean_ranks()
    heads = [el for el in p.elements if el["tag"] == "th" and "metric" in el["attrs"].get("class", "")]
    assert [h["text"] for h in heads] == [f"{k} {'↑' if comp.direction(k) == 'higher' else '↓'}"
                                         for k in comp.metrics]
    assert [h["attrs"]["data-direction"] for h in heads] == [comp.direction(k) for k in comp.metrics]
    rows = [el for el in p.elements if el["tag"] == "tr" and el["attrs"].get("class") == "method-row"]
    assert len(rows) == len(comp.methods)
    cells = [el for el in p.elements if el["tag"] == "td" and "num" in el["attrs"].get("class", "").split()]
    per_row = len(comp.metrics) + 1
    assert len(cells) == per_row * len(rows)
    for i, m in enumerate(comp.order()):
        assert rows[i]["text"].startswith(m)
        for j, k in enumerate(comp.metrics):
            c, r = cells[i * per_row + j], comp.result(m, k)
            a = c["attrs"]
            assert r is not None  # every method is scored on every metric here
            assert float(a["data-mean"]) == r.mean and float(a["data-std"]) == r.std
            assert float(a["data-rank"]) == ranks[k][m]
            assert c["text"] == f"{_fmt(r.mean)} ± {_fmt(r.std)} ({ranks[k][m]:g})"
            assert ("best" in a["class"].split()) == (ranks[k][m] == 1)
        last = cells[i * per_row + per_row - 1]
        assert float(last["attrs"]["data-mean-rank"]) == mean_ranks[m] and last["text"] == f"{mean_ranks[m]:.2f}"
    # the same cells as the text table prints
    table = "\n".join(comp.table())
    for c in cells:
        if "mean-rank" not in c["attrs"]["class"]:
            assert c["text"] in table
    # the mean rank orders the rows
    assert [mean_ranks[m] for m in comp.order()] == sorted(mean_ranks[m] for m in comp.order())


def test_metric_result_table_holds_its_numbers():
    r = _metric_result()
    texts = [el["text"] for el in _parse(r._repr_html_()).elements if el["tag"] == "tr"]
    assert f"mean ± sem{r.mean:.4g} ± {r.sem:.2g}" in texts
    assert "min / median / max0.1 / 0.25 / 0.4" in texts and "samples3 (1 undefined)" in texts
    assert "betterhigher (↑)" in texts and "scaleprobability" in texts


def test_a_missing_result_is_named_not_hidden():
    comp = _xss_comparison()
    p = _parse(comp._repr_html_())
    missing = [el for el in p.elements if "missing" in el["attrs"].get("class", "").split() and el["tag"] == "td"]
    assert len(missing) == 1 and missing[0]["text"] == "n/a" and missing[0]["attrs"]["title"] == f"failed: {ATTR}"


# ----------------------------------------------------------------------------- a real browser
def _artefacts(tmp_path: Path) -> Path:
    out = Path(os.environ["LUMOS_TEST_ARTEFACTS"]) if os.environ.get("LUMOS_TEST_ARTEFACTS") else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    return out


def _notebook_page(pages: dict) -> str:
    """The outputs as a notebook host inserts them: each fragment in an output area of a page."""
    cells = "\n".join(f'<div class="output_html" id="out-{i}">{html}</div>' for i, html in enumerate(pages.values()))
    return f'<!doctype html><html><head><meta charset="utf-8"><title>notebook</title></head><body>{cells}</body></html>'


def test_notebook_html_in_a_real_browser(tmp_path, pages):
    # conftest.browse's own control page (a console message and a request are caught) is
    # test_report.py::test_browser_checks_can_fail
    path = tmp_path / "notebook.html"
    path.write_text(_notebook_page(pages), encoding="utf-8")
    dom, console, urls = browse(tmp_path, path)
    assert console == [] and urls == []  # no script ran, nothing was fetched
    p = _parse(dom)
    tags = [el["tag"] for el in p.elements]
    assert "script" not in tags and tags.count("img") == 3
    text = "".join(p.texts)
    assert text.count(XSS) >= 6 and text.count(ATTR) >= 4  # the strings are the page's text
    for cls in ("lumos-explanation", "lumos-metric", "lumos-comparison"):
        assert any(cls in el["attrs"].get("class", "") for el in p.elements)
    shot = _artefacts(tmp_path) / "notebook_html.png"
    res = subprocess.run(headless_browser() + ["--hide-scrollbars", "--window-size=900,1400",
                                               f"--screenshot={shot}", path.resolve().as_uri()],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    from PIL import Image

    arr = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert arr.std() > 10  # tables and pictures, not an empty page
    # the report's header grey (#f4f4f4) and best-cell green (#e6f4ea) are painted
    for rgb in ((0xF4, 0xF4, 0xF4), (0xE6, 0xF4, 0xEA)):
        assert (np.abs(arr - rgb).max(-1) < 2).sum() > 200, rgb

"""Attention views: self-contained head/model view HTML (escaped, deterministic, drawn as the
weights say, checked by running the page's own script in node) and heat maps with readable labels."""
import json
import re
import shutil
import subprocess

import matplotlib
import numpy as np
import pytest
from conftest import headless_browser
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lumos.text.attention import Attentions, attentions, flow, rollout  # noqa: E402
from lumos.text.views import (DECIMALS, HEAD_COLORS, HeadView, ModelView,  # noqa: E402
                              attention_heatmap, attention_pictures, example_attention,
                              head_view, model_view)

XSS = ["<script>alert(1)</script>", '" onerror=alert(1) x="', "</script><b>bold</b>", "it's",
       "a&amp;b"]


def _att(L=2, B=1, H=3, T=5, seed=0):
    g = np.random.default_rng(seed)
    a = g.random((L, B, H, T, T)) + 0.02
    return a / a.sum(-1, keepdims=True)


def _data(html):
    m = re.search(r'<script type="application/json" class="lumos-attention-data">(.*?)</script>',
                  html, re.S)
    return json.loads(m.group(1)), m.group(1)


# --- the HTML -----------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [head_view, model_view])
def test_html_is_self_contained_and_deterministic(make):
    a = _att()
    for standalone in (False, True):
        html = make(tuple(torch.tensor(x) for x in a), XSS).to_html(standalone=standalone)
        low = html.lower()
        assert "http" not in low and "//cdn" not in low and "src=" not in low
        assert "<link" not in low and "@import" not in low and "url(" not in low
        assert html == make(a, XSS).to_html(standalone=standalone)  # tuple or stacked: same bytes
    page = make(a, XSS).to_html(standalone=True)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert make(_att(seed=1), XSS).to_html() != make(a, XSS).to_html()


@pytest.mark.parametrize("make", [head_view, model_view])
def test_every_layer_and_head_is_embedded_with_its_weights(make):
    a = _att(L=3, H=4, T=6)
    toks = [f"t{i}" for i in range(6)]
    data, _ = _data(make(a, toks).to_html())
    got = np.array(data["attention"]) / data["scale"]
    assert got.shape == (3, 4, 6, 6) and data["scale"] == 10 ** DECIMALS
    np.testing.assert_allclose(got, a[:, 0], atol=0.5 * 10 ** -DECIMALS + 1e-15)
    assert data["tokens"] == toks and data["kind"] == make(a, toks).kind


def test_tokens_and_title_are_escaped():
    a = _att()
    html = head_view(a, XSS, title="<script>alert('t')</script>").to_html(standalone=True)
    data, raw = _data(html)
    assert data["tokens"] == XSS and data["title"] == "<script>alert('t')</script>"
    # nothing of the user's text can open or close an element: no "<" at all in the JSON, and
    # the only </script> are the page's own two
    assert "<" not in raw and ">" not in raw and "&" not in raw
    assert html.count("</script>") == 2 and html.count("<script") == 2
    assert "alert(1)</script>" not in html and "<b>bold" not in html
    # the quote of '" onerror=' is \" inside the JSON string and &#34; in the HTML text
    for m in re.finditer(re.escape('" onerror='), html):
        assert html[m.start() - 1] == "\\"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # the <noscript> text
    assert "&#34; onerror=alert(1) x=&#34;" in html
    assert "&lt;script&gt;alert(&#39;t&#39;)&lt;/script&gt;" in html  # the page title


def test_only_real_tokens_are_shown():
    a = _att(B=2, T=6)
    mask = np.array([[1] * 6, [0, 0, 1, 1, 1, 0]])
    toks = [[f"a{i}" for i in range(6)], ["<pad>", "<pad>", "x", "y", "z", "<pad>"]]
    v = head_view(a, toks, index=1, attention_mask=mask)
    assert v.tokens == ["x", "y", "z"]
    np.testing.assert_array_equal(v.attention, a[:, 1][:, :, 2:5][:, :, :, 2:5])
    # Attentions carry their mask and tokens
    A = Attentions(a, mask.astype(bool), toks)
    m = model_view(A, index=1)
    assert m.tokens == ["x", "y", "z"] and m.attention.shape == (2, 3, 3, 3)
    # the real tokens alone may be given
    assert head_view(a, ["x", "y", "z"], index=1, attention_mask=mask).tokens == ["x", "y", "z"]
    # one example's (layers, heads, T, T)
    assert head_view(a[:, 0], toks[0]).attention.shape == (2, 3, 6, 6)


def test_bad_arguments_are_refused_clearly():
    a = _att()
    with pytest.raises(ValueError, match="layer"):
        head_view(a, layer=2)
    with pytest.raises(ValueError, match="heads"):
        head_view(a, heads=[0, 3])
    with pytest.raises(ValueError, match="tokens has 4 entries"):
        head_view(a, ["a"] * 4)
    with pytest.raises(IndexError, match="index"):
        model_view(a, index=1)
    with pytest.raises(TypeError, match="list of token strings"):
        model_view(a, "one string")
    with pytest.raises(ValueError, match="kind"):
        attention_heatmap(a, kind="grad")
    assert head_view(a, layer=-1, heads=[2, -3, 2]).layer == 1
    assert head_view(a, layer=-1, heads=[2, -3, 2]).heads == [0, 2]


# --- the page's script, run in node with a small recording DOM ----------------------------------

_HARNESS = r"""
const fs = require("fs");
const page = fs.readFileSync(process.argv[2], "utf8");
const script = page.match(/<script>\n([\s\S]*?)<\/script>/)[1];
const json = page.match(/<script type="application\/json" class="lumos-attention-data">([\s\S]*?)<\/script>/)[1];
class Ctx {
  constructor() { this.ops = []; this.globalAlpha = 1; this.strokeStyle = ""; this.fillStyle = ""; this.path = []; }
  clearRect() { this.ops = []; }
  setTransform(a, b, c, d, e, f) { if (a !== 1 || d !== 1 || e || f) throw new Error("transform"); }
  beginPath() { this.path = []; }
  moveTo(x, y) { this.path.push([x, y]); }
  lineTo(x, y) { this.path.push([x, y]); }
  stroke() { this.ops.push({op: "line", color: this.strokeStyle, alpha: this.globalAlpha, path: this.path.slice()}); }
  fillRect(x, y, w, h) { this.ops.push({op: "rect", color: this.fillStyle, alpha: this.globalAlpha, x, y, w, h}); }
}
class El {
  constructor(tag) { this.tagName = tag; this.children = []; this.attrs = {}; this.style = {};
    this.listeners = {}; this.text = ""; this.className = ""; this.parentNode = null; this.ownerDocument = doc; }
  appendChild(c) { c.parentNode = this; this.children.push(c); return c; }
  removeChild(c) { this.children.splice(this.children.indexOf(c), 1); c.parentNode = null; return c; }
  get firstChild() { return this.children[0] || null; }
  set textContent(v) { this.text = String(v); this.children = []; }
  get textContent() { return this.text + this.children.map(c => c.textContent).join(""); }
  setAttribute(k, v) { this.attrs[k] = String(v); }
  getAttribute(k) { return k in this.attrs ? this.attrs[k] : null; }
  removeAttribute(k) { delete this.attrs[k]; }
  addEventListener(t, f) { (this.listeners[t] = this.listeners[t] || []).push(f); }
  fire(t) { (this.listeners[t] || []).forEach(f => f({type: t})); }
  querySelector(sel) { if (sel === "script.lumos-attention-data") return dataEl; throw new Error(sel); }
  getContext() { return this.ctx || (this.ctx = new Ctx()); }
  get innerHTML() { throw new Error("innerHTML read"); }
  set innerHTML(v) { throw new Error("innerHTML written"); }
  all() { return [this].concat(...this.children.map(c => c.all())); }
}
const doc = {createElement: t => new El(t), querySelectorAll: () => []};
const root = new El("div"), me = new El("script"), dataEl = new El("script");
root.appendChild(me); dataEl.text = json;
global.document = Object.assign(doc, {currentScript: me});
require("vm").runInThisContext(script);
const out = {rendered: root.getAttribute("data-lumos-rendered"),
             drawn: root.all().length, states: []};
const lines = cv => cv.getContext().ops.filter(o => o.op === "line")
  .map(o => [o.color, o.alpha, o.path[0][1], o.path[1][1]]);
const data = JSON.parse(json);
const v = lumosAttentionView(new El("div"), data);
if (v.kind === "head") {
  out.options = v.select.children.length;
  out.boxes = v.boxes.length;
  out.tokens = v.view.left.map(e => e.textContent);
  out.states.push(lines(v.view.canvas));
  v.view.left[1].fire("mouseenter"); out.states.push(lines(v.view.canvas));
  out.shade = v.view.right.map(e => e.style.backgroundColor);
  v.view.right[2].fire("mouseenter"); out.states.push(lines(v.view.canvas));
  v.view.box.fire("mouseleave"); out.states.push(lines(v.view.canvas));
  v.select.value = "1"; v.select.fire("change");
  v.boxes[1].checked = false; v.boxes[1].fire("change"); out.states.push(lines(v.view.canvas));
} else {
  out.thumbs = v.thumbs.map(c => [c.getAttribute("data-layer"), c.getAttribute("data-head"), c.width,
    c.getContext().ops.filter(o => o.op === "rect" && o.color !== "#ffffff")
      .map(o => [o.color, o.alpha, o.x, o.y, o.w])]);
  v.thumbs[v.thumbs.length - 1].fire("click");
  const detail = root.children.length;  // the page's own root is untouched by this handle
  const opened = v.open;
  out.detail_states = [];
  // the detail is the last child of the handle's root: find its canvas
  const hroot = v.thumbs[0].parentNode.parentNode;
  const canvases = hroot.children[hroot.children.length - 1].all().filter(e => e.tagName === "canvas");
  out.detail_states.push(canvases.map(lines));
  out.detail_tokens = hroot.children[hroot.children.length - 1].all()
    .filter(e => e.className === "la-tok").map(e => e.textContent);
  v.thumbs[v.thumbs.length - 1].fire("click");
  out.closed = hroot.children[hroot.children.length - 1].children.length;
}
console.log(JSON.stringify(out));
"""

ROW = 20


def _run_page(tmp_path, view):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    page, harness = tmp_path / "view.html", tmp_path / "harness.js"
    view.save(page)
    harness.write_text(_HARNESS)
    res = subprocess.run([node, str(harness), str(page)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _expected_lines(M, heads, rows=None, cols=None):
    out = set()
    for h in heads:
        for i in range(M.shape[-1]):
            for j in range(M.shape[-1]):
                w = round(float(M[h, i, j]), DECIMALS)
                if w > 0 and (rows is None or i in rows) and (cols is None or j in cols):
                    out.add((HEAD_COLORS[h], w, i, j))
    return out


def _drawn(state):
    return {(c, round(a, DECIMALS), int((y0 - ROW / 2) / ROW), int((y1 - ROW / 2) / ROW))
            for c, a, y0, y1 in state}


def test_head_view_page_draws_the_weights_of_the_chosen_layer_heads_and_token(tmp_path):
    a = _att(L=2, H=3, T=5)
    a[0, 0, 1, 3, :] = [0.5, 0.5, 0, 0, 0]  # exact zeros draw no line
    v = head_view(a, XSS, layer=0, heads=[1, 2])
    out = _run_page(tmp_path, v)
    assert out["rendered"] == "1" and out["drawn"] > 20  # the page's own bootstrap drew it
    assert out["options"] == 2 and out["boxes"] == 3
    assert out["tokens"] == XSS  # tokens are text nodes: the DOM shows them, never parses them
    M0, M1 = a[0, 0], a[1, 0]
    s0, s_query, s_key, s_all, s_layer1 = map(_drawn, out["states"])
    assert len(out["states"][0]) == len(s0)  # one line per (head, query, key)
    assert s0 == _expected_lines(M0, [1, 2])
    assert s_query == _expected_lines(M0, [1, 2], rows={1})
    assert s_key == _expected_lines(M0, [1, 2], cols={2})
    assert s_all == s0
    assert s_layer1 == _expected_lines(M1, [2])
    # hovering query 1 shades each key by the mean weight over the two heads
    shade = [float(s.split(",")[-1].rstrip(")")) for s in out["shade"]]
    np.testing.assert_allclose(shade, np.round(np.round(M0[[1, 2], 1], 4).mean(0), 3), atol=1e-9)


def test_model_view_page_has_every_layer_and_head_and_enlarges_on_click(tmp_path):
    a = _att(L=2, H=3, T=4)
    toks = ["<script>alert(1)</script>", "b", "c", "d"]
    out = _run_page(tmp_path, model_view(a, toks))
    assert out["rendered"] == "1"
    assert [(int(l), int(h)) for l, h, _, _ in out["thumbs"]] == [(l, h) for l in range(2)
                                                                 for h in range(3)]
    for l, h, width, rects in out["thumbs"]:
        l, h, cell = int(l), int(h), width / 4
        assert cell == 16  # whole pixels per cell
        got = {(c, round(al, DECIMALS), int(y / cell), int(x / cell)) for c, al, x, y, w in rects}
        assert got == _expected_lines(a[l, 0], [h])
    (detail,) = out["detail_states"]
    assert len(detail) == 1 and _drawn(detail[0]) == _expected_lines(a[1, 0], [2])
    assert out["detail_tokens"] == toks + toks
    assert out["closed"] == 0


# --- from a model, padding ------------------------------------------------------------------------

def _bert_and_tokenizer(padding_side="right"):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[PAD]", "[UNK]", "a", "good", "movie", "<script>alert(1)</script>", '"', "onerror=",
             "bad", "film"]
    t = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=t, pad_token="[PAD]",
                                               unk_token="[UNK]", padding_side=padding_side)
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=32, pad_token_id=0)
    return transformers.BertForSequenceClassification(cfg).eval(), tok


@pytest.mark.parametrize("side", ["left", "right"])
def test_views_from_a_model_show_the_text_alone_whatever_the_padding(side):
    m, tok = _bert_and_tokenizer(side)
    texts = ["bad film", 'a good movie <script>alert(1)</script> " onerror=']
    hv = HeadView.from_model(m, texts, tokenizer=tok, index=0, layer=1)
    alone = HeadView.from_model(m, "bad film", tokenizer=tok, layer=1)
    assert hv.tokens == ["bad", "film"] == alone.tokens
    np.testing.assert_allclose(hv.attention, alone.attention, atol=1e-6)
    mv = ModelView.from_model(m, texts, tokenizer=tok, index=1)
    assert mv.tokens[-3:] == ["<script>alert(1)</script>", '"', "onerror="]
    html = mv.to_html()
    assert "<script>alert(1)" not in html and _data(html)[0]["tokens"] == mv.tokens
    assert m.config._attn_implementation == "sdpa"


def test_attention_pictures_writes_and_records_the_views(tmp_path):
    m, tok = _bert_and_tokenizer()
    files = {}
    paths = attention_pictures(m, tok, "a good movie", tmp_path, files)
    assert sorted(paths) == sorted(files) and len(paths) == 3
    for p in paths:
        assert (tmp_path / p.split("/")[-1]).stat().st_size > 1000
    head = (tmp_path / "attention_head_view.html").read_text()
    assert _data(head)[0]["tokens"] == ["a", "good", "movie"] and _data(head)[0]["layer"] == 1


# --- heat maps ------------------------------------------------------------------------------------

def _inside(box, fig_box, tol=0.5):
    return (box.x0 >= fig_box.x0 - tol and box.y0 >= fig_box.y0 - tol
            and box.x1 <= fig_box.x1 + tol and box.y1 <= fig_box.y1 + tol)


@pytest.mark.parametrize("n", [4, 40])
def test_heatmap_labels_are_the_tokens_and_fit_without_overlap(n):
    g = np.random.default_rng(n)
    words = ["the", "unbelievably", "$x$", "##ing", "Ġmovie", "<s>", "a", "rather_long_token"]
    toks = [words[k] for k in g.integers(0, len(words), n)]
    a = _att(L=2, H=2, T=n)
    d = attention_heatmap(a, toks, kind="head", layer=1, head=1)
    fig = d.figure_
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    xl, yl = d.ax_.get_xticklabels(), d.ax_.get_yticklabels()
    assert [t.get_text() for t in xl] == toks and [t.get_text() for t in yl] == toks
    boxes = [t.get_window_extent(r) for t in xl + yl]
    boxes += [d.ax_.title.get_window_extent(r), d.colorbar_.ax.get_window_extent(r),
              d.ax_.xaxis.label.get_window_extent(r), d.ax_.yaxis.label.get_window_extent(r)]
    assert all(_inside(b, fig.bbox) for b in boxes)
    xb = sorted((t.get_window_extent(r) for t in xl), key=lambda b: b.x0)
    yb = sorted((t.get_window_extent(r) for t in yl), key=lambda b: b.y0)
    assert all(p.x1 <= q.x0 + 0.01 for p, q in zip(xb, xb[1:]))  # columns do not overlap
    assert all(p.y1 <= q.y0 + 0.01 for p, q in zip(yb, yb[1:]))  # rows do not overlap
    # "$x$" is shown as it is, not as mathtext
    assert not any(t._parse_math for t in xl)
    np.testing.assert_array_equal(np.asarray(d.image_.get_array()), a[1, 0, 1])
    plt.close(fig)


@pytest.mark.parametrize("kind", ["head", "mean", "rollout", "flow"])
def test_heatmap_shows_the_asked_map_with_a_colour_bar(kind):
    a = _att(L=3, B=2, H=2, T=6)
    mask = np.array([[1] * 6, [1, 1, 1, 1, 0, 0]])
    toks = [list("abcdef"), list("wxyz") + ["", ""]]
    d = attention_heatmap(a, toks, kind=kind, layer=0, head=1, index=1, attention_mask=mask)
    sub = a[:, 1][:, :, :4, :4]
    expected = {"head": sub[0, 1], "mean": sub[0].mean(0),
                "rollout": rollout(sub[:, None])[0], "flow": flow(sub[:, None])[0]}[kind]
    np.testing.assert_allclose(np.asarray(d.image_.get_array()), expected, atol=1e-12)
    np.testing.assert_allclose(rollout(a, attention_mask=mask)[1][:4, :4],
                               rollout(sub[:, None])[0], atol=1e-12)
    assert [t.get_text() for t in d.ax_.get_yticklabels()] == list("wxyz")
    assert d.colorbar_ is not None and d.image_.get_clim() == (0.0, expected.max())
    plt.close(d.figure_)


def test_heatmap_on_a_given_axes_and_of_an_attentions_object():
    a = _att(B=1, T=3)
    A = Attentions(a, np.ones((1, 3), bool), [["x\ny", "b", "c"]])
    fig, ax = plt.subplots()
    d = attention_heatmap(A, ax=ax, kind="mean", layer=0)
    assert d.ax_ is ax and [t.get_text() for t in ax.get_xticklabels()] == ["x\\ny", "b", "c"]
    assert example_attention(A)[1] == ["x\ny", "b", "c"]
    plt.close(fig)


def test_attentions_of_a_model_feed_the_views_directly():
    m, tok = _bert_and_tokenizer()
    A = attentions(m, ["a good movie", "bad"], tokenizer=tok)
    v = head_view(A, index=1)
    assert v.tokens == ["bad"] and v.attention.shape == (2, 2, 1, 1)
    np.testing.assert_allclose(v.attention, 1.0, atol=1e-6)


# --- in a real headless browser (skipped where none is installed) ---------------------------------

def _in_browser(tmp_path, view, *args, name="page"):
    page = view.save(tmp_path / f"{name}.html")
    cmd = headless_browser() + ["--hide-scrollbars", *args,
                        page.resolve().as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


class _Dom:
    """What a dumped DOM holds: the text of each token element, tags and attributes seen."""

    def __init__(self, html):
        from html.parser import HTMLParser

        self.tokens, self.tags, self.attrs = [], [], []
        dom = self

        class P(HTMLParser):
            def __init__(self):
                super().__init__(convert_charrefs=True)
                self.in_tok = False

            def handle_starttag(self, tag, attrs):
                a = dict(attrs)
                dom.tags.append(tag)
                dom.attrs.append((tag, a))
                if "la-tok" in (a.get("class") or "").split():
                    self.in_tok = True
                    dom.tokens.append("")

            def handle_endtag(self, tag):
                self.in_tok = False

            def handle_data(self, data):
                if self.in_tok:
                    dom.tokens[-1] += data

        P().feed(html)


def test_head_and_model_views_render_in_a_real_browser_with_tokens_as_text(tmp_path):
    a = _att(L=2, H=3, T=5)
    dom = _Dom(_in_browser(tmp_path, head_view(a, XSS), "--dump-dom"))
    assert any(t == "div" and at.get("data-lumos-rendered") == "1" for t, at in dom.attrs)
    assert dom.tokens == XSS + XSS            # queries, then keys: shown as the text they are
    assert "b" not in dom.tags                # '</script><b>bold</b>' created no element
    assert dom.tags.count("option") == 2
    assert sum(1 for t, at in dom.attrs if t == "input" and at.get("type") == "checkbox") == 3
    dom = _Dom(_in_browser(tmp_path, model_view(a, XSS), "--dump-dom", name="model"))
    cells = [(at["data-layer"], at["data-head"]) for t, at in dom.attrs
             if t == "canvas" and "data-layer" in at]
    assert cells == [(str(l), str(h)) for l in range(2) for h in range(3)]


def test_head_view_lines_are_drawn_in_a_real_browser(tmp_path):
    from PIL import Image

    a = _att(L=2, H=3, T=5)

    def coloured(heads, name):
        _in_browser(tmp_path, head_view(a, list("abcde"), heads=heads), "--window-size=700,400",
                    f"--screenshot={tmp_path / name}.png", name=name)
        px = np.asarray(Image.open(tmp_path / f"{name}.png").convert("RGB")).astype(int)
        return int(((px.max(-1) - px.min(-1)) > 40).sum())  # saturated (non-grey) pixels

    none, drawn = coloured([], "none"), coloured([0, 1, 2], "all")
    assert drawn - none > 2000, (none, drawn)  # measured: 359 and 4168

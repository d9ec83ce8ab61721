"""lumos.report.build and `lumos report`: one self-contained HTML file, every section, same inputs give
the same file, every user string escaped, and the page decoded by a real headless browser."""
from __future__ import annotations

import re
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from conftest import browse as _browse
from conftest import headless_browser
from torch import nn

from lumos.report.build import (SECTIONS, TABLE_SECTIONS, TEXT_SECTIONS, build, model_sha256, render,
                                sections_for)
from lumos.report.cards import CARDS, method_card

XSS = "<script>alert(1)</script>"
ATTR = '" onerror="alert(2)'
METHODS = ["saliency", "integrated_gradients", "guided_backprop", "occlusion"]
METRICS = ["deletion", "sparseness", "pointing_game"]


class _TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def _world():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 12, 12, generator=g)
    masks = np.zeros((3, 12, 12), bool)
    masks[:, 3:8, 3:8] = True
    return _TinyCNN().eval(), x, masks


def _render(**kw):
    model, x, masks = _world()
    kw.setdefault("class_names", [XSS, ATTR, "plain"])
    return render(model, x, METHODS, METRICS, masks=masks, labels=[0, 1, 2],
                  method_params={"occlusion": {"window": 4, "stride": 4}},
                  metric_params={"deletion": {"n_steps": 4}}, **kw)


@pytest.fixture(scope="module")
def page():
    return _render(input_names=[f"img {XSS}", f"img {ATTR}", "img 3"])


class _Parse(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.attrs, self.texts, self.ids = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.append((tag, dict(attrs)))
        self.ids += [v for k, v in attrs if k == "id"]

    def handle_data(self, data):
        self.texts.append(data)


def _parse(html: str) -> _Parse:
    p = _Parse()
    p.feed(html)
    return p


def test_report_is_self_contained(page):
    body = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert "http" not in body.lower() and "//" not in body
    p = _parse(page)
    for tag, attrs in p.attrs:
        for key in ("src", "href"):
            if key in attrs:
                ok = attrs[key].startswith("data:image/png;base64,") if key == "src" else attrs[key].startswith("#")
                assert ok, (tag, key, attrs[key][:60])
    assert not {"script", "link", "iframe", "object", "embed"} & set(p.tags)


def test_every_section_and_every_image(page):
    p = _parse(page)
    for sid, title in SECTIONS:
        assert sid in p.ids and title in p.texts
    imgs = [a for t, a in p.attrs if t == "img"]
    assert len(imgs) == 2 * 3  # a thumbnail and a map grid per input
    for m in METHODS + ["random"]:
        assert f"card-{m}" in p.ids
    # the metric table: a row per method (random included), ordered by mean rank, with ranks
    text = " ".join(p.texts)
    assert all(f"{k} " in text for k in METRICS)
    assert text.count("(1)") >= len(METRICS)
    # reproducibility: the seed, versions and the model's hash
    model, _, _ = _world()
    assert model_sha256(model) in text and f"{torch.__version__}" in text and np.__version__ in text


def test_same_inputs_and_seed_give_the_same_report(page):
    again = _render(input_names=[f"img {XSS}", f"img {ATTR}", "img 3"])
    assert again == page
    other = _render(input_names=[f"img {XSS}", f"img {ATTR}", "img 3"], seed=1)
    assert other != page  # the seed of the random baseline shows (its scores and the block)


def test_user_strings_are_escaped(page):
    assert XSS not in page and "onerror=\"alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&#34; onerror=&#34;alert(2)" in page
    p = _parse(page)
    assert "script" not in p.tags
    assert not any(k.startswith("on") for _, a in p.attrs for k in a)
    assert any(XSS in t for t in p.texts) and any(ATTR in t for t in p.texts)


def test_model_hash_tracks_weights():
    model, _, _ = _world()
    h = model_sha256(model)
    assert re.fullmatch(r"[0-9a-f]{64}", h) and model_sha256(_TinyCNN()) == h
    with torch.no_grad():
        model.fc.bias[0] += 1e-6
    assert model_sha256(model) != h
    assert model_sha256(lambda x: x) == "n/a (not a torch module)"


def test_cards_cover_the_literature_and_fall_back_to_the_registry():
    text = " ".join(" ".join(c["failures"]) for c in CARDS.values())
    for phrase in ("Saturation", "Noisy gradients", "window", "Adebayo et al. 2018", "Attention is not explanation"):
        assert phrase in text
    assert "Adebayo" in " ".join(method_card("guided_backprop")["failures"])
    for m in ("kernel_shap", "exact_shapley", "permutation_shap", "lime"):  # the table report's methods
        assert not method_card(m)["generic"] and method_card(m)["family"] != "baseline"
    from lumos.core.registry import get_method

    card = method_card("layercam")  # no card of its own
    assert card["generic"] and card["computes"] == get_method("layercam").description


def test_bad_arguments_are_named(tmp_path):
    model, x, _ = _world()
    with pytest.raises(ValueError, match="labels"):
        build(model, x, ["saliency"], ["sparseness"], labels=[0], out=tmp_path / "r.html")
    with pytest.raises(ValueError, match="method"):
        build(model, x, ["salincy"], ["sparseness"], out=tmp_path / "r.html")


def test_browser_checks_can_fail(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><script>console.error("boom")</script>'
                   '<img src="http://example.invalid/x.png"></body></html>')
    _, console, urls = _browse(tmp_path, bad)
    assert any("boom" in line for line in console) and "http://example.invalid/x.png" in urls


def test_report_in_a_real_browser(tmp_path, page):
    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")
    out, console, urls = _browse(tmp_path, path)
    assert console == [] and urls == []  # no console message, no network request
    dom = _parse(out)
    for sid, title in SECTIONS:
        assert sid in dom.ids and title in dom.texts
    assert dom.tags.count("img") == 6 and "script" not in dom.tags
    assert any(XSS in t for t in dom.texts)
    # every image decodes: screenshot the page and check the pixels are not blank where the images are
    shot = tmp_path / "report.png"
    res = subprocess.run(headless_browser() + ["--hide-scrollbars", "--window-size=1200,2400",
                                               f"--screenshot={shot}", path.resolve().as_uri()],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    from PIL import Image

    arr = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert arr.std() > 10  # pictures and text, not an empty page


def test_images_are_valid_pngs(page):
    _check_pngs(page, 6)


def _check_pngs(page: str, n: int) -> None:
    import base64
    import io

    from PIL import Image

    blobs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(blobs) == n
    for b in blobs:
        im = Image.open(io.BytesIO(base64.b64decode(b)))
        im.load()
        assert im.size[0] > 8 and im.size[1] > 8


def test_cli_report_writes_the_demo_report(tmp_path, capsys):
    from lumos.cli import main

    assert main(["report", "--out", str(tmp_path), "--n", "2"]) == 0
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    p = _parse(html)
    assert all(sid in p.ids for sid, _ in SECTIONS) and p.tags.count("img") == 4
    assert "DemoCNN" in html and "wrote" in capsys.readouterr().out


def test_cli_report_with_a_user_model(tmp_path, monkeypatch, capsys):
    from lumos.cli import main

    (tmp_path / "r1_user_model.py").write_text(
        "import torch\nfrom torch import nn\n"
        "def make():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),"
        " nn.Flatten(), nn.Linear(2, 2))\n")
    monkeypatch.chdir(tmp_path)
    torch.save(torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)), tmp_path / "x.pt")
    argv = ["report", "--model", "r1_user_model:make", "--input", "x.pt", "--methods", "saliency,gradient_x_input",
            "--metrics", "sparseness", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert _parse(html).tags.count("img") == 4 and "card-gradient_x_input" in html
    assert main(["report", "--model", "r1_user_model:make"]) == 2
    assert "--input is required" in capsys.readouterr().err


def test_the_demo_has_a_report_section(tmp_path):
    from lumos.report.build import report_section
    from lumos.report.demo import sections

    assert "report" in [s.name for s in sections()]
    files: dict = {}
    threads = torch.get_num_threads()
    lines = report_section(tmp_path, True, files)
    assert torch.get_num_threads() == threads  # one thread while it builds, restored after
    path = tmp_path / "report.html"
    assert list(files) == [str(path)] and path.exists()
    p = _parse(path.read_text(encoding="utf-8"))
    assert all(sid in p.ids for sid, _ in SECTIONS) and p.tags.count("img") == 2 * 4
    assert any("total" in line for line in lines)


def test_the_full_demo_writes_the_three_reports(tmp_path, monkeypatch):
    """``lumos demo report`` (the full form) builds the shapes, credit and text reports (the builds
    themselves are tested above; here each is replaced by one that records its call)."""
    pytest.importorskip("transformers")
    import lumos.report.build as report_build

    calls = []

    def fake(world):
        def build(out, timings=None, **kw):
            calls.append((world, out.name, kw))
            timings["render"] = 0.0
            out.write_text("<html></html>")
            return out
        return build

    monkeypatch.setattr(report_build, "DEMO_WORLDS", {w: fake(w) for w in ("shapes", "credit", "text")})
    files: dict = {}
    report_build.report_section(tmp_path, False, files)
    assert calls == [("shapes", "report.html", {"n": 8}), ("credit", "report_credit.html", {}),
                     ("text", "report_text.html", {})]
    assert sorted(files) == sorted(str(tmp_path / n) for _, n, _ in calls)
    calls.clear()
    report_build.report_section(tmp_path, True, {})
    assert calls == [("shapes", "report.html", {"n": 4})]  # the tour: the image report only


# ------------------------------------------------------------------------------------------ tables
def _table_world():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).eval()
    x = torch.rand(3, 4, generator=torch.Generator().manual_seed(2))
    bg = torch.rand(40, 4, generator=torch.Generator().manual_seed(3)).numpy()
    y = (bg[:, 0] + 0.5 * bg[:, 3] > 0.75).astype(int)
    return model, x, bg, y


TABLE_NAMES = ["age", XSS, ATTR, "income"]
TABLE_METHODS = ["kernel_shap", "gradient_x_input"]


def _table_render(results=None, **kw):
    model, x, bg, y = _table_world()
    return render(model, x, TABLE_METHODS, ["sparseness", "deletion"], feature_names=TABLE_NAMES, background=bg,
                  background_labels=y, n_effect_features=2, class_names=["no", "yes"],
                  metric_params={"deletion": {"n_steps": 4}}, results=results, **kw)


@pytest.fixture(scope="module")
def table_page():
    results: dict = {}
    return _table_render(results), results


def test_table_report_sections_images_and_no_external_reference(table_page):
    html, _ = table_page
    test_report_is_self_contained(html)
    p = _parse(html)
    for sid, title in TABLE_SECTIONS:
        assert sid in p.ids and title in p.texts
    assert "maps" not in p.ids
    # a picture per row, a beeswarm, PD/ICE + ALE, permutation importance
    assert p.tags.count("img") == 3 + 1 + 1 + 1
    _check_pngs(html, 6)
    for m in TABLE_METHODS + ["random"]:
        assert f"card-{m}" in p.ids


def test_table_numbers_are_those_of_direct_calls(table_page):
    """What the pictures and tables show is what lumos.explain and lumos.effects give directly."""
    import lumos
    from lumos.effects import ale, partial_dependence, permutation_importance

    html, results = table_page
    model, x, bg, y = _table_world()
    e = results["explanations"]
    tgt = np.asarray(e["kernel_shap"].target)
    assert tgt.tolist() == model(x).argmax(1).tolist()
    direct = {"kernel_shap": lumos.explain(model, x, "kernel_shap", target=tgt.tolist(), background=bg),
              "gradient_x_input": lumos.explain(model, x, "gradient_x_input", target=tgt.tolist())}
    for m, d in direct.items():
        assert np.abs(np.asarray(e[m].values) - np.asarray(d.values)).max() <= 1e-12, m
    # the values table under each picture shows those numbers
    text = " ".join(_parse(html).texts)
    for i in range(3):
        for j in range(4):
            assert f"{direct['kernel_shap'].values[i, j]:.4g}" in text
    # effects of the two features with the largest mean |kernel SHAP|, on the background
    top = np.argsort(-np.abs(direct["kernel_shap"].values).mean(0), kind="stable")[:2]
    eff = results["effects"]
    assert list(eff["pdp"]) == [TABLE_NAMES[j] for j in top] == list(eff["ale"])
    cls = eff["target"]  # the class most rows are explained for, so effects and attributions agree
    assert cls == int(np.bincount(tgt).argmax())
    for j in top:
        pd_direct = partial_dependence(model, bg, int(j), target=cls, seed=0)
        ale_direct = ale(model, bg, int(j), target=cls, seed=0)
        got_pd, got_ale = eff["pdp"][TABLE_NAMES[j]], eff["ale"][TABLE_NAMES[j]]
        assert np.abs(got_pd.average - pd_direct.average).max() <= 1e-12
        assert np.abs(got_pd.ice - pd_direct.ice).max() <= 1e-12
        assert np.abs(got_ale.values - ale_direct.values).max() <= 1e-12
        assert f"{pd_direct.average.min():.4g} … {pd_direct.average.max():.4g}" in text
        assert f"{ale_direct.values.min():.4g} … {ale_direct.values.max():.4g}" in text
    imp = permutation_importance(model, bg, y, seed=0)
    assert np.abs(eff["importance"].importances - imp.importances).max() <= 1e-12
    assert eff["importance"].feature_names == TABLE_NAMES
    for j in range(4):
        assert f"{imp.mean[j]:.4g}" in text


def test_table_report_is_the_same_for_the_same_seed(table_page):
    html, _ = table_page
    assert _table_render() == html
    assert _table_render(seed=1) != html


def test_table_feature_names_are_escaped(table_page):
    html, _ = table_page
    assert XSS not in html and 'onerror="alert' not in html
    p = _parse(html)
    assert "script" not in p.tags and not any(k.startswith("on") for _, a in p.attrs for k in a)
    assert sum(XSS in t for t in p.texts) >= 3 + 3  # the inputs table and each row's values table
    assert any(ATTR in t for t in p.texts)


def test_table_sections_only_where_they_apply():
    model, x, bg, y = _table_world()
    html = render(model, x, ["gradient_x_input"], ["sparseness"], feature_names=TABLE_NAMES)
    p = _parse(html)
    assert [s for s, _ in TABLE_SECTIONS if s in p.ids] == [s for s, _ in sections_for("table", effects=False)]
    assert "effects" not in p.ids and p.tags.count("img") == 3 + 1
    assert f"age={x[0, 0].item():.4g}" in " ".join(p.texts)
    # effects without permutation importance when the background has no labels; chosen features
    html = render(model, x, ["gradient_x_input"], ["sparseness"], background=bg, effect_features=["x1", 3])
    p = _parse(html)
    assert "effects" in p.ids and "importance" not in p.ids and p.tags.count("img") == 3 + 1 + 1
    assert "background_labels" in " ".join(p.texts)
    # a column of category codes: its effects per level
    from lumos.effects import ale, partial_dependence

    codes = bg.copy()
    codes[:, 3] = np.floor(codes[:, 3] * 3)
    results: dict = {}
    render(model, x, ["gradient_x_input"], ["sparseness"], background=codes, effect_features=[3],
           categorical_features=["x3"], results=results, description=XSS)
    pd_, ale_ = results["effects"]["pdp"]["x3"], results["effects"]["ale"]["x3"]
    assert pd_.categorical == [True] and ale_.kind == "categorical" and len(ale_.values) == 3
    cls = results["effects"]["target"]
    direct = partial_dependence(model, codes, 3, categorical_features=[3], target=cls, seed=0)
    assert np.abs(pd_.average - direct.average).max() <= 1e-12
    assert np.abs(ale_.values - ale(model, codes, 3, categorical_features=[3], target=cls, seed=0).values).max() <= 1e-12
    with pytest.raises(ValueError, match="feature_names"):
        render(model, x, ["saliency"], ["sparseness"], feature_names=["a", "b"])
    with pytest.raises(ValueError, match="categorical_features"):
        render(model, x, ["saliency"], ["sparseness"], background=bg, categorical_features=["nope"])
    with pytest.raises(ValueError, match="background"):
        render(model, x, ["saliency"], ["sparseness"], background=bg[:, :3])
    with pytest.raises(ValueError, match="background_labels"):
        render(model, x, ["saliency"], ["sparseness"], background=bg, background_labels=y[:5])
    with pytest.raises(ValueError, match="effect_features"):
        render(model, x, ["saliency"], ["sparseness"], background=bg, effect_features=["nope"])


def test_table_report_of_a_linear_predict_function_has_the_closed_forms():
    """A plain predict function f(X) = X w: the report's Shapley values are w (x - mean(background))
    and its partial dependence and ALE are lines of slope w (closed forms, DESIGN.md)."""
    w = np.array([1.0, -2.0, 0.5])

    def predict(X):
        return np.asarray(X, dtype=np.float64) @ w

    X = np.random.default_rng(0).normal(size=(60, 3))
    results: dict = {}
    html = render(predict, X[:3], ["kernel_shap"], ["sparseness"], background=X[10:], results=results)
    phi = results["explanations"]["kernel_shap"].values
    assert np.abs(phi - w * (X[:3] - X[10:].mean(0))).max() <= 1e-10
    eff = results["effects"]
    assert list(eff["pdp"]) == ["x1", "x0", "x2"] and eff["target"] is None  # by mean |phi|
    for f, pd_ in eff["pdp"].items():
        j = int(f[1:])
        assert abs(np.polyfit(pd_.grid[0], pd_.average, 1)[0] - w[j]) <= 1e-9
        a = eff["ale"][f]
        assert abs(np.polyfit(a.grid[0], a.values, 1)[0] - w[j]) <= 1e-9
    assert "n/a (not a torch module)" in html and "<img" in html


@pytest.mark.filterwarnings("ignore:X does not have valid feature names")
def test_table_report_of_a_dataframe_and_an_estimator():
    """A scikit-learn estimator on a DataFrame: the columns name the features everywhere."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(120, 3)), columns=["a", XSS, "c"])
    y = (X["a"] + X["c"] > 0).astype(int)
    clf = LogisticRegression().fit(X, y)
    results: dict = {}
    html = render(clf, X.iloc[:2], ["kernel_shap"], ["sparseness"], background=X.iloc[:30], results=results,
                  n_effect_features=1)
    assert results["explanations"]["kernel_shap"].feature_names == ["a", XSS, "c"]
    assert list(results["effects"]["pdp"]) in (["a"], ["c"])  # the features the model uses
    assert XSS not in html and html.count("&lt;script&gt;alert(1)&lt;/script&gt;=") == 2


def _fit_checker(monkeypatch) -> list:
    """Make every report picture check, before it is encoded, that what it draws lies inside the
    figure (no clipped tick label, title, colour bar or value label); returns the misfits."""
    import lumos.report.build as report_build

    encode, misfits = report_build._figure_png, []

    def checked(fig, dpi):
        fig.canvas.draw()
        box = fig.get_tightbbox(fig.canvas.get_renderer())  # inches, drawn artists only
        w, h = fig.get_size_inches()
        if box.x0 < -0.01 or box.y0 < -0.01 or box.x1 > w + 0.01 or box.y1 > h + 0.01:
            misfits.append(([round(v, 2) for v in (box.x0, box.y0, box.x1, box.y1)], (w, h)))
        return encode(fig, dpi)

    monkeypatch.setattr(report_build, "_figure_png", checked)
    return misfits


def test_table_pictures_fit_their_figures(monkeypatch):
    misfits = _fit_checker(monkeypatch)
    model, x, bg, y = _table_world()
    names = ["years employed since the first job", XSS, "monthly income in euros (net)", "d"]
    html = render(model, x * 1000, ["kernel_shap", "lime"], ["sparseness"], feature_names=names,
                  background=bg * 1000, background_labels=y)
    assert _parse(html).tags.count("img") == 3 + 1 + 1 + 1 and misfits == []
    import matplotlib.pyplot as plt

    import lumos.report.build as report_build

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.text(1.2, 0.5, "a label past the right edge", transform=ax.transAxes)
    report_build._figure_png(fig, 80)
    assert len(misfits) == 1  # the check catches what it looks for


def test_table_report_in_a_real_browser(tmp_path, table_page):
    html, _ = table_page
    path = tmp_path / "table.html"
    path.write_text(html, encoding="utf-8")
    out, console, urls = _browse(tmp_path, path)
    assert console == [] and urls == []
    dom = _parse(out)
    assert all(sid in dom.ids for sid, _ in TABLE_SECTIONS) and dom.tags.count("img") == 6
    assert any(XSS in t for t in dom.texts)


def test_cli_credit_world_report(tmp_path, capsys):
    from lumos.cli import main

    assert main(["report", "--world", "credit", "--n", "2", "--out", str(tmp_path)]) == 0
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    p = _parse(html)
    assert all(sid in p.ids for sid, _ in TABLE_SECTIONS) and "debt_ratio" in html
    assert p.tags.count("img") == 2 + 1 + 1 + 1 and "card-exact_shapley" in p.ids
    out = capsys.readouterr().out
    assert "effects" in out and "wrote" in out
    assert main(["report", "--world", "credit", "--model", "x:y", "--input", "x.pt"]) == 2


# ------------------------------------------------------------------------------------------- texts
@pytest.fixture(scope="module")
def text_page(tmp_path_factory):
    pytest.importorskip("transformers")
    from lumos.cli import main

    out = tmp_path_factory.mktemp("text_report")
    assert main(["report", "--world", "text", "--n", "2", "--out", str(out)]) == 0
    return (out / "report.html").read_text(encoding="utf-8")


def _srcdocs(html: str) -> list[str]:
    return [a["srcdoc"] for t, a in _parse(html).attrs if t == "iframe"]


def test_text_report_sections_highlights_and_numbers(text_page):
    """Every section; the highlights show lumos.explain's values of every real token."""
    import lumos
    from lumos.data import load_text_classifier, text_dataset
    from lumos.report.build import TEXT_DESCRIPTION

    p = _parse(text_page)
    for sid, title in TEXT_SECTIONS:
        assert sid in p.ids and title in p.texts
    assert p.tags.count("img") == 2  # one attention picture per text
    model, tok = load_text_classifier()
    data = text_dataset(2, split="test", shortcut="all", seed=0)
    results: dict = {}
    html = render(model, data.texts, tokenizer=tok, labels=data.labels.tolist(),
                  method_params={"integrated_gradients": {"n_steps": 16}},
                  metric_params={"token_deletion": {"n_steps": 10}}, results=results,
                  title="lumos report: the text world", description=TEXT_DESCRIPTION)
    assert html == text_page  # same inputs and seed, same bytes (the CLI built it in another call)
    with torch.no_grad():
        enc = tok(data.texts[0], return_tensors="pt")
        pred = int(model(**enc).logits.argmax(1))
    d = lumos.explain(model, data.texts, "gradient_x_input", tokenizer=tok, target=results["target"])
    assert results["target"][0] == pred
    assert np.abs(results["explanations"]["gradient_x_input"].values - d.values).max() <= 1e-12
    titles = [a.get("title") for t, a in p.attrs if t == "span" and "title" in a]
    keep = np.flatnonzero(d.meta["attention_mask"][0])
    assert [f"{v:+.4g}" for v in d.values[0, keep]] == titles[:len(keep)]
    assert results["comparison"].metrics == ["token deletion MoRF", "token deletion LeRF", "LeRF - MoRF"]


def test_text_report_head_view_is_sandboxed_and_self_contained(text_page):
    frames = [a for t, a in _parse(text_page).attrs if t == "iframe"]
    assert len(frames) == 2
    for a in frames:
        assert a["sandbox"] == "allow-scripts"  # no allow-same-origin: an opaque origin
        doc = a["srcdoc"]
        assert "Content-Security-Policy" in doc and "default-src 'none'" in doc
        assert "http" not in doc.lower().replace('http-equiv', '') and "//" not in doc
        inner = _parse(doc)
        assert not any(k in ("src", "href") for _, at in inner.attrs for k in at)
        assert "script" in inner.tags  # the view's own script, inside the frame only
    # outside the frames, the page is the same self-contained page as the others
    test_report_is_self_contained(re.sub(r'srcdoc="[^"]*"', "", text_page).replace("<iframe", "<div"))


def test_text_tokens_and_names_are_escaped(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    misfits = _fit_checker(monkeypatch)  # the attention pictures, with a long token
    from lumos.data import load_text_classifier

    model, tok = load_text_classifier()
    tok.add_tokens([XSS])
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    texts = [f"the food is {XSS} great", "what a lousy cafe"]
    html = render(model, texts, ["gradient_x_input"], tokenizer=tok, class_names=[XSS, ATTR],
                  input_names=[ATTR, "b"], metric_params={"token_deletion": {"n_steps": 4}})
    assert XSS not in html and 'onerror="alert' not in html
    p = _parse(html)
    assert "script" not in p.tags and not any(k.startswith("on") for _, a in p.attrs for k in a)
    spans = [t for t in p.texts if t == XSS]
    assert len(spans) >= 1  # the token of the highlight, shown as text
    assert any(XSS in t for t in p.texts) and any(ATTR in t for t in p.texts)
    doc = _srcdocs(html)[0]  # inside the first text's frame: escaped markup, and the data as \u003c JSON
    inner = _parse(doc)
    assert inner.tags.count("script") == 2 and XSS not in doc  # the view's data and its code only
    assert "\\u003cscript\\u003ealert(1)\\u003c/script\\u003e" in doc and any(XSS in t for t in inner.texts)
    path = tmp_path / "xss.html"
    path.write_text(html, encoding="utf-8")
    out, console, urls = _browse(tmp_path, path)
    assert console == [] and urls == []
    assert any(XSS in t for t in _parse(out).texts)
    # without the head view, no frame and no script at all
    plain = render(model, texts, ["gradient_x_input"], tokenizer=tok, head_view=False,
                   metric_params={"token_deletion": {"n_steps": 4}})
    assert "<iframe" not in plain and "<script" not in plain
    test_report_is_self_contained(plain)
    assert misfits == []


def test_text_report_without_attentions_has_no_attention_section():
    pytest.importorskip("transformers")
    from lumos.data import load_text_classifier

    model, tok = load_text_classifier()

    class NoAttention(nn.Module):  # a classifier that cannot return attentions
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.class_names = inner.class_names

        def get_input_embeddings(self):
            return self.inner.get_input_embeddings()

        def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds).logits

    html = render(NoAttention(model), ["the food is great", "a lousy cafe"], ["gradient_x_input"], tokenizer=tok,
                  metric_params={"token_deletion": {"n_steps": 4}})
    p = _parse(html)
    assert [s for s, _ in TEXT_SECTIONS if s in p.ids] == [s for s, _ in sections_for("text", attention=False)]
    assert "attention" not in p.ids and "No attention view" in html and "<iframe" not in html
    with pytest.raises(ValueError, match="metrics"):
        render(model, ["a"], ["gradient_x_input"], ["deletion"], tokenizer=tok)
    with pytest.raises(ValueError, match="background"):
        render(model, ["a"], tokenizer=tok, background=np.zeros((2, 2)))


def test_text_report_in_a_real_browser_runs_the_head_view_in_its_sandbox(tmp_path, text_page):
    """Chromium (Playwright): no console message, no request, and the head view drew itself inside
    its sandboxed frame; screenshots of the report are the test's artefacts."""
    import shutil

    sync_api = pytest.importorskip("playwright.sync_api")
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("no Chromium installed")
    path = tmp_path / "text.html"
    path.write_text(text_page, encoding="utf-8")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1600})
            messages, requests = [], []
            page.on("console", lambda m: messages.append(m.text))
            page.on("pageerror", lambda e: messages.append(str(e)))
            page.on("request", lambda r: None if r.url.startswith(("file:", "data:", "about:"))
                    else requests.append(r.url))
            page.goto(path.resolve().as_uri())
            page.locator("details summary").first.click()
            frame = page.frames[1]
            frame.wait_for_selector("[data-lumos-rendered='1']", timeout=10000)
            assert frame.locator(".lumos-att").count() == 1
            # the frame is sandboxed: its script cannot reach the report page
            probe = "() => { try { return window.parent.document.title; } catch (e) { return 'blocked'; } }"
            assert frame.evaluate(probe) == "blocked"
            page.screenshot(path=str(tmp_path / "text_report.png"), full_page=False)
        finally:
            browser.close()
    assert messages == [] and requests == []


def test_a_picture_that_cannot_be_drawn_is_a_note_and_leaves_no_figure_open():
    import matplotlib.pyplot as plt

    from lumos.report._figures import drawing

    mine = plt.figure()
    item = {"note": ""}
    with drawing(item, "no picture of these maps"):
        plt.figure()
        plt.subplots(1, 2)
        raise ValueError("values of shape (3,) cannot be drawn")
    assert item["note"] == "no picture of these maps: values of shape (3,) cannot be drawn"
    assert plt.get_fignums() == [mine.number]  # the two figures of the block are closed, the caller's stays
    with pytest.raises(KeyError):  # anything else is a bug: raised, and still nothing left open
        with drawing(item, "x"):
            plt.figure()
            raise KeyError("bug")
    assert plt.get_fignums() == [mine.number]
    plt.close(mine)

"""lumos.report.build and `lumos report`: one self-contained HTML file, every section, same inputs give
the same file, every user string escaped, and the page decoded by a real headless browser."""
from __future__ import annotations

import re
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from conftest import headless_browser
from torch import nn

from lumos.report.build import SECTIONS, build, model_sha256, render
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
    from lumos.core.registry import get_method

    card = method_card("layercam")  # no card of its own
    assert card["generic"] and card["computes"] == get_method("layercam").description


def test_bad_arguments_are_named(tmp_path):
    model, x, _ = _world()
    with pytest.raises(ValueError, match="labels"):
        build(model, x, ["saliency"], ["sparseness"], labels=[0], out=tmp_path / "r.html")
    with pytest.raises(ValueError, match="method"):
        build(model, x, ["salincy"], ["sparseness"], out=tmp_path / "r.html")


def _browse(tmp_path, path):
    """Chromium's DOM dump of ``path``, its console lines and every URL it asked the network for."""
    net = tmp_path / f"{path.stem}.netlog.json"
    cmd = headless_browser() + ["--enable-logging=stderr", "--v=0", f"--log-net-log={net}", "--dump-dom",
                                path.resolve().as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    console = [line for line in res.stderr.splitlines() if ":CONSOLE" in line]
    urls = re.findall(r'"url":"([^"]*)"', net.read_text(errors="replace")) if net.exists() else None
    return res.stdout, console, urls


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
    import base64
    import io

    from PIL import Image

    blobs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(blobs) == 6
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


def test_table_inputs_get_their_values_and_a_bar_chart_per_method():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    x = torch.rand(3, 4, generator=torch.Generator().manual_seed(2))
    names = ["age", XSS, ATTR, "income"]
    html = render(model, x, ["saliency", "gradient_x_input"], ["sparseness"], feature_names=names)
    p = _parse(html)
    assert p.tags.count("img") == 3 and "script" not in p.tags  # one picture of bars per row
    assert XSS not in html and html.count("&lt;script&gt;alert(1)&lt;/script&gt;=") == 3
    text = " ".join(p.texts)
    assert f"age={x[0, 0].item():.4g}" in text and f"{ATTR}={x[2, 2].item():.4g}" in text
    with pytest.raises(ValueError, match="feature_names"):
        render(model, x, ["saliency"], ["sparseness"], feature_names=["a", "b"])

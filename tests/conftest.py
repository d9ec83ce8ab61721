"""Shared fixtures: small, seeded torch models. Test files add their own models beside them."""
import os

import pytest
import torch
from torch import nn

# Two xdist workers on two cores: one thread each, no oversubscription.
torch.set_num_threads(int(os.environ.get("LUMOS_TEST_THREADS", "1")))
os.environ.setdefault("MPLBACKEND", "Agg")


class SmallCNN(nn.Module):
    """conv-relu-conv-relu-GAP-linear, the shape of the demo model in miniature."""

    def __init__(self, in_ch=3, n_classes=4, width=8):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_ch, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width, n_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


@pytest.fixture
def linear_model():
    """A linear model on 6 features with 3 outputs; weights are ``model.weight``."""
    torch.manual_seed(0)
    m = nn.Linear(6, 3)
    return m.eval()


@pytest.fixture
def small_cnn():
    torch.manual_seed(0)
    return SmallCNN().eval()


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(5, 3, 12, 12, generator=g)


def model_state(model: nn.Module):
    """Everything that "left exactly as found" promises, for before/after comparisons."""
    return {
        "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "hooks": [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
             len(getattr(m, "_backward_pre_hooks", {})))
            for m in model.modules()
        ],
    }


def assert_same_state(before, after):
    assert before["params"].keys() == after["params"].keys()
    for k in before["params"]:
        assert torch.equal(before["params"][k], after["params"][k]), k
    assert before["requires_grad"] == after["requires_grad"]
    assert before["training"] == after["training"]
    assert before["hooks"] == after["hooks"]
    for a, b in zip(before["grads"], after["grads"]):
        assert (a is None) == (b is None) and (a is None or torch.equal(a, b))


def headless_browser() -> list:
    """The command that starts a headless Chromium (Debian's, installed by ``.ci/run``), with the
    flags every browser test uses; skips the test where none is installed."""
    import shutil

    for name in ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return ([path] + ([] if name.endswith("headless-shell") else ["--headless"])
                    + ["--no-sandbox", "--disable-gpu"])
    pytest.skip("no headless Chromium installed (apt-get install chromium)")


def browse(tmp_path, path) -> tuple:
    """Chromium's DOM dump of the file ``path``, its console lines and every URL it asked the network
    for (``None`` when Chromium wrote no net log): what a browser test of a static page checks."""
    import re
    import subprocess

    net = tmp_path / f"{path.stem}.netlog.json"
    cmd = headless_browser() + ["--enable-logging=stderr", "--v=0", f"--log-net-log={net}", "--dump-dom",
                                path.resolve().as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    console = [line for line in res.stderr.splitlines() if ":CONSOLE" in line]
    urls = re.findall(r'"url":"([^"]*)"', net.read_text(errors="replace")) if net.exists() else None
    return res.stdout, console, urls

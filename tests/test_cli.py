"""The command line: methods, layers, explain on a user's model and image."""
import numpy as np
import pytest
import torch
from PIL import Image

import lumos
from lumos.cli import load_input, main

MODULE = '''
import torch
from torch import nn

def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3))
'''


@pytest.fixture
def user_model(tmp_path, monkeypatch):
    (tmp_path / "usermodel_cli.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import usermodel_cli

    model = usermodel_cli.make()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)  # so the weights file differs from the factory's init
    torch.save(model.state_dict(), tmp_path / "w.pt")
    rgb = (np.random.default_rng(0).uniform(size=(10, 12, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "img.png")
    return model.eval(), tmp_path


def test_methods_lists_the_registry(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for m in lumos.methods():
        assert m.name in out


def test_explain_writes_the_same_explanation_as_the_library(user_model, capsys):
    model, tmp = user_model
    rc = main(["explain", "--model", "usermodel_cli:make", "--weights", "w.pt", "--input", "img.png",
               "--method", "gradient_x_input", "--target", "2", "--out", "out"])
    assert rc == 0, capsys.readouterr().err
    saved = lumos.load(tmp / "out" / "gradient_x_input.npz")
    x = load_input(str(tmp / "img.png"))
    direct = lumos.explain(model, x, method="gradient_x_input", target=2)
    np.testing.assert_allclose(saved.values, direct.values, rtol=1e-6, atol=1e-7)
    assert (tmp / "out" / "gradient_x_input.png").exists()


def test_layers_command(user_model, capsys):
    assert main(["layers", "--model", "usermodel_cli:make", "--input", "img.png"]) == 0
    out = capsys.readouterr().out
    assert "(1, 4, 10, 12)" in out and "Conv2d" in out


def test_errors_are_reported_without_traceback(user_model, capsys):
    rc = main(["explain", "--model", "usermodel_cli:make", "--input", "img.png", "--method", "saliency",
               "--target", "9"])
    assert rc == 2
    assert "target out of range" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="package.module:factory"):
        main(["explain", "--model", "nocolon", "--input", "img.png"])


def test_param_values_are_parsed_as_literals(user_model):
    from lumos.cli import _parse_params

    assert _parse_params(["mode=abs", "n=3", "w=[8, 8]", "x=0.5"]) == {"mode": "abs", "n": 3, "w": [8, 8], "x": 0.5}

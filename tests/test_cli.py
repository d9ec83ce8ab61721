"""The command line: methods, layers, explain on a user's model and image; exit statuses, safe
loading, and arguments checked before torch is imported."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import lumos
from lumos.cli import main
from lumos.core.io import LoadError, load_input, load_user_model

MODULE = '''
import torch
from torch import nn

def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3))


def make_named():
    model = make()
    model.classes = ["cat", "dog", "bird"]
    return model
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
    assert main(["explain", "--model", "nocolon", "--input", "img.png"]) == 2
    assert "package.module:factory" in capsys.readouterr().err


def test_a_missing_optional_dependency_is_a_message_not_a_traceback(monkeypatch, capsys):
    """A subcommand that needs an extra (e.g. `lumos report --world text` without transformers)
    prints lumos' install hint and exits with 2."""
    import lumos.report.build as build

    def missing(*args, **kwargs):
        raise ImportError('lumos text models need Hugging Face transformers: pip install -e ".[text]"')

    monkeypatch.setitem(build.DEMO_WORLDS, "text", missing)
    assert main(["report", "--world", "text", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lumos report: ") and 'pip install -e ".[text]"' in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["explain", "--model", "usermodel_cli:make"], "required: --input"),               # argparse
    (["explain", "--model", "usermodel_cli:make", "--input", "img.png", "--bogus"], "unrecognized"),
    (["frobnicate"], "invalid choice"),
    (["explain", "--model", "usermodel_cli:make", "--input", "nothere.png"], "--input 'nothere.png' does not exist"),
    (["explain", "--model", "usermodel_cli:make", "--weights", "nothere.pt", "--input", "img.png"],
     "--weights 'nothere.pt' does not exist"),
    (["explain", "--torchscript", "nothere.ts", "--input", "img.png"], "--torchscript 'nothere.ts' does not exist"),
    (["explain", "--model", "usermodel_cli:make", "--input", "img.png", "--target", "two"], "--target must be"),
    (["explain", "--model", "usermodel_cli:make", "--input", "img.png", "--param", "n_steps"], "KEY=VALUE"),
    (["explain", "--model", "usermodel_cli:make", "--input", "img.png", "--method", "salincy"], "saliency"),
    (["explain", "--model", "nosuchmodule_xyz:make", "--input", "img.png"], "cannot load model"),
    (["explain", "--input", "img.png"], "--model"),
    (["layers", "--model", "usermodel_cli:make", "--size", "0", "4"], "positive int"),
    (["methods", "--family", "nofamily"], "gradient"),
    (["compare", "--model", "usermodel_cli:make"], "--input is required"),
    (["compare", "--n", "0"], "positive int"),
    (["demo", "nosection"], "section"),
    (["demo", "cam", "--all"], "not both"),
])
def test_user_errors_exit_with_status_2(user_model, capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_unknown_family_names_the_known_ones(capsys):
    assert main(["methods", "--family", "gradients"]) == 2
    err = capsys.readouterr().err
    assert "--family" in err and "gradient" in err and "cam" in err
    assert main(["methods", "--family", "cam"]) == 0
    out = capsys.readouterr().out
    assert "gradcam" in out and "saliency" not in out


def test_param_values_are_parsed_as_literals(user_model):
    from lumos.cli._args import parse_params

    assert parse_params(["mode=abs", "n=3", "w=[8, 8]", "x=0.5"]) == {"mode": "abs", "n": 3, "w": [8, 8], "x": 0.5}


def test_explain_prints_class_names(user_model, capsys):
    import json

    rc = main(["explain", "--model", "usermodel_cli:make_named", "--input", "img.png", "--method", "saliency",
               "--target", "2", "--out", "out"])
    assert rc == 0, capsys.readouterr().err
    info = json.loads(capsys.readouterr().out.split("\nwrote ")[0])
    assert info["target"] == [2] and info["class"] == ["bird"]
    # the shipped demo model carries its classes too
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    torch.save(x, "x.pt")
    rc = main(["explain", "--model", "lumos.data:load_demo_model", "--input", "x.pt", "--method", "saliency",
               "--target", "predicted", "--out", "out"])
    assert rc == 0
    info = json.loads(capsys.readouterr().out.split("\nwrote ")[0])
    pred = int(lumos.data.load_demo_model()(x).argmax())
    assert info["class"] == [lumos.data.CLASS_NAMES[pred]]


# ------------------------------------------------------------------ files that must not be trusted
EVIL = '''
import os, sys, torch

class Evil:
    def __reduce__(self):
        return (os.system, ("touch " + sys.argv[2],))

torch.save({"weight": Evil()}, sys.argv[1])
'''


@pytest.fixture
def evil_files(user_model):
    _, tmp = user_model
    marker = tmp / "code_ran"
    (tmp / "make_evil.py").write_text(EVIL)
    subprocess.run([sys.executable, "make_evil.py", "evil.pt", str(marker)], check=True, cwd=tmp)
    assert not marker.exists()
    (tmp / "garbage.pt").write_bytes(np.random.default_rng(0).bytes(300))
    (tmp / "garbage.png").write_bytes(b"not an image at all")
    np.save(tmp / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return tmp, marker


@pytest.mark.parametrize("flags, message", [
    (["--model", "usermodel_cli:make", "--weights", "evil.pt", "--input", "img.png"], "pickled Python objects"),
    (["--model", "usermodel_cli:make", "--input", "evil.pt"], "pickled Python objects"),
    (["--model", "usermodel_cli:make", "--weights", "garbage.pt", "--input", "img.png"], "not a readable torch file"),
    (["--model", "usermodel_cli:make", "--input", "garbage.pt"], "not a readable torch file"),
    (["--model", "usermodel_cli:make", "--input", "garbage.png"], "not a readable image"),
    (["--model", "usermodel_cli:make", "--input", "objects.npy"], "not a plain .npy array"),
    (["--torchscript", "garbage.pt", "--input", "img.png"], "not a TorchScript archive"),
])
def test_malicious_or_garbage_files_give_a_clean_message(evil_files, capsys, flags, message):
    tmp, marker = evil_files
    assert main(["explain", *flags, "--method", "saliency"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert "weights_only=False" not in err  # never advise unpickling an untrusted file
    assert not marker.exists()  # the pickled code did not run


def test_weights_that_do_not_fit_the_model(user_model, capsys):
    _, tmp = user_model
    torch.save({"0.weight": torch.zeros(1)}, tmp / "wrong.pt")
    with pytest.raises(LoadError, match="do not fit the model"):
        load_user_model("usermodel_cli:make", tmp / "wrong.pt")
    torch.save([torch.zeros(1)], tmp / "list.pt")
    assert main(["layers", "--model", "usermodel_cli:make", "--weights", "list.pt"]) == 2
    assert "must hold a state dict" in capsys.readouterr().err


# ------------------------------------------------------------------ the command itself
def _run(args, cwd=None, timeout=120):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_python_dash_m_lumos_and_version():
    out = _run(["-m", "lumos", "--version"])
    assert out.returncode == 0 and out.stdout.strip() == f"lumos {lumos.__version__}"
    out = _run(["-m", "lumos", "methods", "--family", "cam"])
    assert out.returncode == 0 and "gradcam" in out.stdout
    out = _run(["-m", "lumos"])
    assert out.returncode == 2 and "COMMAND" in out.stderr


def test_version_of_the_installed_script():
    script = os.path.join(os.path.dirname(sys.executable), "lumos")
    if not os.path.exists(script):
        pytest.skip("the console script is not installed in this environment")
    out = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"lumos {lumos.__version__}"


@pytest.mark.parametrize("argv", [
    ["explain", "--model", "pkg.mod:make", "--input", "missing.pt"],
    ["explain", "--model", "pkg.mod:make", "--weights", "missing.pt", "--input", "missing.png"],
    ["layers", "--model", "pkg.mod:make", "--input", "missing.png"],
    ["compare", "--model", "pkg.mod:make", "--input", "missing.pt"],
    ["explain", "--model", "pkg.mod:make", "--input", "x", "--target", "abc"],
    ["explain", "--oops"],
])
def test_user_errors_are_reported_before_torch_is_imported(tmp_path, argv):
    code = ("import sys; from lumos.cli import main; rc = main(sys.argv[1:]); "
            "print(rc, 'torch' in sys.modules, 'matplotlib' in sys.modules)")
    (tmp_path / "x").write_text("")
    out = _run(["-c", code, *argv], cwd=tmp_path)
    assert out.stdout.split() == ["2", "False", "False"], out.stdout + out.stderr


@pytest.mark.filterwarnings("ignore:.*torch.jit.*:DeprecationWarning")  # the test scripts and saves
def test_torchscript_model_explains_like_the_module(user_model, capsys):
    model, tmp = user_model
    torch.jit.save(torch.jit.script(model), tmp / "m.ts")
    assert main(["explain", "--torchscript", "m.ts", "--input", "img.png", "--method", "saliency",
                 "--target", "1", "--out", "ts"]) == 0, capsys.readouterr().err
    saved = lumos.load(tmp / "ts" / "saliency.npz")
    direct = lumos.explain(model, load_input(tmp / "img.png"), method="saliency", target=1)
    np.testing.assert_allclose(saved.values, direct.values, rtol=1e-6, atol=1e-7)

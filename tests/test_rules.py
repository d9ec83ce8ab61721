"""The rules engine: operations are classified and ruled wherever they are called from."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import assert_same_state, model_state
from lumos import rules
from lumos.rules.engine import Composite, Rule, UnsupportedOperationError, classify


def test_classify_spellings():
    x = torch.randn(2, 3)
    assert classify(F.relu) == classify(torch.relu) == classify(torch.Tensor.relu) == "relu"
    assert classify(torch.relu_) == classify(torch.Tensor.relu_) == "relu"
    assert classify(torch.Tensor.clamp, (x,), {"min": 0}) == "relu"
    assert classify(torch.clamp, (x, 0)) == "relu"
    assert classify(torch.Tensor.clamp_min, (x, 0.0)) == "relu"
    assert classify(torch.Tensor.clamp, (x,), {"min": 0, "max": 6}) == "activation"
    assert classify(torch.Tensor.clamp, (x,), {"min": 0.5}) == "activation"
    assert classify(F.conv2d) == classify(torch.conv1d) == "conv"
    assert classify(F.linear) == "linear"
    assert classify(torch.Tensor.add) == classify(torch.Tensor.add_) == "add"
    assert classify(F.max_pool2d) == classify(F.adaptive_max_pool2d) == "max_pool"
    assert classify(F.avg_pool2d) == classify(F.adaptive_avg_pool2d) == "avg_pool"
    assert classify(torch.Tensor.flatten) == classify(torch.Tensor.__getitem__) == "struct"
    assert classify(torch.exp) is None


class _Count(Rule):
    def __init__(self):
        self.n = 0

    def __call__(self, call):
        self.n += 1
        return call.run_out_of_place()


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 5)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        h = self.act(self.fc(x))          # nn.ReLU -> F.relu -> torch.relu_: one call
        h = self.act(self.fc(h)) + x      # the module reused
        return F.relu(h).relu() + torch.relu(h).clamp(min=0)


def test_each_operation_seen_exactly_once_and_names_tracked():
    torch.manual_seed(0)
    model = Mixed().eval()
    counter = _Count()
    x = torch.randn(3, 5, requires_grad=True)
    before = model_state(model)
    with rules.apply(model, Composite({"relu": counter}, needs_names=True)) as s:
        out = model(x)
    assert counter.n == 6 and s.counts["relu"] == 6 and s.counts["linear"] == 2
    assert s.inplace_replaced
    assert torch.allclose(out, model(x))
    assert_same_state(before, model_state(model))  # name hooks removed


def test_unknown_operation_strict_error_names_it_and_restores_model():
    class Exotic(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.head = nn.Sequential(nn.Linear(4, 2))

        def forward(self, x):
            return self.head(torch.exp(self.fc(x)))

    model = Exotic().eval()
    before = model_state(model)
    x = torch.randn(2, 4, requires_grad=True)
    strict = Composite({}, strict=True, needs_names=True)
    with pytest.raises(UnsupportedOperationError, match=r"torch\.exp in module '<root>'"):
        with rules.apply(model, strict):
            model(x)
    assert_same_state(before, model_state(model))
    # without gradient there is nothing to explain through: no error
    with rules.apply(model, strict), torch.no_grad():
        model(x)
    # not strict: plain gradient, recorded
    with rules.apply(model, Composite({})) as s:
        model(x)
    assert s.plain_ops == {"torch.exp"}


def test_default_batch_is_sized_by_bytes_and_chunks_hold_no_graph(monkeypatch):
    """batch_size=None: a memory budget over the bytes of one sample sets the rows per pass (the
    map is the same), and a finished chunk keeps none of its graph's tensors."""
    import lumos.attribution.deeplift as dl
    import lumos.core.execution as ex
    from lumos.rules.composites import epsilon_plus
    from lumos.rules.engine import propagate

    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
    x = torch.rand(7, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    _, full, sessions = propagate(model, x, 0, epsilon_plus(), method="lrp", start="relevance")
    assert len(sessions) == 1
    row = 3 * 8 * 8 * 4
    monkeypatch.setattr(ex, "BATCH_BYTES", 2 * row)   # two samples per pass
    _, v, sessions = propagate(model, x, 0, epsilon_plus(), method="lrp", start="relevance")
    assert len(sessions) == 4
    assert all("producers" not in s.state for s in sessions)
    torch.testing.assert_close(v, full, rtol=1e-5, atol=1e-7)
    seen = []
    real = dl.check_batch_size
    monkeypatch.setattr(dl, "check_batch_size", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    dl.deeplift(model, x, target=0)
    assert seen == [2]


def test_only_inside_rules_apply_to_the_models_own_operations():
    """Operations of code around the model (lumos's wrappers) run plainly with only_inside."""
    inner = nn.Sequential(nn.Linear(3, 3), nn.ReLU())

    class Around(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return torch.relu(self.inner(torch.relu(x)).exp())  # two ReLUs outside `inner`

    x = torch.randn(4, 3, requires_grad=True)
    for only_inside, expected in ((False, 3), (True, 1)):
        count = _Count()
        comp = Composite({"relu": count}, strict=True)
        if only_inside:
            with rules.apply(inner, comp, only_inside=True) as session:
                Around()(x)
            assert session.depth == 0 and not session.plain_ops  # exp outside: not even seen
        else:
            with pytest.raises(UnsupportedOperationError, match="Tensor.exp"):
                with rules.apply(inner, comp):
                    Around()(x)
            count = _Count()
            with rules.apply(inner, Composite({"relu": count})):
                Around()(x)
        assert count.n == expected

"""lumos.dictionary core: activation caches, sparse autoencoders, training and metrics (issue 17).

Every metric is checked against its definition written out naively; SAEs are checked on synthetic
activations built from known sparse directions; the cache against the activations the model
computed, and its resumption by counting model calls.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lumos.dictionary import (SAE, ActivationCache, CorruptShardError, cache_activations, cosine_similarity,
                              dead_fraction, dense_fraction, density_histogram, evaluate, explained_variance,
                              feature_density, geometric_median, l0, l1, loss_recovered, mse, resample_dead,
                              splice, train_sae)
from lumos.dictionary.cache import flatten_positions, unflatten_positions

torch.set_num_threads(1)


# ---------------------------------------------------------------------- fixtures
def sparse_world(d=32, m=48, p=2, n=4096, seed=0):
    """Activations ``x = c @ D``: ``m`` unit directions in ``d`` dims, ~``p`` active per row."""
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(m, d, generator=g)
    D /= D.norm(dim=1, keepdim=True)
    active = (torch.rand(n, m, generator=g) < p / m).float()
    return D, active * (0.5 + torch.rand(n, m, generator=g)) @ D


def mean_max_cos(D, sae):
    W = sae.W_dec.detach()
    W = W / W.norm(dim=1, keepdim=True)
    return float((D @ W.T).max(1).values.mean())


def identity_sae(d):
    """An SAE whose reconstruction of a non-negative row is the row itself (ReLU, W = I, b = 0)."""
    sae = SAE(d, d, "relu")
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
    return sae.eval()


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1),
                                      nn.ReLU())
        self.head = nn.Linear(8, 3)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.head(self.features(x).mean((2, 3)))


class TokenLM(nn.Module):
    """Embedding -> MLP block (post-ReLU residual-like layer) -> logits over the vocabulary."""

    def __init__(self, vocab=11, d=8):
        super().__init__()
        torch.manual_seed(1)
        self.embed = nn.Embedding(vocab, d)
        self.mlp = nn.Sequential(nn.Linear(d, d), nn.ReLU())
        self.unembed = nn.Linear(d, vocab)

    def forward(self, input_ids, attention_mask=None):
        h = self.embed(input_ids)
        h = self.mlp(h) + 0.0 * h
        return self.unembed(h)


def state_of(model):
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return ({k: v.clone() for k, v in model.state_dict().items()}, hooks, model.training,
            [p.requires_grad for p in model.parameters()])


def assert_same_state(model, before):
    after = state_of(model)
    assert before[0].keys() == after[0].keys()
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert before[1:] == after[1:]


# ---------------------------------------------------------------------- SAEs recover directions
@pytest.mark.parametrize("kind,kw", [("relu", {"l1_coef": 0.3}), ("topk", {"k": 2})])
def test_sae_recovers_known_sparse_directions(kind, kw):
    D, x = sparse_world()
    sae = SAE(32, 96, kind, seed=0, **kw)
    before = mean_max_cos(D, sae)
    train_sae(sae, x, n_steps=300, batch_size=256, lr=1e-2, l1_warmup_steps=30, progress=False)
    assert before < 0.6  # random directions are far from the true ones: the test can fail
    assert mean_max_cos(D, sae) >= 0.9
    met = evaluate(sae, x)
    assert met.explained_variance > 0.8


def test_topk_keeps_exactly_k_per_row_in_train_and_eval():
    _, x = sparse_world(n=300)
    sae = SAE(32, 64, "topk", k=5, seed=3)
    with torch.no_grad():
        sae.b_enc.fill_(10.0)  # every pre-activation positive, so ReLU never removes a kept one
    for mode in (True, False):
        sae.train(mode)
        codes = sae.encode(x)
        assert ((codes != 0).sum(1) == 5).all()
        top = sae.pre_activations(x).topk(5, dim=1).indices
        assert torch.equal(torch.sort(top, 1).values, torch.sort((codes != 0).nonzero()[:, 1].reshape(-1, 5), 1).values)


def test_batchtopk_keeps_k_times_batch_in_total_and_evaluates_per_row():
    _, x = sparse_world(n=200)
    sae = SAE(32, 64, "batchtopk", k=4, seed=3)
    with torch.no_grad():
        sae.b_enc.fill_(10.0)
    sae.train()
    codes = sae.encode(x)
    assert int((codes != 0).sum()) == 4 * len(x)
    assert (codes != 0).sum(1).float().std() > 0  # rows do differ: it is not per-row top-k
    kept_min = float(codes[codes != 0].min().detach())
    assert float(sae.eval_threshold) == pytest.approx(kept_min, rel=1e-6)
    sae.eval()  # eval: a learned threshold, a row's codes independent of the batch
    assert torch.equal(sae.encode(x[:7]), sae.encode(x)[:7])


def test_jumprelu_codes_and_straight_through_threshold_gradient():
    sae = SAE(4, 3, "jumprelu", threshold=0.5, bandwidth=0.2)
    pre = torch.tensor([[0.45, 0.55, 1.0], [0.2, 0.58, 0.62]], requires_grad=True)
    codes = sae.activate(pre)
    assert torch.equal(codes.detach(), torch.tensor([[0.0, 0.55, 1.0], [0.0, 0.58, 0.62]]))
    codes.sum().backward()
    # d/dtheta = -(theta/eps) * sum over rows of 1{|pre - theta| < eps/2}; d/dlog_theta = theta * that
    theta, eps = 0.5, 0.2
    counts = torch.tensor([1.0, 2.0, 0.0])  # col 0: 0.45; col 1: 0.55 and 0.58; col 2: 0.62 is 0.12 away
    assert torch.allclose(sae.log_threshold.grad, -(theta / eps) * counts * theta, atol=1e-6)
    assert torch.equal(pre.grad, (pre.detach() > theta).float())


def test_jumprelu_l0_penalty_lowers_l0():
    _, x = sparse_world(n=2048)
    l0s = []
    for coef in (0.0, 0.05):
        sae = SAE(32, 64, "jumprelu", l0_coef=coef, threshold=0.05, bandwidth=0.05, seed=0)
        train_sae(sae, x, n_steps=150, batch_size=256, lr=1e-2, progress=False)
        l0s.append(evaluate(sae, x).l0)
    assert l0s[1] < 0.7 * l0s[0]


# ---------------------------------------------------------------------- training pieces
def test_decoder_directions_unit_norm_and_parallel_gradient_removed():
    _, x = sparse_world(n=512)
    sae = SAE(32, 64, "relu", l1_coef=0.3)
    res = train_sae(sae, x, n_steps=5, batch_size=128, progress=False)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(64), atol=1e-6)
    loss, _, _ = sae.loss(x[:64])
    loss.backward()
    assert float((sae.W_dec.grad * sae.W_dec.detach()).sum(1).abs().max()) > 1e-4  # there was a parallel part
    sae.remove_parallel_grad_()
    assert float((sae.W_dec.grad * sae.W_dec.detach()).sum(1).abs().max()) < 1e-6
    assert res.n_rows == 5 * 128 and len(res.history["loss"]) == 1


def test_geometric_median_minimises_the_sum_of_distances():
    g = torch.Generator().manual_seed(0)
    pts = torch.randn(50, 3, generator=g, dtype=torch.float64)
    pts[:5] += 100.0  # outliers pull the mean, not the median
    m = geometric_median(pts)

    def cost(c):
        return float((pts - c).norm(dim=1).sum())
    for _ in range(20):
        assert cost(m) <= cost(m + 1e-3 * torch.randn(3, generator=g, dtype=torch.float64)) + 1e-12
    assert float(m.norm()) < 1.0 < float(pts.mean(0).norm())
    sym = torch.tensor([[1.0, 0], [-1, 0], [0, 2], [0, -2]], dtype=torch.float64)
    assert torch.allclose(geometric_median(sym), torch.zeros(2, dtype=torch.float64), atol=1e-9)


def test_decoder_bias_initialised_at_mean_or_median():
    _, x = sparse_world(n=256)
    sae = SAE(32, 40)
    sae.init_decoder_bias(x, "mean")
    assert torch.allclose(sae.b_dec, x.mean(0), atol=1e-6)
    sae.init_decoder_bias(x, "geometric_median")
    assert torch.allclose(sae.b_dec.double(), geometric_median(x), atol=1e-6)
    with pytest.raises(ValueError, match="method"):
        sae.init_decoder_bias(x, "median")


def _with_dead(kind, **kw):
    sae = SAE(32, 64, kind, seed=0, **kw)
    with torch.no_grad():  # features 0..9 can never fire: zero encoder, very negative bias
        sae.W_enc[:, :10] = 0
        sae.b_enc[:10] = -100.0
    return sae


def test_resampling_revives_dead_features():
    _, x = sparse_world(n=2048)
    sae = _with_dead("relu", l1_coef=0.3)
    assert (sae.encode(x)[:, :10] == 0).all()
    res = train_sae(sae, x, n_steps=60, batch_size=256, lr=3e-3, dead_after=256 * 10, resample_every=20,
                    init_decoder_bias=None, progress=False)
    assert res.resampled and res.resampled[0][0] == 20 and res.resampled[0][1] >= 10
    fired = (sae.eval().encode(x) != 0).any(0)
    assert fired[:10].all()


def test_resample_dead_uses_high_loss_rows():
    _, x = sparse_world(n=64)
    sae = _with_dead("relu")
    x = x.clone()
    x[7] *= 50  # by far the worst reconstructed row: every resampled direction is that row's
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:10] = True
    assert resample_dead(sae, x, dead, seed=0) == 10
    want = (x[7] - sae.b_dec) / (x[7] - sae.b_dec).norm()
    assert torch.allclose(sae.W_dec[:10].detach(), want.expand(10, -1).detach(), atol=1e-5)
    assert (sae.b_enc[:10] == 0).all() and (sae.steps_since_fired[:10] == 0).all()


def test_aux_k_loss_reaches_dead_features_and_revives_them():
    _, x = sparse_world(n=2048)
    sae = _with_dead("topk", k=2, aux_k=16)
    with torch.no_grad():  # dead but not hopeless: small positive pre-activations, never in the top 2
        sae.W_enc[:, :10] = torch.randn(32, 10, generator=torch.Generator().manual_seed(0)) * 0.001
        sae.b_enc[:10] = 0.01
        sae.b_enc[10:] += 1.0  # the alive features always win the top 2
    assert (sae.encode(x)[:, :10] == 0).all()
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:10] = True
    loss, parts, _ = sae.loss(x[:256], dead=dead)
    loss.backward()
    assert parts["aux"] > 0 and float(sae.W_enc.grad[:, :10].abs().sum()) > 0
    sae.zero_grad()
    _, parts_none, _ = sae.loss(x[:256], dead=torch.zeros(64, dtype=torch.bool))
    assert "aux" not in parts_none
    train_sae(sae, x, n_steps=150, batch_size=256, lr=1e-2, dead_after=512, progress=False)
    assert (sae.eval().encode(x) != 0).any(0)[:10].sum() >= 8


def test_seeded_training_gives_identical_weights_and_seeds_differ(tmp_path):
    _, x = sparse_world(n=1024)
    states = []
    for seed in (5, 5, 6):
        sae = SAE(32, 48, "topk", k=3, seed=1)
        train_sae(sae, x, n_steps=20, batch_size=64, seed=seed, progress=False)
        states.append(sae.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not torch.equal(states[0]["W_dec"], states[2]["W_dec"])


def test_checkpoints_are_written_and_load(tmp_path):
    _, x = sparse_world(n=512)
    sae = SAE(32, 48, "relu")
    res = train_sae(sae, x, n_steps=10, batch_size=64, checkpoint_dir=tmp_path, checkpoint_every=5,
                    progress=False)
    assert [p.split("/")[-1] for p in res.checkpoints] == ["step_0000005.npz", "step_0000010.npz"]
    last = SAE.load(res.checkpoints[-1])
    assert torch.equal(last.W_dec, sae.W_dec) and last.meta["step"] == 10


@pytest.mark.parametrize("kind,kw", [("relu", {}), ("topk", {"k": 3}), ("batchtopk", {"k": 3}),
                                     ("jumprelu", {"threshold": 0.01})])
@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_save_load_round_trip(tmp_path, kind, kw, suffix):
    if suffix == ".safetensors":
        pytest.importorskip("safetensors")
    _, x = sparse_world(n=512)
    sae = SAE(32, 40, kind, normalize="scale", seed=2, **kw)
    train_sae(sae, x, n_steps=5, batch_size=64, progress=False)
    path = sae.save(tmp_path / f"sae{suffix}", meta={"layer": "features.3"})
    back = SAE.load(path)
    assert back.config == sae.config and back.meta == {"layer": "features.3"}
    for k, v in sae.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    sae.eval(), back.eval()
    assert torch.equal(back.encode(x[:50]), sae.encode(x[:50]))
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:  # readable without pickle
            assert json.loads(bytes(z["__config__"]).decode())["config"]["kind"] == kind


def test_normalize_scale_reconstructs_in_input_units():
    _, x = sparse_world(n=512)
    x = x * 40.0
    sae = SAE(32, 48, "topk", k=4, normalize="scale")
    train_sae(sae, x, n_steps=100, batch_size=128, lr=1e-2, progress=False)
    assert float((x * sae.input_scale).pow(2).sum(1).mean()) == pytest.approx(32, rel=0.3)
    assert evaluate(sae, x).explained_variance > 0.5  # reconstructions come back in x's units


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="kind"):
        SAE(4, 8, "gated")
    with pytest.raises(ValueError, match="k"):
        SAE(4, 8, "topk")
    with pytest.raises(ValueError, match="k"):
        SAE(4, 8, "relu", k=2)
    with pytest.raises(ValueError, match="x: expected activations with last axis 4"):
        SAE(4, 8).encode(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="d_in=4"):
        train_sae(SAE(4, 8), torch.zeros(100, 5), n_steps=1, batch_size=10)
    with pytest.raises(ValueError, match="batch_size"):
        train_sae(SAE(4, 8), torch.zeros(10, 4), n_steps=1, batch_size=100)


# ---------------------------------------------------------------------- metrics vs definitions
def test_row_metrics_match_their_definitions():
    g = np.random.default_rng(0)
    x = g.normal(size=(40, 6)) + 3.0
    xh = x + g.normal(size=(40, 6)) * 0.3
    codes = g.normal(size=(40, 10)) * (g.random((40, 10)) < 0.3)
    assert l0(codes) == pytest.approx(np.mean([sum(v != 0 for v in r) for r in codes]))
    assert l1(codes) == pytest.approx(np.mean([sum(abs(v) for v in r) for r in codes]))
    assert mse(x, xh) == pytest.approx(np.mean([(a - b) ** 2 for ra, rb in zip(x, xh) for a, b in zip(ra, rb)]))
    mu = x.mean(0)
    ev = 1 - sum(((ra - rb) ** 2).sum() for ra, rb in zip(x, xh)) / sum(((r - mu) ** 2).sum() for r in x)
    assert explained_variance(x, xh) == pytest.approx(ev, abs=1e-12)
    cos = np.mean([a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(x, xh)])
    assert cosine_similarity(x, xh) == pytest.approx(cos, abs=1e-12)


def test_explained_variance_is_zero_for_the_mean_and_one_for_identity():
    g = np.random.default_rng(1)
    x = g.normal(size=(100, 5)) + 7.0  # a large mean: "about zero" would score the mean predictor ~0.98
    assert explained_variance(x, np.broadcast_to(x.mean(0), x.shape)) == pytest.approx(0.0, abs=1e-12)
    assert explained_variance(x, x) == 1.0
    about_zero = 1 - ((x - x.mean(0)) ** 2).sum() / (x ** 2).sum()
    assert about_zero > 0.9  # the SAELens-bug definition, which the test above would catch
    xt = torch.relu(torch.as_tensor(x, dtype=torch.float32))
    assert evaluate(identity_sae(5), xt).explained_variance == pytest.approx(1.0, abs=1e-12)


def test_evaluate_streams_the_same_numbers_as_the_definitions():
    _, x = sparse_world(n=700)
    sae = SAE(32, 48, "relu", seed=4)
    train_sae(sae, x, n_steps=10, batch_size=64, progress=False)
    sae.eval()
    with torch.no_grad():
        out = sae(x)
    a = evaluate(sae, x, batch_size=128)
    b = evaluate(sae, x.numpy(), batch_size=700)
    for m in (a, b):
        assert m.n_rows == 700
        assert m.l0 == pytest.approx(l0(out.codes), rel=1e-9)
        assert m.l1 == pytest.approx(l1(out.codes), rel=1e-6)
        assert m.mse == pytest.approx(mse(x, out.recon), rel=1e-6)
        assert m.explained_variance == pytest.approx(explained_variance(x, out.recon), abs=1e-6)
        assert m.cosine == pytest.approx(cosine_similarity(x, out.recon), abs=1e-6)
        np.testing.assert_allclose(m.density, feature_density(out.codes))


def test_density_dead_dense_and_histogram():
    codes = np.zeros((10, 5))
    codes[:, 0] = 1  # density 1
    codes[:2, 1] = 1  # 0.2
    codes[:1, 2] = 1  # 0.1
    dens = feature_density(codes)
    np.testing.assert_allclose(dens, [1.0, 0.2, 0.1, 0.0, 0.0])
    assert dead_fraction(dens) == 0.4
    assert dense_fraction(dens, 0.1) == 0.4 and dense_fraction(dens, 0.05) == 0.6
    h = density_histogram(dens, bins=8, low=-8)
    assert h["n_dead"] == 2 and h["counts"].sum() == 3
    assert h["counts"][-1] == 3  # log10 of 1, 0.2 and 0.1 in [-1, 0] (left edges inclusive)
    h = density_histogram(dens, bins=16, low=-8)
    assert h["counts"][-1] == 1 and h["counts"][-2] == 2 and h["edges"][-2] == -0.5
    assert h["edges"][0] == -8 and h["edges"][-1] == 0


# ---------------------------------------------------------------------- splicing
def test_splicing_an_exact_reconstruction_recovers_all_the_loss_and_leaves_the_model():
    model = ConvNet().eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(12, 3, 6, 6, generator=g), torch.randint(0, 3, (12,), generator=g)
    before = state_of(model)
    res = loss_recovered(model, identity_sae(8), x, "features.3", labels=y, batch_size=5)
    assert_same_state(model, before)
    clean = float(F.cross_entropy(model(x), y).detach())
    assert res.ce_clean == pytest.approx(clean, rel=1e-6) and res.n == 12
    assert res.ce_sae == res.ce_clean  # the same numbers reach the layers after
    assert res.loss_recovered == 1.0
    with torch.no_grad():
        zero = float(F.cross_entropy(model.head(torch.zeros(12, 8)), y))
    assert res.ce_zero == pytest.approx(zero, rel=1e-6)
    half = loss_recovered(model, lambda r: 0.5 * r, x, "features.3", labels=y)
    assert 0 < half.loss_recovered < 1


def test_splice_hook_is_removed_when_the_model_raises():
    model = ConvNet().eval()
    before = state_of(model)

    def broken(rows):
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        loss_recovered(model, broken, torch.rand(4, 3, 6, 6), "features.3", labels=torch.zeros(4))
    assert_same_state(model, before)
    with pytest.raises(RuntimeError, match="boom"):
        with splice(model, "features.3", broken):
            model(torch.rand(2, 3, 6, 6))
    assert_same_state(model, before)
    with pytest.raises(ValueError, match="reconstructions of shape"):
        with splice(model, "features.3", lambda r: r[:, :3]):
            model(torch.rand(2, 3, 6, 6))


def test_loss_recovered_on_tokens_with_padding():
    model = TokenLM().eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 11, (6, 7), generator=g)
    mask = torch.ones(6, 7, dtype=torch.long)
    mask[0, 4:] = 0
    mask[3, 2:] = 0
    res = loss_recovered(model, identity_sae(8), {"input_ids": ids, "attention_mask": mask}, "mlp")
    logits = model(ids)
    lp = F.cross_entropy(logits[:, :-1].reshape(-1, 11), ids[:, 1:].reshape(-1), reduction="none")
    keep = mask[:, 1:].reshape(-1).bool()
    assert res.n == int(keep.sum())
    assert res.ce_clean == pytest.approx(float(lp[keep].mean().detach()), rel=1e-6)
    assert res.loss_recovered == pytest.approx(1.0, abs=1e-6)


# ---------------------------------------------------------------------- activation caches
def test_flatten_positions_round_trip_and_order():
    a = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    rows, idx = flatten_positions(a)
    assert rows.shape == (8, 3) and torch.equal(rows[5], a[1, :, 0, 1]) and idx[5].tolist() == [1, 1]
    assert torch.equal(unflatten_positions(rows, a.shape), a)
    t = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    rows, idx = flatten_positions(t, torch.tensor([[1, 1, 0], [1, 0, 0]]))
    assert rows.shape == (3, 4) and idx.tolist() == [[0, 0], [0, 1], [1, 0]]
    assert torch.equal(rows[2], t[1, 0])


def test_cache_reads_back_exactly_what_the_model_computed(tmp_path):
    model = ConvNet().eval()
    x = torch.rand(23, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    before = state_of(model)
    cache = cache_activations(model, x, "features.1", tmp_path / "c", batch_size=4, shard_samples=8,
                              progress=False)
    assert_same_state(model, before)
    with torch.no_grad():
        act = model.features[:2](x)
    want = act.permute(0, 2, 3, 1).reshape(-1, 6).numpy()
    assert len(cache) == 23 * 25 and cache.width == 6
    assert [s["rows"] for s in cache.manifest["shards"]] == [8 * 25, 8 * 25, 7 * 25]
    np.testing.assert_array_equal(cache.array(), want)
    np.testing.assert_array_equal(ActivationCache(tmp_path / "c").rows([3, 570, 0, 250]), want[[3, 570, 0, 250]])
    idx = cache.index()
    assert idx[26].tolist() == [1, 1] and idx[-1].tolist() == [22, 24]
    cache.verify()
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["status"] == "done"


def test_cache_of_token_sequences_drops_padding(tmp_path):
    model = TokenLM().eval()
    ids = torch.randint(0, 11, (5, 6), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(5, 6, dtype=torch.long)
    mask[1, 3:] = 0
    mask[4, 1:] = 0
    cache = cache_activations(model, {"input_ids": ids, "attention_mask": mask}, "mlp", tmp_path / "t",
                              batch_size=2, progress=False)
    with torch.no_grad():  # the same batches of 2 (a matmul's sums depend on the rows it holds)
        act = torch.cat([model.mlp(model.embed(ids[s:s + 2])) for s in range(0, 5, 2)])
    np.testing.assert_array_equal(cache.array(), act[mask.bool()].numpy())
    assert len(cache) == int(mask.sum())
    assert cache.index()[:, 0].tolist() == [i for i in range(5) for _ in range(int(mask[i].sum()))]


def test_interrupted_cache_resumes_without_recomputing_finished_shards(tmp_path):
    x = torch.rand(40, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    model = ConvNet().eval()

    def batches(fail_after=None):
        for k in range(10):  # 10 batches of 4 samples
            if fail_after is not None and k == fail_after:
                raise KeyboardInterrupt("interrupted")
            yield x[4 * k:4 * k + 4]
    with pytest.raises(KeyboardInterrupt):
        cache_activations(model, batches(fail_after=7), "features.3", tmp_path / "r", shard_samples=8)
    assert model.calls == 7
    m = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert m["status"] == "running" and len(m["shards"]) == 3  # 24 samples done; batch 7 (6th) unfinished
    with pytest.raises(ValueError, match="unfinished"):
        ActivationCache(tmp_path / "r")
    model.calls = 0
    cache = cache_activations(model, batches(), "features.3", tmp_path / "r", shard_samples=8)
    assert model.calls == 4  # samples 24..39 only
    full = cache_activations(model, batches(), "features.3", tmp_path / "full", shard_samples=8)
    np.testing.assert_array_equal(cache.array(), full.array())
    assert [s["sha256"] for s in cache.manifest["shards"]] == [s["sha256"] for s in full.manifest["shards"]]
    model.calls = 0
    cache_activations(model, batches(), "features.3", tmp_path / "r", shard_samples=8)  # done: nothing to do
    assert model.calls == 0


def test_corrupted_shard_is_detected_by_its_checksum(tmp_path):
    model = ConvNet().eval()
    x = torch.rand(16, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    cache = cache_activations(model, x, "features.3", tmp_path / "c", batch_size=4, shard_samples=8)
    shard = tmp_path / "c" / cache.manifest["shards"][1]["file"]
    raw = bytearray(shard.read_bytes())
    raw[200] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(CorruptShardError, match="shard_00001.npy: checksum mismatch"):
        ActivationCache(tmp_path / "c").verify()
    with pytest.raises(CorruptShardError, match="checksum"):  # not trusted on a re-run either
        cache_activations(model, x, "features.3", tmp_path / "c", batch_size=4, shard_samples=8)


def test_cache_refuses_another_model_or_layer(tmp_path):
    model = ConvNet().eval()
    x = torch.rand(8, 3, 4, 4)
    cache_activations(model, x, "features.3", tmp_path / "c", batch_size=4)
    with pytest.raises(ValueError, match="layer"):
        cache_activations(model, x, "features.1", tmp_path / "c", batch_size=4)
    with torch.no_grad():
        model.head.bias.add_(1.0)
    with pytest.raises(ValueError, match="model_hash"):
        cache_activations(model, x, "features.3", tmp_path / "c", batch_size=4)
    assert len(cache_activations(model, x, "features.1", tmp_path / "c", batch_size=4, overwrite=True)) == 8 * 16
    with pytest.raises(ValueError, match="no layer named 'features.33'"):
        cache_activations(model, x, "features.33", tmp_path / "d")


def test_shuffled_batches_cover_every_row_once_per_epoch_and_are_seeded(tmp_path):
    model = ConvNet().eval()
    x = torch.rand(10, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    cache = cache_activations(model, x, "features.3", tmp_path / "c", batch_size=3, shard_samples=3)
    allrows = cache.array()
    got = torch.cat(list(cache.batches(16, seed=1, epochs=2))).numpy()
    assert len(got) == 2 * len(cache)
    for ep in (got[:len(cache)], got[len(cache):]):
        assert sorted(map(tuple, ep)) == sorted(map(tuple, allrows))
    assert not np.array_equal(got[:len(cache)], allrows)  # shuffled across shards
    again = torch.cat(list(cache.batches(16, seed=1, epochs=2))).numpy()
    np.testing.assert_array_equal(got, again)
    other = torch.cat(list(cache.batches(16, seed=2))).numpy()
    assert not np.array_equal(other, got[:len(cache)])
    np.testing.assert_array_equal(torch.cat(list(cache.batches(7, shuffle=False))).numpy(), allrows)


def test_train_from_a_cache(tmp_path):
    model = ConvNet().eval()
    x = torch.rand(32, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    cache = cache_activations(model, x, "features.3", tmp_path / "c", batch_size=8, shard_samples=8)
    sae = SAE(cache.width, 16, "topk", k=2, normalize="scale")
    res = train_sae(sae, cache, n_steps=30, batch_size=64, lr=1e-2, log_every=1, progress=False)
    assert res.n_rows == 30 * 64
    assert res.history["loss"][-1] < res.history["loss"][0]
    res2 = loss_recovered(model, sae.eval(), x, "features.3", labels=torch.zeros(32, dtype=torch.long))
    assert np.isfinite(res2.loss_recovered)


def test_tiny_language_model_cache_and_splice_with_a_tokenizer_batch(tmp_path):
    """A Hugging Face GPT-2 (the shipped tiny LM): a block's tuple output, a BatchEncoding with padding."""
    pytest.importorskip("transformers")
    from lumos.data.text_models import load_tiny_lm

    model, tok = load_tiny_lm()
    enc = tok(["def f(x): return x", "a longer docstring about numbers and lists", "print"],
              return_tensors="pt", padding=True)
    from lumos.core.torch_model import hf_capturing_hooks

    hf_capturing_hooks(model)  # Hugging Face's own hooks, installed on a first call (kept, as HF would)
    before = state_of(model)
    cache = cache_activations(model, enc, "transformer.h.1", tmp_path / "lm", batch_size=3, progress=False)
    with torch.no_grad():
        hidden = model(**enc, output_hidden_states=True).hidden_states[2]  # the output of block 1
    mask = enc["attention_mask"].bool()
    np.testing.assert_array_equal(cache.array(), hidden[mask].numpy())
    res = loss_recovered(model, lambda r: r.clone(), enc, "transformer.h.1")
    assert res.loss_recovered == 1.0 and res.n == int(mask[:, 1:].sum())
    assert res.ce_zero > res.ce_clean
    assert_same_state(model, before)


def test_learning_rate_and_l1_warm_ups_are_linear():
    _, x = sparse_world(n=1024)
    sae = SAE(32, 48, "relu", l1_coef=0.5)
    res = train_sae(sae, x, n_steps=8, batch_size=64, lr=0.01, lr_warmup_steps=4, l1_warmup_steps=8,
                    log_every=1, progress=False)
    assert res.history["lr"] == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01, 0.01, 0.01])
    # the logged sparsity term is l1_coef * step/8 * L1 of that batch's codes
    sae2 = SAE(32, 48, "relu", l1_coef=0.5)
    _, parts, out = sae2.loss(x[:64], sparsity_scale=0.25)
    assert parts["sparsity"] == pytest.approx(0.5 * 0.25 * float(out.codes.detach().abs().sum(1).mean()), rel=1e-6)


def test_cache_and_loss_recovered_from_a_dataloader_of_pairs(tmp_path):
    from torch.utils.data import DataLoader, TensorDataset

    model = ConvNet().eval()
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(10, 3, 4, 4, generator=g), torch.randint(0, 3, (10,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    cache = cache_activations(model, loader, "features.3", tmp_path / "dl", shard_samples=4)
    ref = cache_activations(model, x, "features.3", tmp_path / "ref", batch_size=4)
    np.testing.assert_array_equal(cache.array(), ref.array())
    np.testing.assert_array_equal(cache.index([5, 17, 159]), cache.index()[[5, 17, 159]])
    assert cache.index([159]).tolist() == [[9, 15]]
    a = loss_recovered(model, identity_sae(8), loader, "features.3")
    b = loss_recovered(model, identity_sae(8), x, "features.3", labels=y, batch_size=4)
    assert (a.ce_clean, a.ce_zero, a.n) == (b.ce_clean, b.ce_zero, b.n) and a.loss_recovered == 1.0


@pytest.mark.parametrize("max_grad_norm", [None, 1e-12])  # 1e-12: gradients far below Adam's eps
def test_one_training_step_equals_the_textbook_step(max_grad_norm):
    """train_sae's step written out: loss, backward, parallel part removed, clip, Adam, renormalise."""
    from lumos.core.execution import torch_generator

    _, x = sparse_world(n=256)
    sae = SAE(32, 48, "relu", l1_coef=0.3, seed=7)
    ref = SAE(32, 48, "relu", l1_coef=0.3, seed=7)
    train_sae(sae, x, n_steps=1, batch_size=64, lr=0.01, init_decoder_bias=None, seed=3,
              max_grad_norm=max_grad_norm, progress=False)
    batch = x[torch.randperm(256, generator=torch_generator(3))[:64]]
    ref.normalize_decoder_()
    opt = torch.optim.Adam(ref.parameters(), lr=0.01)
    loss = ((ref.reconstruct(batch) - batch) ** 2).sum(1).mean() + 0.3 * ref.encode(batch).abs().sum(1).mean()
    loss.backward()
    g = ref.W_dec.grad
    g -= (g * ref.W_dec.detach()).sum(1, keepdim=True) * ref.W_dec.detach()
    if max_grad_norm is not None:
        norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in ref.parameters()))
        for p in ref.parameters():
            p.grad *= max_grad_norm / (norm + 1e-6)
    opt.step()
    with torch.no_grad():
        ref.W_dec /= ref.W_dec.norm(dim=1, keepdim=True)
    for k, v in ref.state_dict().items():
        if k != "steps_since_fired":
            assert torch.allclose(sae.state_dict()[k], v, atol=1e-6, rtol=1e-5), k
    moved = float((sae.b_enc - SAE(32, 48, "relu", seed=7).b_enc).abs().max().detach())
    assert (moved > 1e-3) if max_grad_norm is None else (moved < 1e-5)  # the clip acted

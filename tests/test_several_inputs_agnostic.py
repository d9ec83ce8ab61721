"""Model-agnostic methods on models of several inputs and with extra forward arguments (issue 13).

A model of two tables must get the attributions of the same function written on their
concatenation (every tabular black-box method; tuple and dict; predict function and torch
module); efficiency holds over both inputs; a per-sample forward argument reaches every masked or
perturbed row of its own sample (checked against a loop over samples, each explained with its own
argument); what cannot make sense says so.
"""
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import lumos
from lumos.agnostic.lime import lime
from lumos.agnostic.maskers import ImageMasker
from lumos.agnostic.shapley.exact import exact_shapley
from lumos.agnostic.shapley.interactions import exact_shapley_interactions
from lumos.agnostic.shapley.kernel import kernel_shap
from lumos.agnostic.shapley.permutation import permutation_shap
from lumos.agnostic.tree_shap import tree_shap, tree_shap_interactions

R = np.random.default_rng(0)
A, B = R.normal(size=(4, 2)), R.normal(size=(4, 3))          # explained rows: two inputs
BA, BB = R.normal(size=(6, 2)), R.normal(size=(6, 3))        # background, rows aligned
X, BG = np.hstack([A, B]), np.hstack([BA, BB])
W = np.array([1.0, -2.0, 0.5, 3.0, -1.0])

METHODS = {
    "kernel_shap": (kernel_shap, {}),
    "permutation_shap": (permutation_shap, {}),
    "exact_shapley": (exact_shapley, {}),
    "exact_shapley_interactions": (exact_shapley_interactions, {}),
    "lime": (lime, {"n_samples": 300}),
}
SHAPLEY = ["kernel_shap", "permutation_shap", "exact_shapley"]


def g(Z):
    """The function on the concatenated columns: linear, a cross-input product, a square."""
    Z = np.asarray(Z, dtype=np.float64)
    return Z @ W + 2.0 * Z[:, 0] * Z[:, 3] + Z[:, 4] ** 2


def f_tuple(a, b):
    return g(np.hstack([a, b]))


def f_dict(*, num, cat):
    return g(np.hstack([num, cat]))


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.as_tensor(W, dtype=torch.float64))  # a float64 model

    def forward(self, z):
        return (z @ self.w + 2.0 * z[:, 0] * z[:, 3] + z[:, 4] ** 2)[:, None]


class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = Concat()

    def forward(self, a, b):
        return self.inner(torch.cat([a, b], 1))


class TwoKw(Two):
    def forward(self, *, num, cat):
        return self.inner(torch.cat([num, cat], 1))


def _flat(values):
    parts = list(values.values()) if isinstance(values, dict) else list(values)
    return np.concatenate(parts, axis=1)


def _run(name, model, inputs, background, **kw):
    fn, extra = METHODS[name]
    return fn(model, inputs, background=background, **{**extra, **kw})


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("kind", ["tuple", "dict"])
@pytest.mark.parametrize("model", ["function", "torch"])
def test_two_inputs_equal_their_concatenation(name, kind, model):
    if model == "function":
        one, two = g, (f_tuple if kind == "tuple" else f_dict)
        x, bg = X, BG
        parts = (A, B), (BA, BB)
    else:  # float64 modules: the comparison can be tight
        one, two = Concat(), (Two() if kind == "tuple" else TwoKw())
        x, bg = torch.as_tensor(X), torch.as_tensor(BG)
        parts = (torch.as_tensor(A), torch.as_tensor(B)), (torch.as_tensor(BA), torch.as_tensor(BB))
    inputs, background = parts
    if kind == "dict":
        inputs = {"num": inputs[0], "cat": inputs[1]}
        background = {"num": background[0], "cat": background[1]}
    ref = _run(name, one, x, bg)
    e = _run(name, two, inputs, background)
    keys = ["0", "1"] if kind == "tuple" else ["num", "cat"]
    names = [f"{keys[0]}:x0", f"{keys[0]}:x1", f"{keys[1]}:x0", f"{keys[1]}:x1", f"{keys[1]}:x2"]
    assert e.feature_names == names
    if name == "exact_shapley_interactions":  # one matrix over the columns of both inputs
        assert not e.several and e.values.shape == (4, 5, 5)
        np.testing.assert_allclose(e.values, ref.values, rtol=0, atol=1e-12)
    else:
        assert e.several and e.input_names == keys
        assert [v.shape for v in (e.values.values() if kind == "dict" else e.values)] == [(4, 2), (4, 3)]
        np.testing.assert_allclose(_flat(e.values), ref.values, rtol=0, atol=1e-12)
        np.testing.assert_allclose(_flat(e.inputs), X, rtol=0, atol=1e-15)
        part = e.part(1 if kind == "tuple" else "cat")
        assert part.feature_names == names[2:]
        np.testing.assert_allclose(part.values, ref.values[:, 2:], rtol=0, atol=1e-12)
    np.testing.assert_allclose(e.output, ref.output, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", SHAPLEY + ["exact_shapley_interactions"])
def test_efficiency_over_both_inputs(name):
    e = _run(name, f_tuple, (A, B), (BA, BB))
    total = e.values.sum((1, 2)) if name == "exact_shapley_interactions" else (
        e.values[0].sum(1) + e.values[1].sum(1))
    np.testing.assert_allclose(e.baseline_output + total, g(X), rtol=0, atol=1e-10)
    np.testing.assert_allclose(e.baseline_output, g(BG).mean(), rtol=0, atol=1e-12)
    if e.several:
        assert e.completeness_gap.max() < 1e-10


def test_exact_values_of_a_linear_model_of_two_inputs():
    """Closed form: phi = w * (x - E[b]) column by column, split per input."""
    e = exact_shapley(lambda a, b: np.hstack([a, b]) @ W, (A, B), background=(BA, BB))
    ref = W * (X - BG.mean(0))
    np.testing.assert_allclose(e.values[0], ref[:, :2], rtol=0, atol=1e-12)
    np.testing.assert_allclose(e.values[1], ref[:, 2:], rtol=0, atol=1e-12)


def test_dataframes_with_categories_reach_the_model_as_given():
    """Two DataFrames, one with a string column: each input is rebuilt with its columns and
    dtypes; the result equals that of the model on the concatenated frame."""
    rng = np.random.default_rng(3)
    cities = np.array(["oslo", "rome", "lima"])
    num = pd.DataFrame({"age": rng.normal(40, 9, 5), "income": rng.normal(3, 1, 5)})
    cat = pd.DataFrame({"city": rng.choice(cities, 5), "n": rng.integers(0, 4, 5)})
    bnum = pd.DataFrame({"age": rng.normal(40, 9, 7), "income": rng.normal(3, 1, 7)})
    bcat = pd.DataFrame({"city": rng.choice(cities, 7), "n": rng.integers(0, 4, 7)})
    bonus = {"oslo": 1.0, "rome": -2.0, "lima": 0.5}
    seen = []

    def joint(df):
        assert list(df.columns) == ["age", "income", "city", "n"]
        return (0.1 * df["age"] * df["income"] + df["city"].map(bonus) * df["n"]).to_numpy()

    def two(*, num, cat):
        seen.append((list(num.columns), list(cat.columns), cat["city"].dtype, cat["n"].dtype))
        return joint(pd.concat([num, cat], axis=1))

    inputs, background = {"num": num, "cat": cat}, {"num": bnum, "cat": bcat}
    flat, flat_bg = pd.concat([num, cat], axis=1), pd.concat([bnum, bcat], axis=1)
    for name in ["exact_shapley", "kernel_shap", "lime"]:
        e = _run(name, two, inputs, background)
        ref = _run(name, joint, flat, flat_bg)
        assert e.feature_names == ["num:age", "num:income", "cat:city", "cat:n"]
        np.testing.assert_allclose(_flat(e.values), ref.values, rtol=0, atol=1e-12)
    assert all(s[:2] == (["age", "income"], ["city", "n"]) for s in seen)
    assert all(s[2] == cat["city"].dtype and s[3] == cat["n"].dtype for s in seen)
    assert "cat:city" in e.meta["categories"]


def test_torch_numeric_and_categorical_tensors():
    """A float input and a long input feeding an embedding (the indices stay integers)."""
    torch.manual_seed(0)

    class Tab(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(4, 2)
            self.lin = nn.Linear(2, 2)

        def forward(self, x_num, x_cat):
            assert x_cat.dtype == torch.long
            return self.lin(x_num * self.emb(x_cat[:, 0]))

    class Flat(nn.Module):
        def __init__(self, tab):
            super().__init__()
            self.tab = tab

        def forward(self, z):
            return self.tab(z[:, :2], z[:, 2:].round().long())

    tab = Tab()
    num, cat = torch.randn(4, 2), torch.tensor([[0], [3], [1], [2]])
    bnum, bcat = torch.randn(5, 2), torch.tensor([[1], [1], [0], [2], [3]])
    e = exact_shapley(tab, (num, cat), background=(bnum, bcat), target=1)
    ref = exact_shapley(Flat(tab), torch.cat([num, cat.float()], 1),
                        background=torch.cat([bnum, bcat.float()], 1), target=1)
    np.testing.assert_allclose(_flat(e.values), ref.values, rtol=0, atol=1e-6)
    assert e.completeness_gap.max() < 1e-5


# ----------------------------------------------------------------------------- groups, links
def test_groups_across_inputs():
    """A group may join columns of different inputs; its value equals the group's value on the
    concatenated model, and the values come back as one table of groups."""
    groups = {"cross": ["0:x0", "1:x0"], "rest": ["0:x1", "1:x2"]}
    for name in ["exact_shapley", "kernel_shap", "exact_shapley_interactions"]:
        e = _run(name, f_tuple, (A, B), (BA, BB), groups=groups)
        ref = _run(name, g, X, BG, groups={"cross": [0, 2], "rest": [1, 4]})
        assert not e.several and e.feature_names == ["cross", "rest", "1:x1"]
        assert e.meta["groups"]["cross"] == ["0:x0", "1:x0"]
        np.testing.assert_allclose(e.values, ref.values, rtol=0, atol=1e-12)
    e = lime(f_tuple, (A, B), background=(BA, BB), groups=groups, n_samples=300)
    ref = lime(g, X, background=BG, groups={"cross": [0, 2], "rest": [1, 4]}, n_samples=300)
    assert e.feature_names == ["cross", "rest", "1:x1"]
    np.testing.assert_allclose(e.values, ref.values, rtol=0, atol=1e-12)


def test_interactions_of_groups_sum_to_group_shapley_values():
    groups = [[0, 3], [1, 2]]
    e = exact_shapley_interactions(g, X, background=BG, groups=groups)
    sv = exact_shapley(g, X, background=BG, groups=groups)
    assert e.values.shape == (4, 3, 3) and e.feature_names == sv.feature_names == ["x0+x3", "x1+x2", "x4"]
    np.testing.assert_allclose(e.values.sum(2), sv.values, rtol=0, atol=1e-12)
    np.testing.assert_allclose(e.meta["shapley_values"], sv.values, rtol=0, atol=1e-12)
    np.testing.assert_allclose(e.values, e.values.transpose(0, 2, 1), rtol=0, atol=0)
    # the product x0 * x3 is inside group 0: no interaction of it with the others comes from it;
    # x4**2 is additive: group "x4" interacts with nobody
    np.testing.assert_allclose(e.values[:, 2, :2], 0.0, atol=1e-12)


def test_interactions_logit_link_rows_sum_to_logit_values():
    def prob(Z):
        return 1.0 / (1.0 + np.exp(-0.3 * g(Z)))

    e = exact_shapley_interactions(prob, X, background=BG, link="logit")
    sv = exact_shapley(prob, X, background=BG, link="logit")
    np.testing.assert_allclose(e.values.sum(2), sv.values, rtol=0, atol=1e-12)
    logit = lambda p: np.log(p) - np.log1p(-p)  # noqa: E731
    np.testing.assert_allclose(e.output, logit(prob(X)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(e.baseline_output, logit(prob(BG).mean()), rtol=0, atol=1e-12)
    np.testing.assert_allclose(e.baseline_output + e.values.sum((1, 2)), logit(prob(X)), rtol=0,
                               atol=1e-10)
    with pytest.raises(ValueError, match="link='logit' needs probabilities"):
        exact_shapley_interactions(g, X, background=BG, link="logit")


def test_interactions_take_background_size_and_null_columns():
    Xc, BGc = X.copy(), BG.copy()
    Xc[:, 1] = BGc[:, 1] = 0.5  # a column equal to every background row: no player, exactly 0
    e = exact_shapley_interactions(g, Xc, background=BGc)
    assert np.all(e.values[:, 1, :] == 0) and np.all(e.values[:, :, 1] == 0)
    np.testing.assert_allclose(e.baseline_output + e.values.sum((1, 2)), g(Xc), rtol=0, atol=1e-10)
    small = exact_shapley_interactions(g, X, background=BG, background_size=3)
    sv = exact_shapley(g, X, background=BG, background_size=3)
    assert small.meta["n_background"] == 3
    np.testing.assert_allclose(small.values.sum(2), sv.values, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- forward args
def h(Z, scale, *, shift=0.0):
    """A predict function with a per-sample scale (and a constant shift)."""
    return g(Z) * np.asarray(scale) + shift


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = Concat()

    def forward(self, z, scale, *, shift=0.0):
        return self.inner(z)[:, 0] * scale + shift


SCALE = np.array([0.5, 2.0, -1.0, 3.0])


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("model", ["function", "torch"])
def test_per_sample_forward_argument_against_a_loop(name, model):
    """Row i of the batch equals row i of a run in which every sample gets sample i's argument:
    each row's draws depend on its seed stream only, so any mismatch of rows and arguments
    shows."""
    if model == "function":
        f, x, bg, scale = h, X, BG, SCALE
        const = lambda i: float(SCALE[i])  # noqa: E731
    else:
        f, x, bg, scale = Scaled(), torch.as_tensor(X), torch.as_tensor(BG), torch.as_tensor(SCALE)
        const = lambda i: torch.tensor(float(SCALE[i]), dtype=torch.float64)  # noqa: E731
    e = _run(name, f, x, bg, forward_args=lumos.Args(scale, shift=1.0))
    np.testing.assert_allclose(e.output, g(X) * SCALE + 1.0, rtol=0, atol=1e-12)
    for i in range(len(X)):
        alone = _run(name, f, x, bg, forward_args=lumos.Args(const(i), shift=1.0))
        np.testing.assert_allclose(e.values[i], alone.values[i], rtol=0, atol=1e-10)
    if name in SHAPLEY:
        np.testing.assert_allclose(e.baseline_output, SCALE * g(BG).mean() + 1.0, rtol=0, atol=1e-10)


def test_per_sample_forward_argument_each_sample_alone():
    """exact_shapley of each sample alone, with its own argument, equals the batch's row."""
    e = exact_shapley(h, X, background=BG, forward_args=(SCALE,))
    for i in range(len(X)):
        alone = exact_shapley(h, X[i:i + 1], background=BG, forward_args=(SCALE[i:i + 1],))
        np.testing.assert_allclose(e.values[i], alone.values[0], rtol=0, atol=1e-12)


def test_forward_args_with_several_inputs_and_keywords():
    """Several inputs and a per-sample keyword argument together, through lumos.explain."""
    def two(a, b, *, scale):
        return f_tuple(a, b) * scale

    e = lumos.explain(two, (A, B), "kernel_shap", background=(BA, BB),
                      forward_args={"scale": SCALE})
    ref = lumos.explain(h, X, "kernel_shap", background=BG, forward_args=(SCALE,))
    np.testing.assert_allclose(_flat(e.values), ref.values, rtol=0, atol=1e-12)


def test_constant_forward_args_are_passed_as_they_are():
    seen = []
    table = np.arange(3.0)  # not of batch length: the same for every row

    def f(Z, t, flag=False):
        seen.append((t is table or np.array_equal(t, table), flag))
        return g(Z) + t.sum()

    e = exact_shapley(f, X, background=BG, forward_args=lumos.Args(table, flag=True))
    assert seen and all(s == (True, True) for s in seen)
    np.testing.assert_allclose(e.values, exact_shapley(g, X, background=BG).values, atol=1e-12)
    # a batch-length value that is the same for every row: lumos.Shared passes it as it is
    lengths = []
    whole = np.arange(4.0)

    def f2(Z, t):
        lengths.append(len(t))
        return g(Z) + t.sum()

    e = kernel_shap(f2, X, background=BG, forward_args=(lumos.Shared(whole),))
    assert set(lengths) == {4}
    np.testing.assert_allclose(e.output, g(X) + 6.0, rtol=0, atol=1e-12)


def test_forward_args_for_images_reach_every_masked_image(small_cnn, images):
    """Images through the masker game: a per-sample argument follows its image."""
    class Scaled2(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x, scale):
            return self.net(x) * scale[:, None]

    imgs = images[:2]
    scale = torch.tensor([1.0, -2.0])
    masker = ImageMasker(segmentation="grid", n_segments=4)
    e = exact_shapley(Scaled2(small_cnn), imgs, target=0, masker=masker, forward_args=(scale,))
    for i in range(2):
        alone = exact_shapley(Scaled2(small_cnn), imgs[i:i + 1], target=0, masker=masker,
                              forward_args=(scale[i:i + 1],))
        np.testing.assert_allclose(e.values[i], alone.values[0], rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- errors
def test_mismatched_rows_are_refused():
    with pytest.raises(ValueError, match=r"inputs: every input needs the same number of rows; "
                                         r"inputs\[1\] has 3, inputs\[0\] has 4"):
        kernel_shap(f_tuple, (A, B[:3]), background=(BA, BB))
    with pytest.raises(ValueError, match=r"background: every input needs the same number of rows"):
        exact_shapley(f_tuple, (A, B), background=(BA, BB[:4]))
    with pytest.raises(ValueError, match="same number of rows"):
        lime(f_tuple, (A, B[:3]), background=(BA, BB))


def test_background_must_have_the_inputs_structure():
    with pytest.raises(ValueError, match="background: give one table per input, as a tuple of 2"):
        exact_shapley(f_tuple, (A, B), background=BG)
    with pytest.raises(ValueError, match=r"missing \['cat'\], unknown \['b'\]"):
        exact_shapley(f_dict, {"num": A, "cat": B}, background={"num": BA, "b": BB})
    with pytest.raises(ValueError, match="one background table per input"):
        kernel_shap(f_tuple, (A, B))
    with pytest.raises(ValueError, match="background: inputs is one table"):
        exact_shapley(g, X, background=(BA, BB))


def test_methods_that_cannot_take_several_inputs_say_so(images):
    from sklearn.tree import DecisionTreeRegressor

    tree = DecisionTreeRegressor(max_depth=3, random_state=0).fit(BG, g(BG))
    with pytest.raises(ValueError, match="inputs: tree_shap explains one table"):
        tree_shap(tree, (A, B))
    with pytest.raises(ValueError, match="inputs: tree_shap_interactions explains one table"):
        tree_shap_interactions(tree, (A, B))
    with pytest.raises(ValueError, match="forward_args: tree_shap reads the fitted trees"):
        lumos.explain(tree, X, "tree_shap", forward_args=(SCALE,))
    imgs = np.asarray(images[:2])
    with pytest.raises(ValueError, match=r"inputs\[0\]: with several inputs, lime explains tables"):
        lime(lambda a, b: np.zeros(len(a)), (imgs, imgs))
    with pytest.raises(ValueError, match=r"inputs\[0\]: with several inputs, kernel_shap explains tables"):
        kernel_shap(lambda a, b: np.zeros(len(a)), (imgs, imgs))
    with pytest.raises(ValueError, match="several inputs for tables only"):
        kernel_shap(lambda a, b: np.zeros(len(a)), (imgs, imgs), masker=ImageMasker())


def test_forward_args_errors():
    with pytest.raises(ValueError, match=r"forward_args: \['num'\] are also explained inputs"):
        exact_shapley(f_dict, {"num": A, "cat": B}, background={"num": BA, "cat": BB},
                      forward_args={"num": 1.0})
    with pytest.raises(ValueError, match="labels: discretizer='entropy'"):
        lime(h, X, background=BG, discretizer="entropy", forward_args=(SCALE,), n_samples=50)
    # with labels given, entropy bins work with per-sample arguments
    e = lime(h, X, background=BG, discretizer="entropy", labels=(g(BG) > 0).astype(int),
             forward_args=(SCALE,), n_samples=50)
    assert e.values.shape == (4, 5)


def test_save_and_slice_keep_the_inputs(tmp_path):
    e = exact_shapley(f_dict, {"num": A, "cat": B}, background={"num": BA, "cat": BB})
    back = lumos.load(e.save(tmp_path / "e.npz"))
    assert back.input_names == ["num", "cat"] and back.feature_names == e.feature_names
    np.testing.assert_array_equal(back.values["cat"], e.values["cat"])
    np.testing.assert_array_equal(e[1:3].values["num"], e.values["num"][1:3])

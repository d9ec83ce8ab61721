"""A synthetic credit-scoring world whose true attributions are known.

Applicants have numeric and categorical (string) columns; their creditworthiness is a known
formula (log-odds of repaying) with additive effects, one interaction (self-employed applicants
with high debt are riskier than either fact alone says) and one column the formula ignores (age).
A protected attribute (``group``) is *not* an input and not in the formula, but the formula
penalises two districts where group B mostly lives: the ``district`` column is a proxy through
which the protected attribute leaks into the score. Because the formula is known and has only
additive and pairwise terms, its exact interventional Shapley values against any background are
known in closed form (:meth:`CreditData.true_shapley`), and an explainer of a model fitted to the
data can be checked against them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["credit_dataset", "credit_score", "CreditData", "EMPLOYMENT", "HOUSING", "DISTRICTS"]

EMPLOYMENT = ("salaried", "self-employed", "unemployed", "retired")
HOUSING = ("own", "mortgage", "rent")
DISTRICTS = ("D1", "D2", "D3", "D4", "D5", "D6")

_EMPLOYMENT_EFFECT = {"salaried": 0.4, "self-employed": 0.0, "unemployed": -1.0, "retired": 0.2}
_HOUSING_EFFECT = {"own": 0.3, "mortgage": 0.1, "rent": -0.2}
# the leak: group B lives mostly in D5/D6, which the formula penalises
_DISTRICT_EFFECT = {"D1": 0.2, "D2": 0.1, "D3": 0.0, "D4": 0.0, "D5": -0.6, "D6": -0.7}

FEATURES = ("income", "debt_ratio", "age", "years_employed", "late_payments", "loan_amount",
            "employment", "housing", "district")


def _lookup(values, table: dict) -> np.ndarray:
    return np.array([table[v] for v in np.asarray(values, dtype=object)], dtype=np.float64)


def _terms(X) -> dict[str, np.ndarray]:
    """The additive terms of the score, one per feature (age has none)."""
    return {
        "income": 1.2 * np.log(np.asarray(X["income"], float) / 40.0),
        "debt_ratio": -4.0 * (np.asarray(X["debt_ratio"], float) - 0.3),
        "years_employed": 0.05 * np.minimum(np.asarray(X["years_employed"], float), 20.0),
        "late_payments": -0.6 * np.asarray(X["late_payments"], float),
        "loan_amount": -0.4 * np.log(np.asarray(X["loan_amount"], float) / 20.0),
        "employment": _lookup(X["employment"], _EMPLOYMENT_EFFECT),
        "housing": _lookup(X["housing"], _HOUSING_EFFECT),
        "district": _lookup(X["district"], _DISTRICT_EFFECT),
    }


def _interaction(debt_ratio, employment) -> np.ndarray:
    """Self-employed with debt above 30 % of income: an extra penalty (a pairwise interaction)."""
    d = np.asarray(debt_ratio, dtype=np.float64)
    se = np.asarray(employment, dtype=object) == "self-employed"
    return -5.0 * np.maximum(d - 0.3, 0.0) * se


def credit_score(X) -> np.ndarray:
    """The true log-odds of repaying for the rows of the DataFrame ``X`` (n,)."""
    return 0.5 + sum(_terms(X).values()) + _interaction(X["debt_ratio"], X["employment"])


@dataclass
class CreditData:
    """The credit world.

    Attributes
    ----------
    X : DataFrame (n, 9)
        income (k€), debt_ratio, age, years_employed, late_payments, loan_amount (k€) are numeric;
        employment, housing, district are strings.
    y : ndarray of int (n,)
        1 = repaid, drawn from ``sigmoid(score)``.
    score : ndarray (n,)
        The true log-odds (:func:`credit_score`).
    protected : ndarray of str (n,)
        The protected attribute ("A"/"B"); not a column of ``X``.
    proxy : str
        The column through which it leaks ("district").
    ignored : str
        The column the formula does not use ("age").
    interaction : tuple of str
        The interacting pair ("debt_ratio", "employment").
    """

    X: "object"
    y: np.ndarray
    score: np.ndarray
    protected: np.ndarray
    proxy: str = "district"
    ignored: str = "age"
    interaction: tuple = ("debt_ratio", "employment")

    @property
    def feature_names(self) -> list[str]:
        return list(FEATURES)

    @staticmethod
    def score_fn(X) -> np.ndarray:
        """The true scoring formula as a predict function (DataFrame -> log-odds)."""
        return credit_score(X)

    @staticmethod
    def true_shapley(X, background) -> np.ndarray:
        """Exact interventional Shapley values of :func:`credit_score` (n, 9), columns in
        ``FEATURES`` order, against the rows of ``background`` (equal weights).

        Additive terms: ``phi_j = g_j(x_j) - mean_b g_j(b_j)``. The interaction ``h(d, e)`` is
        split by the Shapley formula for two players:
        ``phi_d = (h(x_d, x_e) - mean h(b_d, x_e) + mean h(x_d, b_e) - mean h(b_d, b_e)) / 2``.
        """
        tx, tb = _terms(X), _terms(background)
        n = len(X)
        phi = np.zeros((n, len(FEATURES)))
        for name, g in tx.items():
            phi[:, FEATURES.index(name)] = g - tb[name].mean()
        dx, ex = np.asarray(X["debt_ratio"], float), np.asarray(X["employment"], dtype=object)
        db, eb = np.asarray(background["debt_ratio"], float), np.asarray(background["employment"], dtype=object)
        h_xx = _interaction(dx, ex)
        h_bx = np.array([_interaction(db, np.full(len(db), e, dtype=object)).mean() for e in ex])
        h_xb = np.array([_interaction(np.full(len(eb), d), eb).mean() for d in dx])
        h_bb = _interaction(db, eb).mean()
        phi[:, FEATURES.index("debt_ratio")] += (h_xx - h_bx + h_xb - h_bb) / 2
        phi[:, FEATURES.index("employment")] += (h_xx - h_xb + h_bx - h_bb) / 2
        return phi


def credit_dataset(n: int = 2000, seed: int = 0) -> CreditData:
    """Draw ``n`` applicants of the credit world.

    Parameters
    ----------
    n : int, default 2000
    seed : int, default 0

    Returns
    -------
    CreditData
    """
    import pandas as pd

    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int; got {n!r}")
    g = np.random.default_rng(seed)
    group = np.where(g.random(n) < 0.3, "B", "A")
    # the proxy: district depends strongly on the protected group
    p_a = np.array([0.25, 0.25, 0.2, 0.2, 0.05, 0.05])
    p_b = np.array([0.04, 0.04, 0.06, 0.06, 0.4, 0.4])
    u = g.random(n)
    cum = np.where(group[:, None] == "B", np.cumsum(p_b), np.cumsum(p_a))
    district = np.array(DISTRICTS)[np.minimum((u[:, None] > cum).sum(1), len(DISTRICTS) - 1)]
    age = g.integers(21, 71, n)
    employment = np.where(
        age >= 63, np.where(g.random(n) < 0.8, "retired", "salaried"),
        np.array(EMPLOYMENT[:3])[np.minimum((g.random(n)[:, None] > [0.65, 0.88]).sum(1), 2)],
    )
    housing = np.array(HOUSING)[np.minimum((g.random(n)[:, None] > [0.3, 0.65]).sum(1), 2)]
    income = np.round(np.exp(g.normal(3.65, 0.4, n)), 1)
    debt_ratio = np.round(g.beta(2.0, 5.0, n), 3)
    years_employed = np.minimum(age - 18, np.round(g.gamma(2.0, 4.0, n))).astype(np.int64)
    late = g.poisson(0.6, n).astype(np.int64)
    loan = np.round(np.exp(g.normal(3.0, 0.5, n)), 1)
    X = pd.DataFrame({
        "income": income, "debt_ratio": debt_ratio, "age": age.astype(np.int64),
        "years_employed": years_employed, "late_payments": late, "loan_amount": loan,
        "employment": pd.Series(employment, dtype="str"), "housing": pd.Series(housing, dtype="str"),
        "district": pd.Series(district, dtype="str"),
    })
    score = credit_score(X)
    y = (g.random(n) < 1.0 / (1.0 + np.exp(-score))).astype(np.int64)
    return CreditData(X=X, y=y, score=score, protected=group.astype(str))

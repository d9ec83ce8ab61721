"""scikit-learn's shipped Wisconsin breast-cancer data as a DataFrame: a real tabular data set
for the model-agnostic methods (no download: the file ships with scikit-learn)."""
from __future__ import annotations

__all__ = ["breast_cancer_dataset"]


def breast_cancer_dataset():
    """``(X, y)``: a DataFrame of 569 tumours × 30 numeric features and the labels
    (0 = malignant, 1 = benign). Street, Wolberg & Mangasarian (1993)."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer(as_frame=True)
    return bunch.data, bunch.target.to_numpy()

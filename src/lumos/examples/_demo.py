"""The examples section of ``lumos demo``: explanations by examples on the credit and shapes worlds.

- a rejected credit applicant's counterfactuals, with the district (the protected attribute's
  proxy) and age held fixed;
- MMD-critic prototypes and criticisms of the shape classes in the demo CNN's penultimate layer;
- the training images most influential for a watermarked test image that the CNN calls a circle
  (TracIn over checkpoints of the CNN's last layer retrained in the demo on the CNN's features),
  and its nearest training images in that layer;
- (full form) self-influence finding planted mislabelled training images.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["examples_demo"]

_CATEGORICAL = ["employment", "housing", "district"]
# checkpoints of the retrained last layer, after these SGD steps: log-spaced over the early steps,
# where the layer learns what separates the classes (the mark included); later steps have small
# gradients on what is already fitted
_CHECKPOINT_STEPS = (1, 2, 4, 8, 16)
_LR = 0.1


def _save(fig, path: Path, files: dict, what: str) -> str:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    files[str(path)] = what
    return path.name


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)


def _counterfactual_part(out_dir: Path, quick: bool, files: dict, lines: list) -> None:
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from ..data.credit import credit_dataset
    from .counterfactual import counterfactuals

    world = credit_dataset(2000 if quick else 4000, seed=0)
    X, y = world.X, world.y
    numeric = [c for c in X.columns if c not in _CATEGORICAL]
    prep = make_column_transformer((OneHotEncoder(handle_unknown="ignore"), _CATEGORICAL),
                                   (StandardScaler(), numeric))
    model = make_pipeline(prep, LogisticRegression(max_iter=500)).fit(X, y)
    p = model.predict_proba(X)[:, 1]
    # a rejected applicant of the protected group B living in a penalised district
    rejected = np.flatnonzero((p < 0.5) & X[world.proxy].isin(["D5", "D6"]).to_numpy() & (world.protected == "B"))
    i = int(rejected[0])
    # retirement is not a change an applicant of working age can make
    working = [e for e in sorted(set(X["employment"])) if e != "retired"] if X["age"].iloc[i] < 63 else None
    cf = counterfactuals(model, X.iloc[[i]], desired=1, background=X, immutable=[world.proxy, "age"],
                         monotone={"late_payments": "decrease"}, method="genetic", n=3, seed=0,
                         ranges=None if working is None else {"employment": working})
    lines.append(f"counterfactuals (logistic-regression pipeline on {len(X)} applicants): applicant {i} of group "
                 f"B in {X[world.proxy].iloc[i]} is rejected (P(repay) {p[i]:.2f}); district and age held fixed, "
                 "late payments may only decrease" + (", no retirement" if working is not None else ""))
    if not cf.found:
        lines.append(f"  none found: {cf.reason}")
        return
    table = cf.table()
    changed = cf.changed()
    for k in range(len(cf)):
        diffs = ", ".join(f"{name} {_fmt(table.iloc[0][name])} -> {_fmt(table.iloc[k + 1][name])}"
                          for j, name in enumerate(cf.feature_names) if changed[k, j])
        lines.append(f"  cf {k + 1}: {diffs} (MAD-L1 distance {cf.metrics['proximity'][k]:.2f}, valid "
                     f"{bool(cf.metrics['validity'][k])}, constraints kept {bool(cf.metrics['constraints_ok'][k])})")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3), layout="constrained")
    cf.plot(0, ax=ax)
    name = _save(fig, out_dir / "examples_counterfactual.png", files,
                 "the rejected applicant's first counterfactual: each changed feature in MAD units "
                 "(district and age held fixed)")
    lines.append(f"  picture: {name}")


def _features(model, images, batch_size=128):
    from ._represent import represent

    return represent(images, model, "pool", batch_size=batch_size)


def _train_head(feats: np.ndarray, labels, steps=_CHECKPOINT_STEPS, total: int | None = None, seed: int = 0):
    """The CNN's last layer retrained from zero on its own features by SGD (batches of 16), for
    ``total`` steps (default: the last checkpoint step plus three epochs); the parameters after
    each of ``steps`` are the checkpoints."""
    import torch
    from torch import nn

    x = torch.tensor(feats, dtype=torch.float32)
    y = torch.as_tensor(labels)
    head = nn.Linear(x.shape[1], int(y.max()) + 1)
    nn.init.zeros_(head.weight), nn.init.zeros_(head.bias)
    opt = torch.optim.SGD(head.parameters(), lr=_LR)
    g = torch.Generator().manual_seed(seed)
    per_epoch = -(-len(x) // 16)
    total = max(steps) + 3 * per_epoch if total is None else total
    checkpoints, step = [], 0
    while step < total:
        for idx in torch.randperm(len(x), generator=g).split(16):
            opt.zero_grad()
            nn.functional.cross_entropy(head(x[idx]), y[idx]).backward()
            opt.step()
            step += 1
            if step in steps:
                checkpoints.append({k: v.detach().clone() for k, v in head.state_dict().items()})
            if step >= total:
                break
    return head.eval(), checkpoints, x, y


def _shapes_part(out_dir: Path, quick: bool, files: dict, lines: list) -> None:
    import torch

    from ..data import load_demo_model, shapes_dataset
    from .influence import self_influence, tracin
    from .nearest import neighbours
    from .mmd_critic import prototypes

    model = load_demo_model()
    n_train = 240 if quick else 800
    train = shapes_dataset(n_train, split="train", seed=11)
    names = list(train.class_names)
    marks = train.has_watermark.numpy()
    feats = _features(model, train.images)
    # 1. prototypes and criticisms per class in the penultimate layer
    pc = prototypes(train.images, 3 if quick else 4, 2, labels=train.labels, model=model, at="pool")
    lines.append(f"prototypes and criticisms (MMD-critic) of {n_train} training images per class, in the CNN's "
                 "penultimate layer 'pool' (64 numbers per image):")
    for c in pc.classes:
        lines.append(f"  {names[c]:8s}: prototypes {', '.join(f'#{i}' for i in pc.prototypes[c])} "
                     f"({int(marks[pc.prototypes[c]].sum())} with the mark); criticisms "
                     f"{', '.join(f'#{i} (w={w:+.2f})' for i, w in zip(pc.criticisms[c], pc.witness[c]))} "
                     f"({int(marks[pc.criticisms[c]].sum())} with the mark)")
    name = _save(pc.plot(train.images, class_names=names), out_dir / "examples_prototypes.png", files,
                 "MMD-critic prototypes (blue) and criticisms (red, with their witness value) of each shape class "
                 "in the demo CNN's penultimate layer")
    lines.append(f"  picture: {name}")
    # 2. a watermarked test image the CNN calls a circle: which training images support that?
    marked = shapes_dataset(64, split="test", watermark="all", seed=8)
    with torch.no_grad():
        pred = model(marked.images).argmax(1).numpy()
    cand = np.flatnonzero((marked.labels.numpy() != 0) & (pred == 0))
    t = int(cand[0]) if len(cand) else int(np.flatnonzero(marked.labels.numpy() != 0)[0])
    test_img = marked.images[t:t + 1]
    f_test = _features(model, test_img)
    head, checkpoints, x, y = _train_head(feats, train.labels)
    k = 8
    infl = tracin(head, checkpoints, (x, y), torch.tensor(f_test, dtype=torch.float32), learning_rates=_LR,
                  per_example="loop")
    pro, opp = infl.proponents(k)[0], infl.opponents(k)[0]
    share = marks.mean()
    lines.append(f"influential training images (TracIn over {len(checkpoints)} checkpoints of the last layer, "
                 f"retrained on the CNN's features) for watermarked test image {t}: a {names[int(marked.labels[t])]} "
                 f"the CNN calls a {names[int(pred[t])]}:")
    lines.append(f"  top {k} proponents: {int(marks[pro].sum())} carry the mark, classes "
                 f"{', '.join(names[int(c)] for c in y[pro])} (the mark is on {100 * share:.0f}% of training images, "
                 f"{100 * marks[train.labels.numpy() == 0].mean():.0f}% of circles)")
    lines.append(f"  top {k} opponents: {int(marks[opp].sum())} carry the mark, classes "
                 f"{', '.join(names[int(c)] for c in y[opp])}")
    nb = neighbours(f_test, feats, k=k)
    lines.append(f"  its {k} nearest training images in 'pool': {int(marks[nb.indices[0]].sum())} carry the mark "
                 f"(distances {nb.distances[0, 0]:.2f}-{nb.distances[0, -1]:.2f})")
    name = _save(infl.plot(train.images, test_img, k=6, train_labels=y.numpy(), class_names=names,
                           highlight=marks), out_dir / "examples_influence.png", files,
                 "the training images that most support (top) and oppose (bottom) the CNN's 'circle' for a "
                 "watermarked test image (TracIn); orange frames: images carrying the mark")
    lines.append(f"  picture: {name}")
    if quick:
        lines.append("(self-influence on mislabelled images runs with `lumos demo examples`)")
        return
    # 3. planted mislabelled images rank first by self-influence
    g = np.random.default_rng(0)
    flipped = g.choice(n_train, 20, replace=False)
    noisy = train.labels.numpy().copy()
    noisy[flipped] = (noisy[flipped] + g.integers(1, len(names), len(flipped))) % len(names)
    # checkpoints at the end of each of 4 epochs: a mislabelled image stays hard to fit throughout
    per_epoch = -(-n_train // 16)
    head2, cps2, x2, y2 = _train_head(feats, noisy, steps=tuple(per_epoch * e for e in (1, 2, 3, 4)),
                                      total=4 * per_epoch)
    si = self_influence(head2, (x2, y2), checkpoints=cps2, learning_rates=_LR, per_example="loop")
    top = np.argsort(-si)[:20]
    lines.append(f"self-influence (TracIn) with 20 of {n_train} training labels flipped: "
                 f"{len(set(top) & set(flipped))} of the 20 highest-ranked are the flipped ones (a random ranking "
                 f"finds {20 * 20 / n_train:.1f} on average)")


def examples_demo(out_dir: Path, quick: bool = False, files: dict | None = None) -> list[str]:
    """Counterfactuals, prototypes and criticisms, influential training images and neighbours.

    Parameters
    ----------
    out_dir : Path
        Where the pictures go.
    quick : bool, default False
        The tour form: fewer training images, no self-influence part.
    files : dict, optional
        Receives ``path -> what it shows`` for every picture written.

    Returns
    -------
    list of str
    """
    import matplotlib

    matplotlib.use("Agg")  # the demo only writes files
    from threadpoolctl import threadpool_limits

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {} if files is None else files
    lines: list[str] = []
    with threadpool_limits(1):
        _counterfactual_part(out_dir, quick, files, lines)
        _shapes_part(out_dir, quick, files, lines)
    return ["  " + line for line in lines]

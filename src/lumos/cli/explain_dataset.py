"""``lumos explain-dataset``: every row of a data set explained with one method, in shards, resumably
(:func:`lumos.batch.explain_dataset`); prints the summary and where the results are."""
from __future__ import annotations

import json

from ._args import parse_params, positive_int

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser("explain-dataset", help="explain every row of a data set (sharded, resumable; Ray optional)")
    p.add_argument("--model", required=True, help="package.module:factory returning the model")
    p.add_argument("--weights", help="state_dict file (loaded with weights_only=True by each worker)")
    p.add_argument("--data", required=True,
                   help=".npy array, .parquet/.csv table, .txt file of lines, or a folder of images")
    p.add_argument("--method", default="integrated_gradients")
    p.add_argument("--target", default=None, help="class index or 'predicted' (the same for every row)")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="method parameter (repeatable)")
    p.add_argument("--background", help="reference rows for Shapley/LIME methods: .npy, .parquet or .csv")
    p.add_argument("--out", default="lumos-out/batch")
    p.add_argument("--engine", choices=("local", "ray"), default="local")
    p.add_argument("--shard-size", type=positive_int, default=None,
                   help="rows per shard (default 256; 16384 for tree_shap)")
    p.add_argument("--workers", type=positive_int, default=None, help="Ray workers (default: every CPU)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start Ray on this machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=positive_int, nargs=2, metavar=("H", "W"), help="resize images of a folder")
    p.add_argument("--metric", action="append", default=None, metavar="NAME",
                   help="a metric scored on every row (repeatable; lumos.metrics.available())")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..core.io import check_file, parse_target

    if ":" not in args.model:
        raise ValueError(f"--model must be 'package.module:factory'; got {args.model!r}")
    if args.weights:
        check_file(args.weights, "--weights")
    if not Path(args.data).exists():
        raise FileNotFoundError(f"--data {args.data!r} does not exist")
    params = parse_params(args.param)
    target = parse_target(args.target)
    if isinstance(target, list):
        raise ValueError("--target: one class index or 'predicted' for every row; got a list")
    if target is not None:
        params["target"] = target
    if args.background:
        params["background"] = _background(check_file(args.background, "--background"))

    from ..batch import explain_dataset

    results = explain_dataset(args.model, args.data, args.method, args.out, engine=args.engine,
                              shard_size=args.shard_size, seed=args.seed, weights=args.weights,
                              workers=args.workers, address=args.address, image_size=args.size,
                              metrics=args.metric, **params)
    summary = results.summary()
    summary = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in summary.items()}
    if isinstance(summary.get("mean_abs"), list) and len(summary["mean_abs"]) > 20:
        summary.pop("mean_abs")  # tensors: a whole image of means; read it with lumos.batch.open
    print(json.dumps(summary, indent=2))
    print(f"wrote {len(results.shards)} shards and {results.out / 'manifest.json'}")
    return 0


def _background(path):
    """``--background``: a .npy array (no pickle) or a Parquet/CSV table (a DataFrame)."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        import numpy as np

        try:
            return np.load(path, allow_pickle=False)
        except ValueError as err:
            raise ValueError(f"--background {str(path)!r} is not a plain .npy array ({err})") from None
    if suffix in (".parquet", ".pq", ".csv"):
        import pandas as pd

        return pd.read_parquet(path) if suffix != ".csv" else pd.read_csv(path)
    raise ValueError(f"--background {str(path)!r}: expected a .npy array or a .parquet/.csv table")

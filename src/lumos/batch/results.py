"""Reading a whole-data-set job back lazily: rows, slices, columns and statistics shard by shard.

:func:`open` reads only the manifest; a row or a slice reads the shards that hold it (the last
one read is kept), a column of a Parquet output reads that column only, and the statistics
(:meth:`BatchResults.mean_abs`, :meth:`BatchResults.mask_share`,
:meth:`BatchResults.metric_distribution`, :meth:`BatchResults.summary`) stream over the shards,
holding one at a time.
"""
from __future__ import annotations

import bisect
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .stats import DEFAULT_QUANTILES, Distribution, distribution
from .store import BatchFileError, read_manifest, read_metric, read_shard, sha256_file

__all__ = ["open", "BatchResults"]


def open(out: str | Path, verify: bool = False) -> "BatchResults":  # noqa: A001 (lumos.batch.open)
    """The results of :func:`lumos.batch.explain_dataset` in folder ``out``.

    Parameters
    ----------
    out : str or Path
    verify : bool, default False
        Check every shard file against its SHA-256 first (reads every file once).

    Raises
    ------
    FileNotFoundError
        No manifest in ``out``.
    BatchFileError (a ValueError)
        A malformed manifest, or with ``verify`` a shard whose bytes do not match.
    """
    return BatchResults(out, verify=verify)


class BatchResults:
    """Lazy view of an output folder (see :func:`open`).

    ``len(results)`` rows; ``results[i]`` and ``results[a:b]`` are :class:`~lumos.Explanation`
    objects read from the shards that hold them; :meth:`column` gives one feature's attribution
    over every row.
    """

    def __init__(self, out: str | Path, verify: bool = False):
        self.out = Path(out)
        manifest = read_manifest(self.out)
        if manifest is None:
            raise FileNotFoundError(f"out {str(out)!r} holds no manifest.json (no explain_dataset results)")
        self.manifest = manifest
        self.shards = sorted(manifest["shards"], key=lambda s: s["start"])
        self._starts = [s["start"] for s in self.shards]
        self._cache: tuple[int, dict] | None = None
        self.redone: list[int] = []
        if verify:
            for s in self.shards:
                if sha256_file(self.out / s["file"]) != s["sha256"]:
                    raise BatchFileError(f"{self.out / s['file']}: checksum differs from the manifest")

    # ------------------------------------------------------------------ shape
    @property
    def complete(self) -> bool:
        return self.manifest.get("status") == "complete"

    @property
    def method(self) -> str:
        return self.manifest["method"]

    def __len__(self) -> int:
        return self.shards[-1]["stop"] if self.shards else 0

    def __repr__(self) -> str:
        return (f"BatchResults({str(self.out)!r}, method={self.method!r}, rows={len(self)}, "
                f"shards={len(self.shards)}, status={self.manifest.get('status')!r})")

    @property
    def feature_names(self) -> list[str] | None:
        if not self.shards or not self.shards[0]["file"].endswith(".parquet"):
            return None
        return self._read(0).get("features")

    # ------------------------------------------------------------------ reading
    def _read(self, k: int) -> dict:
        if self._cache is None or self._cache[0] != k:
            self._cache = (k, read_shard(self.out / self.shards[k]["file"]))
        return self._cache[1]

    def iter_shards(self) -> Iterator[dict]:
        """Each shard's arrays in row order (``row``, ``values``, ``output`` ...), one at a time."""
        for k in range(len(self.shards)):
            yield self._read(k)

    def _rows(self, start: int, stop: int) -> list[tuple[dict, slice]]:
        if not self.complete and any(a["stop"] != b["start"] for a, b in zip(self.shards, self.shards[1:])):
            raise BatchFileError(f"{self.out}: the run is unfinished and rows are missing; resume it first")
        parts = []
        k = max(0, bisect.bisect_right(self._starts, start) - 1)
        while k < len(self.shards) and self.shards[k]["start"] < stop:
            s = self.shards[k]
            a, b = max(start, s["start"]) - s["start"], min(stop, s["stop"]) - s["start"]
            if b > a:
                parts.append((self._read(k), slice(a, b)))
            k += 1
        return parts

    def __getitem__(self, index: int | slice):
        """Rows as an :class:`~lumos.Explanation` (``results[7]``, ``results[100:200]``)."""
        n = len(self)
        if isinstance(index, (int, np.integer)):
            i = int(index) + (n if index < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"row {index} out of range for {n} rows")
            start, stop = i, i + 1
        elif isinstance(index, slice):
            start, stop, step = index.indices(n)
            if step != 1:
                raise IndexError("results slice by contiguous row ranges only (step 1)")
        else:
            raise TypeError(f"index results with an int or a slice; got {type(index).__name__}")
        return self._explanation(self._rows(start, stop))

    def _explanation(self, parts: list[tuple[dict, slice]]):
        from ..core.explanation import Explanation

        def cat(key):
            got = [d[key][sl] for d, sl in parts if key in d]
            return np.concatenate(got) if got and len(got) == len(parts) else None

        meta = {"rows": cat("row")}
        first = parts[0][0] if parts else {}
        if "tokens" in first:
            vals = [v for d, sl in parts for v in d["values"][sl]]
            toks = [t for d, sl in parts for t in d["tokens"][sl]]
            width = max(len(v) for v in vals)
            values = np.zeros((len(vals), width), dtype=vals[0].dtype)
            mask = np.zeros((len(vals), width), dtype=np.int64)
            for i, v in enumerate(vals):
                values[i, :len(v)], mask[i, :len(v)] = v, 1
            meta.update(tokens=[t + [""] * (width - len(t)) for t in toks], attention_mask=mask)
        elif isinstance(first.get("values"), dict):
            values = {k: np.concatenate([d["values"][k][sl] for d, sl in parts]) for k in first["values"]}
        else:
            values = cat("values")
        return Explanation(values=values, output=cat("output"), baseline_output=cat("baseline_output"),
                           target=cat("target"), method=self.method,
                           params=dict(self.manifest.get("params", {})), meta=meta,
                           feature_names=first.get("features"),
                           sample_keys=("rows",) + (("attention_mask",) if "tokens" in first else ()))

    def column(self, feature: str | int) -> np.ndarray:
        """One feature's attribution for every row (n,), by name or index; Parquet reads that column only."""
        import pyarrow.parquet as pq

        names = self.feature_names
        if names is None:
            raise ValueError("column: this output holds tensors (.npz shards); index results[a:b].values instead")
        if isinstance(feature, (int, np.integer)):
            if not -len(names) <= int(feature) < len(names):
                raise ValueError(f"feature: index {feature} out of range for {len(names)} features")
            feature = names[int(feature)]
        if feature not in names:
            from ..core.validation import check_choice

            check_choice(feature, "feature", names)
        return np.concatenate([pq.read_table(self.out / s["file"], columns=["value:" + feature])
                               .column(0).to_numpy() for s in self.shards])

    # ------------------------------------------------------------------ statistics
    def mean_abs(self) -> np.ndarray:
        """Mean |attribution| over all rows, per feature (tables: (features,); tensors: one row's shape)."""
        total, n = None, 0
        for d in self.iter_shards():
            v = d["values"]
            if isinstance(v, list):
                raise ValueError("mean_abs: token results have no fixed features; read rows instead")
            if isinstance(v, dict):
                raise ValueError("mean_abs: several inputs; read rows instead")
            s = np.abs(v.astype(np.float64)).sum(axis=0)
            total = s if total is None else total + s
            n += len(v)
        if total is None:
            raise ValueError("mean_abs: no finished shard")
        return total / n

    def mask_share(self, masks: Any) -> np.ndarray:
        """Per image, the share of its |attribution| (summed over channels) inside ``masks``.

        Parameters
        ----------
        masks : array-like of bool, shape (n, H, W)
            One region per row (a memory-mapped ``.npy`` works: it is read shard by shard).

        Returns
        -------
        ndarray, shape (n,)
            ``sum_{mask} |a| / sum |a|`` per row (NaN for an all-zero attribution).
        """
        shares = []
        for d in self.iter_shards():
            v = d["values"]
            if not isinstance(v, np.ndarray) or v.ndim not in (3, 4):
                raise ValueError("mask_share: needs image attributions of shape (n, C, H, W) or (n, H, W)")
            rows = d["row"]
            m = np.asarray(masks[int(rows[0]):int(rows[-1]) + 1], dtype=bool)
            a = np.abs(v.astype(np.float64))
            if a.ndim == 4:
                a = a.sum(axis=1)
            if m.shape != a.shape:
                raise ValueError(f"masks: rows {rows[0]}..{rows[-1]} have shape {m.shape}; attributions "
                                 f"need {a.shape}")
            inside = (a * m).reshape(len(a), -1).sum(axis=1)
            whole = a.reshape(len(a), -1).sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                shares.append(np.where(whole > 0, inside / whole, np.nan))
        return np.concatenate(shares) if shares else np.zeros(0)

    # ------------------------------------------------------------------ metrics
    @property
    def metric_names(self) -> list[str]:
        """The metrics the job scored on every row (``explain_dataset(metrics=...)``)."""
        return sorted(self.manifest.get("metrics") or {})

    def _check_metric(self, name: str) -> str:
        if name not in self.metric_names:
            if not self.metric_names:
                raise ValueError(f"metric: {name!r} was not scored; this job scored no metrics "
                                 "(explain_dataset(..., metrics=[...]))")
            from ..core.validation import check_choice

            check_choice(name, "metric", self.metric_names)
        return name

    def _metric_chunks(self, name: str) -> Iterator[np.ndarray]:
        for s in self.shards:
            yield read_metric(self.out / s["file"], name)

    def metric(self, name: str) -> np.ndarray:
        """One metric's score for every row (n,), read column by column from the shards."""
        self._check_metric(name)
        parts = list(self._metric_chunks(name))
        return np.concatenate(parts) if parts else np.zeros(0)

    def metric_distribution(self, name: str, *, bins: int = 20,
                            quantiles: tuple[float, ...] = DEFAULT_QUANTILES) -> Distribution:
        """The distribution of one metric over every row, streamed shard by shard.

        Reads only that metric's column, one shard at a time, a few times
        (:func:`lumos.batch.stats.distribution`): count, mean and std (the population std, as
        :attr:`MetricResult.std`; NaN scores counted apart and left out), quantiles equal to
        ``np.quantile`` of all rows bit for bit, and a histogram of ``bins`` equal-width bins
        equal to ``np.histogram`` of all rows.

        Parameters
        ----------
        name : str
            A metric in :attr:`metric_names`.
        bins : int, default 20
        quantiles : tuple of float, default (0, 0.05, 0.25, 0.5, 0.75, 0.95, 1)

        Returns
        -------
        Distribution
        """
        from ..metrics.registry import get_metric

        self._check_metric(name)
        return distribution(lambda: self._metric_chunks(name), name=name, bins=bins, quantiles=quantiles,
                            direction=get_metric(name).direction)

    def summary(self, masks: Any = None) -> dict:
        """Statistics computed shard by shard: rows, mean |attribution| per feature, mean output,
        the distribution of every scored metric (``metrics``: :meth:`metric_distribution` as a
        dict), and with ``masks`` the mean share of attribution inside the masks (``mask_share``)
        and the fraction of images with more than half of it inside (``images_mostly_inside``)."""
        out: dict[str, Any] = {"method": self.method, "rows": len(self), "shards": len(self.shards)}
        names = self.feature_names
        try:
            mabs = self.mean_abs()
            out["mean_abs"] = dict(zip(names, mabs.tolist())) if names is not None else mabs
        except ValueError:
            pass
        outputs = [d["output"] for d in self.iter_shards() if "output" in d]
        if outputs:
            out["mean_output"] = float(np.mean(np.concatenate(outputs)))
        if masks is not None:
            share = self.mask_share(masks)
            out["mask_share"] = float(np.nanmean(share))
            # the share of images whose attribution sits mostly on the region
            out["images_mostly_inside"] = float(np.mean(share > 0.5))
        if self.metric_names:
            out["metrics"] = {m: self.metric_distribution(m).to_dict() for m in self.metric_names}
        return out

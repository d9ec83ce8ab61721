"""Benchmark: lumos TCAV beside Captum's TCAV, and network-dissection throughput, on the demo CNN.

Run: ``python benchmarks/bench_concepts_units.py`` (CPU, one thread by default;
LUMOS_BENCH_THREADS=n, LUMOS_BENCH_REPEATS=n to change).

- **TCAV**: one experimental set (the watermark concept, 60 marked shapes-world images, against a
  random set of 60 clean images) at ``features.7``; the TCAV score of each of the four classes
  on 50 clean images of that class. Both sides do everything: activations of the concept and
  random images, the CAV fit, the gradients of the class logit at the layer, the score. The CAV
  is fitted by the *same* code on both sides (Captum gets a ``Classifier`` that calls
  ``lumos.concepts.cavs.cav_from_activations`` on the activations it hands over), so the scores
  must be equal and the times compare the TCAV machinery, with the same fit inside. Captum writes
  activations and CAVs to disk (its design); each round gets a fresh folder so nothing is reused.
  Run twice: with the reference SGD classifier (the fit dominates) and with the mean-difference
  CAV (the machinery dominates).
- **Dissection**: images per second of ``dissect`` over 500 images with all 21 shapes-world
  concepts, at three layers, beside two plain forward passes of the same images (dissection
  needs two: thresholds, then IoUs) as the floor.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
import torch

from _timing import compare, header, set_threads

set_threads(int(os.environ.get("LUMOS_BENCH_THREADS", "1")))
REPEATS = int(os.environ.get("LUMOS_BENCH_REPEATS", "5"))


def tcav_bench(classifier: str) -> None:
    from captum.concept import TCAV, Concept
    from captum.concept._utils.classifier import Classifier

    from lumos.concepts.cavs import cav_from_activations, compute_cav, tcav_score
    from lumos.data import load_demo_model, shapes_dataset

    model = load_demo_model()
    at = "features.7"
    concept = shapes_dataset(60, split="test", watermark="all", seed=21).images
    random = shapes_dataset(60, split="test", watermark="none", seed=22).images
    test = shapes_dataset(400, split="test", watermark="none", seed=23)
    inputs = {k: test.images[test.labels == k][:50] for k in range(4)}

    class SameFit(Classifier):
        """Captum's classifier interface around lumos's CAV fit (identical vector)."""

        def __init__(self):
            self.v = None

        def train_and_eval(self, dataloader, **kw):
            xs, ys = zip(*dataloader)
            x, y = torch.cat(xs), torch.cat(ys)
            cav = cav_from_activations(x[y == 1], x[y == 0], classifier=classifier, seed=0)
            self.v = torch.as_tensor(cav.vector)
            return {"accs": torch.tensor(cav.accuracy)}

        def weights(self):
            return torch.stack([-self.v, self.v])

        def classes(self):
            return [0, 1]

    def run_lumos():
        cav = compute_cav(model, concept, random, at, classifier=classifier, seed=0)
        return [tcav_score(model, inputs[k], k, cav) for k in range(4)]

    def run_captum():
        with tempfile.TemporaryDirectory() as tmp:
            c_rand = Concept(0, "random", torch.utils.data.DataLoader(random, batch_size=64))
            c_conc = Concept(1, "watermark", torch.utils.data.DataLoader(concept, batch_size=64))
            peer = TCAV(model, [at], classifier=SameFit(), save_path=tmp + "/")
            out = []
            for k in range(4):
                res = peer.interpret(inputs[k], [[c_rand, c_conc]], target=k)
                out.append(float(next(iter(res.values()))[at]["sign_count"][1]))
            return out

    ours, theirs = run_lumos(), run_captum()
    print(header(f"TCAV, one concept vs one random set at {at}, 4 classes x 50 images, {classifier} CAV"))
    print(f"scores lumos  {np.round(ours, 4).tolist()}\nscores captum {np.round(theirs, 4).tolist()}  "
          f"max |difference| {np.max(np.abs(np.subtract(ours, theirs))):.1e}")
    t = compare({"lumos": run_lumos, "captum": run_captum}, repeats=REPEATS)
    print(t.table(against="captum"))
    print(f"time ratio lumos/captum = {t.best('lumos') / t.best('captum'):.2f}")


def dissection_bench() -> None:
    from lumos.concepts.dissection import dissect
    from lumos.core.torch_model import activation
    from lumos.data import load_demo_model, shapes_dataset
    from lumos.data.shapes_concepts import concept_masks

    model = load_demo_model()
    data = shapes_dataset(500, split="test", watermark=0.5, seed=3)
    masks = concept_masks(data)
    for at in ("features.4", "features.7", "features.10"):
        def run():
            dissect(model, data.images, masks, at=at)

        def floor():
            with torch.no_grad():
                for _ in range(2):
                    for s in range(0, len(data), 64):
                        activation(model, data.images[s:s + 64], at)

        print(header(f"dissection at {at}: {len(data)} images, {len(masks)} concepts"))
        t = compare({"dissect": run, "2 plain passes to the layer": floor}, repeats=max(2, REPEATS // 2))
        print(t.table(against="2 plain passes to the layer"))
        print(f"throughput: {len(data) / t.best('dissect'):.0f} images/s "
              f"(floor {len(data) / t.best('2 plain passes to the layer'):.0f} images/s)")


if __name__ == "__main__":
    tcav_bench("mean_difference")
    tcav_bench("sgd")
    dissection_bench()

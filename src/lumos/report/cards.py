"""Method cards of the report: what each method computes, and how it is known to fail.

One dict, keyed by the registered method name. A method without a card here gets a generic card
built from its registry row (family and description) by :func:`method_card`, so a method added
later still has one. The failure modes are those the literature reports; each cites its paper.
"""
from __future__ import annotations

__all__ = ["CARDS", "method_card"]

_SATURATION = ("Saturation: where the output is flat in an input (a saturated ReLU or sigmoid), its gradient is "
               "zero although the input matters (Shrikumar et al. 2017; Sundararajan et al. 2017).")
_NOISY = ("Noisy gradients: the gradient changes sharply between nearby inputs, so the map looks speckled and "
          "two almost equal images get visibly different maps (Smilkov et al. 2017).")
_GUIDED = ("Randomisation insensitivity: guided backprop's map barely changes when the model's weights are "
           "randomised layer by layer, so it shows edges of the image more than what the model learned "
           "(Adebayo et al. 2018, 'Sanity checks for saliency maps'; Nie et al. 2018).")
_WINDOW = ("Sensitivity to the window size: the map depends on the window, the stride and the fill value; a "
           "window smaller than the evidence finds nothing that any single patch removes, a larger one blurs "
           "the map (Zeiler & Fergus 2014; Zintgraf et al. 2017). The fill itself can be a signal to the model.")
_ATTENTION = ("Attention is not explanation: attention weights can be changed a lot without changing the "
              "prediction and often disagree with gradient-based importance (Jain & Wallace 2019; see "
              "Wiegreffe & Pinter 2019 for when they can be).")
_RESOLUTION = ("Coarse resolution: the map has the resolution of the chosen layer and is upsampled, so it "
               "cannot separate nearby objects; it is class-discriminative but not pixel-precise "
               "(Selvaraju et al. 2017; Adebayo et al. 2018 found it passes the randomisation test).")
_OFF_DATA = ("Removing features by the background breaks their dependence; values describe the model off the "
             "data distribution, and correlated features can trade credit (Kumar et al. 2020).")
_BASELINE = ("The baseline decides the answer: attributions explain the difference to the baseline, and a black "
             "or zero baseline gives no credit to dark evidence (Sturmfels et al. 2020).")

CARDS: dict[str, dict] = {
    "saliency": {
        "computes": "The gradient of the target output with respect to each input value (Simonyan et al. 2014).",
        "failures": [_NOISY, _SATURATION],
    },
    "gradient_x_input": {
        "computes": "The gradient times the input, a first-order estimate of each value's contribution "
                    "(Shrikumar et al. 2016).",
        "failures": [_SATURATION, _NOISY, "Zero inputs get zero attribution whatever their role."],
    },
    "integrated_gradients": {
        "computes": "The gradient averaged along the straight path from a baseline to the input, times "
                    "(input - baseline); the values sum to f(x) - f(baseline) (Sundararajan et al. 2017).",
        "failures": [_BASELINE, "Too few integration steps leave a completeness gap (reported in meta).",
                     "Still noisy where the gradient is noisy along the path (Smilkov et al. 2017)."],
    },
    "smoothgrad": {
        "computes": "The gradient averaged over noisy copies of the input (Smilkov et al. 2017).",
        "failures": ["The noise level and the number of draws change the map; too little noise keeps the "
                     "speckle, too much blurs the evidence.", _SATURATION],
    },
    "guided_backprop": {
        "computes": "A modified backward pass that lets only positive gradients through ReLUs "
                    "(Springenberg et al. 2015).",
        "failures": [_GUIDED],
    },
    "deconvnet": {
        "computes": "A backward pass that applies ReLU to the gradient itself (Zeiler & Fergus 2014).",
        "failures": [_GUIDED.replace("guided backprop's", "DeconvNet's, like guided backprop's,")],
    },
    "gradcam": {
        "computes": "The channels of a convolutional layer weighted by their mean gradient, summed and "
                    "rectified (Selvaraju et al. 2017).",
        "failures": [_RESOLUTION, "Rectification hides evidence against the class."],
    },
    "guided_gradcam": {
        "computes": "Grad-CAM multiplied by guided backprop: fine detail inside the class region "
                    "(Selvaraju et al. 2017).",
        "failures": [_GUIDED, _RESOLUTION],
    },
    "occlusion": {
        "computes": "The drop of the target output when a sliding window of the input is replaced by a fill "
                    "value (Zeiler & Fergus 2014).",
        "failures": [_WINDOW, "Cost grows with the number of windows: one forward pass each."],
    },
    "rise": {
        "computes": "The output averaged over random masks, weighted by the mask (Petsiuk et al. 2018).",
        "failures": ["Monte-Carlo noise: few masks give a grainy map; results depend on the mask size and seed.",
                     _WINDOW],
    },
    "lime": {
        "computes": "A sparse linear model fitted to the outputs of perturbed copies of the input "
                    "(Ribeiro et al. 2016).",
        "failures": ["Unstable: different seeds or kernel widths give different explanations "
                     "(Alvarez-Melis & Jaakkola 2018).", "Perturbed samples leave the data distribution, "
                     "which an adversarial model can detect (Slack et al. 2020)."],
    },
    "kernel_shap": {
        "computes": "Shapley values estimated by a weighted linear regression over coalitions "
                    "(Lundberg & Lee 2017).",
        "failures": [_OFF_DATA, "An estimate: the budget sets its error."],
    },
    "exact_shapley": {
        "computes": "Shapley values by enumerating every coalition of features, the removed ones set to the "
                    "background rows (interventional; Shapley 1953, Lundberg & Lee 2017); the values add up to "
                    "f(x) - E[f(background)].",
        "failures": [_OFF_DATA, "Cost doubles with every feature: only for a few dozen features or groups."],
    },
    "permutation_shap": {
        "computes": "Shapley values estimated from random feature orderings (antithetic permutations), the "
                    "removed features set to the background rows (Strumbelj & Kononenko 2014).",
        "failures": [_OFF_DATA, "An estimate: the number of permutations (budget) sets its error."],
    },
    "attention": {
        "computes": "The attention weights of a transformer layer, read as importance.",
        "failures": [_ATTENTION],
    },
    "attention_rollout": {
        "computes": "Attention multiplied through the layers with the residual connection "
                    "(Abnar & Zuidema 2020).",
        "failures": [_ATTENTION, "Ignores the values and the MLPs: mixing, not importance."],
    },
    "random": {
        "computes": "Seeded uniform noise: the chance baseline that every method should beat on every metric.",
        "failures": ["A method that ranks below it on a metric does no better than chance there."],
    },
}


def method_card(name: str) -> dict:
    """The card of ``name``: ``{"name", "family", "computes", "failures", "generic"}``.

    A method without an entry in :data:`CARDS` gets its registry description and a note that no
    failure modes are recorded for it.
    """
    card = CARDS.get(name)
    family, description = "baseline", ""
    if name != "random":
        from ..core.registry import get_method

        info = get_method(name)
        family, description = info.family, info.description
    if card is None:
        return {"name": name, "family": family, "computes": description or name, "generic": True,
                "failures": ["No failure modes are recorded for this method in lumos's cards yet; "
                             "see its documentation and the metric table."]}
    return {"name": name, "family": family, "computes": card["computes"], "failures": list(card["failures"]),
            "generic": False}

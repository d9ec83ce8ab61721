"""Image–text and generative models: explanations through embeddings and of generators.

- :func:`similarity_target`: a target (a callable on the explained encoder's output) that is the
  cosine similarity of the embedding with a query embedding (a vector, or a text or an image
  embedded by a given encoder). Every image method of lumos then answers "which pixels make this
  image match that text", and every method on the text tower "which words make this text match
  that image".
- ``crop_similarity`` (registered method, :func:`lumos.multimodal.crops.crop_similarity`):
  random crops of the image, each crop's score painted back where it came from, normalised by
  coverage, signed relative to the whole image.
- Conditional generators ``g(z, c)`` (:mod:`lumos.multimodal.generative`): a region of the
  generated image attributed to the latent and the condition (:class:`GeneratorRegion`,
  :func:`explain_generator`), latent traversals (:func:`latent_traversal`), a classifier's
  saliency on generated images (:class:`ResizedClassifier`, :func:`classifier_saliency`) and how
  often it recognises them (:func:`recognition`).
- Diffusion models (:mod:`lumos.multimodal.diffusion`): the classifier-free guidance direction at
  chosen timesteps attributed to the noisy image's pixels or to the condition
  (:func:`explain_guidance`, :class:`GuidanceRegion`, :func:`guidance_direction`).

The image–text demo world (captions of the shapes world and a small dual encoder trained
contrastively) is :mod:`lumos.data.image_text`; :func:`localisation_table` scores the maps of
several methods there against the named object's mask. The shapes world's conditional VAE is
:mod:`lumos.data.generative`, its small DDPM :mod:`lumos.data.diffusion`.

No public name here is also the name of a submodule (``lumos.multimodal.<name>`` always
imports the module).
"""
from .crops import crop_boxes, crop_similarity
from .diffusion import GuidanceExplanation, GuidanceRegion, blank_canvas, explain_guidance, guidance_direction
from .generative import (GeneratorRegion, LatentTraversal, Recognition, ResizedClassifier, classifier_saliency,
                         explain_generator, latent_traversal, recognition)
from .localisation import localisation_table, query_phrases, similarity_maps
from .targets import similarity_target

__all__ = ["similarity_target", "crop_similarity", "crop_boxes", "localisation_table", "query_phrases",
           "similarity_maps", "GeneratorRegion", "explain_generator", "latent_traversal", "LatentTraversal",
           "ResizedClassifier", "classifier_saliency", "recognition", "Recognition", "GuidanceRegion",
           "explain_guidance", "GuidanceExplanation", "guidance_direction", "blank_canvas"]

"""Image–text models: explanations of dual encoders through the similarity of their embeddings.

- :func:`similarity_target`: a target (a callable on the explained encoder's output) that is the
  cosine similarity of the embedding with a query embedding (a vector, or a text or an image
  embedded by a given encoder). Every image method of lumos then answers "which pixels make this
  image match that text", and every method on the text tower "which words make this text match
  that image".
- ``crop_similarity`` (registered method, :func:`lumos.multimodal.crop_similarity.crop_similarity`):
  random crops of the image, each crop's score painted back where it came from, normalised by
  coverage, signed relative to the whole image.

The image–text demo world (captions of the shapes world and a small dual encoder trained
contrastively) is :mod:`lumos.data.image_text`; :func:`localisation_table` scores the maps of
several methods there against the named object's mask.
"""
from .crop_similarity import crop_boxes, crop_similarity
from .localisation import localisation_table, query_phrases, similarity_maps
from .targets import similarity_target

__all__ = ["similarity_target", "crop_similarity", "crop_boxes", "localisation_table", "query_phrases",
           "similarity_maps"]

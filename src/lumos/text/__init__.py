"""Transformers and language models: token attributions, attention, relevance through attention,
generation attribution and the logit lens (issue 14, in progress).

Importing this package needs torch; Hugging Face ``transformers`` is imported only where a Hugging
Face model or tokenizer is used (the ``text`` extra: ``pip install -e ".[text]"``).
"""

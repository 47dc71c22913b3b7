"""Codecs for what crosses a hop: fewer bytes, with known error.

  codec.py           Codec (what a round contract names per hop) and EncodedTensor
  int8.py            unbiased stochastic int8, one scale per tensor or per block
  topk.py            exact top-k selection and how many values a density keeps
  error_feedback.py  the sender's residual: what top-k has not sent yet, sent later

How each codec's output is laid out on the wire: jurisfed/wire/encodings.py and
docs/wire-format.md.
"""

from jurisfed.compression.codec import Codec, CodecKind, EncodedTensor
from jurisfed.compression.error_feedback import ErrorFeedback

__all__ = ["Codec", "CodecKind", "EncodedTensor", "ErrorFeedback"]

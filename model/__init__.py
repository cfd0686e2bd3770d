"""Everything serving needs to know about the counting network.

Importable without TensorFlow: density-map maths, the inference runtime and its backends,
the bundled default model and heatmap rendering. Network building and training code
(``model.architecture``) imports Keras only when it is imported itself.
"""

from crowdcount.model.types import Frame, Result, Sample

__all__ = ["Frame", "Result", "Sample"]

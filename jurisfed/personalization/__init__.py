"""Personalization at the regional tier: models that fit one jurisdiction better than the global one.

  local_layers.py   FedPer: layers (the head) that never leave the jurisdiction, trained only
                    from its silos; the shared layers come from the global model
  interpolation.py  APFL/Ditto-style mixing of the jurisdiction's own model with the global
                    one, the weight chosen on the regional's validation data from a grid that
                    includes 0, so the served model is never worse than the global one there
Both take and return plain numpy `Weights`; neither imports TensorFlow.
"""

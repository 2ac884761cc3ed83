"""Serving a registry champion over HTTP: ``model_access`` (a trained run as the service and the promotion
see it, through the model seam's ``Predictor`` capabilities), ``service`` (answers and the hot swap, no
HTTP), ``app`` (FastAPI routes). The ``registry`` and ``serve`` sub-commands are in ``recsys_core.cli``.
Importing this package imports nothing heavy."""

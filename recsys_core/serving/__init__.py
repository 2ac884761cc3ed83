"""Serving a registry champion over HTTP: ``model_access`` (the one adapter onto the models), ``service``
(answers and the hot swap, no HTTP), ``app`` (FastAPI routes), ``cli`` (the ``registry`` and ``serve``
sub-commands). Importing this package imports nothing heavy."""

"""The model catalogue: every model by name (the champion registry, a different thing, is
``recsys_core.registry``). A model is ONE module in this package: its network (or solver), its options
class (``recsys_core.options``) and its estimator (how it meets the data), registered with ``@register``::

    @register("ease", options=EASEOptions, help="EASE (Steck 2019): closed-form item-item model")
    class EASE(Estimator): ...

Every module here whose name does not start with ``_`` is imported the first time the catalogue is read,
so a new file is a new model: the ``train`` command line, the flow's ``models``/``model_options`` and
their help texts list it with no other edit. One estimator class may register several names with
fixed constructor arguments (``orientation="item"``, ``kind="gmf"``).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Mapping

from recsys_core.errors import RecsysError
from recsys_core.options import ModelOptions
from recsys_core.settings import RunSettings

_CATALOGUE: dict[str, "Registration"] = {}
_discovered = False


@dataclass(frozen=True)
class Registration:
    name: str
    estimator: type              # an Estimator subclass (recsys_core.estimators)
    options: type[ModelOptions]
    help: str
    fixed: dict[str, Any] = field(default_factory=dict)  # constructor arguments fixed by this name

    def resolve(self, given: Mapping[str, Any] | None = None) -> ModelOptions:
        """This model's options: defaults, its preset, then ``given``; checked (RecsysError)."""
        return self.options.resolve(given, model=self.name)

    def create(self, options: ModelOptions | None = None, device=None, settings: RunSettings | None = None):
        """An unfitted estimator of this model (``options`` defaults to the model's defaults; ``settings``:
        how it computes, of which an estimator reads ``eval_batch_size`` and ``amp``)."""
        return self.estimator(options if options is not None else self.resolve(), name=self.name, device=device,
                              settings=settings, **self.fixed)


def register(name: str, *, options: type[ModelOptions], help: str, **fixed):
    """Class decorator: make ``name`` a model trained by this estimator class with these options."""
    def add(cls):
        known = _CATALOGUE.get(name)
        if known is not None and (known.estimator.__qualname__, known.estimator.__module__) != (
                cls.__qualname__, cls.__module__):
            raise ValueError(f"model name {name!r} is registered twice ({known.estimator.__module__} and "
                             f"{cls.__module__})")
        _CATALOGUE[name] = Registration(name, cls, options, help, dict(fixed))
        return cls
    return add


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")
    _discovered = True


def catalogue() -> dict[str, Registration]:
    """Every registered model by name, sorted by name."""
    _discover()
    return {name: _CATALOGUE[name] for name in sorted(_CATALOGUE)}


def names() -> list[str]:
    return list(catalogue())


def get(name: str) -> Registration:
    models = catalogue()
    if name not in models:
        raise RecsysError(f"unknown model {name!r}; choose one of {', '.join(models)}")
    return models[name]


def resolve_options(name: str, given: Mapping[str, Any] | None = None) -> ModelOptions:
    """The checked options of model ``name`` (see ``Registration.resolve``)."""
    return get(name).resolve(given)


def create(name: str, device=None, **given):
    """An unfitted estimator of model ``name`` with options ``given``: ``create("ease", reg=200).fit(data)``."""
    registration = get(name)
    return registration.create(registration.resolve(given), device=device)

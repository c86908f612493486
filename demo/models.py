"""The loaded checkpoint bundles the page offers, each under the name the API's `model` argument
takes, with the defaults the page shows when it is picked."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Sequence

from guidescope.bundle import Bundle

from .settings import AppDefaults, app_defaults


class Model(NamedTuple):
    """One loaded checkpoint bundle the page offers, under the name the API takes."""
    name: str                       # "pixel" or "latent" (the bundle's space), or the folder's name
    bundle: Bundle
    defaults: AppDefaults           # what the page shows when this model is picked


def models_of(bundles: Sequence[Bundle]) -> list[Model]:
    """A Model per bundle with its folder's defaults; named by space, or by folder when two share one."""
    spaces = [b.space for b in bundles]
    return [Model(b.space if spaces.count(b.space) == 1 else Path(b.folder).name, b, app_defaults(b.folder))
            for b in bundles]


def offered(bundle: Bundle | Sequence[Model], defaults: AppDefaults | None = None) -> list[Model]:
    """The models of one Bundle (named by its space; defaults: by default those of its folder,
    settings.app_defaults) or of Models as given, the first the one the page opens on. Raises
    ValueError when there is none."""
    if isinstance(bundle, Bundle):
        return [Model(bundle.space, bundle, app_defaults(bundle.folder) if defaults is None else defaults)]
    if not bundle:
        raise ValueError("the app needs at least one checkpoint bundle")
    return list(bundle)

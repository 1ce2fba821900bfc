"""``negminer.train(...)`` and ``negminer.mine(...)`` are API functions whose names are also submodules; Python
sets ``negminer.<name>`` to the submodule once it is imported, so the submodule itself answers the call."""

import sys
import types


def make_callable(module_name: str, api_name: str) -> None:
    """Calling module ``module_name`` calls ``negminer.api.<api_name>``."""

    class _Callable(types.ModuleType):
        def __call__(self, *args, **kwargs):
            from negminer import api

            return getattr(api, api_name)(*args, **kwargs)

    sys.modules[module_name].__class__ = _Callable

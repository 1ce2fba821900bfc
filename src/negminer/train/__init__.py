"""The training loop (trainer.py) and what it needs. The package is also callable: ``negminer.train(**options)``
is the Python API's ``negminer.api.train`` (Python sets ``negminer.train`` to this package once it is imported,
so the package itself answers the call)."""

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from negminer.api import train

        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage

"""Names of a package imported when first used (PEP 562), so that importing the package stays cheap."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(package: str, names: Mapping[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """The module-level `__getattr__` of `package`: `names` maps a public name to the (relative) module defining it.

    A name is imported on first use and kept in the package's `namespace`, so later look-ups are plain.

    Example (a package's `__init__.py`):

    ```python
    __getattr__ = lazy_names(__name__, {"quantize": ".api"}, globals())
    ```
    """

    def __getattr__(name: str) -> Any:
        module_name = names.get(name)
        if module_name is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module_name, package), name)
        namespace[name] = value
        return value

    return __getattr__

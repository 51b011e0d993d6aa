"""Loading a reward function from ``path/to/file.py:function`` or ``package.module:function``.

Trust model: a reward plugin is Python code and runs with the user's rights, by design, exactly
like any script they run. Load only plugins you would run yourself.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


class RewardPluginError(ValueError):
    """A reward plugin spec that cannot be loaded; the message says why and how to fix it."""


def _check_signature(fn: Callable[..., Any], spec: str) -> None:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return
    required = [
        p for p in params
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    variadic = any(p.kind == p.VAR_POSITIONAL for p in params)
    if len(required) > 2 or (not positional and not variadic):
        raise RewardPluginError(
            f"reward {spec!r} has signature {inspect.signature(fn)}; it must be "
            "fn(samples) or fn(samples, targets), returning one float per sample"
        )


def _load_module_from_file(path: Path, spec: str) -> Any:
    if not path.is_file():
        raise RewardPluginError(f"reward file {str(path)!r} (from {spec!r}) does not exist; check the path")
    module_name = f"rgdm_reward_plugin_{abs(hash(path.resolve()))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise RewardPluginError(f"cannot import {str(path)!r} as Python; is it a .py file?")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[module_name]
        raise RewardPluginError(f"importing reward file {str(path)!r} failed: "
                                f"{type(error).__name__}: {error}") from error
    return module


def load_reward_function(spec: str) -> Callable[..., Any]:
    """Import the function named by ``FILE.py:FUNC`` or ``package.module:FUNC`` and check it."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise RewardPluginError(
            f"reward {spec!r} is not a plugin spec; use 'path/to/file.py:function' or "
            "'package.module:function'"
        )
    if target.endswith(".py") or "/" in target or "\\" in target:
        module = _load_module_from_file(Path(target), spec)
    else:
        try:
            module = importlib.import_module(target)
        except Exception as error:
            raise RewardPluginError(f"importing module {target!r} for reward {spec!r} failed: "
                                    f"{type(error).__name__}: {error}") from error
    fn = getattr(module, attr, None)
    if fn is None:
        public = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))
        raise RewardPluginError(f"{target!r} has no function {attr!r}; it defines: {', '.join(public) or 'none'}")
    if not callable(fn):
        raise RewardPluginError(f"{spec!r} is a {type(fn).__name__}, not a function")
    _check_signature(fn, spec)
    return fn

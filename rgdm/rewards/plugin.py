"""Finding a reward by name: a registered one, a parametrised one, or a plugin ``FILE.py:FUNC``.

A plugin is a function loaded from ``path/to/file.py:function`` or ``package.module:function``.

Trust model: a reward plugin is Python code and runs with the user's rights, by design, exactly
like any script they run. Load only plugins you would run yourself.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

from rgdm.rewards.base import Reward

#: Modules imported from plugin files are named with this prefix; they exist only on this machine.
FILE_MODULE_PREFIX = "rgdm_reward_plugin_"


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
    module_name = f"{FILE_MODULE_PREFIX}{abs(hash(path.resolve()))}"
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


def file_plugin_modules() -> list[ModuleType]:
    """The modules imported from plugin files so far (a remote executor ships them by value)."""
    return [module for name, module in list(sys.modules.items()) if name.startswith(FILE_MODULE_PREFIX)]


def find_registered(name: str, named: Mapping[str, Reward]) -> Reward | None:
    """The registered spec among ``named`` that ``name`` refers to (``qed``, or the family of
    ``smarts:c1ccccc1``), or ``None`` when ``name`` is a plugin spec; loads nothing."""
    return named.get(name.partition(":")[0])


def resolve_reward(name: str, named: Mapping[str, Reward]) -> Reward:
    """The reward ``name`` stands for among a domain's ``named`` rewards.

    ``NAME`` is a registered reward; ``NAME:ARG`` a parametrised one with its argument (everything
    after the first colon, so ``smarts:[#6]:[#6]`` keeps its colon); anything else with a colon is a
    plugin ``FILE.py:FUNC`` or ``package.module:FUNC``.
    """
    head, colon, argument = name.partition(":")
    spec = find_registered(name, named)
    if spec is None and colon:
        return Reward(load_reward_function(name), f"plugin {name}")
    if spec is None:
        choices = sorted(f"{key}:ARG" if reward.parse else key for key, reward in named.items())
        close = difflib.get_close_matches(name, list(named), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown reward {name!r}{hint}; use one of {', '.join(choices)}, or a plugin "
                         "'path/to/file.py:function'")
    if spec.parse is None:
        if colon:
            raise ValueError(f"reward {head!r} takes no argument; use it as {head!r}")
        return spec
    if not argument:
        raise ValueError(f"reward {head!r} needs an argument: {head}:ARG ({spec.description})")
    return replace(spec, fn=spec.parse(argument), parse=None, description=f"{spec.description}: {argument}")

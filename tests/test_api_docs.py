"""Every public name is documented, and the API reference shows every one.

Public names are those in the ``__all__`` of the public modules. Each class and
function has a docstring; each public method and property of a class has one
(its own, or the one of the protocol it implements); each constructor argument is
named in the class's or its ``__init__``'s docstring, so that ``help()`` and the
API reference explain every argument; and ``docs/api.md`` renders each name.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

PUBLIC_MODULES = [
    "actorsess",
    "actorsess.aiogram",
    "actorsess.storage",
    "actorsess.exceptions",
    "actorsess.prometheus",
    "actorsess.testing",
    "actorsess.testing.storage_contract",
]
API_PAGE = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text()


def _public(module: ModuleType) -> list[tuple[str, Any]]:
    return [(name, getattr(module, name)) for name in module.__all__ if name != "__version__"]


def _undocumented_arguments(cls: type) -> list[str]:
    init = cls.__dict__.get("__init__")
    text = (cls.__doc__ or "") + ((init.__doc__ or "") if init is not None else "")
    try:
        parameters = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return []
    missing = []
    for name, parameter in parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        named = re.search(rf"(`{name}`|^\s*{name}( \([^)]*\))?:)", text, re.MULTILINE)
        if named is None:
            missing.append(name)
    return missing


def _members(cls: type) -> list[str]:
    """The public methods and properties ``cls`` defines itself."""
    return [
        name
        for name, member in vars(cls).items()
        if not name.startswith("_")
        and (
            isinstance(member, (property, staticmethod, classmethod)) or inspect.isfunction(member)
        )
    ]


def _problems(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    problems = [] if inspect.getdoc(module) else [f"{module_name}: no module docstring"]
    for name, obj in _public(module):
        where = f"{module_name}.{name}"
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue  # type aliases: documented by the page that renders them
        if not obj.__doc__:
            problems.append(f"{where}: no docstring")
        if not inspect.isclass(obj):
            continue
        for argument in _undocumented_arguments(obj):
            problems.append(f"{where}({argument}): argument not documented")
        for member_name in _members(obj):
            # getdoc finds the docstring of the protocol method a storage implements
            if not inspect.getdoc(getattr(obj, member_name)):
                problems.append(f"{where}.{member_name}: no docstring")
    return problems


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_name_is_documented(module_name: str) -> None:
    assert _problems(module_name) == []


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_the_api_reference_renders_every_public_name(module_name: str) -> None:
    if f"::: {module_name}\n" in API_PAGE:
        return  # the whole module is rendered
    module = importlib.import_module(module_name)
    rendered = set(re.findall(r"^::: ([\w.]+)$", API_PAGE, re.MULTILINE))
    missing = []
    for name, obj in _public(module):
        home = getattr(obj, "__module__", module_name)
        if home in rendered or home == "typing":
            continue  # rendered with its whole module; or a type alias, rendered by name
        if not any(r.endswith(f".{name}") for r in rendered):
            missing.append(name)
    assert missing == []


def test_help_documents_the_manager_constructor() -> None:
    import pydoc

    import actorsess

    text = pydoc.plain(pydoc.render_doc(actorsess.SessionManager))
    for argument in ("storage", "initial", "config", "clock", "logger", "rng", "migrations"):
        assert f"{argument}:" in text or f"``{argument}``" in text, argument

"""A repository gets the caller's scope; nothing but the authentication step can make one.

The polar-style `AccessibleOrganizationID` guarantee, checked: the tenant repositories cannot
be built without a `Scope`, a `Scope` cannot be built directly, and only
taskmanager.accounts.callers (and security/scope.py itself, extending the caller's own scope)
calls `mint_scope`.
"""

from __future__ import annotations

import ast
import inspect
import uuid
from pathlib import Path

import pytest

from taskmanager.repositories.category_repository import CategoryRepository
from taskmanager.repositories.label_repository import LabelRepository
from taskmanager.repositories.task_repository import TaskRepository
from taskmanager.security.roles import Role
from taskmanager.security.scope import Scope

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "taskmanager"
ALLOWED_MINTERS = {"accounts/callers.py", "security/scope.py"}


def test_a_scope_cannot_be_built_directly() -> None:
    with pytest.raises(TypeError, match="authenticated request"):
        Scope(
            user_id=1,
            session_id=uuid.uuid4(),
            workspace_ids=(1,),
            roles={1: Role.OWNER},
            personal_workspace_id=1,
            valid_until=2_000_000_000,
        )


def test_only_authentication_mints_scopes() -> None:
    minters = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            called = node.func if isinstance(node, ast.Call) else None
            name = getattr(called, "id", None) or getattr(called, "attr", None)
            if name == "mint_scope":
                minters.add(str(path.relative_to(PACKAGE)))
    assert minters <= ALLOWED_MINTERS, minters
    assert "accounts/callers.py" in minters


@pytest.mark.parametrize("repository", [TaskRepository, CategoryRepository, LabelRepository])
def test_tenant_repositories_require_a_scope(repository: type) -> None:
    parameter = inspect.signature(repository).parameters["scope"]
    assert parameter.default is inspect.Parameter.empty
    assert parameter.annotation in (Scope, "Scope")

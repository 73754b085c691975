"""API key entries: ``name:role:key`` or a bare key (a classify key named key-N)."""

from __future__ import annotations

import pytest

from app.keys import Role, allows, parse_api_keys


def test_named_keys_with_roles_and_bare_keys() -> None:
    keys = parse_api_keys(
        ["qa:admin:s3cret", "old-one", "lab-3:classify:a:b:c", "viewer:read:v", "x:y:z", "old2"]
    )
    assert [(k.name, k.role, k.secret) for k in keys] == [
        ("qa", Role.admin, b"s3cret"),
        ("key-1", Role.classify, b"old-one"),
        ("lab-3", Role.classify, b"a:b:c"),  # the key itself may contain colons
        ("viewer", Role.read, b"v"),
        ("key-2", Role.classify, b"x:y:z"),  # not a role: the whole entry is a bare key
        ("key-3", Role.classify, b"old2"),
    ]
    assert "s3cret" not in repr(keys)


def test_names_are_unique() -> None:
    with pytest.raises(ValueError, match="twice"):
        parse_api_keys(["a:read:1", "a:admin:2"])


@pytest.mark.parametrize(
    ("role", "needed", "allowed"),
    [
        (Role.classify, Role.classify, True),
        (Role.classify, Role.read, True),
        (Role.classify, Role.admin, False),
        (Role.read, Role.classify, False),
        (Role.read, Role.read, True),
        (Role.read, Role.admin, False),
        (Role.admin, Role.classify, True),
        (Role.admin, Role.admin, True),
    ],
)
def test_roles(role: Role, needed: Role, allowed: bool) -> None:
    assert allows(role, needed) is allowed

"""Source-wide guards for the trust kernel: one vocabulary, one home, one direction of imports.

These read the source tree (AST), so a rule restated elsewhere or a reason
code spelled outside the vocabulary fails here, wherever it is added.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.kernel.reasons import Reason

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ("fleet", "device_agent", "broker_plugins", "firmware_sim")
STDLIB = set(sys.stdlib_module_names)


def _modules(*packages: str) -> Iterator[tuple[Path, ast.Module]]:
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path, ast.parse(path.read_text(), filename=str(path))


def _imports(tree: ast.Module) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def _reason_literals(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """``reason="x"`` keywords and ``reason = "x"`` class attributes with a string literal."""
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "reason":
            value = node.value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                yield value.lineno, value.value
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            named = any(isinstance(t, ast.Name) and t.id == "reason" for t in targets)
            value = node.value
            if named and isinstance(value, ast.Constant) and isinstance(value.value, str):
                yield value.lineno, value.value


def test_every_reason_literal_is_in_the_vocabulary() -> None:
    known = {r.value for r in Reason}
    strays = [
        f"{path.relative_to(ROOT)}:{line}: {text!r}"
        for path, tree in _modules(*PACKAGES)
        for line, text in _reason_literals(tree)
        if text not in known
    ]
    assert not strays, "reason codes outside fleet.kernel.reasons.Reason:\n" + "\n".join(strays)


def test_the_kernel_imports_only_stdlib_cryptography_and_itself() -> None:
    allowed_third_party = {"cryptography"}
    bad = [
        f"{path.relative_to(ROOT)}: {name}"
        for path, tree in _modules("fleet/kernel")
        for name in _imports(tree)
        if name.split(".")[0] not in STDLIB
        and name.split(".")[0] not in allowed_third_party
        and not name.startswith("fleet.kernel")
    ]
    assert not bad, "the trust kernel must stay dependency-light:\n" + "\n".join(bad)


@pytest.mark.parametrize("package", ["device_agent", "broker_plugins"])
def test_agent_and_brokers_take_only_the_kernel_of_the_server_rules(package: str) -> None:
    # The agent ships on devices: of fleet it may import the kernel only. The brokers may
    # also read the store's feed (and records), never the server's PKI or policy.
    allowed = (
        ("fleet.kernel",)
        if package == "device_agent"
        else ("fleet.kernel", "fleet.store", "fleet.records")
    )
    bad = [
        f"{path.relative_to(ROOT)}: {name}"
        for path, tree in _modules(package)
        for name in _imports(tree)
        if (name == "fleet" or name.startswith("fleet.")) and not name.startswith(allowed)
    ]
    assert not bad, f"{package} reaches past the kernel:\n" + "\n".join(bad)


# What only the kernel asks of a certificate: who signed it, and what its CA constraints,
# key usage and EKU allow. The agent or a broker asking it itself is a trust rule written twice
# (as broker_plugins/ca_refresh.py once had its own _signed_by and _pathlen).
KERNEL_ONLY_NAMES = frozenset(
    {"verify_directly_issued_by", "BasicConstraints", "KeyUsage", "ExtendedKeyUsage"}
)


def _kernel_only_uses(tree: ast.Module) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in KERNEL_ONLY_NAMES:
            yield node.lineno, node.attr
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name in KERNEL_ONLY_NAMES:
                    yield node.lineno, alias.name


@pytest.mark.parametrize("package", ["device_agent", "broker_plugins"])
def test_signature_and_constraint_checks_live_in_the_kernel(package: str) -> None:
    strays = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for path, tree in _modules(package)
        for line, name in _kernel_only_uses(tree)
    ]
    assert not strays, (
        f"{package} checks signatures or CA constraints itself; use fleet.kernel "
        "(certs.issued_by, certs.is_ca, certs.path_length, ca_bundle, rollover):\n"
        + "\n".join(strays)
    )

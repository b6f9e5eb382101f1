"""The import rules of /ARCHITECTURE: who may import whom, read from the source.

Each module's imports (top-level and inside functions) are parsed, not executed, so a
deferred import cannot hide a dependency that points the wrong way.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "email_service"

# The use cases: what requests and jobs call. Nothing below them may import them.
USE_CASES = (
    "email_service.services.accounts",
    "email_service.services.tasks",
    "email_service.services.mailjobs",
    "email_service.services.delivery",
    "email_service.services.writeback",
    "email_service.services.compose",
    "email_service.services.mailbox",
    "email_service.services.search",
    "email_service.services.webhooks",
    "email_service.services.oauth2",
    "email_service.services.syncing",
    "email_service.services.sync_schedule",
    "email_service.services.push",
)
# The sync engine: mirrors a server into the mail store for whoever runs it.
SYNC_ENGINE = sorted((PACKAGE / "services" / "sync").glob("*.py"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports (``from a import b`` counts as a and a.b)."""
    tree = ast.parse(path.read_text(), str(path))
    name = _module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package[: len(package) - node.level + 1] if node.level else []
            base = ".".join([*parts, node.module] if node.module else parts)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def _offending(paths: list[Path], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    bad: dict[str, list[str]] = {}
    for path in paths:
        wrong = sorted(name for name in imports_of(path) if _within(name, forbidden))
        if wrong:
            bad[str(path.relative_to(ROOT))] = wrong
    return bad


def test_the_parser_sees_relative_and_deferred_imports() -> None:
    # A test of the checker itself: without it, a checker that finds nothing passes all.
    found = imports_of(PACKAGE / "mail" / "imap.py")
    assert "email_service.mail.imap_bounds" in found  # a relative import
    assert "email_service.runtime" in imports_of(PACKAGE / "cli.py")  # a deferred one
    assert _offending([PACKAGE / "services" / "writeback.py"], USE_CASES)


def test_the_mail_store_imports_nothing_from_the_services() -> None:
    # Neither a use case nor the sync engine nor anything else in services/: the change
    # records it writes with the state (mailstore.changes) and the shapes they carry
    # (email_service.present) sit at or below its layer.
    paths = sorted((PACKAGE / "mailstore").glob("*.py"))
    assert {path.stem for path in paths} >= {"messages", "folders", "changes"}
    assert _offending(paths, ("email_service.services",)) == {}


def test_the_sync_engine_imports_no_use_case() -> None:
    # Starting, scheduling and running syncs (load_account, task reports) sit above it.
    assert {path.stem for path in SYNC_ENGINE} >= {"imap_sync", "pop3_sync", "plan", "base"}
    assert _offending(SYNC_ENGINE, USE_CASES) == {}


def test_mail_protocol_code_knows_no_database_nor_services() -> None:
    paths = sorted((PACKAGE / "mail").glob("*.py"))
    forbidden = ("db", "email_service.services", "email_service.mailstore", "sqlalchemy")
    assert _offending(paths, forbidden) == {}


# The code jobs run: it writes through the unit of work its runner opened
# (email_service.scope.JobUnit), never in a transaction of its own.
JOB_CODE = sorted(
    [
        *(PACKAGE / "services" / name for name in (
            "syncing.py", "delivery.py", "writeback.py", "purge.py", "tasks.py", "mailjobs.py",
        )),
        *(PACKAGE / "services" / "sync").glob("*.py"),
        *(PACKAGE / "mailstore").glob("*.py"),
    ]
)  # fmt: skip


def own_transactions(path: Path) -> list[int]:
    """Lines of ``path`` that open a transaction on a database (``<x>.db.transaction(``,
    ``db.transaction(``) or build sessions themselves (``Session(``, ``sessionmaker(``)."""
    lines: list[int] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "transaction":
            owner = func.value
            named = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
            if named in ("db", "database"):
                lines.append(node.lineno)
        elif isinstance(func, ast.Name) and func.id in ("Session", "sessionmaker"):
            lines.append(node.lineno)
    return lines


def test_the_transaction_finder_finds_them() -> None:
    # The request scope and the job unit are where transactions are opened.
    assert own_transactions(PACKAGE / "scope.py")
    assert own_transactions(PACKAGE / "services" / "webhooks" / "dispatch.py")


def test_job_code_opens_no_transaction_of_its_own() -> None:
    assert len(JOB_CODE) > 10
    found = {
        str(path.relative_to(ROOT)): lines for path in JOB_CODE if (lines := own_transactions(path))
    }
    assert found == {}

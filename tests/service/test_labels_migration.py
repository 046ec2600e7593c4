"""Migration 0005 (labels): up, down and up again, keeping tasks; the tables it adds live
under row-level security with grants for the request role only on them."""

from __future__ import annotations

from taskmanager.postgres import migrate
from tests.support.databases import (
    DatabaseAt,
    owner_url,
    public_tables,
    superuser_execute,
    superuser_rows,
)

BEFORE_LABELS = "0004"
LABEL_TABLES = {"labels", "task_labels"}


def test_labels_migrate_down_and_up_keeping_tasks(
    database_at: DatabaseAt,
) -> None:
    url = database_at("migrations_labels", "0005")
    # FORCE ROW LEVEL SECURITY applies to the tables' owner too: lifted while writing rows.
    superuser_execute(
        url,
        "ALTER TABLE tasks NO FORCE ROW LEVEL SECURITY",
        "ALTER TABLE labels NO FORCE ROW LEVEL SECURITY",
        "ALTER TABLE task_labels NO FORCE ROW LEVEL SECURITY",
        "INSERT INTO workspaces (id, name) VALUES (1, 'one')",
        "INSERT INTO tasks (id, title, workspace_id) VALUES (1, 'labelled', 1), (2, 'plain', 1)",
        "INSERT INTO labels (id, name, colour, workspace_id) VALUES (1, 'Home', '#00ff00', 1)",
        "INSERT INTO task_labels (task_id, label_id, workspace_id) VALUES (1, 1, 1)",
        "ALTER TABLE tasks FORCE ROW LEVEL SECURITY",
        "ALTER TABLE labels FORCE ROW LEVEL SECURITY",
        "ALTER TABLE task_labels FORCE ROW LEVEL SECURITY",
    )
    assert public_tables(url) >= LABEL_TABLES
    policies = superuser_rows(
        url,
        "SELECT tablename FROM pg_policies WHERE tablename IN ('labels', 'task_labels') ORDER BY 1",
    )
    assert policies == [("labels",), ("task_labels",)]
    forced = superuser_rows(
        url,
        "SELECT relname FROM pg_class WHERE relname IN ('labels', 'task_labels') "
        "AND relrowsecurity AND relforcerowsecurity ORDER BY 1",
    )
    assert forced == [("labels",), ("task_labels",)]

    migrate.downgrade(owner_url(url), BEFORE_LABELS)

    assert migrate.current(owner_url(url)) == BEFORE_LABELS
    assert public_tables(url) & LABEL_TABLES == set()
    assert (
        superuser_rows(url, "SELECT conname FROM pg_constraint WHERE conname LIKE '%labels%'") == []
    )
    assert (
        superuser_rows(
            url, "SELECT conname FROM pg_constraint WHERE conname = 'uq_tasks_id_workspace_id'"
        )
        == []
    )
    assert superuser_rows(url, "SELECT relname FROM pg_class WHERE relname LIKE 'labels%'") == []
    superuser_execute(url, "ALTER TABLE tasks NO FORCE ROW LEVEL SECURITY")
    assert superuser_rows(url, "SELECT id, title FROM tasks ORDER BY id") == [
        (1, "labelled"),
        (2, "plain"),
    ]
    superuser_execute(url, "ALTER TABLE tasks FORCE ROW LEVEL SECURITY")

    migrate.upgrade(owner_url(url))
    assert public_tables(url) >= LABEL_TABLES
    assert superuser_rows(url, "SELECT count(*) FROM labels") == [(0,)]

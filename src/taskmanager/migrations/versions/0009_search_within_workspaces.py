"""a search's index lookup reads only the caller's workspaces

0006's GIN index holds every tenant's words in one set of entries: a prefix search ('s:*')
collected every task of every tenant holding a word that starts with it, and only then kept
the caller's (taskmanager_matching_tasks, taskmanager_matches_at_least). What a search cost
followed everybody's matches: with a million tasks of others, an account without a task
waited 270 ms for `q=s` (bench/README.md), a timing that tells how many of the others'
tasks hold such a word. ANDing a workspace lexeme into the same query would not help: GIN
collects a prefix's entries in full before it combines them with anything.

So the words are indexed per workspace: `workspace_words` holds each word w of a task in
workspace 17 as the lexeme '17/w' (a stored generated column, built by the IMMUTABLE
taskmanager_workspace_words from the same document as search_vector), and the search asks for
('17/w:* | 42/w:*') for each word of q, over the caller's workspaces only
(taskmanager_workspace_query with taskmanager_workspace_ids()). The GIN partial match then
walks the entries of those workspaces and no others: what a search reads follows the caller's
own tasks (5 ms for that account now). Both SECURITY DEFINER functions take q's words (the
lexemes, as the repository parses them) instead of a tsquery, from which no words could be
read back.

search_vector stays, unindexed: ts_rank reads its positions (relevance and its cursor), and
a search that walks an order's index tests each task with it, as before. The cost: the table
is 28% bigger (197 to 252 MB at a million tasks), and reading a caller's many matches by id
reads up to that much more (4-9% slower through HTTP). An expression index would spare the
column, but a bitmap bigger than work_mem is rechecked row by row on its lossy pages, which
would build every such row's words again (6.4 s against 0.35 s for 500,000 matches at
work_mem 256 kB).

to_tsvector keeps words shorter than 2,047 bytes, and a lexeme with its workspace in front
must fit the same limit: a word is indexed by its first 500 characters (2,000 bytes at most,
plus the workspace's digits). A word of q longer than that finds a superset through the
index, and only then are the found tasks tested against the whole words (search_vector @@
query).

The index has fastupdate off: GIN's pending list of new entries (up to 4 MB, until a vacuum
or an insert moves them into the index) is read whole by every search, every tenant's new
tasks included. Bulk loads take 5-12% longer without it.

Adding the column rewrites the table and building the index reads every task, under an
ACCESS EXCLUSIVE lock meanwhile (17-19 s at a million tasks). An app of before this revision
cannot search once it has run (the functions' arguments changed): deploy both together.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# As models.WORKSPACE_WORDS_SQL says it.
WORKSPACE_WORDS_SQL = "taskmanager_workspace_words(workspace_id, (title)::text, description)"
# How many characters of a word are indexed: 500 UTF-8 characters (at most 2,000 bytes), a
# '/' and a workspace id (at most 10 digits) stay within a lexeme's 2,047 bytes.
INDEXED_CHARACTERS = 500

WORKSPACE_WORDS = "taskmanager_workspace_words(integer, text, text)"
WORKSPACE_QUERY = "taskmanager_workspace_query(text[], integer[])"
MATCHING_TASKS = "taskmanager_matching_tasks(text[], tsquery)"
MATCHES_AT_LEAST = "taskmanager_matches_at_least(text[], integer)"
# 0006's, restored by the downgrade.
OLD_MATCHING_TASKS = "taskmanager_matching_tasks(tsquery)"
OLD_MATCHES_AT_LEAST = "taskmanager_matches_at_least(tsquery, integer)"
OLD_SEARCH_INDEX = "ix_tasks_search_vector"
SEARCH_INDEX = "ix_tasks_workspace_words"
# In the functions' bodies: the caller's workspaces (as the policy on tasks reads them), and
# the function's `words` in any of them. Both scalar subqueries, computed once per call (an
# InitPlan): a bitmap bigger than work_mem keeps whole pages (lossy), whose every row is
# then tested again against the query, and the query rebuilt for each row cost 6.2 s instead
# of 0.35 s for the demo's 500,000 matches of 's' at work_mem 256 kB (1,000,000 tasks).
CALLERS_WORKSPACES = "(SELECT {schema}.taskmanager_workspace_ids())"
CALLERS_QUERY = (
    "(SELECT {schema}.taskmanager_workspace_query(words, {schema}.taskmanager_workspace_ids()))"
)


def _in_current_schema(statement: str) -> None:
    """Run `statement` with `{schema}` standing for the schema the migration runs in (as
    0003's helper of the same name does: `alembic upgrade head --sql` needs no server)."""
    template = statement.replace("%", "%%").replace("{schema}", "%1$I")
    op.execute(
        f"DO $do$ BEGIN EXECUTE format($statement${template}$statement$, current_schema()); "
        "END $do$"
    )


def _grant(functions: Sequence[str], to_request_role: bool = True) -> None:
    """EXECUTE for the deployment's caller role only (migration 0008)."""
    for function in functions:
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
        if to_request_role:
            op.execute(
                "DO $do$ BEGIN EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', "
                f"'{function}', taskmanager_caller_role()); END $do$"
            )


def upgrade() -> None:
    # SQL-standard bodies (RETURN ...): parsed once, here, so the names in them are bound
    # now and no caller's search_path can change what they call.
    # The words of the document search_vector holds (0006's SEARCH_DOCUMENT), each as
    # '<workspace>/<first INDEXED_CHARACTERS characters of the word>', without positions
    # (the index needs none).
    op.execute(
        f"""
        CREATE FUNCTION taskmanager_workspace_words(workspace integer, title text, description text)
        RETURNS tsvector LANGUAGE sql IMMUTABLE PARALLEL SAFE
        RETURN coalesce(array_to_tsvector(ARRAY(
            SELECT workspace || '/' || left(word.lexeme, {INDEXED_CHARACTERS})
            FROM unnest(to_tsvector('simple'::regconfig, title || ' ' || coalesce(description, '')))
                AS word
        )), ''::tsvector)
        """
    )
    # Every word of `words` as a prefix, in any of `workspaces`:
    # ('17/w1':* | '42/w1':*) & ('17/w2':* | '42/w2':*). Quoted as the repository quotes q's
    # words (a backslash escapes, a quote is doubled); NULL for no words or no workspaces.
    op.execute(
        rf"""
        CREATE FUNCTION taskmanager_workspace_query(words text[], workspaces integer[])
        RETURNS tsquery LANGUAGE sql IMMUTABLE PARALLEL SAFE
        RETURN (
            SELECT string_agg(each_word.alternatives, ' & ' ORDER BY each_word.n)::tsquery
            FROM (
                SELECT word.n, '(' || string_agg(
                    '''' || replace(replace(
                        workspace.id || '/' || left(word.word, {INDEXED_CHARACTERS}),
                        '\', '\\'), '''', '''''') || ''':*',
                    ' | ' ORDER BY workspace.id
                ) || ')' AS alternatives
                FROM unnest(words) WITH ORDINALITY AS word(word, n)
                CROSS JOIN unnest(workspaces) AS workspace(id)
                GROUP BY word.n
            ) each_word
        )
        """
    )
    # The request role inserts and updates tasks, which computes the column.
    _grant([WORKSPACE_WORDS])
    _grant([WORKSPACE_QUERY], to_request_role=False)  # only the functions below call it
    op.add_column(
        "tasks",
        sa.Column(
            "workspace_words",
            postgresql.TSVECTOR(),
            sa.Computed(WORKSPACE_WORDS_SQL, persisted=True),
            nullable=True,
        ),
    )
    op.create_index(
        SEARCH_INDEX,
        "tasks",
        ["workspace_words"],
        postgresql_using="gin",
        postgresql_with={"fastupdate": "off"},
    )
    op.drop_index(OLD_SEARCH_INDEX, table_name="tasks")
    op.execute(f"DROP FUNCTION {OLD_MATCHES_AT_LEAST}")
    op.execute(f"DROP FUNCTION {OLD_MATCHING_TASKS}")
    # The caller's tasks holding every word of `words` as a prefix, found through the
    # caller's workspaces' entries only. MATERIALIZED: the index finds the matches first
    # (else the planner may AND in ix_tasks_workspace_id_created_at_id, every task of the
    # caller's). `query` (the same words as a tsquery) decides only where a word was longer
    # than the index keeps of it. The workspaces are kept once more, as the policy does.
    _in_current_schema(
        f"""
        CREATE FUNCTION taskmanager_matching_tasks(words text[], query tsquery)
        RETURNS SETOF integer
        LANGUAGE sql STABLE SECURITY DEFINER ROWS 100 SET search_path = pg_catalog, pg_temp
        AS $$ WITH matches AS MATERIALIZED (
                  SELECT id, workspace_id FROM {{schema}}.tasks
                  WHERE workspace_words @@ {CALLERS_QUERY}
                  AND ((SELECT every(length(word) <= {INDEXED_CHARACTERS}) FROM unnest(words) word)
                       OR search_vector @@ query)
              )
              SELECT id FROM matches WHERE workspace_id = ANY ({CALLERS_WORKSPACES}::integer[]) $$
        """
    )
    # Whether the caller has at least `enough` tasks matching `words`, counted through the
    # caller's workspaces' entries and only that far (the repository's rule for walking an
    # order's index, task_queries/walk_or_index.py). A word longer than the index keeps
    # may count a few tasks too many: it only picks how the page is found.
    _in_current_schema(
        f"""
        CREATE FUNCTION taskmanager_matches_at_least(words text[], enough integer)
        RETURNS boolean
        LANGUAGE sql STABLE SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
        AS $$ WITH matches AS MATERIALIZED (
                  SELECT workspace_id FROM {{schema}}.tasks
                  WHERE workspace_words @@ {CALLERS_QUERY}
              )
              SELECT count(*) >= enough FROM (
                  SELECT FROM matches WHERE workspace_id = ANY ({CALLERS_WORKSPACES}::integer[])
                  LIMIT enough
              ) found $$
        """
    )
    _grant([MATCHING_TASKS, MATCHES_AT_LEAST])


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {MATCHES_AT_LEAST}")
    op.execute(f"DROP FUNCTION {MATCHING_TASKS}")
    op.create_index(OLD_SEARCH_INDEX, "tasks", ["search_vector"], postgresql_using="gin")
    op.drop_index(SEARCH_INDEX, table_name="tasks")
    op.drop_column("tasks", "workspace_words")
    op.execute(f"DROP FUNCTION {WORKSPACE_QUERY}")
    op.execute(f"DROP FUNCTION {WORKSPACE_WORDS}")
    # 0006's functions, as 0006 made them.
    _in_current_schema(
        """
        CREATE FUNCTION taskmanager_matching_tasks(query tsquery) RETURNS SETOF integer
        LANGUAGE sql STABLE SECURITY DEFINER ROWS 100 SET search_path = pg_catalog, pg_temp
        AS $$ WITH matches AS MATERIALIZED (
                  SELECT id, workspace_id FROM {schema}.tasks WHERE search_vector @@ query
              )
              SELECT id FROM matches
              WHERE workspace_id = ANY ((SELECT {schema}.taskmanager_workspace_ids())::integer[]) $$
        """
    )
    _in_current_schema(
        """
        CREATE FUNCTION taskmanager_matches_at_least(query tsquery, enough integer)
        RETURNS boolean
        LANGUAGE sql STABLE SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
        AS $$ SELECT count(*) >= enough FROM (
                  SELECT FROM {schema}.tasks WHERE search_vector @@ query
                  AND workspace_id = ANY ((SELECT {schema}.taskmanager_workspace_ids())::integer[])
                  LIMIT enough
              ) found $$
        """
    )
    _grant([OLD_MATCHING_TASKS, OLD_MATCHES_AT_LEAST])

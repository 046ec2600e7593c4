"""Full-text search: what `q` asks for, as a tsquery, and the clauses that find tasks by it.

The words of `q` are parsed once per statement by PostgreSQL itself; tasks are matched by
prefix through the GIN index (a SECURITY DEFINER function, migrations 0006 and 0009), or
tested one by one while walking an order's index (see walk_or_index.py).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Integer, Text, bindparam, func, literal_column, select
from sqlalchemy.dialects.postgresql import TSQUERY

from taskmanager.bad_input import BadInputError
from taskmanager.models import SEARCH_CONFIG, Task

_TASKS = Task.__table__

_SEARCH_CONFIG: ColumnElement[Any] = literal_column(f"'{SEARCH_CONFIG}'::regconfig")


def _sql_string(value: str) -> ColumnElement[str]:
    """A constant string written into the SQL, not a bound parameter: the statement reads
    as what it does, and PostgreSQL sees constants."""
    return literal_column("'" + value.replace("'", "''") + "'", Text)


# The words of q as PostgreSQL's parser splits them, the same parse the tasks' search_vector
# got, so a token of q is a token of the document: lower-cased, punctuation dropped, and
# anything tsquery syntax would read as an operator (& | ! <-> :* quotes, backslashes) is
# only ever a separator or a quoted lexeme here, never an operator.
_Q = bindparam("q", type_=Text)
_Q_WORDS = func.unnest(func.to_tsvector(_SEARCH_CONFIG, _Q)).table_valued("lexeme")
# Each word quoted for tsquery syntax (a backslash escapes, a quote is doubled) and marked
# as a prefix ':*'; all of them must match.
_Q_PREFIX = (
    _sql_string("'")
    + func.replace(
        func.replace(_Q_WORDS.c.lexeme, _sql_string("\\"), _sql_string("\\\\")),
        _sql_string("'"),
        _sql_string("''"),
    )
    + _sql_string("':*")
)
# A scalar subquery of nothing but the bound q: PostgreSQL runs it once per statement (an
# InitPlan), and its value is a key the GIN index is searched with. NULL when q has no
# words (then nothing matches: TaskRepository.get_page tells that apart from no matches).
# A cast, not to_tsquery(): the words are lexemes already, and to_tsquery would parse each
# one again, alone, differently ("x.com/a'b" became "x.com/a" followed by "b").
SEARCH_QUERY = (
    select(func.string_agg(_Q_PREFIX, _sql_string(" & ")).cast(TSQUERY))
    .select_from(_Q_WORDS)
    .scalar_subquery()
)
# The same words as an array (NULL when q has none), also computed once per statement: what
# the search functions look up in the caller's workspaces' index entries (migration 0009).
SEARCH_WORDS = select(func.array_agg(_Q_WORDS.c.lexeme)).select_from(_Q_WORDS).scalar_subquery()
# The tasks matching q, found through the GIN index by a SECURITY DEFINER function (migration
# 0006 says why: under row-level security an index serves no `@@`), which looks only at the
# entries of the caller's workspaces (0009: what it reads follows the caller's tasks, not
# every tenant's); then read by id, under the policy, like any other task.
_MATCHING_TASKS = func.taskmanager_matching_tasks(
    SEARCH_WORDS, SEARCH_QUERY, type_=Integer
).column_valued("task_id")
MATCHES_Q = _TASKS.c.id.in_(select(_MATCHING_TASKS))

# How well a task matches q (more of q's words, more often: higher); never NULL for a task
# that matched.
RELEVANCE = func.ts_rank(_TASKS.c.search_vector, SEARCH_QUERY)
Q_HAS_NO_WORDS = func.length(func.to_tsvector(_SEARCH_CONFIG, _Q)) == 0


class SearchWordsMissingError(BadInputError):
    """`q` holds nothing PostgreSQL's parser sees as a word ("!!!", "-"): nothing to search for."""

    def __init__(self) -> None:
        super().__init__("query.q", "has no words to search for (only punctuation or spaces)")

"""Many tasks in one statement, for seeding: one array per column, unnested in one INSERT ...
SELECT, each task given 0 to 3 labels in SQL as it goes in."""

from __future__ import annotations

# The labels of tasks inserted in bulk (the CTE `inserted`), from the labels $2: a task
# gets 0 to 3 of them, distinct, picked by a hash of its id (deterministic, and spread
# unlike the ids themselves). How many: none 50%, one 30%, two 15%, three 5% (0.75 per
# task: each row costs two foreign-key checks and two index entries, which made a seed
# 40-60% slower at about one label per task). The k-th pick is first + k * stride
# (mod n), with stride small enough that the picks never wrap onto each other. No labels
# ($2 empty): no pick.
_BULK_LABELS = """
    INSERT INTO task_labels (task_id, label_id, workspace_id)
    SELECT i.id, ($2::integer[])[1 + (pick.first + k * pick.stride) % pick.n], i.workspace_id
    FROM inserted i
    CROSS JOIN LATERAL (
        SELECT hashint4(i.id)::bigint + 2147483648 AS h, cardinality($2::integer[]) AS n
    ) hashed
    CROSS JOIN LATERAL (
        SELECT hashed.n,
               least(hashed.n, CASE WHEN hashed.h % 20 < 10 THEN 0 WHEN hashed.h % 20 < 16 THEN 1
                                    WHEN hashed.h % 20 < 19 THEN 2 ELSE 3 END) AS count,
               (hashed.h / 20) % greatest(hashed.n, 1) AS first, hashed.h / 640 AS spread
    ) base
    CROSS JOIN LATERAL (
        SELECT base.n, base.count, base.first,
               1 + base.spread % greatest((base.n - 1) / greatest(base.count - 1, 1), 1)
                   AS stride
    ) pick
    CROSS JOIN LATERAL generate_series(0, pick.count - 1) AS k
"""


# Column order of the rows TaskRepository.bulk_insert takes.
BULK_TASK_COLUMNS = (
    "workspace_id",
    "title",
    "description",
    "completed",
    "category_id",
    "created_at",
    "updated_at",
    "due_at",
    "priority",
)
# Their types, as bulk_insert's arrays are cast.
_BULK_TASK_TYPES = (
    "integer",
    "text",
    "text",
    "boolean",
    "integer",
    "timestamptz",
    "timestamptz",
    "timestamptz",
    "task_priority",
)


# The columns and arrays of TaskRepository.bulk_insert's statement: $1 the caller's
# workspaces (a row of another workspace is not inserted), $2 the labels to pick from, then
# one array per column. The count of tasks inserted comes back.
_COLUMNS = ", ".join(BULK_TASK_COLUMNS)
_ARRAYS = ", ".join(
    f"${position}::{kind}[]" for position, kind in enumerate(_BULK_TASK_TYPES, start=3)
)
# A completed row gets its completed_at: the moment it was last changed, when it was done.
_INSERT_TASKS = (
    f"INSERT INTO tasks ({_COLUMNS}, completed_at) "
    f"SELECT {_COLUMNS}, CASE WHEN completed THEN updated_at END FROM unnest({_ARRAYS}) "
    f"AS bulk ({_COLUMNS}) WHERE workspace_id = ANY($1::integer[])"
)
BULK_INSERT = (
    f"WITH inserted AS ({_INSERT_TASKS} RETURNING id, workspace_id), "
    f"labelled AS ({_BULK_LABELS}) SELECT count(*) FROM inserted"
)

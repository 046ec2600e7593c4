"""How TaskRepository's queries are built, one concern a module.

search (what `q` asks for), filters (TaskFilters and their clauses), walk_or_index (how a
page of a search or a label filter is found sooner), sorts (the orders, and keysets that
continue after a row), views (a task as GET shows it, as plain rows), statements (the list
statements, built once per combination), task_labels (a task's labels), bulk (seeding).
"""

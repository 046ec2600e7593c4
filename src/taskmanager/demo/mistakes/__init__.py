"""`taskmanager demo mistakes`: the lecture's Common Mistakes, each run against the database
next to its fix.

Read a mistake's module from the top: its first screen is the lecture's wrong code and the
fix, as the demonstration runs them; the machinery that runs them and reports what happened
comes below.

    m1_sync_driver.py          Mistake 1: a sync driver with the async engine
    m2_lazy_load.py            Mistake 2: a lazy-loaded relationship
    m3_expire_on_commit.py     Mistake 3: expire_on_commit left at its default
    m4_shared_session.py       Mistake 4: one session shared by two requests
    m5_double_commit.py        Mistake 5: committing in the route AND the dependency
    m6_shared_session_http.py  a global session under two concurrent HTTP requests
    m7_commit_after_yield.py   the commit after `yield` in FastAPI's default scope
    lecture.py                 the lecture's models (lazy="select") and get_async_session
    harness.py                 Observation, Demonstration and the helpers they share
    report.py                  the panels, the summary table and the JSON
    command.py                 the command: choose, run, report, exit code
"""

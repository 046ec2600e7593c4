"""`taskmanager demo sync-trap`: the lecture's sync trap (1.1) and its timeline (1.2), measured.

Read app.py first: the three routes, side by side. Then, if you like, how they are measured:

    app.py      the same task list three ways: the trap, the threadpool, async
    wiring.py   the app's plumbing: engines from the environment, /ping, /info
    server.py   runs the app under uvicorn in a process of its own, stopped by PID
    measure.py  the load driver: bursts of concurrent requests, timed on one clock
    report.py   the timeline in the terminal, the tables, report.md and results.json
    plot.py     timeline.png and sweep.png
    command.py  the command: options, pool sizing, the run, the files
"""

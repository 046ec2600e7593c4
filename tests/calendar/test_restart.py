"""A feed's last good copy survives a restart without Redis: the fetcher stores it in the
subscription's row (a transaction entered for 'maintenance', really committed), and a new
app serves it, marked failing, while the feed's server is down."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from tests.support.accounts import PASSWORD, register_and_login
from tests.support.ics_server import Feed, ics, ics_server
from tests.support.live_app import live_client, observer_engine

LOCAL = {
    "outbound_allow_http": True,
    "outbound_allowed_networks": ["127.0.0.1/32"],
    "redis_url": "off",
}


async def test_the_last_copy_survives_a_restart(own_database_url: str) -> None:
    soon = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
    window = {
        "from": (soon - timedelta(days=1)).isoformat(),
        "to": (soon + timedelta(days=1)).isoformat(),
    }
    async with ics_server() as server:
        server.feeds["/kept.ics"] = Feed(ics(("Kept across restarts", soon, soon)))
        async with live_client(own_database_url, **LOCAL) as client:
            headers = await register_and_login(client, "restart.calendar@example.com")
            me = (await client.get("/users/me", headers=headers)).json()
            made = await client.post(
                f"/workspaces/{me['personal_workspace_id']}/calendars",
                json={"url": server.url("/kept.ics"), "name": "Kept"},
                headers=headers,
            )
            assert made.status_code == 201, made.text
            first = await client.get("/agenda", params=window, headers=headers)
            assert [item["title"] for item in first.json()["items"]] == ["Kept across restarts"]
        calendar_id = made.json()["id"]
        async with observer_engine(own_database_url) as observer:
            for _ in range(50):  # the fetcher's own transaction, after the fetch
                async with observer.connect() as connection:
                    stored = (
                        await connection.execute(
                            text(
                                "SELECT jsonb_array_length(events), last_success_at "
                                "FROM calendar_subscriptions WHERE id = :id"
                            ),
                            {"id": calendar_id},
                        )
                    ).one()
                if stored[0] is not None:
                    break
                await asyncio.sleep(0.1)
            assert stored[0] == 1, stored
            assert stored[1] is not None, stored

    # The server is gone; a new app, no Redis, the refresh interval made short.
    async with live_client(own_database_url, **LOCAL, calendar_refresh_seconds=1) as client:
        login = await client.post(
            "/auth/token",
            data={"username": "restart.calendar@example.com", "password": PASSWORD},
        )
        assert login.status_code == 200, login.text
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        await asyncio.sleep(1.1)
        agenda = await client.get("/agenda", params=window, headers=headers)

    assert agenda.status_code == 200, agenda.text
    body = agenda.json()
    assert [item["title"] for item in body["items"]] == ["Kept across restarts"]
    (feed,) = body["calendars"]
    assert feed["status"] == "failing", feed
    assert "could not fetch" in feed["error"]
    assert feed["as_of"] is not None

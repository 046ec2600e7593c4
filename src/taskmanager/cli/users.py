"""`taskmanager users ...`: accounts made from the command line."""

from __future__ import annotations

import asyncio
from typing import Annotated, NoReturn

import typer

from taskmanager.cli.shared import caller_key, console
from taskmanager.config import load_settings
from taskmanager.postgres.logins import database_url

users_app = typer.Typer(help="Manage accounts.", no_args_is_help=True)


@users_app.command("create")
def users_create(
    email: Annotated[str, typer.Argument(help="The account's email (the login name).")],
    display_name: Annotated[
        str | None, typer.Option("--name", help="Display name (default: the email's local part).")
    ] = None,
) -> None:
    """Create an account with its personal workspace. The email is checked first (valid,
    not taken); then the password is prompted for (twice), never echoed, never logged,
    never taken from the command line. The first account made this way also owns the tasks
    and categories from before accounts existed."""
    from pydantic import TypeAdapter, ValidationError

    from taskmanager.accounts.callers import account_id
    from taskmanager.accounts.registration import register_account
    from taskmanager.database import create_engine, create_session_factory
    from taskmanager.schemas import DisplayName, Email, RegisterRequest

    def refuse(exc: ValidationError, field: str | None = None) -> NoReturn:
        for error in exc.errors(include_input=False):
            where = ".".join(str(part) for part in error["loc"]) or field
            console.print(f"[red]{where}: {error['msg']}[/red]", highlight=False)
        raise typer.Exit(2)

    # Before the password is asked for: an email that cannot be an account's.
    try:
        TypeAdapter(Email).validate_python(email)
    except ValidationError as exc:
        refuse(exc, "email")
    if display_name is not None:
        try:
            TypeAdapter(DisplayName).validate_python(display_name)
        except ValidationError as exc:
            refuse(exc, "display_name")
    settings = load_settings()
    key = caller_key(settings)
    with database_url(settings) as url:

        async def taken() -> bool:
            engine = create_engine(settings, url)
            try:
                async with create_session_factory(engine)() as session, session.begin():
                    return await account_id(session, key, email) is not None
            finally:
                await engine.dispose()

        if asyncio.run(taken()):
            _account_exists(email)
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
        try:
            account = TypeAdapter(RegisterRequest).validate_python(
                {"email": email, "password": password, "display_name": display_name}
            )
        except ValidationError as exc:
            refuse(exc)

        async def run() -> int | None:
            from sqlalchemy.exc import IntegrityError

            engine = create_engine(settings, url)
            try:
                async with create_session_factory(engine)() as session, session.begin():
                    user = await register_account(
                        session,
                        key,
                        account.email,
                        account.password,
                        account.display_name,
                        claim_unowned=True,
                    )
                    return user.id
            except IntegrityError:  # made meanwhile, by someone else
                return None
            finally:
                await engine.dispose()

        user_id = asyncio.run(run())
    if user_id is None:
        _account_exists(account.email)
    console.print(f"created account {user_id} for {account.email}", highlight=False)


def _account_exists(email: str) -> NoReturn:
    console.print(f"[red]an account with the email {email} exists already[/red]")
    raise typer.Exit(1)

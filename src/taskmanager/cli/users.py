"""`taskmanager users ...`: accounts made from the command line."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from taskmanager.cli.shared import caller_key, console, in_one_transaction
from taskmanager.config import load_settings
from taskmanager.postgres.logins import database_url

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

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
    never taken from the command line. Its address counts as verified (no mail is sent).
    The first account made this way also owns the tasks and categories from before
    accounts existed."""
    from pydantic import TypeAdapter, ValidationError
    from sqlalchemy.exc import IntegrityError

    from taskmanager.accounts.callers import account_id
    from taskmanager.accounts.registration import register_account
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

        async def taken(session: AsyncSession) -> bool:
            return await account_id(session, key, email) is not None

        if in_one_transaction(settings, url, taken):
            _account_exists(email)
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
        try:
            account = TypeAdapter(RegisterRequest).validate_python(
                {"email": email, "password": password, "display_name": display_name}
            )
        except ValidationError as exc:
            refuse(exc)

        async def register(session: AsyncSession) -> int:
            user = await register_account(
                session,
                key,
                account.email,
                account.password,
                account.display_name,
                claim_unowned=True,
                verified=True,  # the operator vouches for the address: no mail needed
            )
            return user.id

        try:
            user_id = in_one_transaction(settings, url, register)
        except IntegrityError:  # made meanwhile, by someone else
            _account_exists(account.email)
    console.print(f"created account {user_id} for {account.email}", highlight=False)


def _account_exists(email: str) -> NoReturn:
    console.print(f"[red]an account with the email {email} exists already[/red]")
    raise typer.Exit(1)

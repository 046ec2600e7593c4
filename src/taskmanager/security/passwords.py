"""Password hashing: argon2id through pwdlib, with parameters chosen and measured.

OWASP's Password Storage Cheat Sheet lists equivalent argon2id settings; its first one,
19 MiB of memory, 2 passes, 1 lane, is used here: on this project's 2-core bench machine a
verification takes 43 ms of one core, and a whole login 58 ms: 17 logins per second per
core (`python bench/run.py --only login`; pwdlib's default, 64 MiB, t=3, p=4, costs 7 times
as much). Hashes made with other parameters still verify,
and are re-hashed with these on the next successful login (`verify_and_update`).

Hashing is CPU work that releases the GIL (argon2-cffi), so it runs in a worker thread:
the event loop keeps serving other requests meanwhile.
"""

from __future__ import annotations

import asyncio
from functools import lru_cache

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

MEMORY_COST_KIB = 19 * 1024
TIME_COST = 2
PARALLELISM = 1

# NIST SP 800-63B: at least 8 characters, any characters, at least 64 allowed (we allow 128),
# never truncated. Counted in Unicode code points, as the standard asks.
PASSWORD_MIN_LENGTH = 8
PASSWORD_MAX_LENGTH = 128


@lru_cache(maxsize=1)
def password_hash() -> PasswordHash:
    return PasswordHash(
        (Argon2Hasher(time_cost=TIME_COST, memory_cost=MEMORY_COST_KIB, parallelism=PARALLELISM),)
    )


@lru_cache(maxsize=1)
def _decoy_hash() -> str:
    """A hash no password is known for: an unknown email is checked against it, so the
    answer takes as long as for a real account (no account enumeration by timing)."""
    return password_hash().hash("decoy password that is never accepted")


def prepare_decoy_hash() -> None:
    """Make the decoy hash ahead of time (it takes one hashing's time)."""
    _decoy_hash()


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(password_hash().hash, password)


def _verify_decoy(password: str) -> None:
    password_hash().verify(password, _decoy_hash())


async def verify_password(password: str, stored_hash: str | None) -> tuple[bool, str | None]:
    """(matches, a new hash to store or None). `stored_hash=None` (no such account) does the
    same work as a real check and never matches."""
    if stored_hash is None:
        await asyncio.to_thread(_verify_decoy, password)
        return False, None
    return await asyncio.to_thread(password_hash().verify_and_update, password, stored_hash)

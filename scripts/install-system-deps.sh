#!/usr/bin/env bash
# Installs the Debian packages that some tests drive, when they are missing:
#   chromium          - the real-browser check of /docs (tests/api/test_docs_browser.py)
#   chromium-driver   - WebDriver for it: logging in through the Authorize dialog (test_docs_authorize.py)
#   fonts-liberation  - a font for it to draw text with: only a Recommends of chromium,
#                       which --no-install-recommends leaves out
#   pgbouncer         - the API behind a transaction-pooling PgBouncer (tests/reliability/test_pgbouncer.py)
#   wrk               - the HTTP load generator of bench/run.py
#   redis-server      - the cache's Redis (tests/cache, bench/run.py's cache rows; `make run` starts
#                       one on a Unix socket when it is there)
#   postgresql-15     - deployments on PostgreSQL 15 over TCP (tests/service/test_deployments.py),
#                       whose CREATEROLE differs from the embedded server's; no cluster of its
#                       own is made or started (the tests start theirs)
# Best effort: without root or apt-get the tests that need a package skip with a reason.
set -u
packages=()
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || packages+=(chromium)
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || packages+=(pgbouncer)
command -v wrk >/dev/null 2>&1 || packages+=(wrk)
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || packages+=(redis-server)
[ -x /usr/lib/postgresql/15/bin/postgres ] || packages+=(postgresql-15)
command -v chromedriver >/dev/null 2>&1 || [ -x /usr/bin/chromedriver ] || packages+=(chromium-driver)
if command -v dpkg-query >/dev/null 2>&1 \
  && ! dpkg-query -W -f='${Status}' fonts-liberation 2>/dev/null | grep -q 'ok installed'; then
  packages+=(fonts-liberation)
fi

[ ${#packages[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-system-deps: not root or no apt-get; not installing ${packages[*]}" \
    "(the tests needing them skip, naming what is missing)" >&2
  exit 0
fi
echo "install-system-deps: installing ${packages[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Debian's PostgreSQL packages make and start a cluster of their own unless told not to.
if [[ " ${packages[*]} " == *" postgresql-15 "* ]] && [ ! -e /etc/postgresql-common/createcluster.conf ]; then
  mkdir -p /etc/postgresql-common
  echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
fi
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confold "${packages[@]}" >/dev/null; }; then
  echo "install-system-deps: could not install ${packages[*]}; the tests needing them will skip" >&2
fi
exit 0

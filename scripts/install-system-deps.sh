#!/usr/bin/env bash
# Installs the Debian packages that some tests drive, when they are missing:
#   chromium  - the real-browser check of /docs
# Best effort: without root or apt-get the tests that need a package skip with a reason.
set -u
packages=()
command -v chromium >/dev/null 2>&1 || packages+=(chromium)

[ ${#packages[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-system-deps: not root or no apt-get; tests needing ${packages[*]} will skip" >&2
  exit 0
fi
echo "install-system-deps: installing ${packages[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null; }; then
  echo "install-system-deps: could not install ${packages[*]}; the tests needing them will skip" >&2
fi
exit 0

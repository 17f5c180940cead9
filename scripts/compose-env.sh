#!/usr/bin/env bash
# Make compose/.env on first use, with the secrets Compose needs generated in it:
#
#   scripts/compose-env.sh [FILE]        # default FILE: compose/.env
#
# - FILE missing: copied from compose/.env.example (mode 600).
# - REDIS_PASSWORD and CONVEYOR_SIGNING_KEY empty or absent: a random value is written
#   (64 hex characters each, URL-safe). Values already set are never changed, so running this
#   again is harmless and the stack keeps its password and key.
# - DOCKER_GID empty or absent: the group of the Docker socket (DOCKER_SOCKET, default
#   /var/run/docker.sock), when it exists.
# - SERVER_TOKENS_FILE empty or absent: secrets/server-tokens beside FILE, made with one operator
#   token when it does not exist (folder mode 700; the file 644, so that the server's uid 10001
#   reads it through the read-only mount). Add `viewer TOKEN` lines for people who only watch.
#
# Prints the names and paths it set (never the values).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENV_FILE="${1:-$REPO_ROOT/compose/.env}"
EXAMPLE="$REPO_ROOT/compose/.env.example"
SOCKET="${DOCKER_SOCKET:-/var/run/docker.sock}"

umask 077
if [[ ! -e "$ENV_FILE" ]]; then
  cp "$EXAMPLE" "$ENV_FILE"
  echo "created $ENV_FILE from compose/.env.example" >&2
fi
chmod 600 "$ENV_FILE"

random_hex() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }

current() {  # current NAME -> its value in ENV_FILE (last assignment), or nothing
  sed -n "s/^$1=//p" "$ENV_FILE" | tail -n 1
}

set_value() {  # set_value NAME VALUE: replace an empty assignment, or append one
  if grep -q "^$1=" "$ENV_FILE"; then
    local tmp
    tmp="$(mktemp "$ENV_FILE.XXXXXX")"
    awk -v name="$1" -v value="$2" 'index($0, name "=") == 1 { print name "=" value; next } { print }' \
      "$ENV_FILE" >"$tmp"
    chmod 600 "$tmp"
    mv "$tmp" "$ENV_FILE"
  else
    printf '%s=%s\n' "$1" "$2" >>"$ENV_FILE"
  fi
  echo "set $1 in $ENV_FILE" >&2
}

for name in REDIS_PASSWORD CONVEYOR_SIGNING_KEY; do
  [[ -n "$(current "$name")" ]] || set_value "$name" "$(random_hex)"
done
if [[ -z "$(current DOCKER_GID)" && -S "$SOCKET" ]]; then
  set_value DOCKER_GID "$(stat -c %g "$SOCKET")"
fi
if [[ -z "$(current SERVER_TOKENS_FILE)" ]]; then
  secrets="$(cd "$(dirname "$ENV_FILE")" && pwd)/secrets"
  mkdir -p "$secrets"
  chmod 700 "$secrets"
  if [[ ! -e "$secrets/server-tokens" ]]; then
    printf '# ctl server tokens: one "ROLE TOKEN" a line, ROLE viewer or operator (docs/server.md)\noperator %s\n' \
      "$(random_hex)" >"$secrets/server-tokens"
    echo "made $secrets/server-tokens with one operator token" >&2
  fi
  chmod 644 "$secrets/server-tokens"
  set_value SERVER_TOKENS_FILE "$secrets/server-tokens"
fi

#!/usr/bin/env bash
# Says in one line what `make test` needs when PostgreSQL or Redis is not reachable.
set -u
db="${RELAY_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
redis="${RELAY_TEST_REDIS_URL:-redis://127.0.0.1:6379}"

# host:port of a URL such as scheme://user@host:port/db?x
hostport() {
  local rest="${1#*://}"
  rest="${rest##*@}"
  rest="${rest%%/*}"
  rest="${rest%%\?*}"
  local host="${rest%:*}" port="${rest##*:}"
  [ "$host" = "$rest" ] && port="$2"
  echo "$host $port"
}

reachable() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

missing=()
read -r h p < <(hostport "$db" 5432)
reachable "$h" "$p" || missing+=("PostgreSQL at $h:$p (RELAY_TEST_DATABASE_URL)")
read -r h p < <(hostport "$redis" 6379)
reachable "$h" "$p" || missing+=("Redis at $h:$p (RELAY_TEST_REDIS_URL)")

if [ ${#missing[@]} -gt 0 ]; then
  joined=$(printf '%s and ' "${missing[@]}")
  echo "make test needs ${joined% and }: start them (Debian: apt-get install postgresql redis-server; commands in ../shared/MACHINE.md) or point the variables at running servers" >&2
  exit 1
fi

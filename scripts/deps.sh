#!/usr/bin/env bash
# Installs the Debian packages the tests and the demo use as real clients
# (and the shells completion is tested in), and with "bench" those of make
# bench's database clients, when they are missing. Needs root (or sudo) only if something is missing.
set -euo pipefail
need=()
# prometheus and promtool check kpf's metrics the way users will read them;
# redis-benchmark is a client the HTTP log must pass through untouched;
# psql and redis-cli reach their servers by name through kpf hosts; sudo
# runs kpf hosts --write as root for a user, as the README says to.
for pair in curl:curl python3:python3 nc:netcat-openbsd tinyproxy:tinyproxy microsocks:microsocks zsh:zsh prometheus:prometheus promtool:prometheus redis-server:redis-server redis-benchmark:redis-tools redis-cli:redis-tools psql:postgresql-client unshare:util-linux dig:bind9-dnsutils sudo:sudo tmux:tmux; do
  cmd=${pair%%:*} pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
# dnsmasq is the DNS server pod that dig asks through a UDP forward; ip
# (iproute2) builds the sandbox's pod network.
[ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq-base)
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || need+=(iproute2)
# A PostgreSQL server runs as a sandbox pod (Debian's, as the postgres user).
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || need+=(postgresql)
# make bench's real clients (scripts/deps.sh bench): pgbench against
# PostgreSQL (above), mariadb-slap against a MariaDB server pod.
if [ "${1:-}" = bench ]; then
  command -v pgbench >/dev/null 2>&1 || need+=(postgresql-client)
  command -v mariadb-slap >/dev/null 2>&1 || need+=(mariadb-client)
  [ -x /usr/sbin/mariadbd ] || need+=(mariadb-server)
fi
# make soak's plot (scripts/deps.sh soak).
if [ "${1:-}" = soak ]; then
  command -v gnuplot >/dev/null 2>&1 || need+=(gnuplot-nox)
fi
# Shell completion is tested in bash (with bash-completion) and zsh.
[ -f /usr/share/bash-completion/bash_completion ] || need+=(bash-completion)
if ! command -v go >/dev/null 2>&1; then
  echo "deps: Go is not installed (this project needs Go 1.26)" >&2
  exit 1
fi
# The MCP inspector (npm, pinned in e2e/mcp/package-lock.json) is the MCP
# client of kpf mcp's e2e test.
command -v npm >/dev/null 2>&1 || need+=(npm)
mcp_inspector() {
  local dir; dir="$(cd "$(dirname "$0")/.." && pwd)/e2e/mcp"
  [ -x "$dir/node_modules/.bin/mcp-inspector" ] || (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
}
if [ ${#need[@]} -eq 0 ]; then mcp_inspector; exit 0; fi
echo "deps: installing ${need[*]}"
SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $(printf "%s\n" "${need[@]}" | sort -u)
mcp_inspector

#!/usr/bin/env bash
# Debian packages the tests call as real binaries (no mocks): installed only when missing, so
# a second run is a no-op that takes milliseconds.
#   prometheus      -> prometheus + promtool: validate deploy/prometheus/*.yml, and the live
#                      stack test scrapes a gateway with a real Prometheus on loopback.
#   docker-compose  -> `docker-compose config` validates deploy/docker-compose.yml without an
#                      engine (the Docker CLI on CI machines has no compose plugin).
set -euo pipefail

declare -A binary_of=([prometheus]=promtool [docker-compose]=docker-compose)
missing=()
for package in "${!binary_of[@]}"; do
  command -v "${binary_of[$package]}" >/dev/null 2>&1 || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=(); [ "$(id -u)" -ne 0 ] && sudo=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"

#!/usr/bin/env bash
# Install the Debian packages the test suite runs for real, if missing.
# As root: apt-get installs them. Otherwise: print the exact command and fail.
set -euo pipefail

# package -> a program it provides (how we tell whether it is installed)
declare -A PROGRAM=(
  [redis-server]=redis-server
  [mosquitto]=mosquitto
  [mosquitto-clients]=mosquitto_pub
  [nginx]=nginx
  [apache2]=apache2
  [openssl]=openssl
  [curl]=curl
  [gcc]=gcc
  [mosquitto-dev]=/usr/include/mosquitto_broker.h
  [libmosquitto-dev]=/usr/include/mosquitto.h
  [libssl-dev]=/usr/include/openssl/ssl.h
  [strongswan-pki]=pki
  # pki needs the openssl plugin for EC keys; apt installs without recommends
  [libstrongswan-standard-plugins]=/usr/lib/ipsec/plugins/libstrongswan-openssl.so
  [chromium]=chromium
  [softhsm2]=softhsm2-util
  [postgresql]=/usr/lib/postgresql/15/bin/initdb
  [haproxy]=haproxy
  [redis-sentinel]=redis-sentinel
  [iproute2]=ip
)

present() {
  local what=$1
  if [[ $what == /* ]]; then [[ -e $what ]]; else
    PATH="$PATH:/usr/sbin:/sbin" command -v "$what" >/dev/null 2>&1
  fi
}

missing=()
for pkg in "$@"; do
  probe=${PROGRAM[$pkg]:-$pkg}
  present "$probe" || missing+=("$pkg")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  echo "Installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Keep Debian from starting daemons (nginx, apache2, redis, mosquitto) on their
  # standard ports: tests start their own on free ports.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  exit 0
fi

echo "Missing system packages: ${missing[*]}" >&2
echo "Install them with:  sudo apt-get install -y ${missing[*]}" >&2
exit 1

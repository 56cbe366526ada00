#!/usr/bin/env bash
# Install what a one-machine Slurm with accounting needs (Debian/Ubuntu, as root).
# Idempotent: when every package is already installed it does nothing (no apt-get
# update, no network), so CI and users can call it unconditionally.
set -euo pipefail

PACKAGES=(slurm-wlm slurmdbd munge mariadb-server mariadb-client)

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "slurm-local: already installed: ${PACKAGES[*]}"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "slurm-local: run as root (or install sudo)" >&2; exit 1; }
    SUDO="sudo"
fi
echo "slurm-local: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# The packages' postinst scripts try to start services; on machines without
# systemd (containers, CI) that fails harmlessly or is skipped. policy-rc.d keeps
# them from starting daemons we would then have to find and stop.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
    created_policy=1
fi
remove_policy() { if [ "$created_policy" = 1 ]; then $SUDO rm -f "$policy"; fi; }
trap remove_policy EXIT
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "slurm-local: installed"

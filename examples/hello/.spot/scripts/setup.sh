#!/usr/bin/env bash
# Runs on the instance as root after boot; /etc/spot/env holds the deployment's env.
set -euo pipefail
echo "setting up ${SPOT_DEPLOYMENT_ID:-spot}"
mkdir -p /opt/app

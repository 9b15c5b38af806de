#!/usr/bin/env bash
# Install the real services the tests start (make services):
#   Debian: PostgreSQL 15 + PostGIS 3 (for pgstac), nginx (COGs over HTTP, range requests,
#   HTTPS + HTTP/2) and openssl (the throw-away certificate of the HTTPS server)
#   PyPI, into .services/venv: stac-fastapi-pgstac + pypgstac (the STAC API), moto (S3)
# A missing service makes its tests fail, never skip, so a failed install is an error here.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
need=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql-15)
[ -f /usr/share/postgresql/15/extension/postgis.control ] || need+=(postgresql-15-postgis-3)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  echo "services: installing Debian packages ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${need[@]}" >/dev/null
fi
if [ ! -x .services/venv/bin/uvicorn ] || [ services/requirements.txt -nt .services/venv ]; then
  echo "services: installing the STAC API server and the S3 server into .services/venv"
  "$PYTHON" -m venv .services/venv
  .services/venv/bin/python -m pip install --disable-pip-version-check \
    -qq -r services/requirements.txt
  touch .services/venv
fi

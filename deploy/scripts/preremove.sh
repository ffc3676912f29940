#!/bin/sh
# gwlbproxy package: before removal (deb: prerm remove; rpm: %preun with 0
# left). Stops (draining) and disables the unit; an upgrade leaves it alone.
set -e

case "$1" in
  remove | 0) ;;
  *) exit 0 ;;
esac

systemctl disable gwlbproxy.service >/dev/null 2>&1 || true
if [ -d /run/systemd/system ]; then
  systemctl stop gwlbproxy.service || true
fi
exit 0

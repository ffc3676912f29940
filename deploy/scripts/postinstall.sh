#!/bin/sh
# gwlbproxy package: after install or upgrade (deb: postinst configure; rpm:
# %post). Creates the system user the unit runs as and applies the sysctl
# drop-in. Does not enable or start the unit: set /etc/gwlbproxy/flags first
# (docs/deploy.md), then `systemctl enable --now gwlbproxy`. An upgrade does
# not restart a running appliance either (a restart drains for
# --drain-timeout): restart it when convenient.
set -e

case "$1" in
  configure | 1 | 2) ;;
  *) exit 0 ;;
esac

if ! getent group gwlbproxy >/dev/null; then
  groupadd --system gwlbproxy
fi
if ! getent passwd gwlbproxy >/dev/null; then
  useradd --system --gid gwlbproxy --no-create-home --home-dir /var/lib/gwlbproxy \
    --shell /usr/sbin/nologin --comment "gwlbproxy egress appliance" gwlbproxy
fi

# Unprivileged ICMP sockets for the echo relay (a container may refuse).
sysctl -q -p /usr/lib/sysctl.d/60-gwlbproxy.conf >/dev/null 2>&1 ||
  echo "gwlbproxy: could not apply /usr/lib/sysctl.d/60-gwlbproxy.conf now; it applies at boot" >&2

if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
fi
exit 0

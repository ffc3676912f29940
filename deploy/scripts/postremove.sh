#!/bin/sh
# gwlbproxy package: after removal (deb: postrm; rpm: %postun). A deb purge
# also deletes the state (the CA created on first start) and the local access
# log. The gwlbproxy user stays, as Debian policy asks: files may still be
# owned by it.
set -e

case "$1" in
  purge)
    rm -rf /var/lib/gwlbproxy /var/log/gwlbproxy
    ;;
esac

if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
fi
exit 0

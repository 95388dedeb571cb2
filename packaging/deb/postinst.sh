#!/bin/sh
# Tell a running systemd about the units; enabling them is the admin's
# choice (systemctl enable --now vdisk.socket).
set -e
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
fi
if command -v mandb >/dev/null 2>&1; then
	mandb -q >/dev/null 2>&1 || true
fi
exit 0

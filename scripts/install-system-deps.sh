#!/usr/bin/env bash
# System packages the tests use: GStreamer's RTSP server (real H.264 over RTSP), Chromium
# (the page, driven by Playwright), mosquitto (MQTT), promtool (Prometheus' metric-name
# linter; Debian ships it in the 'prometheus' package, whose server the tests never start)
# and PostgreSQL (the cluster's store; the tests start their own server with initdb/pg_ctl,
# so the package's default cluster is not used). Skips what is already there.
set -euo pipefail
need=()
/usr/bin/python3 -c 'import gi; gi.require_version("GstRtspServer", "1.0")' 2>/dev/null || need+=(
    python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good
    gstreamer1.0-plugins-ugly gstreamer1.0-plugins-bad)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "install-system-deps: need root to install: ${need[*]}" >&2
        exit 2
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

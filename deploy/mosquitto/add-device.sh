#!/usr/bin/env bash
# Give a chair's bedside device its own broker user, allowed to publish that chair's
# readings and status only.
#
#   add-device.sh SITE CHAIR [PASSWORD]      (a random password is made and printed
#                                            when none is given)
#
# Environment: MOSQUITTO_DEVICES_DIR (default /etc/mosquitto/vitalgate), holding
# `passwd` and `acl`. Reload Mosquitto afterwards (kill -HUP, or systemctl reload).
# (Not a VITALGATE_* name: the gateway takes every VITALGATE_* variable as a
# configuration key and refuses unknown ones. The old VITALGATE_MOSQUITTO_DIR is
# still read.)
set -euo pipefail
dir=${MOSQUITTO_DEVICES_DIR:-${VITALGATE_MOSQUITTO_DIR:-/etc/mosquitto/vitalgate}}
[ $# -ge 2 ] || { echo "usage: $0 SITE CHAIR [PASSWORD]" >&2; exit 2; }
site=$1 chair=$2
valid='^[A-Za-z0-9_.-]{1,64}$'   # the names docs/protocol.md allows in topics
[[ $site =~ $valid && $chair =~ $valid ]] || { echo "site and chair: 1-64 letters, digits, '_', '-' or '.'" >&2; exit 2; }
password=${3:-$(head -c 18 /dev/urandom | base64 | tr -d '/+=')}
user="device-$site-$chair"
# With '-' allowed in both names, two chairs can make one user name (site a-b,
# chair 1 and site a, chair b-1): adding the second would take the first one's
# password and leave it only the first one's topics. Refuse; run again for the
# same chair only to set a new password.
if [ -f "$dir/acl" ] && grep -qxF "user $user" "$dir/acl" &&
  ! awk -v u="user $user" -v t="topic write clinic/$site/chair/$chair/vitals" \
    '$0 == u { mine = 1; next } /^user / { mine = 0 } mine && $0 == t { found = 1 } END { exit !found }' "$dir/acl"; then
  echo "$user already belongs to another chair (its topics in $dir/acl); rename the site or chair" >&2
  exit 1
fi
if [ -f "$dir/passwd" ]; then
  mosquitto_passwd -b "$dir/passwd" "$user" "$password"
else
  mosquitto_passwd -c -b "$dir/passwd" "$user" "$password"
fi
if ! grep -qxF "user $user" "$dir/acl"; then
  printf '\nuser %s\ntopic write clinic/%s/chair/%s/vitals\ntopic write clinic/%s/chair/%s/status\n' \
    "$user" "$site" "$chair" "$site" "$chair" >>"$dir/acl"
fi
[ $# -ge 3 ] || echo "$user $password"

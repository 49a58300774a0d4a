#!/usr/bin/env bash
# Runs chatetl for yesterday from cron: appends everything it prints to a dated log file, and
# exits with chatetl's own exit code so that cron's mail, a monitoring wrapper or `systemctl
# status` sees a failure as a failure.
#
#   CHATETL_DAY_TZ    zone in which "yesterday" is taken (default: CHATETL_TZ when set, else
#                     Asia/Seoul); set it to the `tz` of your chatetl.toml. chatetl's own zone
#                     still comes from its config (or CHATETL_TZ, when you set that).
#   CHATETL_BIN       chatetl binary                  (default: chatetl on the PATH)
#   CHATETL_CONFIG    chatetl.toml (roots, tz, [kafka] brokers and topic for notifications)
#   CHATETL_LOG_DIR   where the logs go               (default: $HOME/chatetl-logs)
#
# Exit codes are chatetl's: 0 done (or already up to date), 99 no logs for the day (skipped),
# 75 retry later (another run holds the day, or the broker timed out), others fail; see README.
set -uo pipefail
bin=${CHATETL_BIN:-chatetl}
tz=${CHATETL_DAY_TZ:-${CHATETL_TZ:-Asia/Seoul}}
log_dir=${CHATETL_LOG_DIR:-$HOME/chatetl-logs}
# Noon of today, one day ago: right even when a DST change falls at midnight. (Not "12:00 -1
# day": GNU date reads "-1" there as a UTC-01 zone and goes a day forward.)
day=${1:-$(TZ=$tz date -d "$(TZ=$tz date +%F) 12:00 1 day ago" +%F)}
mkdir -p "$log_dir" || exit 73
log="$log_dir/chatetl-$day.log"
(
  echo "== $(date -u +%FT%TZ) chatetl run --date $day (pid $$)"
  "$bin" run --date "$day"
  code=$?
  echo "== $(date -u +%FT%TZ) exit $code"
  exit $code
) >>"$log" 2>&1
code=$?
# One line on stderr for anything but success (cron mails it when MAILTO is set).
if [ "$code" -ne 0 ]; then
  echo "chatetl $day exited $code; see $log" >&2
fi
exit $code

# device_common.sh — the helpers the GPU machine's scripts share (device_e2e.sh, device_tp.sh).
# Sourced after the caller sets LOG (the log file), steps (the step names asked for) and
# SMOKE (1: the CPU rehearsal with tiny models).

# has STEP: the step was asked for.
has() { [[ " $steps " == *" $1 "* ]]; }
# say TEXT: a timestamped line on stdout and in the log.
say() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$LOG"; }
# small FLAGS...: FLAGS in a smoke run (they come last and win), nothing otherwise.
small() { if [ "$SMOKE" = 1 ]; then echo "$@"; fi; }
# run SECONDS CMD...: one bounded command, its output appended to the log.
run() {
  local limit=$1
  shift
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  say "rc=$rc in $((SECONDS - t0)) s: $*"
  [ $rc -eq 124 ] && say "TIMED OUT after $limit s"
  return $rc
}

# Helpers sourced by the launch scripts (not run on its own): one-line errors, printing a command
# the way a shell would read it back, and running it (or only printing it under --dry-run).
#
# The sourcing script sets PROG (its name, for messages) and DRY_RUN (0 or 1).

# die MESSAGE: "PROG: error: MESSAGE" on stderr, exit code 2.
die() {
  echo "${PROG}: error: $*" >&2
  exit 2
}

# quote ARG: ARG as one shell word, single-quoted only when it needs quoting (for --opt=VALUE,
# only the value: --command='cd ~ && ls').
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then
    printf '%s' "$1"
  elif [[ "$1" =~ ^(--[A-Za-z0-9_.-]+=)(.*)$ ]]; then
    printf '%s' "${BASH_REMATCH[1]}"
    quote "${BASH_REMATCH[2]}"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# join ARGS...: the arguments quoted and joined by spaces (a command line to print or ssh).
join() {
  local out="" arg
  for arg in "$@"; do
    out+="${out:+ }$(quote "$arg")"
  done
  printf '%s' "$out"
}

# run CMD ARGS...: prints the command line ("+ ..."); runs it unless DRY_RUN=1.
run() {
  echo "+ $(join "$@")"
  if [[ "${DRY_RUN}" != 1 ]]; then
    "$@"
  fi
}

# need_binary NAME: fails unless NAME is on PATH (never checked under --dry-run).
need_binary() {
  if [[ "${DRY_RUN}" != 1 ]] && ! command -v "$1" >/dev/null 2>&1; then
    die "$1 not found on PATH (use --dry-run to only print the commands)"
  fi
}

# usage_of FILE: the script's header comment (its usage), without the leading "# ".
usage_of() {
  sed -n '2,/^[^#]/{/^#/!q;s/^# \{0,1\}//;p}' "$1"
}

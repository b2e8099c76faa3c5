# shellcheck shell=bash
# Helpers the *-vs-dovecot.sh scripts share (sourced, not run).

# Starling's Argon2id parameters (argon2 crate defaults, what `account passwd` uses).
argon2_m_kib=19456 argon2_t=2 argon2_p=1

# Writes a Dovecot passwd-file line for USER with an Argon2id hash of PASS
# made with Starling's parameters (installs the reference `argon2` CLI).
dovecot_argon2_passwd() { # FILE USER PASS
  command -v argon2 >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq argon2 >/dev/null; }
  local hash
  hash=$(printf %s "$3" | argon2 "$(head -c 12 /dev/urandom | base64)" -id -t $argon2_t -k $argon2_m_kib -p $argon2_p -e)
  # shellcheck disable=SC2016 # the hash's own dollars, not expansions
  case $hash in '$argon2id$v=19$m='$argon2_m_kib',t='$argon2_t',p='$argon2_p'$'*) ;; *) echo "unexpected argon2 output: $hash" >&2; return 1 ;; esac
  printf '%s:{ARGON2ID}%s\n' "$2" "$hash" > "$1"
}

# A free TCP port on loopback.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits until PORT on loopback accepts connections, while process PID runs
# (WHAT names it in errors); 60 s at most.
wait_port() { # PORT PID WHAT
  for _ in $(seq 600); do
    kill -0 "$2" 2>/dev/null || { echo "$3 exited; see its log" >&2; return 1; }
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$3 did not listen on port $1 within 60 s" >&2; return 1
}

# Helpers the *-vs-dovecot.sh scripts share (sourced, not run).

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

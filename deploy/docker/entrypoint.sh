#!/bin/sh
# Entry point of the roomcast image: runs the given command (roomcast-gateway
# by default, or roomcast-presence) as PID 1, after raising the soft limit on
# open files to the hard limit the container runtime allows. Every WebSocket
# connection is one file descriptor, and some runtimes start containers with
# a soft limit of 1024.
# (Debian's /bin/sh, dash, has ulimit -H and -S.)
# shellcheck disable=SC3045
hard=$(ulimit -H -n 2>/dev/null) || hard=""
if [ -n "$hard" ]; then
    # shellcheck disable=SC3045
    ulimit -S -n "$hard" 2>/dev/null || true
fi
exec "$@"

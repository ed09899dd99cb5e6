//! roomcast's load generator and benchmark tools.
//!
//! The binaries live in `src/bin/`; `ws-compare` measures WebSocket libraries
//! side by side (memory per idle connection, echo and fan-out throughput).

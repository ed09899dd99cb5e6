//! The processes of a run: the server measured, spawned by this process or
//! given by `--addr` and `--server-pid`, and the rule every spawned process
//! follows (it leaves when its parent closes its stdin).

use std::{net::SocketAddr, process::Stdio, time::Duration};

use anyhow::{anyhow, bail, Context, Result};
use roomcast_bench::args::{Args, NO_ENV};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, BufReader},
    process::{Child, ChildStdin, Command},
    time::timeout,
};

use super::variant::Impl;

/// A server to measure: spawned by this process, or an existing one given by
/// `--addr` and `--server-pid`.
pub struct Target {
    pub addr: SocketAddr,
    pub pid: u32,
    child: Option<(Child, ChildStdin)>,
    pub label: String,
}

impl Target {
    pub async fn from_args(args: &Args) -> Result<Self> {
        match args.get("addr", NO_ENV) {
            Some(addr) => {
                let addr: SocketAddr = addr.parse()?;
                if !addr.ip().is_loopback() {
                    bail!("--addr must be a loopback address");
                }
                let pid = args.num("server-pid", NO_ENV, 0u32)?;
                if pid == 0 {
                    bail!("--server-pid is required with --addr");
                }
                Ok(Self {
                    addr,
                    pid,
                    child: None,
                    label: args.string("impl", NO_ENV, "external"),
                })
            }
            None => Self::spawn(Impl::from_args(args)?).await,
        }
    }

    pub async fn spawn(imp: Impl) -> Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["server", "--impl", imp.name(), "--addr", "127.0.0.1:0"])
            .args(["--max-secs", "900", "--exit-on-eof"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().context("server stdin")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = timeout(Duration::from_secs(10), lines.next_line())
            .await
            .map_err(|_| anyhow!("server did not start within 10 s"))??
            .context("server exited before listening")?;
        let addr = line
            .strip_prefix("LISTENING ")
            .with_context(|| format!("unexpected server output {line:?}"))?
            .parse()?;
        let pid = child.id().context("server pid")?;
        Ok(Self {
            addr,
            pid,
            child: Some((child, stdin)),
            label: imp.name().to_owned(),
        })
    }

    /// Stops a server this process spawned: closes its stdin, then kills it if it
    /// has not left within 5 s.
    pub async fn stop(mut self) {
        if let Some((mut child, stdin)) = self.child.take() {
            drop(stdin);
            if timeout(Duration::from_secs(5), child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
    }
}

/// Resolves once stdin reaches end of file (the parent closed it or died).
pub async fn stdin_closed() {
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

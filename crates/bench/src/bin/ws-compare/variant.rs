//! The server variants compared: their names, and the yawc options of the
//! yawc ones.

use anyhow::{anyhow, Context, Result};
use roomcast_bench::args::{Args, NO_ENV};
use yawc::{CompressionLevel, DeflatePool, Options};

/// Compression threshold of the tuned yawc variant, in bytes.
const TUNED_COMPRESSION_THRESHOLD: usize = 256;
/// Read and write buffer capacity of the tuned yawc variant, in bytes.
const TUNED_BUFFER: usize = 1024;
/// Read and write buffer size of the `axum-small` variant, in bytes.
pub const AXUM_SMALL_BUFFER: usize = 4096;
/// Idle deflate states kept by the tuned variant's shared pool (per direction).
pub const TUNED_POOL_CAPACITY: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    AxumDefault,
    AxumSmall,
    YawcDefault,
    YawcTuned,
    YawcPlain,
}

impl Impl {
    pub const ALL: [Impl; 4] = [
        Impl::AxumDefault,
        Impl::AxumSmall,
        Impl::YawcDefault,
        Impl::YawcTuned,
    ];

    pub fn parse(name: &str) -> Result<Self> {
        [Impl::YawcPlain]
            .into_iter()
            .chain(Self::ALL)
            .find(|imp| imp.name() == name)
            .ok_or_else(|| anyhow!("unknown --impl {name:?}"))
    }

    /// The variant `--impl` names.
    pub fn from_args(args: &Args) -> Result<Self> {
        let name = args.get("impl", NO_ENV).context("--impl is required")?;
        Impl::parse(&name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Impl::AxumDefault => "axum-default",
            Impl::AxumSmall => "axum-small",
            Impl::YawcDefault => "yawc-default",
            Impl::YawcTuned => "yawc-tuned",
            Impl::YawcPlain => "yawc-plain",
        }
    }
}

/// The yawc options of the two yawc variants. `pool` is shared by every connection.
pub fn yawc_server_options(imp: Impl, pool: DeflatePool) -> Options {
    match imp {
        // permessage-deflate with yawc's defaults: level 6, context takeover both
        // ways, every message compressed, 8 KiB socket buffers.
        Impl::YawcDefault => Options::default().with_compression_level(CompressionLevel::default()),
        // What the gateway should use: state lives in the pool between messages.
        Impl::YawcTuned => Options::default()
            .with_low_latency_compression()
            .server_no_context_takeover()
            .client_no_context_takeover()
            .with_deflate_pool(pool)
            .with_compression_threshold(TUNED_COMPRESSION_THRESHOLD)
            .with_read_buffer_capacity(TUNED_BUFFER)
            .with_write_buffer_capacity(TUNED_BUFFER),
        // Diagnostic: yawc's framing alone.
        Impl::YawcPlain => Options::default()
            .without_compression()
            .with_read_buffer_capacity(TUNED_BUFFER)
            .with_write_buffer_capacity(TUNED_BUFFER),
        Impl::AxumDefault | Impl::AxumSmall => unreachable!("not a yawc variant"),
    }
}

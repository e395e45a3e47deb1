//! Packet captures with `tcpdump` on a host's `eth0`, for asserting what is (not) on the wire.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::process::Process;
use crate::topology::Host;
use crate::wait_until;

/// UDP port the synchronisation datagrams of [`Capture::stop`] are sent to (discard).
const SYNC_PORT: u16 = 9;

static CAPTURES: AtomicU32 = AtomicU32::new(0);

/// A running `tcpdump -i eth0 -w FILE -U` in a host namespace; see [`Capture::start`].
pub struct Capture<'h> {
    host: &'h Host,
    process: Process,
    file: PathBuf,
    sync_marker: String,
}

impl<'h> Capture<'h> {
    /// Starts capturing full packets on `host`'s `eth0` that match the pcap `filter` (e.g.
    /// `tcp port 18080`; empty: everything) into `<topology dir>/capture-<host>-<n>.pcap`,
    /// and waits until tcpdump is listening.
    pub fn start(host: &'h Host, filter: &str) -> Result<Capture<'h>> {
        let n = CAPTURES.fetch_add(1, Ordering::SeqCst);
        let file = host.dir().join(format!("capture-{}-{n}.pcap", host.name()));
        let sync_marker = format!("bearing-e2e-capture-sync-{}-{n}", host.name());
        let sync = format!("udp port {SYNC_PORT}");
        let expr = if filter.trim().is_empty() {
            String::new()
        } else {
            format!("({filter}) or ({sync})")
        };
        let process = host
            .command("tcpdump")
            .args([
                "-i",
                host.iface(),
                "-n",
                "-U",
                "-s",
                "0",
                "-Z",
                "root",
                "-w",
            ])
            .arg(&file)
            .args(expr.split_whitespace())
            .log_name("tcpdump")
            .spawn()?;
        process.wait_for_log("listening on", Duration::from_secs(10))?;
        Ok(Capture {
            host,
            process,
            file,
            sync_marker,
        })
    }

    /// Path of the pcap file being written.
    pub fn file(&self) -> &std::path::Path {
        &self.file
    }

    /// Stops the capture and returns what it recorded. First `peer` (another host on the
    /// bridge) sends UDP datagrams carrying a unique marker to this host until the marker is
    /// in the file, so every packet seen before the call is in the result.
    pub fn stop(self, peer: &Host) -> Result<Pcap> {
        let target = format!("/dev/udp/{}/{SYNC_PORT}", self.host.ip4());
        let script = format!("printf '%s' '{}' > {target}", self.sync_marker);
        let marker = self.sync_marker.as_bytes().to_vec();
        wait_until(Duration::from_secs(10), || {
            let _ = peer.sh(&script);
            std::fs::read(&self.file).is_ok_and(|b| contains(&b, &marker))
        })
        .with_context(|| {
            format!(
                "capture on {} never saw the sync datagram",
                self.host.name()
            )
        })?;
        self.process.stop(Duration::from_secs(2));
        let bytes = std::fs::read(&self.file)
            .with_context(|| format!("reading {}", self.file.display()))?;
        Ok(Pcap { bytes, marker })
    }
}

/// The bytes of a finished capture (pcap format); see [`Capture::stop`].
#[derive(Debug, Clone)]
pub struct Pcap {
    bytes: Vec<u8>,
    marker: Vec<u8>,
}

impl Pcap {
    /// The raw pcap file.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether `needle` occurs anywhere in the captured packets (headers included).
    pub fn contains(&self, needle: impl AsRef<[u8]>) -> bool {
        contains(&self.bytes, needle.as_ref())
    }

    /// Number of packets captured, not counting the synchronisation datagrams.
    pub fn packets(&self) -> usize {
        // 24-byte global header (magic in the writer's byte order), then records of a 16-byte
        // header (incl_len at 8..12) + data.
        let big_endian = self.bytes.starts_with(&[0xa1, 0xb2, 0xc3, 0xd4]);
        let mut pos = 24;
        let mut n = 0;
        while pos + 16 <= self.bytes.len() {
            let raw: [u8; 4] = self.bytes[pos + 8..pos + 12].try_into().unwrap_or([0; 4]);
            let len = if big_endian {
                u32::from_be_bytes(raw)
            } else {
                u32::from_le_bytes(raw)
            } as usize;
            let data = pos + 16..(pos + 16 + len).min(self.bytes.len());
            if !contains(&self.bytes[data], &self.marker) {
                n += 1;
            }
            pos += 16 + len;
        }
        n
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

//! A builtin gateway's response compression: Envoy's compressor HTTP filter with its gzip
//! library (`envoy.filters.http.compressor`, which kuma-cp puts on every gateway listener's
//! HTTP connection manager) → the listener's [`Compression`].
//!
//! The field guard (`fields.rs`) lets through only the fields translated here; their values
//! are checked against what the gateway runtime's gzip compressor does, and anything else is a
//! NACK naming its path.

use super::{listener_path, type_name, typed, Translator};
use crate::decode::LISTENER;
use bearing_proxy_config::{Compression, GzipStrategy};
use envoy_types::pb::envoy::config::listener::v3 as listener_pb;
use envoy_types::pb::envoy::extensions::compression::gzip::compressor::v3 as gzip_pb;
use envoy_types::pb::envoy::extensions::filters::http::compressor::v3 as compressor_pb;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm_pb;
use envoy_types::pb::google::protobuf as pb;
use std::ops::RangeInclusive;

/// The compressor filter's type.
const COMPRESSOR: &str = "envoy.extensions.filters.http.compressor.v3.Compressor";
/// The gzip compressor library's type, the only library the runtime has.
const GZIP: &str = "envoy.extensions.compression.gzip.compressor.v3.Gzip";

impl Translator<'_> {
    /// The response compression of a gateway listener, from its chains' HTTP connection
    /// managers (`hcm` gives a chain's), which must agree: the runtime compresses a listener's
    /// responses one way. `None` when no chain has a compressor filter.
    pub(super) fn gateway_compression(
        &mut self,
        name: &str,
        listener: &listener_pb::Listener,
        hcm: impl Fn(&listener_pb::FilterChain) -> Option<hcm_pb::HttpConnectionManager>,
    ) -> Option<Compression> {
        let path = listener_path(name);
        let mut found: Option<Option<Compression>> = None;
        for (i, chain) in listener.filter_chains.iter().enumerate() {
            let Some(hcm) = hcm(chain) else {
                continue;
            };
            let at = format!("{path}.filter_chains[{i}].filters[0].typed_config(envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager)");
            let compression = self.chain_compression(name, &at, &hcm);
            match &found {
                Some(first) if *first != compression => {
                    let reason = "chains of one gateway listener with different compressor filters (the runtime compresses a listener's responses one way)";
                    self.nack(LISTENER, name, format!("{at}.http_filters"), reason);
                }
                _ => found = Some(compression),
            }
        }
        found.flatten()
    }

    /// The compressor filter of one HTTP connection manager (at `at`), if it has one.
    fn chain_compression(
        &mut self,
        name: &str,
        at: &str,
        hcm: &hcm_pb::HttpConnectionManager,
    ) -> Option<Compression> {
        let mut found = None;
        for (k, filter) in hcm.http_filters.iter().enumerate() {
            let Some(hcm_pb::http_filter::ConfigType::TypedConfig(any)) = &filter.config_type
            else {
                continue;
            };
            if type_name(any) != COMPRESSOR {
                continue;
            }
            let fat = format!("{at}.http_filters[{k}].typed_config({COMPRESSOR})");
            if found.is_some() {
                let reason = "more than one compressor filter (the runtime has one gzip compressor per listener)";
                self.nack(LISTENER, name, fat, reason);
                continue;
            }
            let Some(config) = typed::<compressor_pb::Compressor>(any) else {
                self.nack(LISTENER, name, fat, "not a valid Compressor");
                continue;
            };
            found = self.compressor(name, &fat, &config);
        }
        found
    }

    /// One compressor filter's configuration (at `at`) → the runtime's [`Compression`];
    /// values the runtime cannot apply are NACKed by path.
    fn compressor(
        &mut self,
        name: &str,
        at: &str,
        config: &compressor_pb::Compressor,
    ) -> Option<Compression> {
        let before = self.nacks.len();
        let defaults = Compression::kuma_gateway();
        let library_at = format!("{at}.compressor_library.typed_config");
        let library = config.compressor_library.as_ref();
        let gzip = match library.and_then(|l| l.typed_config.as_ref()) {
            Some(any) if type_name(any) == GZIP => typed::<gzip_pb::Gzip>(any),
            Some(any) => {
                let reason = format!(
                    "compressor library {}: the gateway compresses with gzip only",
                    type_name(any)
                );
                self.nack(LISTENER, name, library_at, reason);
                return None;
            }
            None => None,
        };
        let Some(gzip) = gzip else {
            let reason = "a compressor filter needs its gzip library";
            self.nack(LISTENER, name, library_at, reason);
            return None;
        };
        let gzip_at = format!("{library_at}({GZIP})");
        let level = match gzip.compression_level {
            // DEFAULT_COMPRESSION: zlib's default, level 6.
            0 => defaults.level,
            // BEST_SPEED (1) to COMPRESSION_LEVEL_9 / BEST_COMPRESSION (9).
            n @ 1..=9 => n as u32,
            other => {
                let reason = format!("compression level {other} is not one of Envoy's");
                self.nack(
                    LISTENER,
                    name,
                    format!("{gzip_at}.compression_level"),
                    reason,
                );
                defaults.level
            }
        };
        use gzip_pb::gzip::CompressionStrategy as Pb;
        let strategy = match Pb::try_from(gzip.compression_strategy) {
            Ok(Pb::DefaultStrategy) => GzipStrategy::Default,
            Ok(Pb::Filtered) => GzipStrategy::Filtered,
            Ok(Pb::HuffmanOnly) => GzipStrategy::HuffmanOnly,
            Ok(Pb::Rle) => GzipStrategy::Rle,
            Ok(Pb::Fixed) => GzipStrategy::Fixed,
            Err(_) => {
                let reason = format!(
                    "compression strategy {} is not one of zlib's",
                    gzip.compression_strategy
                );
                self.nack(
                    LISTENER,
                    name,
                    format!("{gzip_at}.compression_strategy"),
                    reason,
                );
                defaults.strategy
            }
        };
        // A wrapped number within zlib's (or Envoy's) range, its default when unset.
        let mut ranged =
            |field: &str, value: Option<u32>, range: RangeInclusive<u32>, default| match value {
                None => default,
                Some(v) if range.contains(&v) => v,
                Some(other) => {
                    let (low, high) = range.into_inner();
                    let reason = format!("{other} outside {low}-{high}");
                    self.nack(LISTENER, name, format!("{gzip_at}.{field}"), reason);
                    default
                }
            };
        let value = |w: Option<pb::UInt32Value>| w.map(|w| w.value);
        let window_bits = ranged(
            "window_bits",
            value(gzip.window_bits),
            9..=15,
            u32::from(defaults.window_bits),
        ) as u8;
        let memory_level = ranged(
            "memory_level",
            value(gzip.memory_level),
            1..=9,
            u32::from(defaults.memory_level),
        ) as u8;
        let chunk_size = ranged(
            "chunk_size",
            value(gzip.chunk_size),
            4096..=65536,
            defaults.chunk_size,
        );
        let response = config.response_direction_config.clone().unwrap_or_default();
        let common = response.common_config.unwrap_or_default();
        #[allow(deprecated)] // Kuma's and Envoy's way of naming the types still.
        let content_types = common
            .content_type
            .iter()
            .map(|t| t.trim().to_ascii_lowercase())
            .collect();
        let uncompressible_statuses = response
            .uncompressible_response_codes
            .iter()
            .filter_map(|&code| match u16::try_from(code) {
                Ok(status @ 100..=599) => Some(status),
                _ => {
                    let at =
                        format!("{at}.response_direction_config.uncompressible_response_codes");
                    self.nack(LISTENER, name, at, format!("status {code} outside 100-599"));
                    None
                }
            })
            .collect();
        if self.nacks.len() != before {
            return None;
        }
        Some(Compression {
            min_content_length: common
                .min_content_length
                .map_or(defaults.min_content_length, |m| u64::from(m.value)),
            content_types,
            disable_on_etag: response.disable_on_etag_header,
            weaken_etag: response.weaken_etag_on_compress,
            remove_accept_encoding: response.remove_accept_encoding_header,
            uncompressible_statuses,
            level,
            window_bits,
            memory_level,
            strategy,
            chunk_size,
        })
    }
}

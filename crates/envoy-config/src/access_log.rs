//! File access logs (kuma-cp's MeshAccessLog and TrafficLog `File` backends): the
//! `access_log` of an HTTP connection manager or a TCP proxy, each an
//! `envoy.extensions.access_loggers.file.v3.FileAccessLog`, into the model's [`AccessLog`],
//! its format parsed once here (`bearing_proxy_config::LogFormat`) so that a format Envoy
//! refuses, or an operator Bearing does not render, is NACKed by its path.
//!
//! A logger's `filter` is kuma-cp's MeshAccessLog route filter: a `metadata_filter` on the
//! dynamic metadata its Lua program sets from the route (`ROUTE_KRI_METADATA`), checked here
//! (null, present and string matches other than by regex or case-insensitively). Other
//! loggers (OpenTelemetry, gRPC) and other filters are NACKed by the field guard
//! (`fields.rs`), which walks every field here first; this module skips other loggers.

use bearing_proxy_config::{
    AccessLog, JsonSource, LogFilter, LogFormat, MetadataValueMatch, ENVOY_DEFAULT_FORMAT,
};
use envoy_types::pb::envoy::config::accesslog::v3 as accesslog_pb;
use envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format;
use envoy_types::pb::envoy::config::listener::v3 as listener_pb;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3 as file_pb;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm_pb;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp_pb;
use envoy_types::pb::google::protobuf::{value::Kind, Struct};
use prost::Message;

use crate::decode::TYPE_URL_PREFIX;
use crate::routes::Problem;

/// The file logger's type.
const FILE_ACCESS_LOG: &str = "envoy.extensions.access_loggers.file.v3.FileAccessLog";
/// The filters that log.
const HCM: &str =
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY: &str = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

/// The file access logs of a listener (at `path`): those of its chains' HTTP connection
/// managers and TCP proxies, which must agree (the model holds one set per listener; kuma-cp
/// renders the same on every chain of a listener). Chains without either log nothing.
pub(crate) fn listener_logs(
    listener: &listener_pb::Listener,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Vec<AccessLog> {
    let mut found: Option<(Vec<AccessLog>, String)> = None;
    for (i, chain) in listener.filter_chains.iter().enumerate() {
        for (j, filter) in chain.filters.iter().enumerate() {
            let Some(listener_pb::filter::ConfigType::TypedConfig(any)) = &filter.config_type
            else {
                continue;
            };
            let type_name = any
                .type_url
                .strip_prefix(TYPE_URL_PREFIX)
                .unwrap_or(&any.type_url);
            let logs = match type_name {
                HCM => hcm_pb::HttpConnectionManager::decode(any.value.as_slice())
                    .map(|h| h.access_log),
                TCP_PROXY => tcp_pb::TcpProxy::decode(any.value.as_slice()).map(|t| t.access_log),
                _ => continue,
            };
            let at = format!(
                "{path}.filter_chains[{i}].filters[{j}].typed_config({type_name}).access_log"
            );
            // One that does not decode is NACKed where its filter is translated.
            let Ok(logs) = logs else { continue };
            let logs = file_logs(&logs, &at, problems);
            match &found {
                Some((first, first_at)) if *first != logs => problems.push((
                    at,
                    format!("other access logs than {first_at}: a listener's chains log alike (the model holds one set per listener)"),
                )),
                Some(_) => {}
                None => found = Some((logs, at)),
            }
        }
    }
    found.map(|(logs, _)| logs).unwrap_or_default()
}

/// The file access logs of `logs` (an `access_log` field at `at`); what does not translate is
/// pushed to `problems` by path.
pub(crate) fn file_logs(
    logs: &[accesslog_pb::AccessLog],
    at: &str,
    problems: &mut Vec<Problem>,
) -> Vec<AccessLog> {
    let mut out = Vec::new();
    for (i, log) in logs.iter().enumerate() {
        let Some(accesslog_pb::access_log::ConfigType::TypedConfig(any)) = &log.config_type else {
            problems.push((
                format!("{at}[{i}]"),
                "an access log without typed_config is not implemented".into(),
            ));
            continue;
        };
        let type_name = any
            .type_url
            .strip_prefix(TYPE_URL_PREFIX)
            .unwrap_or(&any.type_url);
        // Another logger: the field guard names it (and a `filter`, read here as if absent).
        if type_name != FILE_ACCESS_LOG {
            continue;
        }
        let lat = format!("{at}[{i}].typed_config({FILE_ACCESS_LOG})");
        let Ok(file) = file_pb::FileAccessLog::decode(any.value.as_slice()) else {
            problems.push((lat, "does not decode".into()));
            continue;
        };
        if file.path.is_empty() {
            problems.push((
                format!("{lat}.path"),
                "must not be empty (Envoy's validation)".into(),
            ));
            continue;
        }
        let filter = match &log.filter {
            None => None,
            Some(f) => match log_filter(f, &format!("{at}[{i}].filter")) {
                Ok(filter) => Some(filter),
                Err(problem) => {
                    problems.push(problem);
                    continue;
                }
            },
        };
        match format(&file, &lat) {
            Ok(format) => out.push(AccessLog {
                path: file.path,
                format,
                filter,
            }),
            Err(problem) => problems.push(problem),
        }
    }
    out
}

/// An access log's `filter` at `at`: a `metadata_filter` with a matcher (the field guard
/// refuses other filter kinds).
fn log_filter(f: &accesslog_pb::AccessLogFilter, at: &str) -> Result<LogFilter, Problem> {
    use accesslog_pb::access_log_filter::FilterSpecifier as F;
    use envoy_types::pb::envoy::r#type::matcher::v3::metadata_matcher::path_segment::Segment;
    use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern as S;
    use envoy_types::pb::envoy::r#type::matcher::v3::value_matcher::MatchPattern as V;
    let Some(F::MetadataFilter(m)) = &f.filter_specifier else {
        return Err((at.into(), "only a metadata_filter is implemented".into()));
    };
    let at = format!("{at}.metadata_filter");
    let Some(matcher) = &m.matcher else {
        return Err((format!("{at}.matcher"), "a matcher is needed".into()));
    };
    let mat = format!("{at}.matcher");
    let path = matcher
        .path
        .iter()
        .map(|p| match &p.segment {
            Some(Segment::Key(key)) => Ok(key.clone()),
            None => Err((format!("{mat}.path"), "a path segment needs a key".into())),
        })
        .collect::<Result<_, _>>()?;
    let vat = format!("{mat}.value");
    let value = match matcher
        .value
        .as_ref()
        .and_then(|v| v.match_pattern.as_ref())
    {
        Some(V::NullMatch(_)) => MetadataValueMatch::Null,
        Some(V::PresentMatch(present)) => MetadataValueMatch::Present(*present),
        Some(V::StringMatch(sm)) if !sm.ignore_case => match &sm.match_pattern {
            Some(S::Exact(v)) => MetadataValueMatch::Exact(v.clone()),
            Some(S::Prefix(v)) => MetadataValueMatch::Prefix(v.clone()),
            Some(S::Suffix(v)) => MetadataValueMatch::Suffix(v.clone()),
            Some(S::Contains(v)) => MetadataValueMatch::Contains(v.clone()),
            _ => {
                let reason =
                    "only exact, prefix, suffix and contains string matches are implemented";
                return Err((format!("{vat}.string_match"), reason.into()));
            }
        },
        Some(V::StringMatch(_)) => {
            let reason = "a case-insensitive string match is not implemented";
            return Err((format!("{vat}.string_match.ignore_case"), reason.into()));
        }
        _ => {
            let reason = "only null_match, present_match and string_match are implemented";
            return Err((vat, reason.into()));
        }
    };
    Ok(LogFilter {
        namespace: matcher.filter.clone(),
        path,
        value,
        // Envoy's default.
        if_key_not_found: m.match_if_key_not_found.as_ref().is_none_or(|b| b.value),
    })
}

/// The format of a file logger at `at`: its `log_format`, or Envoy's default without one.
fn format(file: &file_pb::FileAccessLog, at: &str) -> Result<LogFormat, Problem> {
    use file_pb::file_access_log::AccessLogFormat;
    let sfs = match &file.access_log_format {
        None => return LogFormat::text(ENVOY_DEFAULT_FORMAT, false).map_err(|e| (at.into(), e.0)),
        Some(AccessLogFormat::LogFormat(sfs)) => sfs,
        // The deprecated forms: the field guard NACKs them.
        Some(_) => return Err((at.into(), "a deprecated format field".into())),
    };
    let fat = format!("{at}.log_format");
    let omit = sfs.omit_empty_values;
    match &sfs.format {
        Some(Format::TextFormatSource(source)) => {
            let at = format!("{fat}.text_format_source");
            let Some(text) = crate::translate::data_text(Some(source)) else {
                return Err((
                    at,
                    "only an inline string or UTF-8 bytes are implemented".into(),
                ));
            };
            LogFormat::text(&text, omit).map_err(|e| (at, e.0))
        }
        Some(Format::JsonFormat(json)) => {
            let at = format!("{fat}.json_format");
            let fields = json_fields(json, &at)?;
            LogFormat::json(fields, omit).map_err(|e| (at, e.0))
        }
        // The deprecated `text_format`: the field guard names it.
        Some(_) => Err((fat, "the deprecated text_format".into())),
        None => Err((fat, "a format is required (Envoy's validation)".into())),
    }
}

/// A JSON format's object: string values are templates, objects nest; other values (numbers,
/// booleans, lists, null) are not implemented.
fn json_fields(object: &Struct, at: &str) -> Result<Vec<(String, JsonSource)>, Problem> {
    object
        .fields
        .iter()
        .map(|(key, value)| {
            let vat = format!("{at}[{key:?}]");
            let source = match &value.kind {
                Some(Kind::StringValue(s)) => JsonSource::Template(s.clone()),
                Some(Kind::StructValue(inner)) => JsonSource::Object(json_fields(inner, &vat)?),
                _ => {
                    let reason = "only string templates and nested objects are implemented";
                    return Err((vat, reason.into()));
                }
            };
            Ok((key.clone(), source))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::SubstitutionFormatString;
    use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource};
    use envoy_types::pb::google::protobuf::{Any, Value};

    fn file_log(format: Option<Format>, omit: bool) -> accesslog_pb::AccessLog {
        let file = file_pb::FileAccessLog {
            path: "/dev/stdout".into(),
            access_log_format: format.map(|f| {
                file_pb::file_access_log::AccessLogFormat::LogFormat(SubstitutionFormatString {
                    format: Some(f),
                    omit_empty_values: omit,
                    ..Default::default()
                })
            }),
        };
        accesslog_pb::AccessLog {
            name: "envoy.access_loggers.file".into(),
            filter: None,
            config_type: Some(accesslog_pb::access_log::ConfigType::TypedConfig(Any {
                type_url: format!("{TYPE_URL_PREFIX}{FILE_ACCESS_LOG}"),
                value: file.encode_to_vec(),
            })),
        }
    }

    fn inline(text: &str) -> Format {
        Format::TextFormatSource(DataSource {
            specifier: Some(data_source::Specifier::InlineString(text.into())),
            ..Default::default()
        })
    }

    #[test]
    fn file_loggers_translate_with_their_parsed_format() {
        let json = Struct {
            fields: [("b", "%RESPONSE_CODE%"), ("a", "x")]
                .into_iter()
                .map(|(k, v)| {
                    let value = Value {
                        kind: Some(Kind::StringValue(v.into())),
                    };
                    (k.to_string(), value)
                })
                .collect(),
        };
        let logs = [
            file_log(Some(inline("[%START_TIME%]\n")), false),
            file_log(Some(Format::JsonFormat(json)), true),
            file_log(None, false),
        ];
        let mut problems = Vec::new();
        let out = file_logs(&logs, "hcm.access_log", &mut problems);
        assert_eq!(problems, Vec::<Problem>::new());
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].path, "/dev/stdout");
        assert_eq!(
            out[0].format,
            LogFormat::text("[%START_TIME%]\n", false).unwrap()
        );
        let fields = vec![
            ("a".to_string(), JsonSource::Template("x".into())),
            (
                "b".to_string(),
                JsonSource::Template("%RESPONSE_CODE%".into()),
            ),
        ];
        assert_eq!(out[1].format, LogFormat::json(fields, true).unwrap());
        assert_eq!(
            out[2].format,
            LogFormat::text(ENVOY_DEFAULT_FORMAT, false).unwrap()
        );
    }

    #[test]
    fn formats_envoy_refuses_are_nacked_by_path() {
        // kuma-cp's golden `outbound`: `%%KUMA_SOURCE_SERVICE%%` interpolated to
        // `%demo-client%`, which Envoy 1.40 refuses too.
        let json = Struct {
            fields: [(
                "Source".to_string(),
                Value {
                    kind: Some(Kind::StringValue("%demo-client%".into())),
                },
            )]
            .into(),
        };
        let logs = [
            file_log(Some(Format::JsonFormat(json)), false),
            file_log(Some(inline("%UPSTREAM_TRANSPORT_FAILURE_REASON%")), false),
        ];
        let mut problems = Vec::new();
        assert!(file_logs(&logs, "hcm.access_log", &mut problems).is_empty());
        let fat = |i| format!("hcm.access_log[{i}].typed_config({FILE_ACCESS_LOG}).log_format");
        assert_eq!(problems[0].0, format!("{}.json_format", fat(0)));
        assert!(
            problems[0].1.contains("no valid command at position 0"),
            "{problems:?}"
        );
        assert_eq!(problems[1].0, format!("{}.text_format_source", fat(1)));
        assert!(problems[1]
            .1
            .contains("%UPSTREAM_TRANSPORT_FAILURE_REASON%"));
    }
}

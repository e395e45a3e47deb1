//! Kuma's one Lua program (`envoy.filters.http.lua`), which kuma-cp puts in an outbound's
//! connection manager when a MeshAccessLog targets a MeshHTTPRoute: it copies the request's
//! route metadata `route_kri` into the dynamic metadata `kuma.routes` that the access log
//! filters read. Bearing runs no Lua: it recognises that program by its exact source and
//! does what it does natively (`HttpRoute::route_kri`, `LogFilter`); any other source is
//! NACKed by path, never run or ignored.

use envoy_types::pb::envoy::extensions::filters::http::lua::v3::Lua;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use crate::routes::Problem;

/// The Lua filter's canonical name, under which kuma-cp puts the route metadata it reads.
pub(crate) const LUA_NAME: &str = "envoy.filters.http.lua";
/// The Lua filter's type.
pub(crate) const LUA: &str = "envoy.extensions.filters.http.lua.v3.Lua";

/// kuma-cp's program (`pkg/plugins/policies/meshaccesslog`), byte for byte.
const KUMA_ROUTE_KRI_PROGRAM: &str = "function envoy_on_request(handle)\n  local meta = handle:metadata():get(\"route_kri\")\n  if meta ~= nil then\n    handle:streamInfo():dynamicMetadata():set(\"kuma.routes\", \"route_kri\", meta)\n  end\nend\n";

/// Checks that the Lua filter named `name` in `any` (at `at`) is kuma-cp's `route_kri`
/// program under the canonical name (so it reads the metadata kuma-cp puts there).
pub(crate) fn kuma_route_kri(name: &str, any: &Any, at: &str) -> Result<(), Problem> {
    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
    let Ok(lua) = Lua::decode(any.value.as_slice()) else {
        return Err((at.into(), "does not decode".into()));
    };
    let source = lua
        .default_source_code
        .as_ref()
        .and_then(|s| s.specifier.as_ref());
    let kumas =
        matches!(source, Some(Specifier::InlineString(code)) if code == KUMA_ROUTE_KRI_PROGRAM);
    if !kumas {
        let reason = "Bearing runs no Lua: only kuma-cp's MeshAccessLog program (copying the route's `route_kri` into the dynamic metadata `kuma.routes`) is implemented, by its exact source";
        return Err((format!("{at}.default_source_code"), reason.into()));
    }
    if name != LUA_NAME {
        let reason = format!("kuma-cp's Lua program is implemented under the filter name {LUA_NAME:?} (where it reads the route's metadata)");
        return Err((at.into(), reason));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};

    fn lua(code: &str) -> Any {
        let lua = Lua {
            default_source_code: Some(DataSource {
                specifier: Some(Specifier::InlineString(code.into())),
                ..DataSource::default()
            }),
            ..Lua::default()
        };
        Any {
            type_url: format!("type.googleapis.com/{LUA}"),
            value: lua.encode_to_vec(),
        }
    }

    #[test]
    fn only_kumas_program_under_its_name_is_taken() {
        assert!(kuma_route_kri(LUA_NAME, &lua(KUMA_ROUTE_KRI_PROGRAM), "f").is_ok());
        let other = KUMA_ROUTE_KRI_PROGRAM.replace("route_kri", "other");
        let (at, why) = kuma_route_kri(LUA_NAME, &lua(&other), "f").unwrap_err();
        assert_eq!(at, "f.default_source_code");
        assert!(why.contains("runs no Lua"), "{why}");
        let (at, _) = kuma_route_kri("my-lua", &lua(KUMA_ROUTE_KRI_PROGRAM), "f").unwrap_err();
        assert_eq!(at, "f");
    }
}

//! Kuma's two SNI forms for mesh traffic through zone ingress and egress.
//!
//! - Tags form (`kuma.io/service` based): `<service>{<k>=<v>,...}` with every other tag plus
//!   `mesh`, sorted by key, e.g. `backend{kuma.io/zone=zone,mesh=mesh1,region=eu,version=v1}`.
//! - Resource form (MeshService, MeshExternalService, MeshMultiZoneService):
//!   `a<hash>.<name>.<port>.<mesh>.<ms|mes|mzms>`, e.g.
//!   `a601e0c00295a9fbe.backend.80.default.ms`. `a` is the format version; the hash is the
//!   64-bit FNV-1a of `<name>;<mesh>;<k1=v1,k2=v2...>` (additional data, sorted by key; Kuma
//!   passes none today) in 16 lowercase hex digits; name and mesh longer than 62 bytes are cut
//!   to 62 and suffixed `x` to stay within a DNS label.

use std::collections::BTreeMap;
use std::fmt;

/// The tag holding the service name, which the tags form puts before the braces.
const SERVICE_TAG: &str = "kuma.io/service";
/// The tag key the tags form uses for the mesh.
const MESH_TAG: &str = "mesh";

/// The tags-form SNI of a destination: `service{k=v,...}` over `extra` (minus
/// `kuma.io/service`) plus `mesh=<mesh>`, keys sorted, as Kuma's zone proxies expect.
pub fn tags_sni(service: &str, mesh: &str, extra: &BTreeMap<String, String>) -> String {
    let mut tags: Vec<(&str, &str)> = extra
        .iter()
        .filter(|(k, _)| k.as_str() != SERVICE_TAG && k.as_str() != MESH_TAG)
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    tags.push((MESH_TAG, mesh));
    tags.sort_unstable();
    let mut out = String::with_capacity(service.len() + 2 + tags.len() * 16);
    out.push_str(service);
    let _ = write_tags(&mut out, &tags);
    out
}

/// Writes `{k=v,...}`.
fn write_tags(out: &mut impl fmt::Write, tags: &[(&str, &str)]) -> fmt::Result {
    out.write_char('{')?;
    for (i, (k, v)) in tags.iter().enumerate() {
        if i > 0 {
            out.write_char(',')?;
        }
        write!(out, "{k}={v}")?;
    }
    out.write_char('}')
}

/// A parsed tags-form SNI, borrowing from the SNI string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagsSni<'a> {
    /// The `kuma.io/service` value (before the braces).
    pub service: &'a str,
    /// The `mesh` tag.
    pub mesh: &'a str,
    /// The other tags in SNI order (sorted by key in SNIs Kuma produces).
    pub tags: Vec<(&'a str, &'a str)>,
}

impl fmt::Display for TagsSni<'_> {
    /// Renders the canonical SNI (tags and mesh sorted by key), as [`tags_sni`] does.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut tags = self.tags.clone();
        tags.push((MESH_TAG, self.mesh));
        tags.sort_unstable();
        f.write_str(self.service)?;
        write_tags(f, &tags)
    }
}

/// Parses `service{k=v,...}`; `None` unless there is a service name, one brace pair at the
/// end, well-formed unique `k=v` tags (keys non-empty) and a `mesh` tag.
pub fn parse_tags_sni(sni: &str) -> Option<TagsSni<'_>> {
    let (service, rest) = sni.split_once('{')?;
    let body = rest.strip_suffix('}')?;
    if service.is_empty() || body.contains(['{', '}']) {
        return None;
    }
    let mut mesh = None;
    let mut tags = Vec::new();
    for pair in body.split(',') {
        let (key, value) = pair.split_once('=')?;
        if key.is_empty() {
            return None;
        }
        if key == MESH_TAG {
            if mesh.replace(value).is_some() {
                return None;
            }
        } else if tags.iter().any(|(k, _)| *k == key) {
            return None;
        } else {
            tags.push((key, value));
        }
    }
    Some(TagsSni {
        service,
        mesh: mesh?,
        tags,
    })
}

/// The resource types with a resource-form SNI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    /// MeshService, suffix `ms`.
    MeshService,
    /// MeshExternalService, suffix `mes`.
    MeshExternalService,
    /// MeshMultiZoneService, suffix `mzms`.
    MeshMultiZoneService,
}

impl ResourceKind {
    /// The SNI's last label for this kind.
    pub fn suffix(self) -> &'static str {
        match self {
            ResourceKind::MeshService => "ms",
            ResourceKind::MeshExternalService => "mes",
            ResourceKind::MeshMultiZoneService => "mzms",
        }
    }

    fn from_suffix(suffix: &str) -> Option<ResourceKind> {
        match suffix {
            "ms" => Some(ResourceKind::MeshService),
            "mes" => Some(ResourceKind::MeshExternalService),
            "mzms" => Some(ResourceKind::MeshMultiZoneService),
            _ => None,
        }
    }
}

/// FNV-1a, 64 bit (offset basis and prime from the FNV specification).
struct Fnv1a64(u64);

impl Fnv1a64 {
    fn new() -> Self {
        Fnv1a64(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Longest name or mesh label kept whole; longer ones are cut to this and suffixed `x`.
const LABEL_KEEP: usize = 62;

/// Cuts `s` to at most [`LABEL_KEEP`] bytes (on a char boundary) plus `x` when longer.
fn label(s: &str) -> std::borrow::Cow<'_, str> {
    if s.len() <= LABEL_KEEP {
        return s.into();
    }
    let mut end = LABEL_KEEP;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}x", &s[..end]).into()
}

/// The resource-form SNI Kuma gives port `port` of resource `name` (its SNI name: for a
/// MeshService synced from another zone, `<name>.<namespace>`) in `mesh`, e.g.
/// `a601e0c00295a9fbe.backend.80.default.ms`. `additional` is mixed into the hash (empty in
/// Kuma 2.x).
pub fn resource_sni(
    name: &str,
    mesh: &str,
    kind: ResourceKind,
    port: u16,
    additional: &BTreeMap<String, String>,
) -> String {
    let mut hash = Fnv1a64::new();
    hash.write(name.as_bytes());
    hash.write(b";");
    hash.write(mesh.as_bytes());
    hash.write(b";");
    for (i, (k, v)) in additional.iter().enumerate() {
        if i > 0 {
            hash.write(b",");
        }
        hash.write(k.as_bytes());
        hash.write(b"=");
        hash.write(v.as_bytes());
    }
    format!(
        "a{:016x}.{}.{port}.{}.{}",
        hash.0,
        label(name),
        label(mesh),
        kind.suffix()
    )
}

/// Kuma's KRI-derived SNI (MADR 101) for port `section` (the port's name, else its number)
/// of the MeshService `name` in `mesh`, created in `zone` (`None`: on the global control
/// plane): `sni.msvc.<mesh>[.<zone>].<name>.<section>`, e.g. `sni.msvc.default.east.backend.80`.
/// Universal resources only (no namespace segment).
pub fn mesh_service_kri_sni(mesh: &str, zone: Option<&str>, name: &str, section: &str) -> String {
    match zone {
        Some(zone) => format!("sni.msvc.{mesh}.{zone}.{name}.{section}"),
        None => format!("sni.msvc.{mesh}.{name}.{section}"),
    }
}

/// A parsed KRI-form SNI (`sni.<kind>.<mesh>[.<zone>[.<namespace>]].<name>.<section>`),
/// borrowing from the SNI string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KriSni<'a> {
    /// The resource type's short name: `msvc`, `mzsvc`, `extsvc`.
    pub kind: &'a str,
    /// Mesh name.
    pub mesh: &'a str,
    /// Zone the resource was created in (none: created on the global control plane).
    pub zone: Option<&'a str>,
    /// Kubernetes namespace (only with a zone).
    pub namespace: Option<&'a str>,
    /// Resource name.
    pub name: &'a str,
    /// Port name or number.
    pub section: &'a str,
}

/// Parses a KRI-form SNI; `None` for anything else (5 to 7 non-empty labels, the first `sni`).
pub fn parse_kri_sni(sni: &str) -> Option<KriSni<'_>> {
    let rest = sni.strip_prefix("sni.")?;
    let labels: Vec<&str> = rest.split('.').collect();
    if labels.iter().any(|l| l.is_empty()) {
        return None;
    }
    let (kind, mesh, zone, namespace, name, section) = match labels.as_slice() {
        [kind, mesh, name, section] => (kind, mesh, None, None, name, section),
        [kind, mesh, zone, name, section] => (kind, mesh, Some(*zone), None, name, section),
        [kind, mesh, zone, ns, name, section] => {
            (kind, mesh, Some(*zone), Some(*ns), name, section)
        }
        _ => return None,
    };
    Some(KriSni {
        kind,
        mesh,
        zone,
        namespace,
        name,
        section,
    })
}

/// A parsed resource-form SNI, borrowing from the SNI string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceSni<'a> {
    /// The first label: format version `a` and the 16-hex-digit hash.
    pub hash: &'a str,
    /// The resource's SNI name (may hold a dot: `<name>.<namespace>`; cut and `x`-suffixed
    /// when over 62 bytes).
    pub name: &'a str,
    /// The port of the resource.
    pub port: u16,
    /// The mesh (cut and `x`-suffixed when over 62 bytes).
    pub mesh: &'a str,
    /// The resource type.
    pub kind: ResourceKind,
}

/// Parses `a<16 hex>.<name>.<port>.<mesh>.<ms|mes|mzms>`; `None` for anything else, such
/// as a tags-form SNI. The hash is checked for shape only: routing needs name, port and mesh.
pub fn parse_resource_sni(sni: &str) -> Option<ResourceSni<'_>> {
    let mut labels = sni.rsplitn(4, '.');
    let kind = ResourceKind::from_suffix(labels.next()?)?;
    let mesh = labels.next()?;
    let port = labels.next()?;
    let (hash, name) = labels.next()?.split_once('.')?;
    let hex = hash.strip_prefix('a')?;
    if hex.len() != 16 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    if name.is_empty() || mesh.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(ResourceSni {
        hash,
        name,
        port: port.parse().ok()?,
        mesh,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::path::Path;

    const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/kuma-corpus");

    /// Every `- ...` list item and `sni: ...` value of the golden files under `dirs` that
    /// `keep` accepts.
    fn golden_snis(dirs: &[&str], keep: impl Fn(&str) -> bool) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for dir in dirs {
            let dir = Path::new(CORPUS).join(dir);
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if !path.to_string_lossy().ends_with(".golden.yaml") {
                    continue;
                }
                for line in std::fs::read_to_string(&path).unwrap().lines() {
                    let line = line.trim();
                    let value = line
                        .strip_prefix("- ")
                        .or_else(|| line.strip_prefix("sni: "))
                        .map(|v| v.trim_matches(['\'', '"']));
                    if let Some(value) = value.filter(|v| keep(v)) {
                        out.insert(value.to_string());
                    }
                }
            }
        }
        out
    }

    /// The KRI form matches the MeshService SNIs of Kuma's zone proxy goldens and parses back.
    #[test]
    fn kri_sni_matches_kuma_goldens_and_parses() {
        let goldens = golden_snis(&["xds-generator/zone-proxy-listener"], |v| {
            v.starts_with("sni.msvc.")
        });
        let sni = mesh_service_kri_sni("default", Some("east"), "backend", "80");
        assert!(goldens.contains(&sni), "{sni} not in {goldens:?}");
        let envoy =
            std::fs::read_to_string(Path::new(CORPUS).join(
                "envoyconfig-e2e/zoneproxies/meshratelimit/sni.zone-proxy-ingress.golden.json",
            ))
            .unwrap();
        let sni = mesh_service_kri_sni(
            "envoyconfig-zoneproxies",
            Some("kuma-3"),
            "zone-proxy-demo-client",
            "3000",
        );
        assert!(envoy.contains(&format!("\"{sni}\"")), "{sni}");
        assert_eq!(
            parse_kri_sni("sni.msvc.default.east.backend.80"),
            Some(KriSni {
                kind: "msvc",
                mesh: "default",
                zone: Some("east"),
                namespace: None,
                name: "backend",
                section: "80"
            })
        );
        let global = parse_kri_sni("sni.mzsvc.default.global-svc.80").unwrap();
        assert_eq!(
            (global.kind, global.zone, global.name),
            ("mzsvc", None, "global-svc")
        );
        let k8s = parse_kri_sni("sni.msvc.m.z.ns.backend.http").unwrap();
        assert_eq!((k8s.namespace, k8s.section), (Some("ns"), "http"));
        for bad in [
            "sni.msvc.m.x",
            "sni.msvc..z.b.80",
            "msvc.m.z.b.80",
            "sni.a.b.c.d.e.f.g",
        ] {
            assert_eq!(parse_kri_sni(bad), None, "{bad}");
        }
    }

    #[test]
    fn tags_sni_sorts_all_keys_with_mesh() {
        let extra: BTreeMap<String, String> = [
            ("version", "v1"),
            ("kuma.io/zone", "zone"),
            ("region", "eu"),
            ("kuma.io/service", "backend"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            tags_sni("backend", "mesh1", &extra),
            "backend{kuma.io/zone=zone,mesh=mesh1,region=eu,version=v1}"
        );
        assert_eq!(
            tags_sni("externalservice-2", "mesh-1", &BTreeMap::new()),
            "externalservice-2{mesh=mesh-1}"
        );
    }

    #[test]
    fn golden_tags_snis_round_trip() {
        let snis = golden_snis(&["xds-egress", "xds-generator/ingress"], |v| {
            v.ends_with('}') && v.contains("mesh=")
        });
        assert!(snis.len() >= 20, "found only {snis:?}");
        for sni in &snis {
            let parsed = parse_tags_sni(sni).unwrap_or_else(|| panic!("{sni} does not parse"));
            assert_eq!(&parsed.to_string(), sni);
            let extra = parsed
                .tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(&tags_sni(parsed.service, parsed.mesh, &extra), sni);
        }
    }

    #[test]
    fn parse_tags_sni_rejects_malformed() {
        for bad in [
            "backend",
            "{mesh=m}",
            "backend{version=v1}",
            "backend{mesh=m",
            "backend{mesh=m}x",
            "backend{mesh=m,mesh=n}",
            "backend{mesh=m,a=1,a=2}",
            "backend{mesh=m,novalue}",
            "backend{=x,mesh=m}",
            "a{b{mesh=m}}",
        ] {
            assert_eq!(parse_tags_sni(bad), None, "{bad}");
        }
        let p = parse_tags_sni("backend{mesh=m,version=v1}").unwrap();
        assert_eq!((p.service, p.mesh), ("backend", "m"));
        assert_eq!(p.tags, [("version", "v1")]);
    }

    #[test]
    fn resource_sni_matches_kuma_goldens() {
        // The corpus' goldens with the resources behind them (from the matching inputs:
        // name, mesh, kind, port; no additional data).
        let cases = [
            ("backend", "default", ResourceKind::MeshService, 80),
            ("backend2", "default", ResourceKind::MeshService, 80),
            (
                "meshexternalservice-1",
                "mesh-1",
                ResourceKind::MeshExternalService,
                9090,
            ),
            ("test-server", "envoyconfig", ResourceKind::MeshService, 80),
            (
                "demo-client",
                "envoyconfig",
                ResourceKind::MeshService,
                3000,
            ),
            (
                "echo-service",
                "envoyconfig-builtingateway",
                ResourceKind::MeshService,
                80,
            ),
        ];
        let corpus: BTreeSet<String> = cases
            .iter()
            .map(|(name, mesh, kind, port)| {
                resource_sni(name, mesh, *kind, *port, &BTreeMap::new())
            })
            .collect();
        let golden = golden_snis(&["xds-egress", "xds-generator/ingress"], |v| {
            parse_resource_sni(v).is_some()
        });
        assert!(!golden.is_empty());
        for sni in &golden {
            assert!(corpus.contains(sni), "{sni} not reproduced");
        }
        for sni in &corpus {
            assert!(
                sni == "a601e0c00295a9fbe.backend.80.default.ms"
                    || golden.contains(sni)
                    || envoyconfig_e2e_contains(sni),
                "{sni} not in the corpus"
            );
        }
    }

    /// Whether the end-to-end goldens (JSON) mention `sni`.
    fn envoyconfig_e2e_contains(sni: &str) -> bool {
        let dir = Path::new(CORPUS).join("envoyconfig-e2e");
        walk(&dir).iter().any(|path| {
            std::fs::read_to_string(path)
                .map(|text| text.contains(sni))
                .unwrap_or(false)
        })
    }

    fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
        out
    }

    #[test]
    fn resource_sni_parses_and_truncates() {
        let p =
            parse_resource_sni("a45e197ed7825551b.meshexternalservice-1.9090.mesh-1.mes").unwrap();
        assert_eq!(
            p,
            ResourceSni {
                hash: "a45e197ed7825551b",
                name: "meshexternalservice-1",
                port: 9090,
                mesh: "mesh-1",
                kind: ResourceKind::MeshExternalService,
            }
        );
        let p =
            parse_resource_sni("a0123456789abcdef.backend.kuma-demo.8080.default.mzms").unwrap();
        assert_eq!((p.name, p.port), ("backend.kuma-demo", 8080));
        for bad in [
            "backend{mesh=default}",
            "a601e0c00295a9fbe.backend.80.default.svc",
            "a601e0c00295a9fb.backend.80.default.ms",
            "b601e0c00295a9fbe.backend.80.default.ms",
            "a601e0c00295a9fbe.backend.99999.default.ms",
            "a601e0c00295a9fbe.backend.+80.default.ms",
            "a601e0c00295a9fbe..80.default.ms",
            "a601e0c00295a9fbe.80.default.ms",
        ] {
            assert_eq!(parse_resource_sni(bad), None, "{bad}");
        }
        let long = "n".repeat(70);
        let sni = resource_sni(
            &long,
            "default",
            ResourceKind::MeshService,
            80,
            &BTreeMap::new(),
        );
        let p = parse_resource_sni(&sni).unwrap();
        assert_eq!(p.name, format!("{}x", "n".repeat(62)));
        let extra = BTreeMap::from([("zone".to_string(), "east".to_string())]);
        assert_ne!(
            resource_sni("backend", "default", ResourceKind::MeshService, 80, &extra),
            "a601e0c00295a9fbe.backend.80.default.ms"
        );
    }
}

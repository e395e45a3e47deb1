//! Kuma's names for the resources whose role Bearing recognises by name, in both namings
//! kuma-cp uses: the legacy one (`kuma:envoy:admin`, `outbound:passthrough:ipv4`,
//! `identity_cert:secret:<mesh>`, ...) and the unified resource naming (`self_...`,
//! `system_...`, `kri_...`) it uses for a proxy advertising `feature-unified-resource-naming`
//! in a Mesh whose MeshServices mode is Exclusive (Kuma's `pkg/core/naming`,
//! `pkg/core/system_names`). Resources of any other name are translated by their content,
//! as Envoy does, whatever naming they follow.

/// One role's name in each naming.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Role {
    /// The legacy name.
    pub(crate) legacy: &'static str,
    /// The unified resource naming's.
    pub(crate) unified: &'static str,
}

impl Role {
    /// Whether `name` is this role's, in either naming.
    pub(crate) fn is(&self, name: &str) -> bool {
        name == self.legacy || name == self.unified
    }

    /// Both names.
    pub(crate) fn names(&self) -> [&'static str; 2] {
        [self.legacy, self.unified]
    }
}

/// The listener on the Dataplane's address whose plain chain routes `/ready` to kuma-dp's
/// readiness reporter (its TLS chain is kuma-cp's access to Envoy's admin API); the cluster
/// of Envoy's admin API has the same name.
pub(crate) const ADMIN: Role = Role {
    legacy: "kuma:envoy:admin",
    unified: "system_envoy_admin",
};
/// The cluster of kuma-dp's readiness reporter.
pub(crate) const READINESS: Role = Role {
    legacy: "kuma:readiness",
    unified: "system_probe_readiness",
};
/// The listener whose direct responses carry kuma-dp's dynamic config (the DNS table).
pub(crate) const DYNAMIC_CONFIG: Role = Role {
    legacy: "_kuma:dynamicconfig",
    unified: "system_dynamicconfig",
};
/// The UDP listener of Envoy's DNS filter.
pub(crate) const DNS_LISTENER: Role = Role {
    legacy: "kuma:dns",
    unified: "system_dns",
};
/// The transparent proxy's outbound capture listeners and clusters (IPv4, IPv6).
pub(crate) const CAPTURE_OUTBOUND: [Role; 2] = [
    Role {
        legacy: "outbound:passthrough:ipv4",
        unified: "self_transparentproxy_passthrough_outbound_ipv4",
    },
    Role {
        legacy: "outbound:passthrough:ipv6",
        unified: "self_transparentproxy_passthrough_outbound_ipv6",
    },
];
/// The transparent proxy's inbound capture listeners and clusters (IPv4, IPv6).
pub(crate) const CAPTURE_INBOUND: [Role; 2] = [
    Role {
        legacy: "inbound:passthrough:ipv4",
        unified: "self_transparentproxy_passthrough_inbound_ipv4",
    },
    Role {
        legacy: "inbound:passthrough:ipv6",
        unified: "self_transparentproxy_passthrough_inbound_ipv6",
    },
];

/// Whether `name` is one of the transparent proxy's capture listeners or clusters.
pub(crate) fn is_capture(name: &str) -> bool {
    CAPTURE_OUTBOUND
        .iter()
        .chain(&CAPTURE_INBOUND)
        .any(|r| r.is(name))
}

/// Whether a listener of this name is an inbound when its `traffic_direction` is unset.
pub(crate) fn is_inbound_name(name: &str) -> bool {
    name.starts_with("inbound:") || name.starts_with("self_inbound_")
}

/// Whether `name` is a MeshMetric backend's listener or cluster (a policy's).
pub(crate) fn is_meshmetric(name: &str) -> bool {
    name.starts_with("_kuma:metrics:") || name.starts_with("system_meshmetric_")
}

/// The mesh whose CA a secret of Kuma's names holds: `mesh_ca:secret:<mesh>` or
/// `system_mtls_ca_<mesh>`.
pub(crate) fn mesh_ca_mesh(secret: &str) -> Option<&str> {
    secret
        .strip_prefix("mesh_ca:secret:")
        .or_else(|| secret.strip_prefix("system_mtls_ca_"))
        .filter(|mesh| !mesh.is_empty())
}

/// The mesh of a proxy identity secret, when its name tells it: Kuma's mesh CA identity
/// (`identity_cert:secret:<mesh>`, `system_mtls_identity_<mesh>`) or a MeshIdentity's
/// (`kri_mid_<mesh>_<zone>_<namespace>_<name>_<section>`: Kuma's resource identifier).
pub(crate) fn identity_secret_mesh(secret: &str) -> Option<&str> {
    if let Some(mesh) = secret
        .strip_prefix("identity_cert:secret:")
        .or_else(|| secret.strip_prefix("system_mtls_identity_"))
    {
        return Some(mesh).filter(|m| !m.is_empty());
    }
    // A KRI's mesh is its third section; meshes' names hold no `_` (Kuma's name rules).
    let kri = secret.strip_prefix("kri_mid_")?;
    kri.split('_').next().filter(|m| !m.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_match_either_naming_only() {
        assert!(ADMIN.is("kuma:envoy:admin") && ADMIN.is("system_envoy_admin"));
        assert!(!ADMIN.is("system_envoy_admin_x"));
        assert!(is_capture("self_transparentproxy_passthrough_inbound_ipv6"));
        assert!(is_capture("outbound:passthrough:ipv4"));
        assert!(!is_capture("self_transparentproxy_no_destination_inbound"));
        assert!(is_inbound_name("self_inbound_dp_8080") && is_inbound_name("inbound:1.2.3.4:80"));
        assert!(!is_inbound_name("kri_msvc_default_zone__backend_http"));
        assert!(is_meshmetric("system_meshmetric_prometheus_main"));
    }

    #[test]
    fn secret_names_give_their_mesh() {
        assert_eq!(mesh_ca_mesh("mesh_ca:secret:default"), Some("default"));
        assert_eq!(mesh_ca_mesh("system_mtls_ca_mesh-1"), Some("mesh-1"));
        assert_eq!(mesh_ca_mesh("system_mtls_ca_"), None);
        assert_eq!(mesh_ca_mesh("system_trust_bundle"), None);
        assert_eq!(
            identity_secret_mesh("identity_cert:secret:demo"),
            Some("demo")
        );
        assert_eq!(
            identity_secret_mesh("system_mtls_identity_demo"),
            Some("demo")
        );
        assert_eq!(
            identity_secret_mesh("kri_mid_envoyconfig-zoneproxies_kuma-3__identity_"),
            Some("envoyconfig-zoneproxies")
        );
        assert_eq!(identity_secret_mesh("kri_mid__zone__x_"), None);
        assert_eq!(identity_secret_mesh("cert.rsa:secret:foo"), None);
    }
}

//! MeshTrafficPermissions that deny, failing closed.
//!
//! Bearing does not enforce MeshTrafficPermission per source yet. A policy that allows changes
//! nothing (every mesh service may call, and a warning says so); a policy with a Deny must not
//! keep allowing what the user denied, so every inbound it targets refuses every connection
//! (`Listener::deny_all`). Targets follow Kuma's inbound matching: `Mesh` (or no `targetRef`)
//! every inbound, `MeshSubset` inbounds carrying its tags, `MeshService` / `MeshServiceSubset`
//! inbounds of that `kuma.io/service` (and tags), `Dataplane` this proxy by name and labels;
//! `sectionName` narrows to the inbound of that name or port. A `targetRef` Bearing cannot
//! read targets every inbound of the mesh: failing closed is the safe reading.

use bearing_model::policies::{MeshTrafficPermission, TargetRef};
use bearing_model::{Inbound, Resource, Store, Tags, SERVICE_TAG};

/// The denying MeshTrafficPermissions of one mesh, by name.
pub(crate) struct Denies {
    policies: Vec<(String, MeshTrafficPermission)>,
}

impl Denies {
    /// The MeshTrafficPermissions of `mesh` in `store` that deny something.
    pub(crate) fn of(store: &Store, mesh: &str) -> Denies {
        let mut policies: Vec<(String, MeshTrafficPermission)> = store
            .ignored
            .iter()
            .filter(|r| r.kind == "MeshTrafficPermission")
            .filter(|r| r.mesh.as_deref().unwrap_or("default") == mesh)
            .map(|r| (r.name.clone(), MeshTrafficPermission::read(&r.fields)))
            .filter(|(_, p)| p.deny.is_some())
            .collect();
        policies.sort_by(|a, b| a.0.cmp(&b.0));
        Denies { policies }
    }

    /// `MeshTrafficPermission/<name>` of the first denying policy that targets `inbound` of
    /// the Dataplane `me`.
    pub(crate) fn targeting(&self, me: &Resource, inbound: &Inbound) -> Option<String> {
        self.policies
            .iter()
            .find(|(_, p)| targets(&p.target, me, inbound))
            .map(|(name, _)| format!("MeshTrafficPermission/{name}"))
    }
}

/// Whether `target` selects `inbound` of the Dataplane `me`.
fn targets(target: &TargetRef, me: &Resource, inbound: &Inbound) -> bool {
    let section_is = |section: &Option<String>| {
        section
            .as_ref()
            .is_none_or(|s| inbound.name.as_ref() == Some(s) || inbound.port.to_string() == *s)
    };
    match target {
        TargetRef::Mesh | TargetRef::Unknown(_) => true,
        TargetRef::MeshSubset(tags) => selects(tags, &inbound.tags),
        TargetRef::MeshService {
            name,
            tags,
            section,
        } => {
            inbound.tags.get(SERVICE_TAG) == Some(name)
                && selects(tags, &inbound.tags)
                && section_is(section)
        }
        TargetRef::Dataplane {
            name,
            labels,
            section,
        } => {
            name.as_ref().is_none_or(|n| *n == me.meta.name)
                && selects(labels, &me.meta.labels)
                && section_is(section)
        }
    }
}

/// Whether `tags` carry every tag of `selector` (`*` matching any value), as Kuma's
/// TagSelector.
fn selects(selector: &Tags, tags: &Tags) -> bool {
    selector
        .iter()
        .all(|(k, v)| tags.get(k).is_some_and(|t| v == "*" || t == v))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inbounds (by port) of Dataplane `web-1` (labels app=web) that `policy` makes refuse
    /// everything; the store also holds an allowing policy and one of another mesh.
    fn denied_ports(policy: &str) -> Vec<u32> {
        let mut store = Store::default();
        store.add_text(
            &format!(
                "type: Dataplane\nname: web-1\nmesh: default\nlabels: {{app: web}}\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - {{port: 8080, name: http, tags: {{kuma.io/service: web, version: v1}}}}\n  - {{port: 9090, tags: {{kuma.io/service: admin, version: v2}}}}\n---\ntype: MeshTrafficPermission\nname: allow\nmesh: default\nspec:\n  from: [{{targetRef: {{kind: Mesh}}, default: {{action: Allow}}}}]\n---\ntype: MeshTrafficPermission\nname: other-mesh\nmesh: other\nspec:\n  from: [{{targetRef: {{kind: Mesh}}, default: {{action: Deny}}}}]\n---\ntype: MeshTrafficPermission\nname: p\nmesh: default\n{policy}"
            ),
            std::path::Path::new("s.yaml"),
        );
        assert!(store.problems.is_empty(), "{:?}", store.problems);
        let me = &store.resources[0];
        let bearing_model::Spec::Dataplane(dp) = &me.spec else {
            panic!("not a Dataplane");
        };
        let denies = Denies::of(&store, "default");
        dp.networking
            .inbound
            .iter()
            .filter(|i| denies.targeting(me, i).as_deref() == Some("MeshTrafficPermission/p"))
            .map(|i| i.port)
            .collect()
    }

    #[test]
    fn a_deny_fails_closed_on_exactly_the_inbounds_it_targets() {
        let deny = "  from: [{targetRef: {kind: MeshService, name: x}, default: {action: Deny}}]\n";
        let cases: &[(&str, &[u32])] = &[
            ("", &[8080, 9090]),
            ("  targetRef: {kind: Mesh}\n", &[8080, 9090]),
            (
                "  targetRef: {kind: MeshSubset, tags: {version: v2}}\n",
                &[9090],
            ),
            (
                "  targetRef: {kind: MeshSubset, tags: {version: '*'}}\n",
                &[8080, 9090],
            ),
            (
                "  targetRef: {kind: MeshSubset, tags: {version: v3}}\n",
                &[],
            ),
            ("  targetRef: {kind: MeshService, name: web}\n", &[8080]),
            (
                "  targetRef: {kind: MeshService, name: web, sectionName: '9090'}\n",
                &[],
            ),
            (
                "  targetRef: {kind: MeshServiceSubset, name: admin, tags: {version: v2}}\n",
                &[9090],
            ),
            (
                "  targetRef: {kind: MeshServiceSubset, name: admin, tags: {version: v1}}\n",
                &[],
            ),
            (
                "  targetRef: {kind: Dataplane, name: web-1}\n",
                &[8080, 9090],
            ),
            ("  targetRef: {kind: Dataplane, name: web-2}\n", &[]),
            (
                "  targetRef: {kind: Dataplane, labels: {app: web}, sectionName: http}\n",
                &[8080],
            ),
            ("  targetRef: {kind: Dataplane, labels: {app: api}}\n", &[]),
            // Unreadable target: every inbound, failing closed.
            ("  targetRef: {kind: MeshGateway, name: g}\n", &[8080, 9090]),
        ];
        for (target, ports) in cases {
            assert_eq!(
                denied_ports(&format!("spec:\n{target}{deny}")),
                *ports,
                "{target}"
            );
        }
        // The rules form, and what does not deny.
        let rules = "spec:\n  targetRef: {kind: MeshService, name: admin}\n  rules: [{default: {deny: [{spiffeId: {type: Prefix, value: 'spiffe://default/'}}]}}]\n";
        assert_eq!(denied_ports(rules), [9090]);
        let allow = "spec:\n  from: [{targetRef: {kind: Mesh}, default: {action: Allow}}]\n";
        assert_eq!(denied_ports(allow), Vec::<u32>::new());
        let shadow =
            "spec:\n  from: [{targetRef: {kind: Mesh}, default: {action: AllowWithShadowDeny}}]\n";
        assert_eq!(denied_ports(shadow), Vec::<u32>::new());
    }
}

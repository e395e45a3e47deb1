//! `bearing transparent-proxy install|uninstall` against the real kernel, inside a test
//! network namespace: rules for IPv4 and IPv6, idempotent install, DNS conntrack rules,
//! clean uninstall, errors that change nothing, and unrelated rules left alone.

use anyhow::{ensure, Context, Result};
use bearing_e2e::*;

/// `<save>` output without comments and counters, and without empty tables: iptables-nft
/// cannot delete a table, so a table created by install stays behind empty after
/// uninstall (no chain, no rule, every policy ACCEPT), which filters nothing.
fn bearing(host: &Host, args: &[&str]) -> Result<Output> {
    let mut all = vec!["transparent-proxy"];
    all.extend_from_slice(args);
    host.run(bearing_bin()?, all)
}

#[test]
fn install_reinstall_uninstall_round_trip() -> Result<()> {
    require_root_and_tools()?;
    require_tools(&["iptables-save", "ip6tables-save"])?;
    let topo = Topology::new(&["a"])?;
    let a = topo.host("a");
    // An unrelated rule that must survive install and uninstall.
    a.sh("iptables -t nat -A OUTPUT -d 10.9.9.9/32 -p tcp -j RETURN")?;
    let before = firewall_rules(a)?;
    ensure!(
        before.contains("-A OUTPUT -d 10.9.9.9/32 -p tcp -j RETURN"),
        "{before}"
    );

    let out = bearing(a, &["install"])?;
    ensure!(out.success(), "install: {}{}", out.stdout, out.stderr);
    let installed = firewall_rules(a)?;
    let (v4, v6) = installed
        .split_once("--- v6 ---")
        .context("snapshot has both families")?;
    for (family, text) in [("v4", v4), ("v6", v6)] {
        ensure!(text.contains(":KUMA_MESH_OUTBOUND -"), "{family}: {text}");
        ensure!(text.contains("-A KUMA_MESH_OUTBOUND_REDIRECT -p tcp -m comment --comment \"kuma/mesh/transparent/proxy/redirect TCP traffic to envoy (port 15001)\" -j REDIRECT --to-ports 15001"), "{family}: {text}");
        ensure!(
            text.contains("-j REDIRECT --to-ports 15006"),
            "{family}: {text}"
        );
        ensure!(text.contains("--uid-owner 5678"), "{family}: {text}");
    }
    ensure!(v6.contains("-s ::6/128 -o lo"), "{v6}");
    ensure!(
        v4.contains("-A OUTPUT -d 10.9.9.9/32 -p tcp -j RETURN"),
        "{v4}"
    );

    // Installing again leaves exactly one copy.
    let out = bearing(a, &["install"])?;
    ensure!(out.success(), "reinstall: {}{}", out.stdout, out.stderr);
    ensure!(
        firewall_rules(a)? == installed,
        "reinstall changed the rules"
    );
    let jumps = v4.matches("-j KUMA_MESH_OUTBOUND\n").count();
    ensure!(jumps == 1, "{jumps} jumps to KUMA_MESH_OUTBOUND:\n{v4}");

    // Redirecting all DNS adds the raw table's conntrack zones (the kernel accepts CT).
    let out = bearing(a, &["install", "--redirect-all-dns-traffic"])?;
    ensure!(out.success(), "dns install: {}{}", out.stdout, out.stderr);
    let dns = firewall_rules(a)?;
    ensure!(
        dns.contains("-j CT --zone 1") && dns.contains("-j CT --zone 2"),
        "{dns}"
    );
    ensure!(dns.contains("-j REDIRECT --to-ports 15053"), "{dns}");
    ensure!(dns.matches(":KUMA_MESH_OUTBOUND -").count() == 2, "{dns}");

    // A bad value: clear error, non-zero exit, rules untouched.
    let out = bearing(
        a,
        &[
            "install",
            "--exclude-outbound-ports-for-uids",
            "http:3000-5000:1",
        ],
    )?;
    ensure!(!out.success(), "bad flag accepted");
    ensure!(
        out.stderr.contains("--exclude-outbound-ports-for-uids \"http:3000-5000:1\": parsing excluded outbound ports for uids failed: invalid or unsupported protocol: 'http'"),
        "{}",
        out.stderr
    );
    let out = bearing(
        a,
        &["install", "--redirect-dns", "--redirect-all-dns-traffic"],
    )?;
    ensure!(
        !out.success()
            && out.stderr.contains(
                "only one of '--redirect-dns' or '--redirect-all-dns-traffic' should be specified"
            ),
        "{}",
        out.stderr
    );
    ensure!(
        firewall_rules(a)? == dns,
        "a rejected install changed the rules"
    );

    // Dry run prints both families and changes nothing.
    let out = bearing(
        a,
        &["install", "--dry-run", "--exclude-inbound-ports", "22"],
    )?;
    ensure!(out.success(), "{}", out.stderr);
    ensure!(
        out.stdout.contains("### IPv4 ###") && out.stdout.contains("### IPv6 ###"),
        "{}",
        out.stdout
    );
    ensure!(
        out.stdout.contains("--dport 22 -j RETURN"),
        "{}",
        out.stdout
    );
    ensure!(firewall_rules(a)? == dns, "dry run changed the rules");

    let out = bearing(a, &["uninstall"])?;
    ensure!(out.success(), "uninstall: {}{}", out.stdout, out.stderr);
    let after = firewall_rules(a)?;
    ensure!(
        after == before,
        "after uninstall:\n{after}\nbefore install:\n{before}"
    );
    let out = bearing(a, &["uninstall"])?;
    ensure!(
        out.success() && out.stdout.contains("no transparent-proxy rules found"),
        "{}",
        out.stdout
    );
    Ok(())
}

//! The runner of the TLS-stack comparison: builds the stack binaries, checks each stack's mTLS,
//! runs the measurements in alternating order for several rounds, times a clean build of each
//! stack's crates, and writes the medians to `benches/results/tls-stacks.md` (or `--out`).
//!
//! `cargo run --release --manifest-path benches/tls-stacks/Cargo.toml -- [--rounds 3]
//! [--seconds 5] [--clients 16] [--conns 50] [--mem-conns 10000] [--stacks rustls,openssl,boring]
//! [--no-build-times] [--out tls-stacks.md]` (`--mem-conns 0`: no memory measurement).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The stacks, in the order of the table.
const STACKS: [&str; 3] = ["rustls", "openssl", "boring"];

/// Command-line settings.
struct Settings {
    rounds: usize,
    seconds: String,
    clients: String,
    conns: String,
    mem_conns: String,
    stacks: Vec<String>,
    build_times: bool,
    /// File name under `benches/results/`.
    out: String,
}

fn settings() -> Settings {
    let mut s = Settings {
        rounds: 3,
        seconds: "5".into(),
        clients: "16".into(),
        conns: "50".into(),
        mem_conns: "10000".into(),
        stacks: STACKS.iter().map(|s| s.to_string()).collect(),
        build_times: true,
        out: "tls-stacks.md".into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--no-build-times" {
            s.build_times = false;
            continue;
        }
        let Some(value) = args.next() else {
            fail(&format!("{flag} needs a value"));
        };
        match flag.as_str() {
            "--rounds" => {
                s.rounds = value
                    .parse()
                    .unwrap_or_else(|_| fail("--rounds takes a number"))
            }
            "--seconds" => s.seconds = value,
            "--clients" => s.clients = value,
            "--conns" => s.conns = value,
            "--mem-conns" => s.mem_conns = value,
            "--stacks" => s.stacks = value.split(',').map(str::to_owned).collect(),
            "--out" => s.out = value,
            other => fail(&format!("unknown option {other}")),
        }
    }
    s
}

fn fail(message: &str) -> ! {
    eprintln!("tls-stacks: {message}");
    std::process::exit(1);
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Runs one stack binary and returns its `key=value` line parsed, or stops the run.
fn run(bin: &Path, args: &[&str]) -> BTreeMap<String, String> {
    let line = run_line(bin, args);
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Runs one stack binary and returns the last line it printed, or stops the run.
fn run_line(bin: &Path, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| fail(&format!("{}: {e}", bin.display())));
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        fail(&format!(
            "{} {args:?} failed: {}{stdout}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let line = stdout.lines().last().unwrap_or_default();
    println!("  {line}");
    line.to_owned()
}

/// CPU seconds of the waited-for children (and theirs), from getrusage.
fn children_cpu_s() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage for getrusage to fill.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(usage.ru_utime) + s(usage.ru_stime)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The dependencies and `main` of a crate that uses one stack and its tokio adapter only.
fn tiny_crate(stack: &str) -> (&'static str, &'static str) {
    match stack {
        "rustls" => (
            "rustls = { version = \"0.23.46\", default-features = false, features = [\"ring\", \"std\"] }\n\
             tokio-rustls = { version = \"0.26.4\", default-features = false, features = [\"ring\"] }\n",
            "fn main() {\n    let provider = rustls::crypto::ring::default_provider();\n    \
             println!(\"{} {}\", provider.cipher_suites.len(), std::any::type_name::<tokio_rustls::TlsConnector>());\n}\n",
        ),
        "openssl" => (
            "openssl = \"0.10\"\ntokio-openssl = \"0.6\"\n",
            "fn main() {\n    println!(\"{} {}\", openssl::version::version(), \
             std::any::type_name::<tokio_openssl::SslStream<std::net::TcpStream>>());\n}\n",
        ),
        _ => (
            "boring = \"5\"\ntokio-boring = \"5\"\n",
            "fn main() {\n    println!(\"{} {}\", boring::version::version(), \
             std::any::type_name::<tokio_boring::SslStream<std::net::TcpStream>>());\n}\n",
        ),
    }
}

/// Wall and CPU seconds of `cargo build --release` of a tiny crate using only `stack`, from an
/// empty target dir (sources already fetched).
fn build_time(stack: &str) -> (f64, f64) {
    let dir = std::env::temp_dir().join(format!("tls-stacks-build-{stack}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("src"))
        .unwrap_or_else(|e| fail(&format!("{}: {e}", dir.display())));
    let (deps, main) = tiny_crate(stack);
    let manifest = format!(
        "[package]\nname = \"build-{stack}\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n[workspace]\n\n[dependencies]\n{deps}"
    );
    std::fs::write(dir.join("Cargo.toml"), manifest).unwrap_or_else(|e| fail(&e.to_string()));
    std::fs::write(dir.join("src/main.rs"), main).unwrap_or_else(|e| fail(&e.to_string()));
    let status = Command::new(cargo())
        .arg("fetch")
        .arg("-q")
        .current_dir(&dir)
        .status();
    if !status.is_ok_and(|s| s.success()) {
        fail(&format!("cargo fetch in {} failed", dir.display()));
    }
    let (cpu0, start) = (children_cpu_s(), Instant::now());
    let status = Command::new(cargo())
        .args(["build", "--release", "--offline", "-q"])
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .current_dir(&dir)
        .status();
    let (wall, cpu) = (start.elapsed().as_secs_f64(), children_cpu_s() - cpu0);
    if !status.is_ok_and(|s| s.success()) {
        fail(&format!("clean build of {} failed", dir.display()));
    }
    let _ = std::fs::remove_dir_all(&dir);
    (wall, cpu)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn main() {
    let s = settings();
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // One cargo invocation per stack: built together, cargo would unify the features of
    // their shared build dependencies differently and build BoringSSL a second time.
    for stack in &s.stacks {
        let status = Command::new(cargo())
            .args(["build", "--release", "--manifest-path"])
            .arg(workspace.join("Cargo.toml"))
            .args(["-p", &format!("stack-{stack}")])
            .status();
        if !status.is_ok_and(|st| st.success()) {
            fail(&format!("building stack-{stack} failed"));
        }
    }
    let bin_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| fail("cannot find the directory of this binary"));
    let bin = |stack: &str| bin_dir.join(format!("stack-{stack}"));

    let mut report = String::new();
    report.push_str(&format!(
        "# TLS stacks for mesh mTLS\n\nload average at start: {}; {} rounds, {} s per measurement, {} handshake clients, {} exchange connections, {} connections for memory\n\n## Checks\n\n",
        loadavg(), s.rounds, s.seconds, s.clients, s.conns, s.mem_conns
    ));
    println!("checks:");
    for stack in &s.stacks {
        let line = run_line(&bin(stack), &["check"]);
        report.push_str(&format!("- `{line}`\n"));
    }

    // metric -> stack -> values over the rounds
    let mut figures: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    let mut record =
        |stack: &str, name: &str, line: &BTreeMap<String, String>, key: &str, scale: f64| {
            let value: f64 = line
                .get(key)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| fail(&format!("{stack}: no {key} in {line:?}")));
            figures
                .entry((stack.to_owned(), name.to_owned()))
                .or_default()
                .push(value * scale);
        };
    let mut raw = String::from("\n## Every run\n\n");
    for round in 0..s.rounds {
        let mut order = s.stacks.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        println!("round {} ({})", round + 1, order.join(" "));
        for stack in &order {
            let b = bin(stack);
            let hs = run(&b, &["handshakes", &s.seconds, &s.clients]);
            let ex = run(&b, &["exchanges", &s.seconds, &s.conns]);
            // Memory varies by less than 1% between runs: `--mem-conns 0` leaves it out of
            // extra rounds.
            let mem = if s.mem_conns == "0" {
                BTreeMap::new()
            } else {
                run(&b, &["memory", &s.mem_conns])
            };
            for line in [&hs, &ex, &mem].into_iter().filter(|l| !l.is_empty()) {
                raw.push_str(&format!("- round {} {line:?}\n", round + 1));
            }
            if hs.get("errors").is_some_and(|e| e != "0")
                || hs.get("server_failures").is_some_and(|e| e != "0")
            {
                fail(&format!(
                    "{stack}: handshakes failed during the measurement: {hs:?}"
                ));
            }
            record(stack, "hs_rate", &hs, "rate", 1.0);
            record(stack, "hs_p99_ms", &hs, "p99_us", 1e-3);
            record(stack, "hs_server_cpu_us", &hs, "server_cpu_us", 1.0);
            record(stack, "hs_client_cpu_us", &hs, "client_cpu_us", 1.0);
            record(stack, "ex_rate", &ex, "rate", 1.0);
            record(stack, "ex_server_cpu_us", &ex, "server_cpu_us", 1.0);
            record(stack, "ex_client_cpu_us", &ex, "client_cpu_us", 1.0);
            if !mem.is_empty() {
                record(stack, "rss_idle_mb", &mem, "rss_idle_kib", 1.0 / 1024.0);
                record(stack, "rss_conns_mb", &mem, "rss_conns_kib", 1.0 / 1024.0);
                record(
                    stack,
                    "server_kib_per_conn",
                    &mem,
                    "server_kib_per_conn",
                    1.0,
                );
                record(
                    stack,
                    "client_kib_per_conn",
                    &mem,
                    "client_kib_per_conn",
                    1.0,
                );
            }
        }
    }
    if s.build_times {
        println!("clean builds:");
        for stack in &s.stacks {
            let load = loadavg();
            let (wall, cpu) = build_time(stack);
            println!("  {stack}: {wall:.1} s wall, {cpu:.1} s CPU (load before: {load})");
            raw.push_str(&format!("- clean build {stack}: {wall:.1} s wall, {cpu:.1} s CPU, load average before: {load}\n"));
            figures.insert((stack.clone(), "build_wall_s".into()), vec![wall]);
            figures.insert((stack.clone(), "build_cpu_s".into()), vec![cpu]);
        }
    }

    let mut get = |stack: &str, name: &str| -> f64 {
        figures
            .get_mut(&(stack.to_owned(), name.to_owned()))
            .map(|v| median(v))
            .unwrap_or(f64::NAN)
    };
    report.push_str(
        "\n## Medians\n\n| stack | handshakes/s | p99 ms | CPU µs/handshake server + client | exchanges/s | CPU µs/exchange server + client | RSS idle MB | RSS 10k conns MB | KiB/conn server, client | clean build s (CPU s) |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for stack in &s.stacks {
        // A figure not measured in this run (no memory, no build) is a median of nothing: NaN.
        let row = format!(
            "| {stack} | {:.0} | {:.2} | {:.0} + {:.0} | {:.0} | {:.2} + {:.2} | {:.1} | {:.1} | {:.1}, {:.1} | {:.0} ({:.0}) |\n",
            get(stack, "hs_rate"),
            get(stack, "hs_p99_ms"),
            get(stack, "hs_server_cpu_us"),
            get(stack, "hs_client_cpu_us"),
            get(stack, "ex_rate"),
            get(stack, "ex_server_cpu_us"),
            get(stack, "ex_client_cpu_us"),
            get(stack, "rss_idle_mb"),
            get(stack, "rss_conns_mb"),
            get(stack, "server_kib_per_conn"),
            get(stack, "client_kib_per_conn"),
            get(stack, "build_wall_s"),
            get(stack, "build_cpu_s"),
        );
        report.push_str(&row.replace("NaN", "-"));
    }
    report.push_str(&format!("\nload average at the end: {}\n", loadavg()));
    report.push_str(&raw);
    println!("\n{report}");
    let out = workspace.join("../results").join(&s.out);
    std::fs::write(&out, &report).unwrap_or_else(|e| fail(&format!("{}: {e}", out.display())));
    println!("written to {}", out.display());
}

//! Build, demo and test tasks: `cargo xtask <task>`.
//!
//! Everything a fresh Debian machine with Rust needs is installed here on demand (the wasm target,
//! a `wasm-bindgen` CLI of exactly the version in Cargo.lock, Chromium and ffmpeg for the browser
//! tests), so README's two commands and `.ci/run` need nothing installed by hand.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

const WASM_TARGET: &str = "wasm32-unknown-unknown";
/// Cargo profile of the tests and of the e2e suite's signaling server (Cargo.toml: release
/// without LTO, 16 codegen units; a third of release's CPU time to build, same test run times).
const TEST_PROFILE: &str = "ci";
/// Where `setup` installs binaryen's wasm-opt from npm when none is on PATH.
const LOCAL_WASM_OPT: &str = ".tools/node_modules/.bin/wasm-opt";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let task = args.first().map(String::as_str).unwrap_or("help");
    let rest = &args[args.len().min(1)..];
    let result = match task {
        "setup" => setup(true, true),
        "build-wasm" => {
            let hooks = rest.iter().any(|a| a == "--test-hooks");
            setup(false, false).and_then(|_| build_wasm(hooks))
        }
        "demo" => demo(rest),
        "test" => test(rest),
        "e2e" => setup(true, true)
            .and_then(|_| build_wasm(false))
            .and_then(|_| build_wasm(true))
            .and_then(|_| {
                // The npm test opens the Vite example built from the packed package.
                let npm_test = rest.is_empty() || rest.iter().any(|a| a.contains("npm.test"));
                if npm_test {
                    package(true)
                } else {
                    Ok(())
                }
            })
            .and_then(|_| e2e(rest)),
        "package" => {
            let example = rest.iter().any(|a| a == "--example");
            setup(false, false)
                .and_then(|_| build_wasm(false))
                .and_then(|_| package(example))
        }
        "help" | "--help" | "-h" => {
            println!("{HELP}");
            Ok(())
        }
        other => Err(format!("unknown task `{other}`\n\n{HELP}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

const HELP: &str = "\
cargo xtask demo [--port N]   build everything, start the signaling server serving www/, print the demo URL
cargo xtask test [--no-e2e]   every check: fmt, clippy (host + wasm), unit/integration tests, wasm build, browser e2e
cargo xtask build-wasm [--test-hooks]
                              build the browser bundle into the folder named by wasm-pack.toml
                              (--test-hooks: with the test-only hooks, into <out_dir>-test)
cargo xtask e2e               only the real-browser end-to-end tests
cargo xtask package [--example]
                              the npm package into out/npm/swarmcast/ and its tarball (npm pack);
                              --example: also install it into examples/vite and build that app
cargo xtask setup             install what is missing (wasm target, wasm-bindgen-cli, wasm-opt,
                              ffmpeg, Chromium, e2e npm packages)";

type Result<T = ()> = std::result::Result<T, String>;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

fn cargo() -> String {
    env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Runs a command in the workspace root, echoing it, and fails on a non-zero exit.
fn run(cmd: &mut Command) -> Result {
    cmd.current_dir(root());
    eprintln!("+ {cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed with {status}"))
    }
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn have(program: &str) -> bool {
    output(Command::new("sh").args(["-c", &format!("command -v {program}")])).is_some()
}

/// Settings of the browser build, from `wasm-pack.toml` (flat `key = "value"` lines).
struct WasmSettings {
    target: String,
    out_dir: String,
    profile: String,
    wasm_opt: String,
}

fn wasm_settings() -> Result<WasmSettings> {
    let path = root().join("wasm-pack.toml");
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let get = |key: &str| -> Result<String> {
        text.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim().trim_matches('"').to_string())
            .ok_or_else(|| format!("wasm-pack.toml has no `{key}`"))
    };
    Ok(WasmSettings {
        target: get("target")?,
        out_dir: get("out_dir")?,
        profile: get("profile")?,
        wasm_opt: get("wasm_opt")?,
    })
}

/// The exact `wasm-bindgen` version Cargo.lock pins: CLI and crate must match to the patch.
fn locked_wasm_bindgen_version() -> Result<String> {
    if !root().join("Cargo.lock").exists() {
        run(Command::new(cargo()).args(["generate-lockfile"]))?;
    }
    let lock = fs::read_to_string(root().join("Cargo.lock")).map_err(|e| e.to_string())?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "name = \"wasm-bindgen\"" {
            if let Some(v) = lines.next().and_then(|l| l.strip_prefix("version = ")) {
                return Ok(v.trim_matches('"').to_string());
            }
        }
    }
    Err("Cargo.lock has no wasm-bindgen entry".into())
}

/// Installs what is missing: always the wasm target, `wasm-bindgen` and (optionally) wasm-opt; with
/// `media`, ffmpeg/ffprobe (the cargo tests run them); with `browser`, Chromium, chromedriver,
/// iproute2 and the e2e npm packages. Compiling `wasm-bindgen` (~1.5 min of CPU) runs in the
/// background while apt and npm download, since those wait on the network and the disk. Whatever
/// cannot be installed here (no rustup, no apt-get, not root, no npm) is an error that names what
/// is missing and the command that gets it.
fn setup(media: bool, browser: bool) -> Result {
    if !have("rustup") {
        if !has_wasm_std() {
            return Err(format!(
                "no `rustup` on PATH, so the {WASM_TARGET} target cannot be added: install Rust \
                 with rustup (https://rustup.rs), or add the {WASM_TARGET} standard library to \
                 your toolchain by your distribution's means"
            ));
        }
    } else {
        let targets = output(Command::new("rustup").args(["target", "list", "--installed"]));
        if !targets.is_some_and(|t| t.lines().any(|l| l.trim() == WASM_TARGET)) {
            run(Command::new("rustup").args(["target", "add", WASM_TARGET]))?;
        }
    }
    let bindgen = WasmBindgenInstall::start()?;
    let result = setup_system(media, browser);
    // Always wait for the compile: it must not outlive xtask, even when apt failed.
    let installed = bindgen.finish();
    result.and(installed)
}

/// Whether xtask runs as root (`id -u`), which apt and `unshare --net` need.
fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|u| u.trim() == "0")
}

/// Whether the active toolchain has the wasm32 standard library (toolchains without rustup).
fn has_wasm_std() -> bool {
    output(Command::new("rustc").args(["--print", "sysroot"])).is_some_and(|sysroot| {
        Path::new(sysroot.trim())
            .join("lib/rustlib")
            .join(WASM_TARGET)
            .exists()
    })
}

/// A `cargo install wasm-bindgen-cli` of the version Cargo.lock pins, running in the background.
struct WasmBindgenInstall {
    want: String,
    child: Option<std::process::Child>,
}

impl WasmBindgenInstall {
    fn start() -> Result<WasmBindgenInstall> {
        let want = locked_wasm_bindgen_version()?;
        let have_version =
            output(Command::new("wasm-bindgen").arg("--version")).unwrap_or_default();
        if have_version.split_whitespace().any(|w| w == want) {
            return Ok(WasmBindgenInstall { want, child: None });
        }
        let mut cmd = Command::new(cargo());
        // `--debug`: unoptimised, it compiles in 1 min 56 s of CPU and binds our bundle in 0.9 s
        // instead of 0.14 s, byte-identical output (docs/SETUP.md); an optimised build costs
        // CI minutes on every fresh machine to save under a second per bundle.
        cmd.args([
            "install",
            "wasm-bindgen-cli",
            "--version",
            &want,
            "--locked",
            "--debug",
        ]);
        eprintln!("+ {cmd:?} (in the background)");
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
        Ok(WasmBindgenInstall {
            want,
            child: Some(child),
        })
    }

    fn finish(self) -> Result {
        let Some(mut child) = self.child else {
            return Ok(());
        };
        let status = child.wait().map_err(|e| e.to_string())?;
        if status.success() {
            return Ok(());
        }
        // `--locked` fails when the CLI's own lock file names a crate version the registry
        // lacks (0.2.130's names webpki-roots 1.0.11); a plain install then works.
        run(Command::new(cargo()).args([
            "install",
            "wasm-bindgen-cli",
            "--version",
            &self.want,
            "--debug",
        ]))
        .map_err(|e| {
            format!(
                "{e}\nthe browser bundle needs wasm-bindgen-cli {} exactly (the version in \
                     Cargo.lock); cargo could not build it (no access to crates.io?)",
                self.want
            )
        })
    }
}

/// The system packages, wasm-opt and the e2e npm packages.
fn setup_system(media: bool, browser: bool) -> Result {
    // wasm-opt shrinks the bundle a lot (issue 6: < 250 KiB gzipped). Debian's binaryen is too old
    // for current rustc output, so take the npm package (docs/SETUP.md); optional: the build works
    // without it.
    if !have("wasm-opt") && !root().join(LOCAL_WASM_OPT).exists() {
        if have("npm") {
            let tools = root().join(".tools");
            let installed = run(Command::new("npm")
                .args([
                    "install",
                    "--no-audit",
                    "--no-fund",
                    "--no-save",
                    "--prefix",
                ])
                .arg(&tools)
                .arg("binaryen@132.0.0"));
            if let Err(e) = installed {
                eprintln!("xtask: wasm-opt unavailable ({e}); building without it");
            }
        } else {
            eprintln!(
                "xtask: no npm, so no wasm-opt: the bundle is built without it (larger); \
                 install Node.js and npm (Debian: `apt-get install nodejs npm`) to get it"
            );
        }
    }
    let mut wanted = Vec::new();
    if media {
        wanted.extend([("ffmpeg", "ffmpeg"), ("ffprobe", "ffmpeg")]);
    }
    if browser {
        wanted.extend([
            ("chromium", "chromium"),
            ("chromedriver", "chromium-driver"),
            ("ip", "iproute2"),
            ("unshare", "util-linux"),
        ]);
    }
    let (missing_bins, mut missing): (Vec<&str>, Vec<&str>) =
        wanted.into_iter().filter(|(bin, _)| !have(bin)).unzip();
    missing.dedup();
    if !missing.is_empty() {
        apt_install(&missing_bins, &missing)?;
    }
    let e2e = root().join("tests/e2e");
    if browser && e2e.join("package.json").exists() && !e2e.join("node_modules").exists() {
        if !have("npm") {
            return Err(
                "the browser tests need Node.js (>= 18) and npm, and neither is on PATH: \
                 install them (Debian: `apt-get install nodejs npm`), or run \
                 `cargo xtask test --no-e2e` for every check but the browser tests"
                    .into(),
            );
        }
        run(Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(&e2e))?;
    }
    Ok(())
}

/// Installs Debian packages, as root or through `sudo -n`; otherwise says what to run.
fn apt_install(bins: &[&str], packages: &[&str]) -> Result {
    let list = packages.join(" ");
    let hint = format!(
        "missing {}: install the packages `{list}` (Debian/Ubuntu: `sudo apt-get install -y \
         {list}`), or run `cargo xtask test --no-e2e` to skip the browser tests",
        bins.join(", ")
    );
    if !have("apt-get") {
        return Err(format!(
            "{hint}; this machine has no apt-get to do it automatically"
        ));
    }
    let root_here = is_root();
    let sudo = !root_here && output(Command::new("sudo").args(["-n", "true"])).is_some();
    if !root_here && !sudo {
        return Err(format!(
            "{hint}; installing needs root (not root here, and `sudo -n` asks for a password)"
        ));
    }
    let apt = |args: &[&str]| {
        let mut cmd = if sudo {
            let mut c = Command::new("sudo");
            c.args(["-n", "apt-get"]);
            c
        } else {
            Command::new("apt-get")
        };
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    run(&mut apt(&["update", "-qq"])).map_err(|e| format!("{e}\n{hint}"))?;
    // With recommends, as on the machines where the e2e tests were verified (chromium-common
    // recommends libgl1-mesa-dri, fonts-liberation, udev, ...).
    let mut args = vec!["install", "-y", "-qq"];
    args.extend_from_slice(packages);
    run(&mut apt(&args)).map_err(|e| format!("{e}\n{hint}"))
}

/// Builds the browser bundle. With `test_hooks`, the bundle carries the test-only hooks (a
/// forging viewer for the e2e tests) and goes to `<out_dir>-test`. Both builds share one target
/// folder, so the dependencies are compiled once (a separate folder cost ~65 s of CPU per suite
/// run): the feature makes the crate a different cargo unit, and cargo links the unit each build
/// asks for to the output path, which wasm-bindgen reads at once (checked: the production file's
/// hash is the same before and after a test-hooks build in between).
fn build_wasm(test_hooks: bool) -> Result {
    let s = wasm_settings()?;
    let mut cmd = Command::new(cargo());
    cmd.args([
        "build",
        "--package",
        "swarmcast",
        "--lib",
        "--target",
        WASM_TARGET,
        "--profile",
        &s.profile,
    ]);
    if test_hooks {
        cmd.args(["--features", "test-hooks"]);
    }
    let target_dir = root().join("target");
    run(&mut cmd)?;
    let wasm = target_dir
        .join(WASM_TARGET)
        .join(&s.profile)
        .join("swarmcast.wasm");
    let out_dir = if test_hooks {
        format!("{}-test", s.out_dir)
    } else {
        s.out_dir.clone()
    };
    let out = root().join(out_dir);
    run(Command::new("wasm-bindgen")
        .args(["--target", &s.target, "--no-typescript", "--out-dir"])
        .arg(&out)
        .arg(&wasm))?;
    let local = root().join(LOCAL_WASM_OPT);
    let opt = if have("wasm-opt") {
        Some(PathBuf::from("wasm-opt"))
    } else {
        local.exists().then_some(local)
    };
    let bg = out.join("swarmcast_bg.wasm");
    match opt {
        Some(bin) => run(Command::new(bin)
            .arg(&s.wasm_opt)
            .args([
                "--enable-bulk-memory",
                "--enable-nontrapping-float-to-int",
                "--enable-sign-ext",
                "--enable-reference-types",
                "--enable-multivalue",
                "--enable-mutable-globals",
                "-o",
            ])
            .arg(&bg)
            .arg(&bg))?,
        None => eprintln!("xtask: no wasm-opt on PATH; the bundle is not size-optimised further"),
    }
    let size = fs::metadata(&bg).map(|m| m.len()).unwrap_or(0);
    eprintln!("xtask: built {} ({size} bytes)", bg.display());
    Ok(())
}

fn demo(args: &[String]) -> Result {
    setup(false, false)?;
    build_wasm(false)?;
    let port = flag_value(args, "--port").unwrap_or_else(|| "8080".into());
    run(Command::new(cargo()).args(["build", "--release", "--package", "swarmcast-signaling"]))?;
    let server = root().join("target/release/swarmcast-signaling");
    let addr = format!("127.0.0.1:{port}");
    // The links are printed once the server says it listens (its first stdout line), not
    // before: a busy port must read as the server's error, not as a dead link.
    let mut child = Command::new(server)
        .args(["--listen", &addr, "--static-dir"])
        .arg(root().join("www"))
        .current_dir(root())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting swarmcast-signaling: {e}"))?;
    let mut lines =
        std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().expect("piped")));
    match lines.next() {
        Some(Ok(first)) if first.starts_with("listening on ") => {
            let base = first.trim_start_matches("listening on ").trim().to_string();
            println!("{first}");
            println!();
            println!("swarmcast demo: open {base}/demo.html");
            println!("  (a test-pattern broadcast starts in the page; open more tabs of the viewer link it shows)");
            println!("  broadcaster page: {base}/broadcast.html   stop with Ctrl-C");
            println!();
        }
        other => {
            let status = child.wait().map_err(|e| e.to_string())?;
            return Err(format!(
                "swarmcast-signaling did not start on {addr} ({status}; first output {other:?}); \
                 another program may hold the port: try `cargo xtask demo --port 8090`"
            ));
        }
    }
    for line in lines.map_while(|l| l.ok()) {
        println!("{line}");
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("swarmcast-signaling exited with {status}"))
    }
}

fn flag_value(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Wall and CPU seconds of one step of `test`.
struct StepTime {
    name: &'static str,
    wall: f64,
    cpu: f64,
}

/// CPU seconds (user + system) used so far by the child processes this process has waited for,
/// and their children (Linux: `cutime` + `cstime` of /proc/self/stat, in 100 Hz ticks). On a
/// loaded machine wall time says little; CPU time over the 2 cores CI has says what a clean run
/// costs. Zero where /proc is missing.
fn children_cpu_secs() -> f64 {
    let stat = fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the `(comm)` one: state is field 3, cutime and cstime fields 16 and 17.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (tick(13) + tick(14)) / 100.0
}

/// Runs one named step of `test` and prints how long it took (wall and CPU), so CI logs show
/// where the time goes (CI must stay well under its limit on a 2-core machine).
fn timed(times: &mut Vec<StepTime>, name: &'static str, f: impl FnOnce() -> Result) -> Result {
    let (t0, cpu0) = (Instant::now(), children_cpu_secs());
    let r = f();
    let (wall, cpu) = (t0.elapsed().as_secs_f64(), children_cpu_secs() - cpu0);
    let status = if r.is_ok() { "passed" } else { "FAILED" };
    eprintln!("xtask: step `{name}` {status} in {wall:.1} s wall, {cpu:.1} s CPU");
    times.push(StepTime { name, wall, cpu });
    r
}

fn test(args: &[String]) -> Result {
    let e2e_wanted = !args.iter().any(|a| a == "--no-e2e");
    let (t0, cpu0) = (Instant::now(), children_cpu_secs());
    let mut times = Vec::new();
    let r = test_steps(e2e_wanted, &mut times);
    eprintln!("xtask: step            wall s   CPU s");
    for t in &times {
        eprintln!("xtask:   {:<16} {:7.1} {:7.1}", t.name, t.wall, t.cpu);
    }
    let (wall, cpu) = (t0.elapsed().as_secs_f64(), children_cpu_secs() - cpu0);
    eprintln!("xtask:   {:<16} {wall:7.1} {cpu:7.1}", "total");
    r
}

fn test_steps(e2e_wanted: bool, times: &mut Vec<StepTime>) -> Result {
    // The cargo tests need ffmpeg too (tests/media_ffmpeg.rs), so install it even with --no-e2e.
    timed(times, "setup", || setup(true, e2e_wanted))?;
    timed(times, "fmt", || {
        run(Command::new(cargo()).args(["fmt", "--all", "--", "--check"]))
    })?;
    timed(times, "clippy host", || {
        run(Command::new(cargo()).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    timed(times, "clippy wasm", || {
        run(Command::new(cargo()).args([
            "clippy",
            "--package",
            "swarmcast",
            "--lib",
            "--target",
            WASM_TARGET,
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    timed(times, "cargo test", || {
        run(Command::new(cargo()).args(["test", "--workspace", "--profile", TEST_PROFILE]))
    })?;
    timed(times, "wasm build", || build_wasm(false))?;
    if e2e_wanted {
        timed(times, "wasm test-hooks", || build_wasm(true))?;
        timed(times, "package", || package(true))?;
        timed(times, "e2e", || e2e(&[]))?;
    }
    Ok(())
}

/// Real-browser tests: node's test runner over `tests/e2e/*.test.mjs` (or the files given), inside a
/// fresh network namespace with `lo` plus a veth pair and a default route (docs/SETUP.md: with `lo`
/// alone Chromium gathers no ICE candidates). Nothing leaves the namespace. The suite also gets its
/// own PID namespace: when it ends, the kernel kills whatever it left running (browsers, servers).
fn e2e(args: &[String]) -> Result {
    let dir = root().join("tests/e2e");
    if !dir.join("package.json").exists() {
        return Err("tests/e2e/package.json missing".into());
    }
    // The server the cargo tests built (same profile: nothing to compile after them).
    run(Command::new(cargo()).args([
        "build",
        "--profile",
        TEST_PROFILE,
        "--package",
        "swarmcast-signaling",
    ]))?;
    let signaling = root()
        .join("target")
        .join(TEST_PROFILE)
        .join("swarmcast-signaling");
    // `timeout`: each test has its own limit, but a suite that never exits (a handle left open)
    // must not hold CI until its hard limit. 30 min is above the sum of the tests' own limits.
    let script = "ip link set lo up && \
        ip link add v0 type veth peer name v1 && \
        ip addr add 192.0.2.1/24 dev v0 && ip link set v0 up && ip link set v1 up && \
        ip route add default dev v0 && \
        timeout -k 10 1800 node --test --test-concurrency=1 \"${@:-tests/e2e/}\"; exit $?";
    let namespaces = ["--net", "--pid", "--fork", "--kill-child", "--mount-proc"];
    // Not root: the same namespaces inside a user namespace where we are root, if the kernel
    // lets unprivileged users make one.
    let user_ns: &[&str] = if is_root() {
        &[]
    } else {
        &["--user", "--map-root-user"]
    };
    let works = Command::new("unshare")
        .args(user_ns)
        .args(namespaces)
        .arg("true")
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !works {
        return Err(
            "the browser tests run inside a private network and PID namespace (nothing they \
             start can reach or outlive anything outside it), and `unshare` could not make one: \
             run as root, or allow unprivileged user namespaces \
             (`sysctl kernel.unprivileged_userns_clone=1`), or run `cargo xtask test --no-e2e`"
                .into(),
        );
    }
    // bash stays PID 1 of the namespace (no `exec`), so it reaps what the tests orphan.
    run(Command::new("unshare")
        .args(user_ns)
        .args(namespaces)
        .args(["bash", "-c", script, "e2e"])
        .args(args)
        .env("SWARMCAST_SIGNALING", &signaling))
}

/// Where `package` builds the npm package (ignored by git, like the rest of `out/`).
const NPM_OUT: &str = "out/npm";
/// The tarball under a name that does not change with the version, for examples/vite's
/// `file:` dependency.
const NPM_TARBALL: &str = "out/npm/swarmcast.tgz";
/// The worked example that installs the tarball (its own package-lock.json, for `npm ci`).
const VITE_EXAMPLE: &str = "examples/vite";

/// The npm package (issue 23) from the production browser bundle in `www/pkg` (build it first):
/// `npm/` (entry, types, README, package.json template) plus `www/player.mjs` and the script-tag
/// entry `www/swarmcast.js`, versioned with the crate, into `out/npm/swarmcast/`; then `npm pack`
/// into `out/npm/`. With `example`, installs the tarball into examples/vite and builds that app
/// (type check included), which tests/e2e/npm.test.mjs opens.
fn package(example: bool) -> Result {
    let version = crate_version()?;
    let s = wasm_settings()?;
    let pkg_src = root().join(&s.out_dir);
    let dir = root().join(NPM_OUT).join("swarmcast");
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    fs::create_dir_all(dir.join("pkg")).map_err(|e| format!("{}: {e}", dir.display()))?;
    let copy = |from: PathBuf, to: PathBuf| -> Result {
        fs::copy(&from, &to)
            .map(|_| ())
            .map_err(|e| format!("copying {} to {}: {e}", from.display(), to.display()))
    };
    for f in ["index.js", "index.d.ts", "README.md"] {
        copy(root().join("npm").join(f), dir.join(f))?;
    }
    for f in ["player.mjs", "swarmcast.js"] {
        copy(root().join("www").join(f), dir.join(f))?;
    }
    // The types of the wasm classes, generated by wasm-bindgen from the same .wasm that
    // `build_wasm` made the bundle from (that one runs with --no-typescript); the glue and the
    // optimised .wasm are the bundle's own.
    let wasm = root()
        .join("target")
        .join(WASM_TARGET)
        .join(&s.profile)
        .join("swarmcast.wasm");
    let types = root().join(NPM_OUT).join("bindgen");
    run(Command::new("wasm-bindgen")
        .args(["--target", &s.target, "--out-dir"])
        .arg(&types)
        .arg(&wasm))?;
    copy(types.join("swarmcast.d.ts"), dir.join("pkg/swarmcast.d.ts"))?;
    for f in ["swarmcast.js", "swarmcast_bg.wasm"] {
        copy(pkg_src.join(f), dir.join("pkg").join(f))?;
    }
    let template_path = root().join("npm/package.json");
    let template = fs::read_to_string(&template_path)
        .map_err(|e| format!("{}: {e}", template_path.display()))?;
    const PLACEHOLDER: &str = "\"0.0.0-set-by-xtask\"";
    if !template.contains(PLACEHOLDER) {
        return Err(format!(
            "npm/package.json has no version placeholder {PLACEHOLDER}"
        ));
    }
    let manifest = template.replace(PLACEHOLDER, &format!("\"{version}\""));
    fs::write(dir.join("package.json"), manifest).map_err(|e| e.to_string())?;
    if !have("npm") {
        return Err("npm is needed to pack the package (apt-get install npm)".into());
    }
    run(Command::new("npm")
        .args(["pack", "--silent", "--pack-destination", NPM_OUT])
        .arg(&dir))?;
    let tarball = root()
        .join(NPM_OUT)
        .join(format!("swarmcast-{version}.tgz"));
    copy(tarball.clone(), root().join(NPM_TARBALL))?;
    let bg = dir.join("pkg/swarmcast_bg.wasm");
    eprintln!(
        "xtask: packed {} ({} bytes); wasm {} bytes ({} gzipped), JS {} bytes",
        tarball.display(),
        file_len(&tarball),
        file_len(&bg),
        gzipped_len(&bg),
        ["index.js", "player.mjs", "pkg/swarmcast.js"]
            .iter()
            .map(|f| file_len(&dir.join(f)))
            .sum::<u64>(),
    );
    if example {
        build_example(&bg)?;
    }
    Ok(())
}

/// `version` of the root crate's `[package]` table in Cargo.toml.
fn crate_version() -> Result<String> {
    let path = root().join("Cargo.toml");
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut in_package = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if let Some((k, v)) = line.split_once('=') {
            if in_package && k.trim() == "version" {
                return Ok(v.trim().trim_matches('"').to_string());
            }
        }
    }
    Err("Cargo.toml's [package] has no version".into())
}

/// Installs the packed tarball into examples/vite with `npm ci` and builds the app there.
fn build_example(built_wasm: &Path) -> Result {
    let dir = root().join(VITE_EXAMPLE);
    let npm = |args: &[&str]| -> Result {
        let mut cmd = Command::new("npm");
        cmd.args(args).current_dir(&dir);
        eprintln!("+ (cd {VITE_EXAMPLE} && {cmd:?})");
        let status = cmd.status().map_err(|e| format!("cannot start npm: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "npm {} in {VITE_EXAMPLE} failed with {status}",
                args.join(" ")
            ))
        }
    };
    npm(&["ci", "--no-audit", "--no-fund"])?;
    // package-lock.json records no integrity for the local tarball (it changes with every
    // build); were one there, npm would install its cached copy of an older build.
    let installed = dir.join("node_modules/swarmcast/pkg/swarmcast_bg.wasm");
    if fs::read(&installed).ok() != fs::read(built_wasm).ok() {
        return Err(format!(
            "{} is not the .wasm just packed: does {VITE_EXAMPLE}/package-lock.json record an \
             integrity for swarmcast? (remove it)",
            installed.display()
        ));
    }
    npm(&["run", "build"])?;
    let assets = dir.join("dist/assets");
    let mut total = 0;
    for entry in fs::read_dir(&assets).map_err(|e| format!("{}: {e}", assets.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        eprintln!(
            "xtask: example output {} {} bytes ({} gzipped)",
            path.display(),
            file_len(&path),
            gzipped_len(&path)
        );
        total += file_len(&path);
    }
    eprintln!(
        "xtask: example output {total} bytes in {}",
        assets.display()
    );
    Ok(())
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Size after `gzip -9` (what a server sending it compressed transfers); 0 without gzip.
fn gzipped_len(path: &Path) -> usize {
    output(
        Command::new("sh")
            .arg("-c")
            .arg(format!("gzip -9 -c '{}' | wc -c", path.display())),
    )
    .and_then(|s| s.trim().parse().ok())
    .unwrap_or(0)
}

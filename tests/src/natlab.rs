//! A lab of Linux network namespaces that stands in for the internet: an
//! "internet" namespace with the server, and LANs, each behind a router
//! namespace that does NAT with iptables the way home routers do. Every
//! address is in 198.18.0.0/15, the range set aside for such tests.
//!
//! ```text
//!   internet  (bridge 198.18.0.1/24: the server)
//!     ├── router 1 (wan 198.18.0.11) ── LAN 198.19.1.0/24: hosts .11, .12 …
//!     └── router 2 (wan 198.18.0.12) ── LAN 198.19.2.0/24: hosts .11, .12 …
//! ```
//!
//! Routers drop unsolicited packets from their WAN side in INPUT and
//! FORWARD, as home routers do: without that, a remote peer's early
//! connectivity check leaves a conntrack entry that makes the router remap
//! our own port, and even cone↔cone fails. Everything the lab made —
//! namespaces, every process started in them, and the loopback ports that
//! forward into them ([`Lab::forward_tcp`]) — is removed when it is
//! dropped, also when a test fails.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use anyhow::{Context, Result, bail};

/// How a LAN's router treats traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// Endpoint-independent mapping (MASQUERADE keeps the source port).
    Cone,
    /// A new random port per destination (MASQUERADE --random-fully).
    Symmetric,
    /// Cone NAT that forwards no UDP at all.
    NoUdp,
}

/// One lab; its namespaces are named `<prefix>-…`.
pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    routers: u8,
    forwards: Mutex<Vec<Forward>>,
}

/// A LAN behind a router.
#[derive(Debug, Clone, Copy)]
pub struct Lan {
    index: u8,
    hosts: u8,
}

/// The server's address in the internet namespace.
pub const SERVER_IP: &str = "198.18.0.1";

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// Makes the internet namespace. Fails, saying why, when namespaces
    /// cannot be made here (not root, no `ip`, no iptables).
    pub fn new() -> Result<Self> {
        for tool in ["ip", "iptables"] {
            let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .iter()
                .any(|dir| Path::new(dir).join(tool).exists());
            if !found {
                bail!(
                    "the NAT lab needs `{tool}` (Debian: iproute2, iptables); `cargo xtask test` installs them"
                );
            }
        }
        // Short: interface and namespace names are limited, and a run's
        // labs must not collide with another run's.
        let prefix = format!(
            "eph{}x{}",
            std::process::id() % 100_000,
            NEXT_LAB.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = Self {
            prefix,
            namespaces: Vec::new(),
            routers: 0,
            forwards: Mutex::new(Vec::new()),
        };
        let internet = lab.namespace("inet").context(
            "cannot create a network namespace: the NAT lab needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN)",
        )?;
        lab.ip(&internet, "link add br0 type bridge")?;
        lab.ip(&internet, &format!("addr add {SERVER_IP}/24 dev br0"))?;
        lab.ip(&internet, "link set br0 up")?;
        Ok(lab)
    }

    /// What every namespace of this lab is named after.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespace the server runs in.
    pub fn internet(&self) -> String {
        format!("{}-inet", self.prefix)
    }

    fn namespace(&mut self, name: &str) -> Result<String> {
        let full = format!("{}-{name}", self.prefix);
        run(Command::new("ip").args(["netns", "add", &full]))?;
        self.namespaces.push(full.clone());
        self.ip(&full, "link set lo up")?;
        Ok(full)
    }

    fn ip(&self, namespace: &str, args: &str) -> Result<()> {
        run(Command::new("ip")
            .args(["-n", namespace])
            .args(args.split_whitespace()))
    }

    fn iptables(&self, namespace: &str, args: &str) -> Result<()> {
        run(Command::new("ip")
            .args(["netns", "exec", namespace, "iptables", "-w"])
            .args(args.split_whitespace()))
    }

    /// Adds a LAN behind a router of the given kind, with no hosts yet.
    pub fn add_lan(&mut self, nat: Nat) -> Result<Lan> {
        self.routers += 1;
        let index = self.routers;
        let internet = self.internet();
        let router = self.namespace(&format!("r{index}"))?;
        // WAN: a veth from the router into the internet's bridge.
        self.ip(
            &router,
            &format!("link add wan type veth peer name w{index} netns {internet}"),
        )?;
        self.ip(&internet, &format!("link set w{index} master br0 up"))?;
        self.ip(
            &router,
            &format!("addr add 198.18.0.{}/24 dev wan", 10 + index),
        )?;
        self.ip(&router, "link set wan up")?;
        // LAN: a bridge the hosts plug into.
        self.ip(&router, "link add lan type bridge")?;
        self.ip(&router, &format!("addr add 198.19.{index}.1/24 dev lan"))?;
        self.ip(&router, "link set lan up")?;
        run(Command::new("ip").args([
            "netns",
            "exec",
            &router,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]))?;
        let masquerade = match nat {
            Nat::Symmetric => "-t nat -A POSTROUTING -o wan -j MASQUERADE --random-fully",
            Nat::Cone | Nat::NoUdp => "-t nat -A POSTROUTING -o wan -j MASQUERADE",
        };
        self.iptables(&router, masquerade)?;
        for chain in ["INPUT", "FORWARD"] {
            self.iptables(
                &router,
                &format!("-A {chain} -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"),
            )?;
            self.iptables(&router, &format!("-A {chain} -i wan -j DROP"))?;
        }
        if nat == Nat::NoUdp {
            self.iptables(&router, "-I FORWARD -p udp -j DROP")?;
        }
        Ok(Lan { index, hosts: 0 })
    }

    /// Adds a host to `lan`; returns its namespace and address.
    pub fn add_host(&mut self, lan: &mut Lan) -> Result<(String, String)> {
        lan.hosts += 1;
        let index = lan.index;
        let host = self.namespace(&format!("h{index}{}", lan.hosts))?;
        let router = format!("{}-r{index}", self.prefix);
        let address = format!("198.19.{index}.{}", 10 + lan.hosts);
        let port = format!("l{}", lan.hosts);
        self.ip(
            &host,
            &format!("link add eth0 type veth peer name {port} netns {router}"),
        )?;
        self.ip(&router, &format!("link set {port} master lan up"))?;
        self.ip(&host, &format!("addr add {address}/24 dev eth0"))?;
        self.ip(&host, "link set eth0 up")?;
        self.ip(&host, &format!("route add default via 198.19.{index}.1"))?;
        Ok((host, address))
    }

    /// Starts `program args…` inside `namespace`; it is killed with the lab.
    pub fn spawn(&self, namespace: &str, program: &Path, args: &[&str]) -> Result<Child> {
        Command::new("ip")
            .args(["netns", "exec", namespace])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {} in {namespace}", program.display()))
    }

    /// Runs `program args…` inside `namespace` to the end.
    pub fn output(&self, namespace: &str, program: &Path, args: &[&str]) -> Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", namespace])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {} in {namespace}", program.display()))
    }
}

impl Lab {
    /// A loopback port of this (the root) namespace whose connections are
    /// carried to `127.0.0.1:port` inside `namespace`: how a test reaches a
    /// server that runs in the lab (ChromeDriver) without any address but
    /// loopback on either side. Stops with the lab.
    ///
    /// The listener is made here, in the root namespace; the thread that
    /// accepts on it first moves itself — only itself — into `namespace`
    /// (`setns(2)`), so the sockets it connects live there.
    pub fn forward_tcp(&self, namespace: &str, port: u16) -> Result<u16> {
        if !self.namespaces.iter().any(|n| n == namespace) {
            bail!("{namespace} is not a namespace of this lab");
        }
        let netns = File::open(format!("/run/netns/{namespace}"))
            .with_context(|| format!("cannot open the namespace {namespace}"))?;
        let listener =
            TcpListener::bind(("127.0.0.1", 0)).context("no free loopback port to forward")?;
        let local = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let copiers = Arc::new(Mutex::new(Vec::new()));
        let (entered_tx, entered_rx) = mpsc::channel();
        let acceptor = {
            let (stop, streams, copiers) = (stop.clone(), streams.clone(), copiers.clone());
            std::thread::Builder::new()
                .name(format!("forward-{namespace}"))
                .spawn(move || {
                    // SAFETY: plain system call on an fd we own; it changes
                    // the network namespace of this thread only.
                    let entered = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
                    drop(netns);
                    if entered != 0 {
                        let _ = entered_tx.send(Err(std::io::Error::last_os_error()));
                        return;
                    }
                    let _ = entered_tx.send(Ok(()));
                    accept_and_forward(&listener, port, &stop, &streams, &copiers);
                })
                .context("cannot start the forwarding thread")?
        };
        match entered_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                let _ = acceptor.join();
                return Err(error).with_context(|| format!("setns into {namespace}"));
            }
            Err(_) => bail!("the forwarding thread into {namespace} died"),
        }
        self.forwards
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(Forward {
                port: local,
                stop,
                streams,
                copiers,
                acceptor: Some(acceptor),
            });
        Ok(local)
    }
}

/// One [`Lab::forward_tcp`]: the thread accepting on the loopback port,
/// the connections it carries and the threads copying their bytes.
struct Forward {
    port: u16,
    stop: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    copiers: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: Option<JoinHandle<()>>,
}

/// Runs in the target namespace: each connection accepted (from the root
/// namespace) is joined to a new one to `127.0.0.1:port` made here.
fn accept_and_forward(
    listener: &TcpListener,
    port: u16,
    stop: &AtomicBool,
    streams: &Mutex<Vec<TcpStream>>,
    copiers: &Mutex<Vec<JoinHandle<()>>>,
) {
    for outside in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(outside) = outside else { continue };
        // Nobody listening inside (yet): the outside connection is closed.
        let Ok(inside) = TcpStream::connect(("127.0.0.1", port)) else {
            continue;
        };
        let pair = (
            outside.try_clone(),
            inside.try_clone(),
            outside.try_clone(),
            inside.try_clone(),
        );
        let (Ok(outside_r), Ok(inside_w), Ok(outside_w), Ok(inside_r)) = pair else {
            continue;
        };
        let mut streams = streams.lock().unwrap_or_else(|p| p.into_inner());
        streams.push(outside);
        streams.push(inside);
        let mut copiers = copiers.lock().unwrap_or_else(|p| p.into_inner());
        copiers.push(std::thread::spawn(move || copy(outside_r, inside_w)));
        copiers.push(std::thread::spawn(move || copy(inside_r, outside_w)));
    }
}

/// Copies until `from` ends, then ends `to` in that direction.
fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accepting thread, which sees `stop` and returns.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for stream in self
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let copiers: Vec<_> = self
            .copiers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for copier in copiers {
            let _ = copier.join();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // First the forwarding threads, which live in the namespaces.
        self.forwards
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        // `ip netns exec` forks: the programs are not our children's PIDs.
        // Kill whatever runs in each namespace, then delete it.
        for namespace in self.namespaces.iter().rev() {
            if let Ok(pids) = Command::new("ip")
                .args(["netns", "pids", namespace])
                .output()
            {
                for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                    // Quietly: a process may have ended since it was listed.
                    let _ = Command::new("kill")
                        .args(["-9", pid])
                        .stderr(Stdio::null())
                        .status();
                }
            }
            let _ = Command::new("ip")
                .args(["netns", "del", namespace])
                .status();
        }
    }
}

fn run(command: &mut Command) -> Result<()> {
    let output = command
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Lines a child prints on stdout and stderr, as they come. The pipes are
/// read to the end even once nobody listens: a closed pipe would fail the
/// child's next write.
pub fn output_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stdout = child
        .stdout
        .take()
        .map(|s| Box::new(s) as Box<dyn Read + Send>);
    let stderr = child
        .stderr
        .take()
        .map(|s| Box::new(s) as Box<dyn Read + Send>);
    for stream in [stdout, stderr].into_iter().flatten() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in
                std::io::BufRead::lines(std::io::BufReader::new(stream)).map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
    }
    rx
}

/// The first line matching `wanted` within `limit`; or every line read.
pub fn wait_for_line(
    lines: &mpsc::Receiver<String>,
    limit: std::time::Duration,
    wanted: impl Fn(&str) -> bool,
) -> std::result::Result<String, Vec<String>> {
    let deadline = std::time::Instant::now() + limit;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) if wanted(&line) => return Ok(line),
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    Err(seen)
}

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
//! namespaces and every process started in them — is removed when it is
//! dropped, also when a test fails.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

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

impl Drop for Lab {
    fn drop(&mut self) {
        // `ip netns exec` forks: the programs are not our children's PIDs.
        // Kill whatever runs in each namespace, then delete it.
        for namespace in self.namespaces.iter().rev() {
            if let Ok(pids) = Command::new("ip")
                .args(["netns", "pids", namespace])
                .output()
            {
                for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
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

//! The cluster (`--redis`, docs/cluster.md): three server nodes, each its
//! own process, on a real `redis-server` on loopback. Native peers and raw
//! Phoenix clients on different nodes check that every guarantee of one
//! process holds across nodes, and that the cluster survives a node killed
//! with SIGKILL and a Redis restart, with time bounds asserted by polling.
//! Each test has its own Redis and nodes, all killed when it ends; the
//! last one also runs two headless Chromium browsers, one per node.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ephemeral_peer::{FetchError, Peer, PeerConfig, Transport};
use ephemeral_phoenix_client::{Client, Reply};
use ephemeral_shared::{PageHash, PeerId};
use ephemeral_tests::cluster::{Balancer, Cluster, Node, Redis, server_binary};
use serde_json::{Value, json};
use signal_server::cluster::ring::{self, NodeId};

/// No step may take longer; a hang is a failure, not a stuck CI run.
const STEP: Duration = Duration::from_secs(60);
/// What the issue promises for failures: a killed node's peers gone from
/// every count, and every page retrievable after a Redis restart.
const FAILOVER: Duration = Duration::from_secs(5);

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {STEP:?}: {what}"),
    }
}

fn binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| server_binary("cluster").expect("building signal-server"))
        .clone()
}

async fn cluster(flags: &[&str]) -> Cluster {
    let flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
    within(
        "starting Redis and three nodes",
        Cluster::start(&binary(), 3, &flags),
    )
    .await
    .expect("the cluster starts")
}

fn peer_config(url: &str) -> PeerConfig {
    let mut config = PeerConfig::new(url);
    config.rtc.bind = "127.0.0.1".parse().expect("a literal address");
    config.reconnect_min = Duration::from_millis(50);
    config.reconnect_max = Duration::from_millis(500);
    config
}

async fn peer(url: &str) -> Peer {
    within("connecting a peer", Peer::connect(peer_config(url)))
        .await
        .expect("the peer connects")
}

async fn raw(node: &Node) -> Client {
    within(
        "connecting a client",
        Client::connect(&node.websocket_url()),
    )
    .await
    .expect("the client connects")
}

fn topics(hash: PageHash) -> (String, String) {
    (format!("have:{hash}"), format!("want:{hash}"))
}

/// Each node's id, as the peer ids it hands out show it.
async fn node_ids(cluster: &Cluster) -> Vec<NodeId> {
    let mut ids = Vec::new();
    for node in &cluster.nodes {
        let mut client = raw(node).await;
        let (have, _) = topics(PageHash::of(b"who are you"));
        let id: PeerId = client
            .join_for_id(&have)
            .await
            .expect("a join")
            .parse()
            .expect("a peer id");
        ids.push(NodeId::of_peer(id));
    }
    ids
}

/// A page whose home is `home`, so that a test knows which node decides.
fn page_homed_on(home: NodeId, ids: &[NodeId], label: &str) -> (Vec<u8>, PageHash) {
    let set: BTreeSet<NodeId> = ids.iter().copied().collect();
    (0..10_000)
        .map(|n| format!("{label} #{n}").into_bytes())
        .map(|page| {
            let hash = PageHash::of(&page);
            (page, hash)
        })
        .find(|(_, hash)| ring::home(*hash, &set) == Some(home))
        .expect("some page is homed on each node")
}

fn reason(reply: &Reply) -> &str {
    reply.reason().unwrap_or("<none>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_peers_fetch_across_nodes_and_every_node_counts_the_same() {
    let cluster = cluster(&[]).await;
    let ids = node_ids(&cluster).await;
    // Homed on the node with neither the host nor the first visitor.
    let (page, hash) = page_homed_on(ids[2], &ids, "across nodes");
    let url = |i: usize| cluster.nodes[i].websocket_url();

    let host = peer(&url(0)).await;
    within("sharing", host.share(page.clone()))
        .await
        .expect("shared");
    let mut peers = vec![host];
    for i in [1, 2] {
        let visitor = peer(&url(i)).await;
        let fetched = within("a fetch across nodes", visitor.fetch(hash))
            .await
            .expect("the page across nodes");
        assert_eq!(fetched.page, page);
        assert_eq!(fetched.transport, Transport::WebRtc, "node {i}");
        peers.push(visitor);
    }
    // The relay fallback crosses nodes too.
    let mut relay_only = peer_config(&url(1));
    relay_only.fetch.webrtc = false;
    let visitor = within("connecting", Peer::connect(relay_only))
        .await
        .expect("connects");
    let fetched = within("a relayed fetch across nodes", visitor.fetch(hash))
        .await
        .expect("the page by relay");
    assert_eq!(fetched.page, page);
    assert_eq!(fetched.transport, Transport::Relay);
    peers.push(visitor);

    // Four hosts on three nodes: every one of them hears the same counts.
    for peer in &peers {
        let mut counts = within("watching counts", peer.watch_count(hash))
            .await
            .expect("counts");
        within(
            "every peer sees four hosts",
            counts.wait_for(|c| c.is_some_and(|c| c.count == 4 && c.waiting == 0)),
        )
        .await
        .expect("counts");
    }
    // And a join on any node is answered with the cluster-wide counts.
    let (_, want) = topics(hash);
    let mut watchers = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let mut watcher = raw(node).await;
        let joined = within("a join", watcher.join(&want)).await.expect("joins");
        assert_eq!(joined["count"], json!(4), "node {i}: {joined}");
        assert_eq!(joined["waiting"], json!(i + 1), "node {i}: {joined}");
        watchers.push(watcher);
    }
}

/// Sends `rounds` requests from `visitor`, then waits until the hosts
/// have received as many: per host id, how many it got, and per host id
/// how many replies named it.
async fn requests(
    visitor: &mut Client,
    want: &str,
    hosts: &mut [(String, Client)],
    rounds: usize,
    payload: Value,
) -> (HashMap<String, usize>, HashMap<String, usize>) {
    let mut named: HashMap<String, usize> = HashMap::new();
    for _ in 0..rounds {
        let reply = visitor
            .call(want, "content_request", payload.clone())
            .await
            .expect("a reply");
        assert!(reply.is_ok(), "{reply}");
        let host = reply.response["host"].as_str().expect("a host").to_string();
        *named.entry(host).or_default() += 1;
    }
    let mut received: HashMap<String, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while received.values().sum::<usize>() < rounds && Instant::now() < deadline {
        for (id, host) in hosts.iter_mut() {
            while host
                .expect_within(Duration::from_millis(20), |f| f.event == "content_request")
                .await
                .expect("reading")
                .is_some()
            {
                *received.entry(id.clone()).or_default() += 1;
            }
        }
    }
    // Anything beyond would be a request reaching two hosts.
    for (_, host) in hosts.iter_mut() {
        let extra = host
            .expect_within(Duration::from_millis(200), |f| f.event == "content_request")
            .await
            .expect("reading");
        assert!(extra.is_none(), "a request reached a second host");
    }
    (received, named)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selection_is_uniform_over_hosts_on_every_node_and_honours_exclude() {
    let cluster = cluster(&[
        "--messages-per-second",
        "100000",
        "--message-burst",
        "100000",
    ])
    .await;
    let ids = node_ids(&cluster).await;
    let (_, hash) = page_homed_on(ids[1], &ids, "uniform");
    let (have, want) = topics(hash);
    let mut hosts = Vec::new();
    for node in cluster.nodes.iter().chain(&cluster.nodes) {
        let mut host = raw(node).await;
        let id = host.join_for_id(&have).await.expect("joins");
        hosts.push((id, host));
    }
    let mut visitor = raw(&cluster.nodes[0]).await;
    visitor.join(&want).await.expect("joins");

    let rounds = 1200;
    let (received, named) = within(
        "uniform requests",
        requests(&mut visitor, &want, &mut hosts, rounds, json!({})),
    )
    .await;
    assert_eq!(received.values().sum::<usize>(), rounds, "one host each");
    assert_eq!(named, received, "the reply names the host that got it");
    let expected = rounds as f64 / hosts.len() as f64;
    let chi2: f64 = hosts
        .iter()
        .map(|(id, _)| received.get(id).copied().unwrap_or(0) as f64)
        .map(|c| (c - expected).powi(2) / expected)
        .sum();
    // 5 degrees of freedom: p = 0.001 at 20.52.
    assert!(chi2 < 20.52, "chi-square {chi2}: {received:?}");

    // Every host but one, on the third node, excluded.
    let kept = hosts[5].0.clone();
    let excluded: Vec<String> = hosts[..5].iter().map(|(id, _)| id.clone()).collect();
    let (received, _) = within(
        "excluding requests",
        requests(
            &mut visitor,
            &want,
            &mut hosts,
            50,
            json!({"exclude": excluded}),
        ),
    )
    .await;
    assert_eq!(received.get(&kept), Some(&50), "{received:?}");
    let all: Vec<String> = hosts.iter().map(|(id, _)| id.clone()).collect();
    let reply = visitor
        .call(&want, "content_request", json!({"exclude": all}))
        .await
        .expect("a reply");
    assert_eq!(reason(&reply), "no_hosts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_slots_and_the_queue_hold_across_nodes() {
    let cluster = cluster(&[
        "--max-uploads-per-host",
        "1",
        "--queue-wait-ms",
        "30000",
        "--slot-timeout-ms",
        "30000",
    ])
    .await;
    let ids = node_ids(&cluster).await;
    let (_, hash) = page_homed_on(ids[2], &ids, "slots");
    let (have, want) = topics(hash);
    let mut host = raw(&cluster.nodes[1]).await;
    let host_id = host.join_for_id(&have).await.expect("joins");
    let mut first = raw(&cluster.nodes[0]).await;
    first.join(&want).await.expect("joins");
    let mut second = raw(&cluster.nodes[2]).await;
    let second_id = second.join_for_id(&want).await.expect("joins");

    let reply = first
        .call(&want, "content_request", json!({}))
        .await
        .expect("a reply");
    assert_eq!(reply.response["host"], json!(host_id));
    // The host's one slot is taken: the second request waits.
    let waiting = second
        .push(&want, "content_request", json!({}))
        .await
        .expect("sent");
    let early = second
        .expect_within(Duration::from_millis(700), |f| {
            f.msg_ref.as_deref() == Some(waiting.as_str())
        })
        .await
        .expect("reading");
    assert!(early.is_none(), "routed past a full slot: {early:?}");
    // The first visitor leaves: its slot frees, the waiting request goes.
    let freed = Instant::now();
    first.leave(&want).await.expect("leaves");
    let reply = second.reply(&waiting).await.expect("the waiting reply");
    assert_eq!(reply.response["host"], json!(host_id));
    assert!(freed.elapsed() < Duration::from_secs(5));
    let asked = host
        .expect(|f| f.event == "content_request" && f.payload["from"] == json!(second_id))
        .await
        .expect("the host hears the second visitor");
    assert_eq!(asked.topic, have);
}

/// A relayed page crosses Redis whole, from the host's node to the page's
/// home to the visitor's node, which sends it on to the visitor in parts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_relayed_across_nodes_reaches_the_visitor_in_parts() {
    let cluster = cluster(&[]).await;
    let ids = node_ids(&cluster).await;
    let long = "relayed across nodes, in parts ".repeat(7_000);
    let (page, hash) = page_homed_on(ids[2], &ids, &long);
    let text = String::from_utf8(page).expect("text");
    let (have, want) = topics(hash);
    let mut host = raw(&cluster.nodes[0]).await;
    host.join(&have).await.expect("joins");
    let mut visitor = raw(&cluster.nodes[1]).await;
    visitor.join(&want).await.expect("joins");
    let routed = visitor
        .call(&want, "content_request", json!({"relay": true}))
        .await
        .expect("a reply");
    assert!(routed.is_ok(), "{routed:?}");
    host.expect_push(&have, "content_request")
        .await
        .expect("the request");
    let relayed = host
        .call(&have, "content", json!({"content": text}))
        .await
        .expect("a reply");
    assert_eq!(relayed.response, json!({"delivered": 1}), "{relayed:?}");

    let mut received = String::new();
    let mut parts = 0;
    while received.len() < text.len() {
        let frame = visitor
            .expect(|f| f.event == "content")
            .await
            .expect("a part");
        assert_eq!(frame.topic, want);
        let payload = Value::Object(frame.payload);
        assert_eq!(payload["offset"], json!(received.len()), "part {parts}");
        assert_eq!(payload["size"], json!(text.len()));
        let part = payload["content"].as_str().expect("a string");
        assert!(part.len() <= 64 * 1024, "{} bytes", part.len());
        received.push_str(part);
        parts += 1;
    }
    assert!(received == text, "the parts make the page");
    assert_eq!(parts, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_cross_nodes_only_between_the_two_sides_of_a_page() {
    let cluster = cluster(&[]).await;
    let (have, want) = topics(PageHash::of(b"signals across nodes"));
    let mut host = raw(&cluster.nodes[0]).await;
    let host_id = host.join_for_id(&have).await.expect("joins");
    let mut visitor = raw(&cluster.nodes[1]).await;
    let visitor_id = visitor.join_for_id(&want).await.expect("joins");
    let mut impostor = raw(&cluster.nodes[2]).await;
    let impostor_id = impostor.join_for_id(&want).await.expect("joins");

    // `from` is stamped by the sender's node, whatever the sender claims.
    let offer = json!({"to": visitor_id, "type": "offer", "sdp": "v=0", "from": impostor_id});
    host.push(&have, "signal", offer).await.expect("sent");
    let got = visitor
        .expect(|f| f.event == "signal")
        .await
        .expect("the offer");
    assert_eq!(got.topic, want);
    assert_eq!(
        Value::Object(got.payload),
        json!({"from": host_id, "type": "offer", "sdp": "v=0"})
    );
    let answer = json!({"to": host_id, "type": "answer", "sdp": "v=0 answer"});
    visitor.push(&want, "signal", answer).await.expect("sent");
    let got = host
        .expect(|f| f.event == "signal")
        .await
        .expect("the answer");
    assert_eq!(got.payload["from"], json!(visitor_id));

    // Sideways (visitor to visitor, on another node): refused there, and
    // the refusal comes back as the error reply.
    let sideways = json!({"to": impostor_id, "type": "offer", "sdp": "v=0"});
    let reply = visitor
        .call(&want, "signal", sideways)
        .await
        .expect("a reply");
    assert_eq!(reason(&reply), "unknown_peer", "{reply}");
    // From another page, on a third node.
    let (other_have, _) = topics(PageHash::of(b"another page"));
    let mut stranger = raw(&cluster.nodes[2]).await;
    stranger.join(&other_have).await.expect("joins");
    let across = json!({"to": visitor_id, "type": "answer", "sdp": "v=0"});
    let reply = stranger
        .call(&other_have, "signal", across)
        .await
        .expect("a reply");
    assert_eq!(reason(&reply), "unknown_peer", "{reply}");
    // To a node that does not exist.
    let nowhere = format!("ffffffff{}", &visitor_id[8..]);
    let reply = host
        .call(
            &have,
            "signal",
            json!({"to": nowhere, "type": "offer", "sdp": "v=0"}),
        )
        .await
        .expect("a reply");
    assert_eq!(reason(&reply), "unknown_peer", "{reply}");
    let stray = impostor
        .expect_within(Duration::from_millis(300), |f| f.event == "signal")
        .await
        .expect("reading");
    assert!(stray.is_none(), "{stray:?}");
}

/// Polls `check` every 50 ms until it holds; how long that took, or a
/// panic after `bound`.
async fn poll_until<F, Fut>(what: &str, bound: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < bound, "{what}: not within {bound:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Fetches `hash` on `url` until it arrives; how long that took after
/// `since`. A fetch told the page is gone tries again: during a failure
/// the node may not know the hosts yet.
async fn fetch_until_found(url: &str, hash: PageHash, since: Instant, bound: Duration) -> Duration {
    loop {
        let visitor = peer(url).await;
        let fetched = tokio::time::timeout(bound, visitor.fetch(hash)).await;
        visitor.shutdown().await;
        match fetched {
            Ok(Ok(_)) => return since.elapsed(),
            Ok(Err(FetchError::Gone)) | Err(_) => {}
            Ok(Err(error)) => panic!("fetch failed: {error}"),
        }
        assert!(
            since.elapsed() < bound,
            "the page did not come back within {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_leaves_every_count_and_its_pages_and_peers_move() {
    let mut cluster = cluster(&[]).await;
    let ids = node_ids(&cluster).await;
    // Homed on the node that will be killed: the page must move.
    let (page, hash) = page_homed_on(ids[1], &ids, "killed");
    let (have, want) = topics(hash);
    let host = peer(&cluster.nodes[0].websocket_url()).await;
    within("sharing", host.share(page.clone()))
        .await
        .expect("shared");
    // A peer behind the balancer, on node 1 first, that will come back on
    // another node; and a raw host on node 1 that will not come back.
    let addrs = [1, 2, 0].map(|i| cluster.nodes[i].addr());
    let balancer = Balancer::start(addrs.to_vec()).await.expect("a balancer");
    let wanderer = peer(&balancer.websocket_url()).await;
    within("a fetch through the balancer", wanderer.fetch(hash))
        .await
        .expect("the page");
    let mut doomed = raw(&cluster.nodes[1]).await;
    doomed.join(&have).await.expect("joins");
    let mut watchers = Vec::new();
    for i in [0, 2] {
        let mut watcher = raw(&cluster.nodes[i]).await;
        watcher.join(&want).await.expect("joins");
        watchers.push(watcher);
    }
    for watcher in &mut watchers {
        let three = |f: &ephemeral_phoenix_client::Frame| {
            f.event == "visitors_count" && f.payload["count"] == json!(3)
        };
        within("three hosts", watcher.expect(three))
            .await
            .expect("counts");
    }

    cluster.nodes[1].kill();
    let killed = Instant::now();
    // Its raw host is gone from the counts on both other nodes, and the
    // wanderer is back, through the balancer, on another node.
    for watcher in &mut watchers {
        let two = |f: &ephemeral_phoenix_client::Frame| {
            f.event == "visitors_count" && f.payload["count"] == json!(2)
        };
        let left = FAILOVER.saturating_sub(killed.elapsed());
        let seen = watcher.expect_within(left, two).await.expect("reading");
        assert!(
            seen.is_some(),
            "the killed node's hosts still counted after {FAILOVER:?}"
        );
    }
    let gone = killed.elapsed();
    let status = wanderer.status();
    assert!(status.borrow().connections >= 2, "the wanderer reconnected");
    assert!(
        balancer
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );
    // The page, homed on the dead node, is served from the others.
    let found = fetch_until_found(&cluster.nodes[2].websocket_url(), hash, killed, FAILOVER).await;
    for i in [0, 2] {
        assert_eq!(
            cluster.nodes[i]
                .metric("ephemeral_cluster_nodes_alive")
                .await
                .expect("metrics"),
            2.0
        );
    }
    eprintln!("killed node: counts updated after {gone:?}, page fetched after {found:?}");
    drop(doomed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_nodes_serve_alone_and_heal_when_it_is_back() {
    let mut cluster = cluster(&[]).await;
    let (page, hash) = (
        b"through a Redis restart".to_vec(),
        PageHash::of(b"through a Redis restart"),
    );
    let host = peer(&cluster.nodes[0].websocket_url()).await;
    within("sharing", host.share(page.clone()))
        .await
        .expect("shared");
    let before = fetch_until_found(
        &cluster.nodes[2].websocket_url(),
        hash,
        Instant::now(),
        STEP,
    )
    .await;

    let port = cluster.redis.port();
    cluster.redis.kill();
    let lost = Instant::now();
    for node in &cluster.nodes {
        poll_until("/healthz says degraded", FAILOVER, || async {
            matches!(node.get("/healthz").await, Ok((503, body)) if body.starts_with("degraded"))
        })
        .await;
        assert_eq!(
            node.metric("ephemeral_cluster_redis_up")
                .await
                .expect("metrics"),
            0.0
        );
    }
    // Alone, a node still serves what its own sockets host.
    let local = peer(&cluster.nodes[0].websocket_url()).await;
    let fetched = within("a fetch on the host's node", local.fetch(hash))
        .await
        .expect("served locally");
    assert_eq!(fetched.page, page);
    eprintln!("Redis down: degraded everywhere after {:?}", lost.elapsed());

    cluster.redis = within("restarting Redis", Redis::start_on(port))
        .await
        .expect("Redis restarts");
    let back = Instant::now();
    for node in &cluster.nodes {
        poll_until("/healthz says ok", FAILOVER, || async {
            matches!(node.get("/healthz").await, Ok((200, _)))
        })
        .await;
    }
    let found = fetch_until_found(&cluster.nodes[1].websocket_url(), hash, back, FAILOVER).await;
    for node in &cluster.nodes {
        assert!(
            node.metric("ephemeral_cluster_reconnects_total")
                .await
                .expect("metrics")
                >= 1.0
        );
    }
    eprintln!(
        "Redis restart: fetched across nodes {found:?} after it was back (first fetch {before:?})"
    );
}

/// What the app's test hooks show (web-client/src/view.rs), or `None`
/// before the app is up.
async fn shown(browser: &fantoccini::Client) -> Option<Value> {
    let script = r#"
        const $ = (id) => document.getElementById(id);
        const app = $("app");
        if (!app || !$("content")) { return null; }
        return {
          state: app.dataset.state ?? null,
          count: $("host-count").dataset.count ?? null,
          transport: $("transport").dataset.transport ?? null,
          content: $("content").textContent,
        };
    "#;
    let value = browser.execute(script, vec![]).await.ok()?;
    (!value.is_null()).then_some(value)
}

async fn wait_shown(
    browser: &fantoccini::Client,
    what: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    ephemeral_tests::chromium::poll_page(what, STEP, || shown(browser), ready).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_on_different_nodes_share_a_page() {
    if let Some(why) = ephemeral_tests::chromium::missing() {
        panic!("{why}");
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    assert!(
        root.join("static/pkg/web_client_bg.wasm").exists(),
        "the browser client is not built: run `cargo xtask build` or `cargo xtask test`"
    );
    let cluster = cluster(&[]).await;
    let driver = within(
        "ChromeDriver",
        ephemeral_tests::chromium::ChromeDriver::start(),
    )
    .await
    .expect("ChromeDriver starts");
    let profiles: Vec<PathBuf> = (0..2)
        .map(|i| std::env::temp_dir().join(format!("ephemeral-cluster-{}-{i}", std::process::id())))
        .collect();
    let base = |i: usize| format!("http://{}", cluster.nodes[i].addr());

    // A shares on node 0.
    let a = within("a browser", driver.session(&profiles[0]))
        .await
        .expect("Chromium starts");
    a.goto(&format!("{}/", base(0)))
        .await
        .expect("the app loads");
    wait_shown(&a, "the home page", |s| s["state"] == "home").await;
    let text = "Shared on one node, read on another.";
    a.execute(
        "const e = document.getElementById('editor'); e.value = arguments[0]; \
         e.dispatchEvent(new Event('input'));",
        vec![json!(text)],
    )
    .await
    .expect("the editor takes text");
    a.find(fantoccini::Locator::Id("share"))
        .await
        .expect("a Share button")
        .click()
        .await
        .expect("Share clicks");
    wait_shown(&a, "A hosting", |s| {
        s["state"] == "hosting" && s["count"] == "1"
    })
    .await;

    // B opens the page's link on node 1, gets it from A, and hosts it.
    let hash = PageHash::of(text.as_bytes());
    let b = within("a browser", driver.session(&profiles[1]))
        .await
        .expect("Chromium starts");
    b.goto(&format!("{}/{hash}", base(1)))
        .await
        .expect("the page loads");
    let seen = wait_shown(&b, "B to get the page from another node", |s| {
        s["state"] == "hosting"
    })
    .await;
    assert_eq!(seen["content"], json!(text), "{seen}");
    assert_eq!(seen["transport"], json!("webrtc"), "{seen}");
    for (who, browser) in [("A", &a), ("B", &b)] {
        wait_shown(browser, &format!("{who} to count two hosts"), |s| {
            s["count"] == "2"
        })
        .await;
    }
    for browser in [a, b] {
        let _ = browser.close().await;
    }
    for profile in profiles {
        let _ = std::fs::remove_dir_all(profile);
    }
}

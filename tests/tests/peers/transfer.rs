//! Pages moving peer to peer.

use ephemeral_peer::Transport;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_one_visitor_over_webrtc_then_the_visitor_hosts() {
    init_logs();
    let server = start_server(server_config()).await;
    let config = peer_config(&server);
    let page = b"<h1>hello, peer</h1>".to_vec();
    let (first, hash) = host(&config, &page).await;

    let second = connect(&config).await;
    let fetched = within("second fetches", second.fetch(hash))
        .await
        .expect("the page arrives");
    assert_eq!(fetched.page, page);
    assert_eq!(fetched.transport, Transport::WebRtc);
    eprintln!("first fetch: {:?}", fetched.timings);

    // The second peer hosts it now; with the first gone, a third gets it
    // from the second.
    first.shutdown().await;
    let third = connect(&config).await;
    let fetched = within("third fetches", third.fetch(hash))
        .await
        .expect("the page arrives from the second peer");
    assert_eq!(fetched.page, page);
    assert_eq!(fetched.transport, Transport::WebRtc);
    assert_eq!(second.served().webrtc(), 1);
    eprintln!("second fetch: {:?}", fetched.timings);
    server.shutdown().await;
}

//! What the load generator sends, and from where: pages, an SDP-sized
//! signal body, and loopback source addresses for many connections.

use std::net::Ipv4Addr;

use ephemeral_shared::PageHash;

/// The loopback source address for the `i`-th of many connections. Linux
/// routes all of 127.0.0.0/8 to `lo`; each source address has its own
/// ~28k ephemeral ports towards one server port.
pub fn source_ip(i: usize) -> Ipv4Addr {
    const SOURCES: usize = 8;
    Ipv4Addr::new(127, 0, 0, 1 + (i % SOURCES) as u8)
}

/// A page of `bytes` bytes of UTF-8 text, distinct for each `seed`, and
/// its address.
pub fn page(bytes: usize, seed: u64) -> (String, PageHash) {
    let header = format!("# Benchmark page {seed}\n\n");
    let line = "Pages live only in their visitors' browsers; the server keeps none.\n";
    let mut text = header;
    while text.len() < bytes {
        text.push_str(line);
    }
    text.truncate(bytes);
    let hash = PageHash::of(text.as_bytes());
    (text, hash)
}

/// An SDP-sized body for offers and answers: a data-channel-only offer
/// from webrtc-rs with its ICE credentials and fingerprint is ~600 bytes,
/// and every system in the signaling comparison relays this same string.
pub fn sdp() -> String {
    let mut sdp = String::from(
        "v=0\r\no=- 7406338236734462519 671458036 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
         a=fingerprint:sha-256 4B:6C:7E:3A:90:11:AA:C2:5D:02:9F:41:7B:8E:63:D4:\
         2C:19:F0:88:5A:B7:11:3E:CD:40:72:9A:E1:55:0F:6B\r\na=group:BUNDLE 0\r\n\
         m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n\
         a=setup:actpass\r\na=mid:0\r\na=sendrecv\r\na=sctp-port:5000\r\n\
         a=max-message-size:262144\r\na=ice-ufrag:QmYbPHvUzZlzKkQe\r\n\
         a=ice-pwd:tGyuTGEbXcdbFVzLvBqCvFmIZXqCIBLS\r\n",
    );
    while sdp.len() < 600 {
        sdp.push_str("a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host\r\n");
    }
    sdp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_have_the_size_asked_and_distinct_hashes() {
        let (a, ha) = page(10 * 1024, 1);
        let (b, hb) = page(10 * 1024, 2);
        assert_eq!(a.len(), 10 * 1024);
        assert_eq!(b.len(), 10 * 1024);
        assert_ne!(ha, hb);
        assert!(ha.matches(a.as_bytes()));
    }

    #[test]
    fn sources_stay_on_loopback() {
        for i in 0..20 {
            assert!(source_ip(i).is_loopback());
        }
    }
}

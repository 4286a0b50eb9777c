//! End to end through the balancer: log in, then every request lands on the next app
//! instance (each beside its own node), and the login holds on each of them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const STEP: Duration = Duration::from_secs(10);

struct Reply {
    status: u16,
    body: String,
    set_cookies: Vec<String>,
}

/// A browser with a cookie jar; one TCP connection per request (`Connection: close`), so
/// the round-robin balancer sends each request to the next instance.
#[derive(Default)]
struct Browser {
    jar: BTreeMap<String, String>,
}

impl Browser {
    async fn get(&mut self, to: SocketAddr, path: &str) -> Reply {
        let cookie = self
            .jar
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n");
        if !cookie.is_empty() {
            req.push_str(&format!("Cookie: {cookie}\r\n"));
        }
        req.push_str("\r\n");
        let raw = tokio::time::timeout(STEP, async {
            let mut s = TcpStream::connect(to).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = Vec::new();
            s.read_to_end(&mut out).await.unwrap();
            out
        })
        .await
        .expect("the demo answered in time");
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let mut lines = head.lines();
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let mut set_cookies = Vec::new();
        for line in lines {
            let Some((name, value)) = line.split_once(": ") else {
                continue;
            };
            if !name.eq_ignore_ascii_case("set-cookie") {
                continue;
            }
            let (cname, rest) = value.split_once('=').unwrap();
            let cvalue = rest.split(';').next().unwrap_or("");
            set_cookies.push(cname.to_string());
            if cvalue.is_empty() || value.contains("Max-Age=0") {
                self.jar.remove(cname);
            } else {
                self.jar.insert(cname.to_string(), cvalue.to_string());
            }
        }
        Reply {
            status,
            body: body.to_string(),
            set_cookies,
        }
    }
}

#[tokio::test]
async fn login_survives_landing_on_every_instance() {
    let demo = sessync_example_axum_login::start(3, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let lb = demo.balancer;
    let mut alice = Browser::default();

    let r = alice.get(lb, "/me").await;
    assert_eq!(r.status, 401, "{}", r.body);
    let r = alice.get(lb, "/login?user=alice").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.starts_with("instance ") && r.body.contains("welcome alice"));
    let first_token = alice.jar["sessync"].clone();
    let id = alice.jar["id"].clone();

    let mut seen = BTreeSet::new();
    let mut tokens = BTreeSet::from([first_token]);
    for _ in 0..6 {
        let r = alice.get(lb, "/me").await;
        assert_eq!(r.status, 200, "{}", r.body);
        let (user, instance) = r.body.trim().split_once(" via instance ").unwrap();
        assert_eq!(user, "alice");
        seen.insert(instance.to_string());
        // Every request lands on another instance than the last, so the session moves
        // each time and the response carries its new token.
        assert_eq!(r.set_cookies, vec!["sessync".to_string()]);
        tokens.insert(alice.jar["sessync"].clone());
        assert_eq!(alice.jar["id"], id, "tower-sessions' id stays the same");
    }
    assert_eq!(seen.len(), 3, "the login held on every instance: {seen:?}");
    assert!(tokens.len() >= 3);

    // Another user in between is not alice.
    let mut bob = Browser::default();
    assert_eq!(bob.get(lb, "/login?user=bob").await.status, 200);
    assert!(bob.get(lb, "/me").await.body.starts_with("bob via"));
    assert!(alice.get(lb, "/me").await.body.starts_with("alice via"));

    // Logout anywhere ends it everywhere.
    assert_eq!(alice.get(lb, "/logout").await.status, 200);
    assert!(!alice.jar.contains_key("sessync"));
    for _ in 0..3 {
        assert_eq!(alice.get(lb, "/me").await.status, 401);
    }
    demo.shutdown().await;
}

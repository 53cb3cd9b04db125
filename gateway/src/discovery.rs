//! Which logic endpoints a gateway talks to, and which one serves a user.
//!
//! A gateway holds one long-lived HTTP/2 connection per logic address. Given
//! a ClusterIP Service, kube-proxy would balance those connections, not the
//! requests in them: every gateway would stay on one logic pod and pods the
//! autoscaler adds would get no gateway traffic. So each configured address
//! is resolved in DNS (the operator points gateways at a headless Service,
//! whose name resolves to every ready logic pod) and re-resolved every few
//! seconds; the gateway keeps a stream to every address found.
//!
//! A user is served by the endpoint that scores highest for it
//! (rendezvous hashing), so adding or removing one endpoint moves only the
//! users it gains or loses. A user with requests in flight stays on their
//! endpoint until they are answered: two logic pods commit independently,
//! and a send on the new one must not overtake an earlier send still queued
//! on the old one.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use im_common::api::ApiError;

/// Resolves a host and port to socket addresses.
pub type Resolver =
    Arc<dyn Fn(String, u16) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> + Send + Sync>;

/// The system resolver (`getaddrinfo`, as the cluster DNS answers it).
pub fn dns_resolver() -> Resolver {
    Arc::new(|host: String, port: u16| {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect())
        })
    })
}

/// One configured logic address, e.g. `http://chat-logic-headless.im.svc:9000`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub url: String,
    scheme: String,
    host: String,
    port: u16,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, ApiError> {
        let bad = |why: &str| ApiError::bad_request(format!("bad logic address {url}: {why}"));
        let uri: tonic::transport::Uri = url.parse().map_err(|_| bad("not a URI"))?;
        let scheme = uri
            .scheme_str()
            .ok_or_else(|| bad("no scheme"))?
            .to_string();
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let port = match (uri.port_u16(), scheme.as_str()) {
            (Some(p), _) => p,
            (None, "http") => 80,
            (None, "https") => 443,
            (None, _) => return Err(bad("no port")),
        };
        Ok(Target {
            url: url.to_string(),
            scheme,
            // `[::1]` in a URI is `::1` to the resolver.
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
        })
    }

    /// The endpoint URLs this target resolves to now.
    pub async fn resolve(&self, resolver: &Resolver) -> std::io::Result<Vec<String>> {
        let addrs = resolver(self.host.clone(), self.port).await?;
        Ok(addrs
            .into_iter()
            .map(|a| format!("{}://{a}", self.scheme))
            .collect())
    }
}

/// The union of what `targets` resolve to, sorted, without repeats; `None`
/// when none resolved (keep what we have: a headless Service without ready
/// pods has no records at all, and a DNS hiccup is no reason to forget).
pub async fn resolve_all(targets: &[Target], resolver: &Resolver) -> Option<Vec<String>> {
    let mut found = Vec::new();
    for t in targets {
        match t.resolve(resolver).await {
            Ok(urls) => found.extend(urls),
            Err(e) => tracing::debug!(target = %t.url, error = %e, "logic address did not resolve"),
        }
    }
    found.sort();
    found.dedup();
    (!found.is_empty()).then_some(found)
}

/// A well-mixed 64-bit hash (the SplitMix64 finalizer).
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A stable key for an endpoint URL (FNV-1a; the same in every gateway).
pub fn endpoint_key(url: &str) -> u64 {
    url.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// How much `user` prefers the endpoint with key `endpoint`: highest wins.
pub fn score(user: i64, endpoint: u64) -> u64 {
    mix(mix(user as u64) ^ endpoint)
}

/// Sorts `items` (each with its endpoint key) by preference for `user`.
pub fn rank<T>(user: i64, items: &mut [T], key: impl Fn(&T) -> u64) {
    items.sort_by_cached_key(|t| std::cmp::Reverse(score(user, key(t))));
}

/// Per user with requests in flight: the endpoint and how many.
type Held<E> = Arc<Mutex<HashMap<i64, (Arc<E>, usize)>>>;

/// Users with requests in flight, and the endpoint those went to.
pub struct Sticky<E> {
    users: Held<E>,
}

impl<E> Default for Sticky<E> {
    fn default() -> Self {
        Sticky {
            users: Arc::default(),
        }
    }
}

impl<E: Send + Sync + 'static> Sticky<E> {
    /// The endpoint `user` has requests in flight on, if any.
    pub fn get(&self, user: i64) -> Option<Arc<E>> {
        let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        users.get(&user).map(|(e, _)| e.clone())
    }

    /// Records one more request of `user` in flight on `ep`, until the
    /// returned guard drops. A request on another endpoint (the old one
    /// failed) takes the user over; the old one's requests no longer count.
    pub fn hold(&self, user: i64, ep: &Arc<E>) -> InFlight<E> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        match users.get_mut(&user) {
            Some((held, n)) if Arc::ptr_eq(held, ep) => *n += 1,
            _ => {
                users.insert(user, (ep.clone(), 1));
            }
        }
        InFlight {
            users: self.users.clone(),
            user,
            ep: ep.clone(),
        }
    }

    /// Users with requests in flight (for tests and metrics).
    pub fn len(&self) -> usize {
        self.users.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One request in flight; dropping it (answered, failed or abandoned) ends it.
pub struct InFlight<E> {
    users: Held<E>,
    user: i64,
    ep: Arc<E>,
}

impl<E> Drop for InFlight<E> {
    fn drop(&mut self) {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((held, n)) = users.get_mut(&self.user)
            && Arc::ptr_eq(held, &self.ep)
        {
            *n -= 1;
            if *n == 0 {
                users.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("http://10.0.0.{i}:9000")).collect()
    }

    fn top(user: i64, eps: &[String]) -> String {
        let mut v = eps.to_vec();
        rank(user, &mut v, |u| endpoint_key(u));
        v[0].clone()
    }

    #[test]
    fn parses_addresses_with_and_without_ports() {
        let t = Target::parse("http://chat-logic-headless.im.svc:9000").expect("parse");
        assert_eq!(
            (t.host.as_str(), t.port),
            ("chat-logic-headless.im.svc", 9000)
        );
        assert_eq!(Target::parse("http://logic").expect("parse").port, 80);
        let v6 = Target::parse("http://[::1]:9000").expect("parse");
        assert_eq!(v6.host, "::1");
        assert!(Target::parse("not a uri at all").is_err());
        assert!(Target::parse("/just/a/path").is_err());
    }

    #[test]
    fn users_spread_and_a_new_endpoint_takes_only_its_share() {
        let users: Vec<i64> = (1..=3000).collect();
        let three = urls(3);
        let four = urls(4);
        let mut per = HashMap::<String, usize>::new();
        let mut moved = 0;
        for &u in &users {
            let before = top(u, &three);
            let after = top(u, &four);
            *per.entry(after.clone()).or_default() += 1;
            if before != after {
                // Anyone who moves, moves to the new endpoint.
                assert_eq!(after, four[3], "user {u}");
                moved += 1;
            }
        }
        // Each of four endpoints gets about a quarter (750 ± 20 %).
        for (ep, n) in &per {
            assert!((600..=900).contains(n), "{ep}: {n}");
        }
        assert!((600..=900).contains(&moved), "{moved} moved");
        // Removing an endpoint moves only its own users.
        for &u in &users {
            let before = top(u, &four);
            if before != four[1] {
                let without: Vec<String> =
                    four.iter().filter(|e| **e != four[1]).cloned().collect();
                assert_eq!(top(u, &without), before, "user {u}");
            }
        }
    }

    #[test]
    fn a_user_stays_while_requests_are_in_flight() {
        let sticky = Sticky::<String>::default();
        let (a, b) = (Arc::new("a".to_string()), Arc::new("b".to_string()));
        let first = sticky.hold(7, &a);
        let second = sticky.hold(7, &a);
        assert_eq!(sticky.get(7).as_deref(), Some(&"a".to_string()));
        drop(first);
        assert_eq!(sticky.get(7).as_deref(), Some(&"a".to_string()));
        drop(second);
        assert!(sticky.get(7).is_none() && sticky.is_empty());
        // Failing over to b takes the user over; a's late answer changes nothing.
        let on_a = sticky.hold(8, &a);
        let on_b = sticky.hold(8, &b);
        drop(on_a);
        assert_eq!(sticky.get(8).as_deref(), Some(&"b".to_string()));
        drop(on_b);
        assert!(sticky.is_empty());
    }

    #[tokio::test]
    async fn resolution_is_a_sorted_union_and_none_when_nothing_resolves() {
        let resolver: Resolver = Arc::new(|host: String, port: u16| {
            Box::pin(async move {
                match host.as_str() {
                    "two" => Ok(vec![
                        SocketAddr::from(([10, 0, 0, 2], port)),
                        SocketAddr::from(([10, 0, 0, 1], port)),
                    ]),
                    "one" => Ok(vec![SocketAddr::from(([10, 0, 0, 1], port))]),
                    _ => Err(std::io::Error::other("no such host")),
                }
            })
        });
        let targets = ["http://two:9000", "http://one:9000", "http://gone:9000"]
            .map(|u| Target::parse(u).expect("parse"));
        assert_eq!(
            resolve_all(&targets, &resolver).await,
            Some(vec![
                "http://10.0.0.1:9000".to_string(),
                "http://10.0.0.2:9000".to_string()
            ])
        );
        assert_eq!(resolve_all(&targets[2..], &resolver).await, None);
    }
}

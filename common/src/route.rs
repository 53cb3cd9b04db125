//! The route table: users' sessions → gateway + connection, and live gateways.
//! It only records and looks up; deciding whom to kick or push to is the caller's job.
//!
//! Redis layout (every key starts with a configurable prefix, so tests and
//! clusters can share one Redis):
//! - `{prefix}gate:{gate_id}` → gRPC address of the gateway, with a short TTL the
//!   gateway keeps renewing; a dead gateway disappears on its own.
//! - `{prefix}route:{user_id}` → hash `device type → "{gate_id}|{conn_id}"`.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::ConnectionManager;

/// Where one session of a user lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    pub device: i32,
    pub gate_id: String,
    pub conn_id: u64,
}

impl Route {
    fn encode(&self) -> String {
        format!("{}|{}", self.gate_id, self.conn_id)
    }

    fn decode(device: &str, value: &str) -> Option<Route> {
        let (gate_id, conn) = value.rsplit_once('|')?;
        Some(Route {
            device: device.parse().ok()?,
            gate_id: gate_id.to_string(),
            conn_id: conn.parse().ok()?,
        })
    }
}

/// A route whose gateway is registered, with the gateway's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveRoute {
    pub route: Route,
    pub gate_addr: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("route table unavailable: {0}")]
    Redis(#[from] redis::RedisError),
}

#[async_trait]
pub trait RouteTable: Send + Sync + 'static {
    /// Registers (or renews) a gateway for `ttl`. Returns whether the
    /// registration was still there: `false` after an expiry or a Redis restart,
    /// when the gateway must record its live sessions again.
    async fn register_gate(
        &self,
        gate_id: &str,
        addr: &str,
        ttl: Duration,
    ) -> Result<bool, RouteError>;
    /// Address of a registered gateway.
    async fn gate_addr(&self, gate_id: &str) -> Result<Option<String>, RouteError>;
    async fn unregister_gate(&self, gate_id: &str) -> Result<(), RouteError>;
    /// Records a session; returns the route it replaced on the same device type.
    async fn set_route(&self, user: i64, route: &Route) -> Result<Option<Route>, RouteError>;
    /// Records many sessions at once (a gateway re-registering after a Redis restart).
    async fn set_routes(&self, routes: &[(i64, Route)]) -> Result<(), RouteError>;
    /// Removes a session only if the route still points at it.
    async fn remove_route(&self, user: i64, route: &Route) -> Result<bool, RouteError>;
    /// Live routes of each user; routes to unregistered gateways are left out.
    async fn lookup(&self, users: &[i64]) -> Result<HashMap<i64, Vec<LiveRoute>>, RouteError>;
}

/// In-process route table for single-node mode.
#[derive(Default)]
pub struct MemoryRouteTable {
    // A plain mutex: every critical section is a few map operations, never across an await.
    inner: Mutex<MemoryInner>,
}

#[derive(Default)]
struct MemoryInner {
    gates: HashMap<String, (String, Instant)>,
    routes: HashMap<i64, HashMap<i32, Route>>,
}

impl MemoryRouteTable {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl RouteTable for MemoryRouteTable {
    async fn register_gate(
        &self,
        gate_id: &str,
        addr: &str,
        ttl: Duration,
    ) -> Result<bool, RouteError> {
        let now = Instant::now();
        let old = self
            .lock()
            .gates
            .insert(gate_id.to_string(), (addr.to_string(), now + ttl));
        Ok(old.is_some_and(|(_, until)| until > now))
    }

    async fn gate_addr(&self, gate_id: &str) -> Result<Option<String>, RouteError> {
        let now = Instant::now();
        Ok(self
            .lock()
            .gates
            .get(gate_id)
            .filter(|(_, until)| *until > now)
            .map(|(addr, _)| addr.clone()))
    }

    async fn unregister_gate(&self, gate_id: &str) -> Result<(), RouteError> {
        self.lock().gates.remove(gate_id);
        Ok(())
    }

    async fn set_route(&self, user: i64, route: &Route) -> Result<Option<Route>, RouteError> {
        Ok(self
            .lock()
            .routes
            .entry(user)
            .or_default()
            .insert(route.device, route.clone()))
    }

    async fn set_routes(&self, routes: &[(i64, Route)]) -> Result<(), RouteError> {
        let mut inner = self.lock();
        for (user, route) in routes {
            inner
                .routes
                .entry(*user)
                .or_default()
                .insert(route.device, route.clone());
        }
        Ok(())
    }

    async fn remove_route(&self, user: i64, route: &Route) -> Result<bool, RouteError> {
        let mut inner = self.lock();
        let Some(devices) = inner.routes.get_mut(&user) else {
            return Ok(false);
        };
        if devices.get(&route.device) != Some(route) {
            return Ok(false);
        }
        devices.remove(&route.device);
        if devices.is_empty() {
            inner.routes.remove(&user);
        }
        Ok(true)
    }

    async fn lookup(&self, users: &[i64]) -> Result<HashMap<i64, Vec<LiveRoute>>, RouteError> {
        let inner = self.lock();
        let now = Instant::now();
        let mut out = HashMap::new();
        for user in users {
            let Some(devices) = inner.routes.get(user) else {
                continue;
            };
            let live: Vec<LiveRoute> = devices
                .values()
                .filter_map(|r| {
                    let (addr, until) = inner.gates.get(&r.gate_id)?;
                    (*until > now).then(|| LiveRoute {
                        route: r.clone(),
                        gate_addr: addr.clone(),
                    })
                })
                .collect();
            if !live.is_empty() {
                out.insert(*user, live);
            }
        }
        Ok(out)
    }
}

/// Redis route table for cluster mode.
#[derive(Clone)]
pub struct RedisRouteTable {
    conn: ConnectionManager,
    prefix: String,
    /// Gateway addresses read within [`GATE_ADDR_TTL`], by gateway id.
    gates: Arc<Mutex<HashMap<String, (String, Instant)>>>,
}

/// How long a lookup trusts a gateway's registration it has read: the
/// gateways of a push's routes are then known without a second round trip
/// to Redis (the `MGET` of their keys took one on the path of every push).
/// A gateway that unregisters (drains) may so get pushes for this much
/// longer from each logic process; it answers that it no longer has the
/// connections, and their routes are removed. A registration seen missing
/// is never remembered: a route counts as offline only on a fresh read.
pub const GATE_ADDR_TTL: Duration = Duration::from_secs(1);

const SET_ROUTE: &str = r"
local old = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return old";

const REMOVE_ROUTE: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0";

/// How to reach the Redis at `url`: with `TCP_NODELAY`, which the redis
/// crate leaves off by default. With Nagle's algorithm on, a request written
/// while an earlier one on the same (multiplexed) connection is still
/// unacknowledged waits for that acknowledgement, and every push waits on
/// a route lookup.
fn connection_info(url: &str) -> Result<redis::ConnectionInfo, RouteError> {
    use redis::IntoConnectionInfo;
    Ok(url
        .into_connection_info()?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true)))
}

impl RedisRouteTable {
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, RouteError> {
        let client = redis::Client::open(connection_info(url)?)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        let conn = client.get_connection_manager_with_config(config).await?;
        Ok(RedisRouteTable {
            conn,
            prefix: prefix.to_string(),
            gates: Arc::default(),
        })
    }

    /// The addresses of the registered gateways among `routes`' (see
    /// [`GATE_ADDR_TTL`]): those read within it as they were, the others
    /// read now.
    async fn gate_addrs(
        &self,
        conn: &mut ConnectionManager,
        routes: &[(i64, Route)],
    ) -> Result<HashMap<String, String>, RouteError> {
        let mut live = HashMap::new();
        let mut unknown = Vec::new();
        {
            let known = self.gates.lock().unwrap_or_else(|e| e.into_inner());
            for (_, r) in routes {
                if live.contains_key(&r.gate_id) || unknown.contains(&r.gate_id) {
                    continue;
                }
                match known.get(&r.gate_id) {
                    Some((addr, at)) if at.elapsed() < GATE_ADDR_TTL => {
                        live.insert(r.gate_id.clone(), addr.clone());
                    }
                    _ => unknown.push(r.gate_id.clone()),
                }
            }
        }
        if unknown.is_empty() {
            return Ok(live);
        }
        let keys: Vec<String> = unknown.iter().map(|g| self.gate_key(g)).collect();
        let addrs: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(conn).await?;
        let now = Instant::now();
        let mut known = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        known.retain(|_, (_, at)| at.elapsed() < GATE_ADDR_TTL);
        for (gate, addr) in unknown.into_iter().zip(addrs) {
            if let Some(addr) = addr {
                known.insert(gate.clone(), (addr.clone(), now));
                live.insert(gate, addr);
            }
        }
        Ok(live)
    }

    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    fn gate_key(&self, gate_id: &str) -> String {
        format!("{}gate:{}", self.prefix, gate_id)
    }

    fn route_key(&self, user: i64) -> String {
        format!("{}route:{}", self.prefix, user)
    }
}

#[async_trait]
impl RouteTable for RedisRouteTable {
    async fn register_gate(
        &self,
        gate_id: &str,
        addr: &str,
        ttl: Duration,
    ) -> Result<bool, RouteError> {
        let mut conn = self.conn.clone();
        let old: Option<String> = redis::cmd("SET")
            .arg(self.gate_key(gate_id))
            .arg(addr)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .arg("GET")
            .query_async(&mut conn)
            .await?;
        Ok(old.is_some())
    }

    async fn gate_addr(&self, gate_id: &str) -> Result<Option<String>, RouteError> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("GET")
            .arg(self.gate_key(gate_id))
            .query_async(&mut conn)
            .await?)
    }

    async fn unregister_gate(&self, gate_id: &str) -> Result<(), RouteError> {
        self.gates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(gate_id);
        let mut conn = self.conn.clone();
        redis::cmd("DEL")
            .arg(self.gate_key(gate_id))
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    async fn set_route(&self, user: i64, route: &Route) -> Result<Option<Route>, RouteError> {
        let mut conn = self.conn.clone();
        let device = route.device.to_string();
        let old: Option<String> = redis::Script::new(SET_ROUTE)
            .key(self.route_key(user))
            .arg(&device)
            .arg(route.encode())
            .invoke_async(&mut conn)
            .await?;
        Ok(old.and_then(|v| Route::decode(&device, &v)))
    }

    async fn set_routes(&self, routes: &[(i64, Route)]) -> Result<(), RouteError> {
        if routes.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (user, route) in routes {
            pipe.cmd("HSET")
                .arg(self.route_key(*user))
                .arg(route.device)
                .arg(route.encode())
                .ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    async fn remove_route(&self, user: i64, route: &Route) -> Result<bool, RouteError> {
        let mut conn = self.conn.clone();
        let removed: i64 = redis::Script::new(REMOVE_ROUTE)
            .key(self.route_key(user))
            .arg(route.device)
            .arg(route.encode())
            .invoke_async(&mut conn)
            .await?;
        Ok(removed > 0)
    }

    async fn lookup(&self, users: &[i64]) -> Result<HashMap<i64, Vec<LiveRoute>>, RouteError> {
        if users.is_empty() {
            return Ok(HashMap::new());
        }
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for user in users {
            pipe.cmd("HGETALL").arg(self.route_key(*user));
        }
        let all: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
        let routes: Vec<(i64, Route)> = users
            .iter()
            .zip(all)
            .flat_map(|(user, fields)| {
                fields
                    .into_iter()
                    .filter_map(move |(d, v)| Route::decode(&d, &v).map(|r| (*user, r)))
            })
            .collect();
        let live = self.gate_addrs(&mut conn, &routes).await?;
        let mut out: HashMap<i64, Vec<LiveRoute>> = HashMap::new();
        let mut dead = Vec::new();
        for (user, route) in routes {
            match live.get(route.gate_id.as_str()) {
                Some(addr) => out.entry(user).or_default().push(LiveRoute {
                    gate_addr: addr.clone(),
                    route,
                }),
                None => dead.push((user, route)),
            }
        }
        // Routes to gateways whose registration expired are offline; clear
        // them so nothing stale stays behind.
        for (user, route) in dead {
            if let Err(e) = self.remove_route(user, &route).await {
                tracing::debug!(error = %e, "failed to clear a route to a dead gateway");
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_connections_send_without_nagle() {
        let info = connection_info("redis://127.0.0.1:6379/0").unwrap();
        assert!(info.tcp_settings().nodelay());
        assert!(connection_info("not a url").is_err());
    }

    fn route(device: i32, gate: &str, conn: u64) -> Route {
        Route {
            device,
            gate_id: gate.into(),
            conn_id: conn,
        }
    }

    async fn exercise(table: &dyn RouteTable) {
        assert!(
            !table
                .register_gate("g1", "10.0.0.1:9100", Duration::from_secs(30))
                .await
                .unwrap()
        );
        assert!(
            table
                .register_gate("g1", "10.0.0.1:9100", Duration::from_secs(30))
                .await
                .unwrap()
        );
        assert_eq!(
            table.gate_addr("g1").await.unwrap().as_deref(),
            Some("10.0.0.1:9100")
        );
        assert_eq!(table.set_route(7, &route(1, "g1", 11)).await.unwrap(), None);
        // Same device type again: the old route comes back for kickout.
        assert_eq!(
            table.set_route(7, &route(1, "g1", 12)).await.unwrap(),
            Some(route(1, "g1", 11))
        );
        table.set_route(7, &route(2, "g2", 13)).await.unwrap();
        let found = table.lookup(&[7, 8]).await.unwrap();
        // g2 is not registered: that route counts as offline.
        assert_eq!(
            found.get(&7).unwrap(),
            &vec![LiveRoute {
                route: route(1, "g1", 12),
                gate_addr: "10.0.0.1:9100".into()
            }]
        );
        assert!(!found.contains_key(&8));
        // Two users on one gateway, one of them on two gateways.
        table
            .register_gate("g|3", "10.0.0.3:9100", Duration::from_secs(30))
            .await
            .unwrap();
        table.set_route(10, &route(1, "g1", 21)).await.unwrap();
        table.set_route(10, &route(2, "g|3", 22)).await.unwrap();
        let found = table.lookup(&[10, 8, 7]).await.unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(found[&7].len(), 1);
        let mut tens: Vec<(u64, &str)> = found[&10]
            .iter()
            .map(|r| (r.route.conn_id, r.gate_addr.as_str()))
            .collect();
        tens.sort();
        assert_eq!(tens, vec![(21, "10.0.0.1:9100"), (22, "10.0.0.3:9100")]);
        assert_eq!(
            found[&10]
                .iter()
                .find(|r| r.route.conn_id == 22)
                .unwrap()
                .route,
            route(2, "g|3", 22)
        );
        table.unregister_gate("g|3").await.unwrap();
        assert_eq!(table.lookup(&[10]).await.unwrap()[&10].len(), 1);
        // Removing a route that was replaced does nothing.
        assert!(!table.remove_route(7, &route(1, "g1", 11)).await.unwrap());
        assert!(table.remove_route(7, &route(1, "g1", 12)).await.unwrap());
        table.unregister_gate("g1").await.unwrap();
        table.set_routes(&[(9, route(3, "g1", 1))]).await.unwrap();
        assert!(table.lookup(&[7, 9]).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn memory_table_semantics() {
        exercise(&MemoryRouteTable::new()).await;
    }

    #[tokio::test]
    async fn memory_gate_expires() {
        let t = MemoryRouteTable::new();
        t.register_gate("g", "a", Duration::from_millis(1))
            .await
            .unwrap();
        t.set_route(1, &route(1, "g", 1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(t.lookup(&[1]).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn redis_table_semantics() {
        let url = std::env::var("IM_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string());
        let prefix = format!("test-route-{}-{}:", std::process::id(), rand_suffix());
        let t = RedisRouteTable::connect(&url, &prefix)
            .await
            .expect("redis must be running for tests (scripts/test.sh starts it)");
        exercise(&t).await;
    }

    #[tokio::test]
    async fn redis_lookups_trust_a_registration_they_read_for_a_second() {
        let url = std::env::var("IM_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string());
        let prefix = format!("test-gates-{}-{}:", std::process::id(), rand_suffix());
        // Two processes' tables: a gateway's and a logic process's.
        let gateway = RedisRouteTable::connect(&url, &prefix).await.unwrap();
        let logic = RedisRouteTable::connect(&url, &prefix).await.unwrap();
        let r = route(1, "g", 5);
        gateway.set_route(1, &r).await.unwrap();
        assert!(logic.lookup(&[1]).await.unwrap().is_empty());
        // A registration seen missing is not remembered.
        gateway
            .register_gate("g", "10.0.0.9:9100", Duration::from_secs(30))
            .await
            .unwrap();
        gateway.set_route(1, &r).await.unwrap();
        assert_eq!(logic.lookup(&[1]).await.unwrap()[&1].len(), 1);
        // One read is trusted for GATE_ADDR_TTL, then read again.
        gateway.unregister_gate("g").await.unwrap();
        assert_eq!(logic.lookup(&[1]).await.unwrap()[&1].len(), 1);
        tokio::time::sleep(GATE_ADDR_TTL + Duration::from_millis(100)).await;
        assert!(logic.lookup(&[1]).await.unwrap().is_empty());
    }

    fn rand_suffix() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    }
}

//! A bounded pool of connections to one database, shared by the worker
//! threads, with failover between hosts, backoff while the database is down,
//! and one log line per outage.
//!
//! - At most `size_max` connections, made on demand. A thread that finds
//!   them all busy waits up to the connect timeout, then fails (temporary).
//! - A connection that fails a query is dropped; when it came from the idle
//!   list (it may be stale: the server restarted) the query is tried once
//!   more on a fresh connection.
//! - Connecting tries each host in turn, starting with the one that worked
//!   last. When none answers, the database is down: lookups fail at once
//!   (no thread waits on a dead host) until the retry time, which doubles
//!   from [`RETRY_MIN`] to [`RETRY_MAX`]; then one lookup tries again.
//! - Going down is logged once (error), coming back once (info).

use std::fmt;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::AuthError;

/// The first wait after a database goes down.
pub(crate) const RETRY_MIN: Duration = Duration::from_millis(250);
/// The longest wait between two tries of a database that is down.
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(5);

/// How a connection failed. Only the text is kept: it is logged, never
/// sent to a client.
#[derive(Debug)]
pub(crate) enum DbError {
    /// The connection is unusable (refused, reset, timed out): drop it.
    Broken(String),
    /// The server answered with an error (bad query, missing table); the
    /// connection is fine but the lookup failed.
    Query(String),
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbError::Broken(s) | DbError::Query(s) => f.write_str(s),
        }
    }
}

/// Makes connections to one of a database's hosts.
pub(crate) trait Connector: Send + Sync {
    /// A live connection.
    type Conn: Send;
    /// How many hosts there are to try.
    fn hosts(&self) -> usize;
    /// Connects to host `index` (within the connect timeout).
    fn connect(&self, index: usize) -> Result<Self::Conn, String>;
}

struct Slots<C> {
    idle: Vec<C>,
    /// Connections that exist (idle or in use).
    open: usize,
}

struct Health {
    /// Set while the database is down: until when lookups fail at once.
    down_until: Option<Instant>,
    /// The wait before the next try, doubled per failed try.
    backoff: Duration,
    /// The host to try first.
    next_host: usize,
    /// The last query error logged, so a broken query is logged once.
    last_query_error: Option<String>,
}

/// The connections to one database.
pub(crate) struct Pool<C: Connector> {
    /// For log lines: `pgsql passdb` and the like.
    name: String,
    connector: C,
    size_max: usize,
    wait_max: Duration,
    slots: Mutex<Slots<C::Conn>>,
    freed: Condvar,
    health: Mutex<Health>,
}

impl<C: Connector> Pool<C> {
    /// A pool of at most `size_max` connections; a thread waits at most
    /// `wait_max` for a free one.
    pub(crate) fn new(name: String, connector: C, size_max: usize, wait_max: Duration) -> Pool<C> {
        Pool {
            name,
            connector,
            size_max: size_max.max(1),
            wait_max,
            slots: Mutex::new(Slots {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
            health: Mutex::new(Health {
                down_until: None,
                backoff: RETRY_MIN,
                next_host: 0,
                last_query_error: None,
            }),
        }
    }

    /// The connector, for its settings.
    #[cfg(test)]
    pub(crate) fn connector(&self) -> &C {
        &self.connector
    }

    /// Runs `work` on a connection. `Err` is [`AuthError::Unavailable`]:
    /// the database is down, busy or refused the query.
    pub(crate) fn run<R>(
        &self,
        mut work: impl FnMut(&mut C::Conn) -> Result<R, DbError>,
    ) -> Result<R, AuthError> {
        self.check_down()?;
        let (mut conn, reused) = self.checkout()?;
        let mut outcome = work(&mut conn);
        if reused && matches!(outcome, Err(DbError::Broken(_))) {
            // Probably a connection the server closed while it sat idle.
            drop(conn);
            self.release_slot();
            conn = self.connect_fresh()?;
            outcome = work(&mut conn);
        }
        match outcome {
            Ok(value) => {
                self.checkin(conn);
                self.mark_up();
                Ok(value)
            }
            Err(DbError::Query(why)) => {
                self.checkin(conn);
                self.mark_up();
                self.log_query_error(&why);
                Err(self.unavailable(why))
            }
            Err(DbError::Broken(why)) => {
                drop(conn);
                self.release_slot();
                self.mark_down(&why);
                Err(self.unavailable(why))
            }
        }
    }

    fn unavailable(&self, why: String) -> AuthError {
        AuthError::Unavailable {
            database: self.name.clone(),
            why,
        }
    }

    /// Fails at once while the database is down and its retry time has
    /// not come; at the retry time one caller goes through and tries.
    fn check_down(&self) -> Result<(), AuthError> {
        let mut health = self.health.lock();
        let Some(until) = health.down_until else {
            return Ok(());
        };
        let now = Instant::now();
        if now < until {
            return Err(self.unavailable("down; waiting to retry".into()));
        }
        // This caller tries; the others keep failing fast meanwhile.
        health.down_until = Some(now + health.backoff);
        Ok(())
    }

    /// An idle connection, or a new one if the pool has room, or the first
    /// freed within `wait_max`. The bool is whether it was idle.
    fn checkout(&self) -> Result<(C::Conn, bool), AuthError> {
        let deadline = Instant::now() + self.wait_max;
        let mut slots = self.slots.lock();
        loop {
            if let Some(conn) = slots.idle.pop() {
                return Ok((conn, true));
            }
            if slots.open < self.size_max {
                slots.open += 1;
                drop(slots);
                return self.connect_counted().map(|c| (c, false));
            }
            if self.freed.wait_until(&mut slots, deadline).timed_out() {
                return Err(self.unavailable("every connection is busy".into()));
            }
        }
    }

    /// Connects for a slot already counted in `open`.
    fn connect_counted(&self) -> Result<C::Conn, AuthError> {
        match self.connect_any() {
            Ok(conn) => Ok(conn),
            Err(why) => {
                self.release_slot();
                self.mark_down(&why);
                Err(self.unavailable(why))
            }
        }
    }

    /// A new connection in a new slot (the retry after a stale one).
    fn connect_fresh(&self) -> Result<C::Conn, AuthError> {
        self.slots.lock().open += 1;
        self.connect_counted()
    }

    /// Tries every host once, starting with the one that worked last.
    fn connect_any(&self) -> Result<C::Conn, String> {
        let hosts = self.connector.hosts().max(1);
        let first = self.health.lock().next_host % hosts;
        let mut errors = Vec::new();
        for step in 0..hosts {
            let index = (first + step) % hosts;
            match self.connector.connect(index) {
                Ok(conn) => {
                    self.health.lock().next_host = index;
                    return Ok(conn);
                }
                Err(why) => errors.push(why),
            }
        }
        Err(errors.join("; "))
    }

    fn checkin(&self, conn: C::Conn) {
        self.slots.lock().idle.push(conn);
        self.freed.notify_one();
    }

    fn release_slot(&self) {
        let mut slots = self.slots.lock();
        slots.open = slots.open.saturating_sub(1);
        drop(slots);
        self.freed.notify_one();
    }

    fn mark_down(&self, why: &str) {
        let mut health = self.health.lock();
        if health.down_until.is_none() {
            tracing::error!(
                database = %self.name,
                error = %why,
                "user database unavailable; logins get -ERR [SYS/TEMP] until it is back"
            );
            health.backoff = RETRY_MIN;
        } else {
            health.backoff = (health.backoff * 2).min(RETRY_MAX);
        }
        health.down_until = Some(Instant::now() + health.backoff);
        drop(health);
        // Idle connections to a database that went away are stale.
        let mut slots = self.slots.lock();
        let stale = slots.idle.len();
        slots.idle.clear();
        slots.open = slots.open.saturating_sub(stale);
    }

    fn mark_up(&self) {
        let mut health = self.health.lock();
        if health.down_until.take().is_some() {
            tracing::info!(database = %self.name, "user database is back");
        }
        health.backoff = RETRY_MIN;
    }

    fn log_query_error(&self, why: &str) {
        let mut health = self.health.lock();
        if health.last_query_error.as_deref() != Some(why) {
            tracing::error!(database = %self.name, error = %why, "user database query failed");
            health.last_query_error = Some(why.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;

    /// Hosts that answer or not as the test says; a connection is its host.
    struct Fake {
        up: Vec<Arc<AtomicBool>>,
        connects: AtomicUsize,
    }

    impl Connector for Fake {
        type Conn = usize;
        fn hosts(&self) -> usize {
            self.up.len()
        }
        fn connect(&self, index: usize) -> Result<usize, String> {
            self.connects.fetch_add(1, Ordering::SeqCst);
            if self.up[index].load(Ordering::SeqCst) {
                Ok(index)
            } else {
                Err(format!("host {index} refused"))
            }
        }
    }

    fn pool(hosts: usize) -> (Pool<Fake>, Vec<Arc<AtomicBool>>) {
        let up: Vec<_> = (0..hosts)
            .map(|_| Arc::new(AtomicBool::new(true)))
            .collect();
        let fake = Fake {
            up: up.clone(),
            connects: AtomicUsize::new(0),
        };
        (
            Pool::new("test".into(), fake, 2, Duration::from_millis(50)),
            up,
        )
    }

    #[test]
    fn reuses_connections_and_fails_over_to_the_next_host() {
        let (pool, up) = pool(2);
        assert_eq!(pool.run(|c| Ok(*c)).unwrap(), 0);
        assert_eq!(pool.run(|c| Ok(*c)).unwrap(), 0);
        assert_eq!(pool.connector().connects.load(Ordering::SeqCst), 1);
        // Host 0 dies: the idle connection breaks, the retry goes to host 1.
        up[0].store(false, Ordering::SeqCst);
        let host = pool
            .run(|c| {
                if up[*c].load(Ordering::SeqCst) {
                    Ok(*c)
                } else {
                    Err(DbError::Broken("reset".into()))
                }
            })
            .unwrap();
        assert_eq!(host, 1);
    }

    #[test]
    fn down_fails_fast_then_retries_and_comes_back() {
        let (pool, up) = pool(1);
        up[0].store(false, Ordering::SeqCst);
        assert!(matches!(
            pool.run(|c| Ok(*c)),
            Err(AuthError::Unavailable { .. })
        ));
        let tries = pool.connector().connects.load(Ordering::SeqCst);
        // Within the backoff nobody tries the host again.
        assert!(pool.run(|c| Ok(*c)).is_err());
        assert_eq!(pool.connector().connects.load(Ordering::SeqCst), tries);
        up[0].store(true, Ordering::SeqCst);
        std::thread::sleep(RETRY_MIN + Duration::from_millis(20));
        assert_eq!(pool.run(|c| Ok(*c)).unwrap(), 0);
        assert!(pool.health.lock().down_until.is_none());
    }

    #[test]
    fn a_query_error_keeps_the_connection_and_the_pool_up() {
        let (pool, _up) = pool(1);
        let err = pool.run(|_| Err::<(), _>(DbError::Query("no such table".into())));
        assert!(matches!(err, Err(AuthError::Unavailable { .. })));
        assert!(pool.health.lock().down_until.is_none());
        assert_eq!(pool.slots.lock().idle.len(), 1);
    }

    #[test]
    fn a_full_pool_waits_then_fails() {
        let (pool, _up) = pool(1);
        let pool = Arc::new(pool);
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let pool = Arc::clone(&pool);
                let held_tx = held_tx.clone();
                std::thread::spawn(move || {
                    pool.run(|c| {
                        held_tx.send(()).unwrap();
                        std::thread::sleep(Duration::from_millis(300));
                        Ok(*c)
                    })
                })
            })
            .collect();
        held_rx.recv().unwrap();
        held_rx.recv().unwrap();
        // Both connections are held for 300 ms; a third waits 50 ms and fails.
        assert!(pool.run(|c| Ok(*c)).is_err());
        for t in threads {
            t.join().unwrap().unwrap();
        }
    }
}

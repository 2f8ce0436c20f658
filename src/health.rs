//! What `/readyz` reports: each thread that talks to a server records here
//! whether its last attempt worked, and whether shutdown has begun (the pod
//! drains). Written by the ingest, writer and listener threads; read by the
//! HTTP workers, who never ask a server themselves.
//!
//! A dependency's state is reported, not acted on: readiness depends only on
//! what this pod can serve (its cache loaded, not draining). A PostgreSQL or
//! NATS outage is shared by every replica; failing readiness on it would take
//! them all out of the Service at once, while their caches could still serve.

use crate::lifecycle::Shutdown;
use std::sync::{Mutex, OnceLock};

/// The parts whose state makes the service ready or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The writer's PostgreSQL connection.
    Writer,
    /// The listener's PostgreSQL connection.
    Listener,
    /// The JetStream consumer.
    Nats,
}

#[derive(Default)]
pub struct Health {
    /// `None` while a part is fine; why it is not otherwise.
    problems: Mutex<[Option<String>; 3]>,
    /// Closed once shutdown begins: from then on the pod is draining.
    shutdown: OnceLock<Shutdown>,
}

/// A snapshot for `/readyz`: `None` means ok.
pub struct Readiness {
    pub postgres: Option<String>,
    pub nats: Option<String>,
}

impl Health {
    /// Every part starts as "connecting" until its thread reports in.
    pub fn new() -> Health {
        let connecting = || Some("connecting".to_owned());
        Health {
            problems: Mutex::new([connecting(), connecting(), connecting()]),
            shutdown: OnceLock::new(),
        }
    }

    /// From the moment `shutdown` begins, `is_draining` is true.
    pub fn drain_on(&self, shutdown: Shutdown) {
        let _ = self.shutdown.set(shutdown);
    }

    /// Whether shutdown has begun: the pod should leave its Service.
    pub fn is_draining(&self) -> bool {
        self.shutdown.get().is_some_and(Shutdown::is_requested)
    }

    /// Records the part's state; returns true when it changed between ok and
    /// not ok, so callers log once per change instead of once per retry.
    pub fn set(&self, part: Part, state: Result<(), String>) -> bool {
        let mut problems = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &mut problems[part as usize];
        let changed = slot.is_some() != state.is_err();
        *slot = state.err();
        changed
    }

    pub fn is_ok(&self, part: Part) -> bool {
        self.problems.lock().unwrap_or_else(|e| e.into_inner())[part as usize].is_none()
    }

    pub fn readiness(&self) -> Readiness {
        let problems = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        let postgres = match (
            &problems[Part::Writer as usize],
            &problems[Part::Listener as usize],
        ) {
            (None, None) => None,
            (Some(why), _) | (None, Some(why)) => Some(why.clone()),
        };
        Readiness {
            postgres,
            nats: problems[Part::Nats as usize].clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_reported_once() {
        let health = Health::new();
        assert!(health.readiness().postgres.is_some());
        assert!(health.set(Part::Writer, Ok(())));
        assert!(!health.set(Part::Writer, Ok(())));
        assert!(health.set(Part::Listener, Ok(())));
        assert!(health.readiness().postgres.is_none());
        assert!(health.set(Part::Listener, Err("connection refused".into())));
        assert!(!health.set(Part::Listener, Err("still refused".into())));
        assert_eq!(
            health.readiness().postgres.as_deref(),
            Some("still refused")
        );
        assert!(health.readiness().nats.is_some());
    }

    #[test]
    fn draining_once_shutdown_begins() {
        let health = Health::new();
        assert!(!health.is_draining());
        let (trigger, shutdown) = crate::lifecycle::shutdown_channel();
        health.drain_on(shutdown);
        assert!(!health.is_draining());
        trigger.fire();
        assert!(health.is_draining());
    }
}

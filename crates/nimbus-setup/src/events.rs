//! Where setup reports telemetry: a sink the caller passes in.
//!
//! This crate only emits [`Event`]s (`nimbus.ssh.*`, `nimbus.machine.setup_*`); the daemon's
//! sink fans them out to logs, metrics, the stored event log and live streams. Events never carry
//! secrets: commands are named by their label, never by their script or arguments.

use std::sync::{Arc, Mutex};

use nimbus_types::event::Event;
use nimbus_types::{MachineId, TenantId};

pub use nimbus_types::event::EventSink;

/// Drops every event.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopSink;

impl EventSink for NoopSink {
    fn emit(&self, _event: Event) {}
}

/// Keeps every event, for tests.
#[derive(Debug, Default)]
pub struct VecSink {
    events: Mutex<Vec<Event>>,
}

impl VecSink {
    pub fn new() -> Arc<Self> {
        Arc::new(VecSink::default())
    }

    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The names of the events so far, in order.
    pub fn names(&self) -> Vec<String> {
        self.events().into_iter().map(|event| event.name).collect()
    }

    /// Events with this name.
    pub fn named(&self, name: &str) -> Vec<Event> {
        self.events()
            .into_iter()
            .filter(|event| event.name == name)
            .collect()
    }
}

impl EventSink for VecSink {
    fn emit(&self, event: Event) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event);
    }
}

/// A sink plus the ids every event of one machine carries.
#[derive(Clone)]
pub struct Events {
    sink: Arc<dyn EventSink>,
    tenant_id: Option<TenantId>,
    machine_id: Option<MachineId>,
}

impl Events {
    pub fn new(sink: Arc<dyn EventSink>) -> Self {
        Events {
            sink,
            tenant_id: None,
            machine_id: None,
        }
    }

    /// Emits nothing.
    pub fn none() -> Self {
        Events::new(Arc::new(NoopSink))
    }

    /// The same sink, stamping every event with these ids.
    pub fn for_machine(&self, tenant_id: TenantId, machine_id: MachineId) -> Self {
        Events {
            sink: self.sink.clone(),
            tenant_id: Some(tenant_id),
            machine_id: Some(machine_id),
        }
    }

    pub fn emit(&self, mut event: Event) {
        if event.tenant_id.is_none() {
            event.tenant_id = self.tenant_id;
        }
        if event.machine_id.is_none() {
            event.machine_id = self.machine_id;
        }
        self.sink.emit(event);
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("tenant_id", &self.tenant_id)
            .field("machine_id", &self.machine_id)
            .finish_non_exhaustive()
    }
}

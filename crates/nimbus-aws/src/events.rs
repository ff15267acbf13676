//! Where the provider's telemetry goes: `nimbus.cloud_provider.api_call_{start,success,failure}`
//! for every EC2 request, and `nimbus.machine.reconciled` when it removes an orphan or releases a
//! host. The daemon plugs its event bus in; by default events become `tracing` debug lines.

use std::sync::Mutex;

use nimbus_types::event::Event;

/// Receives telemetry events; the same trait setup (`nimbus.ssh.*`) reports through, so the
/// daemon plugs one sink into both.
pub use nimbus_setup::events::EventSink;

/// Logs every event at DEBUG through `tracing`.
#[derive(Clone, Copy, Debug, Default)]
pub struct TracingSink;

impl EventSink for TracingSink {
    fn emit(&self, event: Event) {
        tracing::debug!(
            event.name = %event.name,
            tenant.id = event.tenant_id.map(|id| id.to_string()),
            machine.id = event.machine_id.map(|id| id.to_string()),
            duration = event.duration,
            error = event.error.as_deref(),
            metadata = %serde_json::Value::Object(event.metadata.clone()),
            "aws provider event"
        );
    }
}

/// Keeps every event in memory, for tests and benchmarks.
#[derive(Debug, Default)]
pub struct CollectingSink {
    events: Mutex<Vec<Event>>,
}

impl CollectingSink {
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of everything emitted so far.
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Events with this name whose `operation` metadata is `operation` (any when `None`).
    pub fn named(&self, name: &str, operation: Option<&str>) -> Vec<Event> {
        self.events()
            .into_iter()
            .filter(|event| event.name == name)
            .filter(|event| {
                operation.is_none_or(|op| {
                    event.metadata.get("operation").and_then(|v| v.as_str()) == Some(op)
                })
            })
            .collect()
    }

    pub fn clear(&self) {
        self.events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clear();
    }
}

impl EventSink for CollectingSink {
    fn emit(&self, event: Event) {
        self.events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(event);
    }
}
